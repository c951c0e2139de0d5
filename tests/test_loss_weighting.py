"""--loss_weighting uw|dwa|famo (multitask/loss_weighting.py, training/weighting.py): the multipliers against
the papers' formulas, the Trainer's step gradient against the gradient of the library's scalarized loss
from a plain PyTorch loop, the refusals, the state through the checkpoint, and runs of run_multi_task.py
on the tiny random model (a few steps each; resume bit-identical; 2 DDP processes equal one)."""
import copy
import dataclasses
import inspect
import json
import math
import types

import numpy as np
import pytest
import torch

pytest.importorskip("torchjd")

import torchjd.scalarization as scalarization  # noqa: E402

import run_multi_task  # noqa: E402
import training  # noqa: E402
from file_utils import ConfigError  # noqa: E402
from multitask import loss_weighting  # noqa: E402
from test_training_helpers import engine_options, single_thread, synthetic_features, write_tiny_model  # noqa: E402

NAMES, IDS = ["a", "b", "c"], [0, 1, 2]


def _options(**kw):
    defaults = {f.name: f.default for f in dataclasses.fields(loss_weighting.LossWeightingFlags)}
    return types.SimpleNamespace(**dict(defaults, **kw))


def _weighter(method, steps_per_epoch=2, **kw):
    return loss_weighting.LossWeighter(method, NAMES, IDS, steps_per_epoch, _options(loss_weighting=method, **kw))


def test_flags_carry_the_library_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(loss_weighting.LossWeightingFlags)}
    for method, (cls_name, params) in loss_weighting.LIBRARY.items():
        signature = inspect.signature(getattr(scalarization, cls_name)).parameters
        assert set(params) == {p for p in signature if p not in ("shape", "min_losses")}
        for param, flag in params.items():
            assert fields[flag] == signature[param].default, (method, param)


# -- the multipliers against the papers' formulas, by hand -----------------------------------------------------

def test_uw_multipliers_and_its_own_gradient():
    """Kendall et al. 2018 (as TorchJD writes it): S = sum 0.5 exp(-s) L + 0.5 s, so dS/dL = 0.5 exp(-s) and
    dS/ds = 0.5 - 0.5 exp(-s) L."""
    w = _weighter("uw")
    s = torch.tensor([0.3, -0.7, 1.1])
    with torch.no_grad():
        w.scalarizer.log_var.copy_(s)
    m = w.multipliers()
    np.testing.assert_allclose([m[i] for i in IDS], 0.5 * np.exp(-s.numpy()), rtol=1e-6)
    losses = {0: 2.0, 1: 0.5, 2: 1.5}
    w.observe(losses).backward()
    expected = 0.5 - 0.5 * np.exp(-s.numpy()) * np.array([2.0, 0.5, 1.5])
    np.testing.assert_allclose(w.scalarizer.log_var.grad.numpy(), expected, rtol=1e-6)


def test_dwa_multipliers_follow_the_epoch_averages():
    """Liu et al. 2019: uniform for two epochs, then K softmax((L(t-1)/L(t-2)) / T) of the epoch means; our
    epoch is --steps_per_epoch steps (2 here), and the temperature flag reaches the library."""
    w = _weighter("dwa", steps_per_epoch=2, dwa_temperature=0.5)
    epoch1 = [{0: 1.0, 1: 2.0, 2: 3.0}, {0: 3.0, 1: 2.0, 2: 1.0}]
    epoch2 = [{0: 1.0, 1: 1.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 2.0}]
    for losses in epoch1 + epoch2:
        assert w.multipliers() == dict.fromkeys(IDS, 1.0)
        w.observe(losses)
    rates = np.array([1.0 / 2.0, 1.5 / 2.0, 2.5 / 2.0])  # epoch-2 mean / epoch-1 mean
    expected = 3 * np.exp(rates / 0.5) / np.exp(rates / 0.5).sum()
    m = w.multipliers()
    np.testing.assert_allclose([m[i] for i in IDS], expected, rtol=1e-6)
    assert w.last == dict(zip(NAMES, [m[i] for i in IDS]))


