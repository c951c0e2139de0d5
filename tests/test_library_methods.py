"""TorchJD's weightings behind --projection jd-*: our PCGrad and Gradient Vaccine against the library's on
the same Gram matrices, the flags against the library's signatures, and the guarantees the wrapper adds
(own RNG, state keyed by task name, exact state round trip, unscaled Gram matrix)."""
import importlib.util
import inspect
import json
import types
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("torchjd")

from torchjd._mixins import Stateful  # noqa: E402
from torchjd.aggregation import GradVacWeighting, PCGradWeighting  # noqa: E402

import multitask as mt  # noqa: E402
import run_multi_task  # noqa: E402
import training  # noqa: E402
from file_utils import ConfigError  # noqa: E402
from multitask import library  # noqa: E402


def _grams(k, n=6, seed=0, dim=4):
    """Gram matrices of random gradients in few dimensions: about half the pairs conflict."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = rng.standard_normal((k, dim)) * rng.uniform(0.1, 10, (k, 1))
        out.append(g @ g.T)
    return out


def _pcgrad_orders(k):
    """The orders PCGradWeighting draws: per task, torch.randperm(k) without the task itself."""
    orders = []
    for i in range(k):
        orders.append([j for j in torch.randperm(k).tolist() if j != i])
    return orders


def _gradvac_orders(k):
    """The orders GradVacWeighting draws: per task, the other tasks permuted by torch.randperm(k - 1)."""
    orders = []
    for i in range(k):
        others = [j for j in range(k) if j != i]
        orders.append([others[p] for p in torch.randperm(k - 1).tolist()])
    return orders


@pytest.mark.parametrize("k", [2, 3, 4])
def test_our_pcgrad_equals_the_library_on_the_same_orders(k):
    projected = 0
    for seed, gram in enumerate(_grams(k, seed=k)):
        torch.manual_seed(seed)
        orders = _pcgrad_orders(k)
        torch.manual_seed(seed)
        theirs = PCGradWeighting()(torch.from_numpy(gram)).numpy()
        ours = mt.pcgrad_weights(gram, orders)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
        projected += not np.allclose(ours, 1.0)
    assert projected >= 2  # the data has conflicts: the projections were exercised, not just the sum


@pytest.mark.parametrize("k", [2, 3])
def test_our_vaccine_equals_the_library_with_eps_zero(k):
    """Same update over several steps (the EMA evolves), from the same nonzero targets; the library's
    eps (added to its denominators) set to 0, where the definitions agree."""
    beta = 0.3
    phi = np.random.default_rng(1).uniform(-0.2, 0.6, (k, k))
    theirs_w = GradVacWeighting(beta=beta, eps=0.0)
    theirs_w._phi_t, theirs_w._state_key = torch.from_numpy(phi.copy()), (k, torch.float64)
    ours_phi = phi.copy()
    corrected = 0
    for seed, gram in enumerate(_grams(k, seed=10 + k)):
        torch.manual_seed(seed)
        orders = _gradvac_orders(k)
        torch.manual_seed(seed)
        theirs = theirs_w(torch.from_numpy(gram)).numpy()
        ours = mt.gradvac_weights(gram, ours_phi, beta, orders)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours_phi[~np.eye(k, dtype=bool)], theirs_w._phi_t.numpy()[~np.eye(k, dtype=bool)],
                                   rtol=1e-10, atol=1e-12)
        corrected += not np.allclose(ours, 1.0)
    assert corrected >= 2


def test_vaccine_difference_the_library_eps_breaks_scale_invariance():
    """Where they differ: the library adds eps=1e-8 to |g_i||g_j|, so gradients of norm ~1e-5 (fp16
    scale aside) look nearly orthogonal to it; ours is scale-invariant. At norm ~1 the two agree."""
    gram = np.array([[1.0, -0.6], [-0.6, 1.0]])
    for scale, agree in ((1.0, True), (1e-10, False)):
        phi = np.full((2, 2), 0.2)
        lib = GradVacWeighting(beta=0.5)  # the library's default eps
        lib._phi_t, lib._state_key = torch.from_numpy(phi.copy()), (2, torch.float64)
        theirs = lib(torch.from_numpy(gram * scale)).numpy()
        ours = mt.gradvac_weights(gram * scale, phi.copy(), 0.5)
        assert np.allclose(ours, theirs, rtol=1e-6) == agree
    np.testing.assert_allclose(mt.gradvac_weights(gram * 1e-10, np.full((2, 2), 0.2), 0.5),
                               mt.gradvac_weights(gram, np.full((2, 2), 0.2), 0.5), rtol=1e-9)


def test_flags_carry_the_library_defaults():
    """Every constructor parameter of every offered method has its flag, with the library's default (None
    where the library has none); the list itself is the library's GramianWeightedAggregator subclasses."""
    import torchjd.aggregation as agg
    expected = {"jd-" + n.lower() for n in agg.__all__ if inspect.isclass(getattr(agg, n))
                and issubclass(getattr(agg, n), agg.GramianWeightedAggregator)
                and n not in ("GramianWeightedAggregator", "Krum")}
    assert len(expected) == 10
    assert set(library.library_methods()) == expected | {"jd-nashmtl", "jd-config"}  # run on a Gram factor
    fields = {f.name: f.default for f in __import__("dataclasses").fields(library.LibraryFlags)}
    used = set()
    for method in library.library_methods():
        for name, param in library.parameters(method).items():
            field = library.flag_name(method, name)
            used.add(field)
            default = None if param.default is inspect.Parameter.empty else param.default
            assert fields[field] == default, field
    assert used == set(fields)  # no flag without its library parameter