def test_famo_multipliers_and_update():
    """Liu et al. 2023: S = c sum z_i log(l_i + eps), z = softmax(w), c = 1 / sum z_i / (l_i + eps) constant, so
    dS/dl_i = c z_i / (l_i + eps); the update is the library's own Adam step on w from the log-loss decrease
    (compared with the library used as its docs show, on the same losses)."""
    w = _weighter("famo")
    logits = torch.tensor([0.2, -0.4, 0.1])
    with torch.no_grad():
        w.scalarizer._w.copy_(logits)
    losses = np.array([0.8, 2.0, 0.3])
    z = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum()
    a = z / (losses + 1e-8)
    m = w.multipliers(dict(zip(IDS, losses)))
    np.testing.assert_allclose([m[i] for i in IDS], a / a.sum(), rtol=1e-6)
    library = scalarization.FAMO(3)
    with torch.no_grad():
        library._w.copy_(logits)
    for before, after in (([0.8, 2.0, 0.3], [0.7, 1.9, 0.31]), ([0.7, 1.8, 0.3], [0.6, 1.85, 0.2])):
        assert w.observe(dict(zip(IDS, before))) is None
        w.update(dict(zip(IDS, after)))
        library(torch.tensor(before))
        library.update(torch.tensor(after))
    assert torch.equal(w.scalarizer._w.detach(), library._w.detach())
    assert not torch.equal(library._w.detach(), logits)


@pytest.mark.parametrize("method", ["uw", "dwa", "famo"])
def test_state_round_trips_through_the_checkpoint_format(method, tmp_path):
    """The state written to trainer_state (JSON + safetensors) and read into a fresh weighter continues
    exactly as the original: DWA's epoch sums and FAMO's Adam included."""
    from training.checkpoints import read_state, write_state

    def feed(w, steps, start):
        out = []
        for k in range(start, start + steps):
            losses = {i: 1.0 + 0.3 * math.sin(k + 2 * i) for i in IDS}
            out.append(w.multipliers(losses))
            term = w.observe(losses)
            if term is not None:
                term.backward()
                with torch.no_grad():
                    w.scalarizer.log_var -= 0.1 * w.scalarizer.log_var.grad
                    w.scalarizer.log_var.grad = None
            if w.updates_after_step:
                w.update({i: v * 0.9 for i, v in losses.items()})
            out.append(w.multipliers(losses))
        return out

    full = _weighter(method, steps_per_epoch=2)
    whole = feed(full, 7, 0)
    part = _weighter(method, steps_per_epoch=2)
    first = feed(part, 3, 0)
    write_state(str(tmp_path), "s", {"w": part.state_dict()})
    resumed = _weighter(method, steps_per_epoch=2)
    resumed.load_state_dict(read_state(str(tmp_path), "s")["w"])
    assert first + feed(resumed, 4, 3) == whole
    fresh = feed(_weighter(method, steps_per_epoch=2), 4, 3)
    assert fresh != whole[6:]  # the state mattered


# -- the Trainer's step gradient against a plain loop ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), dropout=0.0)


class _Ones:
    """A projection that keeps the task rows (weights 1): the step takes the per-task-gradient path."""
    method = "ones"

    def __init__(self):
        self.grams = []

    def weights(self, gram, task_ids=None):
        self.grams.append(gram)
        return np.ones(len(gram))


def _library_object(method, state):
    obj = {"uw": lambda: scalarization.UW(3), "dwa": lambda: scalarization.DWA(0.5),
           "famo": lambda: scalarization.FAMO(3)}[method]()
    with torch.no_grad():
        if method == "uw":
            obj.log_var.copy_(state)
        elif method == "dwa":
            obj._previous_averages = [torch.tensor([1.0, 2.0, 1.0]), state]
        else:
            obj._w.copy_(state)
    return obj


@pytest.mark.usefixtures(single_thread.__name__)
@pytest.mark.parametrize("method", ["uw", "dwa", "famo"])
@pytest.mark.parametrize("projection", [False, True], ids=["plain", "projection"])
def test_step_gradient_is_the_gradient_of_the_library_loss(tiny_dir, tmp_path, method, projection):
    """Three tasks of 5, 4 and 3 examples in one step through the Trainer: every parameter's gradient equals
    d S(L) / d theta with L the tasks' mean losses and S the library object (same state), from a plain loop.
    With a projection the per-task rows it sees are those of the weighted losses (so a weighting composes
    with --projection), and UW's log-variances get dS/ds."""
    args = engine_options(tiny_dir, str(tmp_path / "out"))
    env = training.setup_env(args)
    model = training.load_model(args, [2, 3, 2])
    batches = [training.collate(synthetic_features(n, seed=40 + n, num_labels=k))
               for n, k in ((5, 2), (4, 3), (3, 2))]
    reference = copy.deepcopy(model)
    state = torch.tensor([0.4, -0.5, 0.9])
    weighter = _weighter(method, steps_per_epoch=100, dwa_temperature=0.5)
    library = _library_object(method, state)
    with torch.no_grad():
        if method == "uw":
            weighter.scalarizer.log_var.copy_(state)
        elif method == "famo":
            weighter.scalarizer._w.copy_(state)
    if method == "dwa":
        weighter.load_state_dict(dict(weighter.state_dict(), previous_averages=[torch.tensor([1.0, 2.0, 1.0]),
                                                                               state.clone()]))
    combiner = _Ones() if projection else None
    trainer = training.Trainer(args, env, model, 10, grad_combiner=combiner, loss_weighter=weighter)
    trainer._step_microbatches([(t, b) for t, b in enumerate(batches)])

    losses = torch.stack([reference(**b, task_id=t)["loss"] for t, b in enumerate(batches)])
    library(losses).backward()
    ref = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if ref[name].grad is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, ref[name].grad, rtol=1e-5, atol=1e-7, msg=name)
    if method == "uw":
        torch.testing.assert_close(weighter.scalarizer.log_var.grad, library.log_var.grad)
    if projection:
        assert len(combiner.grams) == 1
    trainer.close()


# -- run_multi_task.py on the tiny random model ----------------------------------------------------------------

def test_refused_without_every_task_at_every_step(tiny_mt, tmp_path, capsys):
    import tiny_multitask
    from file_utils import run_cli
    for extra in ((), ("--combine_strategy", "sampled", "--tasks_per_step", 1)):
        with pytest.raises(SystemExit) as exc:
            run_cli(run_multi_task.main, tiny_multitask.argv(tiny_mt, tmp_path / "x", "--tasks", "rte,sts-b",
                                                             "--loss_weighting", "famo", *extra))
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--combine_strategy all" in err[0]
        assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="temperature"):
        loss_weighting.check(_options(loss_weighting="dwa", dwa_temperature=0.0, reference_accumulation=False,
                                      reference_protocol=False, gradient_accumulation_steps=1), "all")


COMMON = ("--tasks", "rte,sts-b,mnli", "--combine_strategy", "all", "--num_train_epochs", 3,
          "--steps_per_epoch", 2, "--sample", "rr")