def test_every_stateful_method_has_its_state_kept_here():
    stateful = {m for m, cls in library.library_methods().items() if issubclass(cls, Stateful)}
    assert stateful == {"jd-gradvac", "jd-pcd", "jd-nashmtl"}  # LibraryCombiner._load/_store handle exactly these


def _options(**kw):
    args = run_multi_task.build_parser().parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


NAMES = ["rte", "sts-b", "mnli"]


@pytest.mark.parametrize("method", ["jd-pcgrad", "jd-gradvac"])
def test_ranks_agree_whatever_the_global_rng(method):
    """Two DDP ranks share --seed but not torch's global RNG (dropout draws differ): same weights; the
    global RNG is left as it was. The library alone differs between the two (the test has power)."""
    grams = _grams(3, seed=5)
    runs, raw = [], []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        comb = library.LibraryCombiner(method, NAMES, 7, _options())
        runs.append([comb.weights(g, [0, 1, 2]) for g in grams])
        assert torch.equal(torch.get_rng_state(), before)
        plain = library.library_methods()[method]()
        raw.append([plain(torch.from_numpy(g)).numpy() for g in grams])
    np.testing.assert_array_equal(np.array(runs[0]), np.array(runs[1]))
    assert not np.allclose(np.array(raw[0]), np.array(raw[1]))


def test_gradvac_state_is_per_task_pair_across_sampled_steps():
    """Steps on (rte, mnli), (sts-b, mnli), (rte, mnli): the third step continues the (rte, mnli) targets,
    as the library does on that pair alone; the library by position would have mixed in sts-b's."""
    def gram(cos, n0=1.0, n1=2.0):
        return np.array([[n0 * n0, cos * n0 * n1], [cos * n0 * n1, n1 * n1]])
    # targets after g1: 0.45 for (rte, mnli); g2 (sts-b, mnli) conflicts; g3's 0.3 is below the pair's target
    g1, g2, g3 = gram(0.9), gram(-0.5), gram(0.3)
    comb = library.LibraryCombiner("jd-gradvac", NAMES, 0, _options(jd_gradvac_beta=0.5))
    comb.weights(g1, [0, 2])
    comb.weights(g2, [1, 2])
    ours = comb.weights(g3, [2, 0][::-1])
    pair = GradVacWeighting(beta=0.5)
    pair(torch.from_numpy(g1))
    np.testing.assert_allclose(ours, pair(torch.from_numpy(g3)).numpy(), rtol=1e-12)
    by_position = GradVacWeighting(beta=0.5)
    for g in (g1, g2):
        by_position(torch.from_numpy(g))
    assert not np.allclose(ours, by_position(torch.from_numpy(g3)).numpy())


def test_task_order_follows_task_ids_not_positions():
    """The same tasks given in another order get the same weights, permuted (PCD's primary is task 0)."""
    gram = _grams(3, n=1, seed=9)[0]
    perm = [2, 0, 1]
    a = library.LibraryCombiner("jd-pcd", NAMES, 0, _options()).weights(gram, [0, 1, 2])
    b = library.LibraryCombiner("jd-pcd", NAMES, 0, _options()).weights(gram[np.ix_(perm, perm)], perm)
    np.testing.assert_allclose(b, a[perm], rtol=1e-12)


needs_ecos = pytest.mark.skipif(importlib.util.find_spec("ecos") is None,
                                reason="Nash-MTL's solver ecos (requirements-dev.txt) is not installed")


def _conflicting_jacobians(k, n=5, seed=0, dim=40):
    """Per-task gradients J [k, dim] (float64) with conflicts, and one rank-deficient J (a task the sum of two)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        j = rng.standard_normal((k, dim)) * rng.uniform(0.1, 10, (k, 1))
        j[1] -= 0.8 * j[0]
        out.append(j)
    if k >= 3:
        j = rng.standard_normal((k, dim))
        j[2] = j[0] + j[1]
        out.append(j)
    return out


@needs_ecos
@pytest.mark.parametrize("k", [2, 3, 4])
def test_nashmtl_on_the_gram_factor_equals_the_library_on_the_gradients(k):
    """The library's Nash-MTL fed the per-task gradients J, against ours fed only J J^T (through a K x K factor):
    the same weights over several steps (its warm start carries state), to the solver's tolerance (its stopping
    rule sees slightly different rounding: up to 2e-6 of the largest weight here)."""
    from torchjd.aggregation import NashMTL
    ours = library.LibraryCombiner("jd-nashmtl", NAMES[:k] + ["qqp"][:max(0, k - 3)], 0, _options())
    theirs = NashMTL(n_tasks=k)
    clipped = 0
    for j in _conflicting_jacobians(k, seed=k):
        w = ours.weights(j @ j.T, list(range(k)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # cvxpy: "not DPP"
            expected = theirs.weighting(torch.from_numpy(j)).numpy()
        np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())  # the solver's
        clipped += np.linalg.norm(w @ j) == pytest.approx(1.0)  # max_norm 1 reached: the scale is exercised
    assert clipped >= 2


@pytest.mark.parametrize("k", [2, 3, 4])
def test_config_on_the_gram_factor_equals_the_library_on_the_gradients(k):
    """ConFIG's combined vector from the library on J equals J^T w with our weights from J J^T alone (also for a
    rank-deficient J)."""
    from torchjd.aggregation import ConFIG
    ours = library.LibraryCombiner("jd-config", ["a", "b", "c", "d"][:k], 0, _options())
    for j in _conflicting_jacobians(k, seed=20 + k):
        w = ours.weights(j @ j.T, list(range(k)))
        expected = ConFIG()(torch.from_numpy(j)).numpy()
        np.testing.assert_allclose(j.T @ w, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


@needs_ecos
def test_nashmtl_ranks_agree_and_global_rng_untouched():
    """Nash-MTL draws nothing at random: two ranks with other global RNG states give the same weights."""
    grams = [j @ j.T for j in _conflicting_jacobians(3, seed=7)]
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        comb = library.LibraryCombiner("jd-nashmtl", NAMES, 7, _options())
        runs.append([comb.weights(g, [0, 1, 2]) for g in grams])
        assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(np.array(runs[0]), np.array(runs[1]))


@pytest.mark.parametrize("method", ["jd-pcgrad", "jd-gradvac", "jd-pcd",
                                    pytest.param("jd-nashmtl", marks=needs_ecos)])
def test_state_round_trips_through_json(method):
    grams = _grams(3, n=6, seed=4)
    a = library.LibraryCombiner(method, NAMES, 3, _options())
    for g in grams[:3]:
        a.weights(g, [0, 1, 2])
    b = library.LibraryCombiner(method, NAMES, 3, _options())
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    fresh = library.LibraryCombiner(method, NAMES, 3, _options())
    for g in grams[3:]:
        wa, wb, wf = a.weights(g, [0, 1, 2]), b.weights(g, [0, 1, 2]), fresh.weights(g, [0, 1, 2])
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(wa, wf)  # the state mattered


def test_trainer_gives_the_library_the_unscaled_gram():
    """Under fp16 the task rows carry the loss scale; a combiner with unscaled_gram gets G / scale^2."""
    seen = {}

    class Spy:
        unscaled_gram = True

        def weights(self, gram, task_ids=None):
            seen["gram"] = gram
            return np.ones(len(gram))

    rows = torch.randn(2, 5) * 1024.0
    scaler = types.SimpleNamespace(is_enabled=lambda: True, get_scale=lambda: 1024.0)
    fake = types.SimpleNamespace(grad_combiner=Spy(), scaler=scaler, global_step=0)
    training.Trainer._combination(fake, rows, [0, 1])
    true = (rows / 1024.0).double()
    np.testing.assert_allclose(seen["gram"], (true @ true.T).numpy(), rtol=1e-6)


def test_missing_flag_or_solver_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="--jd_cagrad_c"):
        library.make_weighting("jd-cagrad", _options())
    import torchjd._mixins
    real = torchjd._mixins.find_spec
    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None if name == "cvxpy" else real(name))
    with pytest.raises(ConfigError, match="cvxpy"):
        library.make_weighting("jd-cagrad", _options(jd_cagrad_c=0.4))
    with pytest.raises(ConfigError, match="combine_strategy all"):
        mt.combination_plan(3, "jd-pcd", 2, None)
    with pytest.raises(ConfigError, match="previous step's weights"):
        mt.combination_plan(3, "jd-nashmtl", 2, None)
    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None if name == "ecos" else real(name))
    with pytest.raises(ConfigError, match="ecos"):
        library.make_weighting("jd-nashmtl", _options(), 3)


# -- end to end, through run_multi_task.py on the tiny random model -------------------------------------

SOLVER_FLAGS = ("--jd_cagrad_c", 0.4, "--jd_fairgrad_alpha", 1.0)  # the two without a library default


@pytest.mark.parametrize("method", [pytest.param(m, marks=needs_ecos) if m == "jd-nashmtl" else m
                                    for m in sorted(library.library_methods())])
def test_every_library_method_trains_two_steps(tiny_mt, tmp_path, method):
    """Two steps of every offered method on rte + sts-b: each step's weights come from the library
    (the checkpoint's combiner counted both)."""
    import tiny_multitask
    out = tmp_path / method
    assert tiny_multitask.run(tiny_mt, out, "--tasks", "rte,sts-b", "--projection", method, *SOLVER_FLAGS,
                              "--num_train_epochs", 1, "--steps_per_epoch", 2, "--stop_after_steps", 2,
                              config="pals_nodrop") == 0
    state = training.read_checkpoint(str(out / "checkpoint"))["state"]
    assert state["global_step"] == 2
    assert state["stream"]["combiner"]["method"] == method and state["stream"]["combiner"]["calls"] == 2


# GradVac with beta 1: the target is the pair's last cosine. On this model step 4's (rte, sts-b) cosine is
# negative but above its target: no correction, where targets lost at the resume (zeros) would correct it.
@pytest.mark.parametrize("extra", [("--projection", "jd-gradvac", "--tasks_per_step", 2, "--jd_gradvac_beta", 1.0),
                                   ("--projection", "jd-pcd"),
                                   ("--projection", "jd-pcgrad"),
                                   pytest.param(("--projection", "jd-nashmtl"), marks=needs_ecos)],
                         ids=["gradvac-sampled", "pcd-all", "pcgrad-all", "nashmtl-all"])
def test_resume_is_bit_identical(tiny_mt, tmp_path, extra):
    """6 steps in one go == 3 steps, stop, --resume: the same weights to the bit (the library state, its
    RNG and the per-pair targets were in the checkpoint)."""
    from safetensors.torch import load_file

    import tiny_multitask
    common = ("--tasks", "rte,sts-b,mnli", "--num_train_epochs", 1, "--steps_per_epoch", 6, "--sample", "rr",
              *extra)
    full, split = tmp_path / "full", tmp_path / "split"
    assert tiny_multitask.run(tiny_mt, full, *common, "--stop_after_steps", 6, config="pals_nodrop") == 0
    assert tiny_multitask.run(tiny_mt, split, *common, "--stop_after_steps", 3, config="pals_nodrop") == 0
    state = training.read_checkpoint(str(split / "checkpoint"))["state"]["stream"]["combiner"]
    if extra[1] == "jd-gradvac":
        assert any(v != 0 for row in state["phi"].values() for v in row.values())
    assert tiny_multitask.run(tiny_mt, split, *common, "--stop_after_steps", 6, "--resume",
                              config="pals_nodrop") == 0
    wa = load_file(str(full / "checkpoint" / "model.safetensors"))
    wb = load_file(str(split / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("package, method", [("quadprog", "jd-upgrad"), ("ecos", "jd-nashmtl")])
def test_missing_solver_exits_2_with_one_line(tiny_mt, tmp_path, monkeypatch, capsys, package, method):
    import torchjd._mixins

    import tiny_multitask
    from file_utils import run_cli
    real = torchjd._mixins.find_spec
    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None if name == package else real(name))
    with pytest.raises(SystemExit) as exc:
        run_cli(run_multi_task.main, tiny_multitask.argv(tiny_mt, tmp_path / "x", "--tasks", "rte,sts-b",
                                                         "--projection", method))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and package in err[0] and method in err[0]
    assert not (tmp_path / "x").exists()


def test_resume_refuses_another_library_hyperparameter(tiny_mt, tmp_path):
    """A jd-* method's flags are part of the run's fingerprint: --resume with another beta is exit 2."""
    import tiny_multitask
    common = ("--tasks", "rte,sts-b", "--projection", "jd-gradvac", "--num_train_epochs", 1, "--steps_per_epoch", 2)
    out = tmp_path / "run"
    assert tiny_multitask.run(tiny_mt, out, *common, "--stop_after_steps", 1, config="pals_nodrop") == 0
    from file_utils import run_cli
    with pytest.raises(SystemExit) as exc:
        run_cli(run_multi_task.main, tiny_multitask.argv(tiny_mt, out, *common, "--jd_gradvac_beta", 0.25,
                                                         "--resume", config="pals_nodrop"))
    assert exc.value.code == 2


@pytest.mark.parametrize("method", ["jd-mgda", "pcgrad"])
def test_results_report_each_task_mean_weight(tiny_mt, tmp_path, method):
    """results.json's task_weights: MGDA's weights are a convex combination (they sum to 1 at every step,
    so their means do); PCGrad on two tasks only ever adds to a weight of 1 (c_j -= negative/|g_j|^2)."""
    import tiny_multitask
    out = tmp_path / method
    assert tiny_multitask.run(tiny_mt, out, "--tasks", "rte,sts-b", "--projection", method, "--num_train_epochs", 1,
                              "--steps_per_epoch", 3, config="pals_nodrop") == 0
    weights = json.loads((out / "results.json").read_text())["task_weights"]
    assert set(weights) == {"rte", "sts-b"}
    if method == "jd-mgda":
        assert all(w >= 0 for w in weights.values()) and sum(weights.values()) == pytest.approx(1.0, abs=1e-9)
    else:
        assert all(w >= 1.0 for w in weights.values())


@pytest.mark.parametrize("method", ["jd-pcgrad", "jd-nashmtl"])
def test_ddp_two_processes_match_one_process_with_a_random_library_method(tiny_mt, tmp_path, method):
    """torchrun, 2 CPU processes on 3 tasks give one process's model: jd-pcgrad draws a random order per
    step (ranks drawing different orders would write different shared gradients on each rank, and the
    next steps' all-reduced task gradients would no longer be one process's); jd-nashmtl solves from its
    previous solution on the Gram factor, which every rank must build alike."""
    if method == "jd-nashmtl":
        pytest.importorskip("ecos", reason="Nash-MTL's solver (requirements-dev.txt)")

    import tiny_multitask
    common = ("--tasks", "rte,sts-b,mnli", "--projection", method, "--num_train_epochs", 1,
              "--steps_per_epoch", 5, "--stop_after_steps", 5,
              *(("--combine_strategy", "all") if method == "jd-nashmtl" else ()))
    single, multi, diff = tiny_multitask.one_vs_two_processes(tiny_mt, tmp_path, *common)
    assert diff < 1e-4