@pytest.mark.parametrize("method", ["uw", "dwa", "famo"])
def test_resume_is_bit_identical(tiny_mt, tmp_path, method):
    """6 steps (3 epochs of 2: DWA leaves its uniform start at step 5) in one go == 3 steps, stop, --resume:
    the same model and weighting state to the bit. Also: results.json reports each task's mean weight, the
    checkpoint holds UW's log-variances (moved from 0) and its optimizer group, TensorBoard has the weights."""
    from safetensors.torch import load_file

    import tiny_multitask
    extra = ("--loss_weighting", method, "--uw_lr", 0.05)
    full, split = tmp_path / "full", tmp_path / "split"
    assert tiny_multitask.run(tiny_mt, full, *COMMON, *extra, "--logging_steps", 1, config="pals_nodrop") == 0
    assert tiny_multitask.run(tiny_mt, split, *COMMON, *extra, "--stop_after_steps", 3, config="pals_nodrop") == 0
    assert tiny_multitask.run(tiny_mt, split, *COMMON, *extra, "--resume", config="pals_nodrop") == 0
    wa = load_file(str(full / "checkpoint" / "model.safetensors"))
    wb = load_file(str(split / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = training.read_checkpoint(str(full / "checkpoint"))["state"]
    sb = training.read_checkpoint(str(split / "checkpoint"))["state"]
    assert sa["loss_weighter"]["steps"] == 6 and sa["loss_weighter"]["last"] == sb["loss_weighter"]["last"]
    results = json.loads((full / "results.json").read_text())
    assert results["loss_weighting"] == method and set(results["loss_weights"]) == {"rte", "sts-b", "mnli"}
    if method == "uw":
        log_var = sa["loss_weighter"]["log_var"]
        assert torch.equal(log_var, sb["loss_weighter"]["log_var"]) and log_var.abs().min() > 0
        assert sa["optimizer"]["param_groups"][-1]["name"] == "loss_weighting"
        assert sa["optimizer"]["param_groups"][-1]["weight_decay"] == 0.0
    if method == "dwa":  # two uniform epochs, then not
        assert any(abs(w - 1.0) > 1e-6 for w in sa["loss_weighter"]["last"].values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(full / training.TENSORBOARD_DIR))
    acc.Reload()
    assert {"loss_weight/rte", "loss_weight/sts-b", "loss_weight/mnli"} <= set(acc.Tags()["scalars"])


def test_famo_runs_its_forward_after_the_step_and_composes_with_a_projection(tiny_mt, tmp_path, monkeypatch):
    """FAMO: two no-grad forwards per step besides the training one (before: its weights need the step's
    losses; after: its update); with --projection pcgrad the run trains too."""
    import tiny_multitask
    calls = []
    real = training.Trainer._task_losses
    monkeypatch.setattr(training.Trainer, "_task_losses",
                        lambda self, *a, same_rng: calls.append(same_rng) or real(self, *a, same_rng=same_rng))
    assert tiny_multitask.run(tiny_mt, tmp_path / "f", *COMMON, "--loss_weighting", "famo", "--projection",
                              "pcgrad", "--stop_after_steps", 2, config="pals_nodrop") == 0
    assert calls == [True, False, True, False]
    state = training.read_checkpoint(str(tmp_path / "f" / "checkpoint"))["state"]
    assert state["loss_weighter"]["adam"] is not None and state["stream"]["combiner"]["calls"] == 2


@pytest.mark.parametrize("method, extra, state", [("famo", ("--famo_lr", 0.5), "w"),
                                                   ("uw", ("--uw_lr", 0.05), "log_var")])
def test_ddp_two_processes_match_one_process(tiny_mt, tmp_path, method, extra, state):
    """torchrun, 2 CPU processes on 3 tasks: the losses are all-reduced before the weighting, so both
    ranks weigh alike and the model is one process's (FAMO); UW's log-variances, which live outside the
    DDP-wrapped model, train alike on both ranks."""

    import tiny_multitask
    common = (*COMMON[:-4], "--steps_per_epoch", 4, "--num_train_epochs", 1, "--loss_weighting", method, *extra)
    single, multi, diff = tiny_multitask.one_vs_two_processes(tiny_mt, tmp_path, *common)
    assert diff < 1e-4
    la = training.read_checkpoint(str(single / "checkpoint"))["state"]["loss_weighter"][state]
    lb = training.read_checkpoint(str(multi / "checkpoint"))["state"]["loss_weighter"][state]
    assert float((la - la.mean()).abs().max()) > 0  # the weighting moved off its start
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-6)
