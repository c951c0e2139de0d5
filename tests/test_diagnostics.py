"""Gradient-conflict diagnostics (diagnostics.py, run_multi_task.py --diagnose_every).

The Gram matrices of one diagnosis give the cosines computed here directly from torch.autograd.grad
(per layer group, the groups made here from the parameter names); two tasks with identical modules
and heads on the same inputs give cos = 1 with the same labels and cos < 0 with opposite labels.
End to end: a run with diagnostics trains bit-identically to one without (dropout on, so the
RNG stream is checked too), writes one CSV per epoch whose rows are consistent, TensorBoard
tags and the heatmaps; a run stopped and resumed writes the same CSVs as the uninterrupted one;
bad flags are one-line errors.
"""
import csv
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import diagnostics
import modeling
import run_multi_task
from file_utils import ConfigError
from test_training_helpers import single_thread
from tiny_multitask import AUG, bert_keys, run

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _model(num_labels, seed=0):
    torch.manual_seed(seed)
    return modeling.BertForMultiTask(modeling.BertConfig(**bert_keys(hidden_size_aug=AUG, mult=True, pals=True)),
                                     num_labels)


def _batch(seed, num_labels, n=5, length=9):
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(5, 2000, (n, length), generator=g),
             "attention_mask": torch.ones(n, length, dtype=torch.long)}
    batch["attention_mask"][0, -3:] = 0  # one padded example
    batch["labels"] = torch.rand(n, generator=g) if num_labels == 1 else torch.randint(0, num_labels, (n,),
                                                                                        generator=g)
    return batch


def _direct_cosines(model, task_batches):
    """{group: [K, K] cosines} from torch.autograd.grad of each task's mean loss (eval mode)."""
    named = [(n, p) for n, p in model.named_shared_parameters()]
    groups = {"embeddings": lambda n: n.startswith("bert.embeddings."),
              "pooler": lambda n: n.startswith("bert.pooler.")}
    for layer in range(bert_keys()["num_hidden_layers"]):
        groups[f"layer.{layer}"] = lambda n, i=layer: n.startswith(f"bert.encoder.layer.{i}.")
    model.eval()
    grads = []
    for task_id, batch in task_batches.items():
        loss = model(**batch, task_id=task_id)["loss"]
        grads.append(torch.autograd.grad(loss, [p for _, p in named], allow_unused=True))
    out = {}
    for group, member in list(groups.items()) + [("all", lambda n: True)]:
        idx = [i for i, (n, _) in enumerate(named) if member(n)]
        vecs = [torch.cat([(g[i] if g[i] is not None else torch.zeros_like(named[i][1])).reshape(-1).double()
                           for i in idx]) for g in grads]
        k = len(vecs)
        out[group] = torch.tensor([[float(torch.nn.functional.cosine_similarity(vecs[a], vecs[b], dim=0))
                                    for b in range(k)] for a in range(k)])
    return out


def test_cosines_equal_direct_autograd_per_group():
    model = _model([2, 3, 1])
    model.train()
    batches = {0: _batch(1, 2), 1: _batch(2, 3), 2: _batch(3, 1)}
    groups, gram = diagnostics.diagnose(model, {t: [b] for t, b in batches.items()})
    assert groups == ["all", "embeddings", "layer.0", "layer.1", "pooler"]
    assert model.training and all(p.grad is None for p in model.parameters())  # mode restored, no .grad written
    ours = diagnostics.cosines(gram)
    direct = _direct_cosines(model, batches)
    for g, group in enumerate(groups):
        assert torch.allclose(ours[g], direct[group].double(), atol=1e-6), group
    # and the Gram diagonal is the squared gradient norm
    loss = model(**batches[1], task_id=1)["loss"]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in torch.autograd.grad(loss, model.shared_parameters(),
                                                                               allow_unused=True) if g is not None))
    assert float(gram[0, 1, 1]) == pytest.approx(float(norm) ** 2, rel=1e-6)


def test_micro_batches_weighted_as_one_batch():
    # a task's gradient from two micro-batches (3 + 2 examples) equals the gradient of the 5-example batch
    model = _model([2, 2])
    whole = _batch(4, 2)
    parts = [{k: v[:3] for k, v in whole.items()}, {k: v[3:] for k, v in whole.items()}]
    _, params = diagnostics.shared_named_parameters(model)
    model.eval()
    a = diagnostics.task_gradient(model, 0, [whole], params)
    b = diagnostics.task_gradient(model, 0, parts, params)
    assert torch.allclose(a, b, atol=1e-7)


def test_identical_tasks_agree_opposite_labels_conflict():
    model = _model([2, 2])
    with torch.no_grad():  # task 1 := task 0 (adapters and head)
        own = dict(model.named_parameters())
        for name, p in model.named_task_parameters(0):
            twin = name.replace("heads.0.", "heads.1.").replace(".0.", ".1.")
            own[twin].copy_(p)
    batch = _batch(5, 2, n=8)
    flipped = dict(batch, labels=1 - batch["labels"])
    _, same = diagnostics.diagnose(model, {0: [batch], 1: [dict(batch)]})
    _, opposite = diagnostics.diagnose(model, {0: [batch], 1: [flipped]})
    cos_same, cos_opposite = diagnostics.cosines(same), diagnostics.cosines(opposite)
    assert torch.allclose(cos_same[:, 0, 1], torch.ones(cos_same.shape[0], dtype=torch.float64), atol=1e-6)
    # at initialisation p ~ 0.5, so the two losses' gradients point almost exactly in opposite directions
    assert float(cos_opposite[0, 0, 1]) < -0.9
    assert all(float(c) < 0 for c in cos_opposite[:, 0, 1])


def test_pairs_flag_parsing():
    names = ["rte", "mrpc", "sts-b"]
    assert diagnostics.parse_pairs("mrpc:rte, sts-b:rte,rte:mrpc", names) == [("rte", "mrpc"), ("rte", "sts-b")]
    for bad, message in (("rte-mrpc", "TASK:TASK"), ("rte:cola", "'cola'"), ("rte:rte", "itself")):
        with pytest.raises(ConfigError, match=message):
            diagnostics.parse_pairs(bad, names)


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


COMMON = ("--tasks", "rte,mrpc,sts-b", "--num_train_epochs", 2, "--steps_per_epoch", 5, "--sample", "sqrt")


def test_run_with_diagnostics_trains_bit_identically_and_writes_files(tiny_mt, tmp_path):
    plain, diag = tmp_path / "plain", tmp_path / "diag"
    assert run(tiny_mt, plain, *COMMON, "--no_plots") == 0
    assert run(tiny_mt, diag, *COMMON, "--diagnose_every", 2, "--diagnose_pairs", "sts-b:rte") == 0
    a, b = json.loads((plain / "results.json").read_text()), json.loads((diag / "results.json").read_text())
    assert a["history"] == b["history"] and a["loss"] == b["loss"]
    wa, wb = load_file(str(plain / "checkpoint" / "model.safetensors")), load_file(
        str(diag / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # steps 2, 4 in epoch 1 (steps 1-5), 6, 8, 10 in epoch 2: 3 pairs x 5 groups rows each
    rows1, rows2 = _csv(diag / "diagnostics" / "epoch_1.csv"), _csv(diag / "diagnostics" / "epoch_2.csv")
    assert sorted({int(r["step"]) for r in rows1}) == [2, 4] and sorted({int(r["step"]) for r in rows2}) == [6, 8, 10]
    assert len(rows1) == 2 * 3 * 5
    for row in rows1 + rows2:
        cos, dot = float(row["cos"]), float(row["dot"])
        assert cos == pytest.approx(dot / (float(row["norm_a"]) * float(row["norm_b"])), rel=1e-9)
        assert int(row["conflict"]) == int(cos < 0)
    assert {r["group"] for r in rows1} == {"all", "embeddings", "layer.0", "layer.1", "pooler"}
    summary = b["diagnostics"]
    assert summary["count"] == 5 and summary["every"] == 2 and summary["named_pairs"] == [["rte", "sts-b"]]
    mean = {p["pair"]: p["mean_cos"] for p in summary["pairs"]}
    rte_sts = [float(r["cos"]) for r in rows1 + rows2 if r["group"] == "all" and r["task_b"] == "sts-b"
               and r["task_a"] == "rte"]
    assert mean["rte~sts-b"] == pytest.approx(sum(rte_sts) / 5)
    share = {p["pair"]: p["conflict_share"] for p in summary["pairs"]}
    assert share["rte~sts-b"] == pytest.approx(sum(c < 0 for c in rte_sts) / 5)
    for name in ("task_cosines.png", "layers_rte~sts-b.png"):
        assert (diag / "diagnostics" / name).read_bytes()[:8] == PNG_MAGIC
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(diag / "runs"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"diagnostics/cos/rte~sts-b", "diagnostics/grad_norm/mrpc", "diagnostics/conflict_share/layer.1"} <= tags
    assert [e.step for e in acc.Scalars("diagnostics/cos/rte~sts-b")] == [2, 4, 6, 8, 10]
    assert acc.Scalars("diagnostics/cos/rte~sts-b")[0].value == pytest.approx(rte_sts[0], abs=1e-6)


@pytest.mark.parametrize("projection", ["none", "vaccine"])
def test_diagnostics_resume_exactly(tiny_mt, tmp_path, projection):
    """With a combiner the weights between diagnoses resume too (the combiner's tally and the diagnoses'
    snapshots of it are in the checkpoint): the step-8 diagnosis after the resume at 7 spans the resume."""
    full, split = tmp_path / "full", tmp_path / "split"
    extra = ("--diagnose_every", 2, "--no_plots", "--projection", projection)
    assert run(tiny_mt, full, *COMMON, *extra, config="pals_nodrop") == 0
    assert run(tiny_mt, split, *COMMON, *extra, "--stop_after_steps", 7, config="pals_nodrop") == 0
    assert run(tiny_mt, split, *COMMON, *extra, "--resume", config="pals_nodrop") == 0
    names = ("epoch_1.csv", "epoch_2.csv") + (("weights_1.csv", "weights_2.csv") if projection != "none" else ())
    for name in names:
        assert _csv(full / "diagnostics" / name) == _csv(split / "diagnostics" / name)
    if projection == "none":
        assert not (full / "diagnostics" / "weights_1.csv").exists()
    a, b = json.loads((full / "results.json").read_text()), json.loads((split / "results.json").read_text())
    assert a["diagnostics"]["pairs"] == b["diagnostics"]["pairs"] and a["history"] == b["history"]


@pytest.mark.parametrize("flags, message", [
    (("--diagnose_every", 2, "--freeze"), "--freeze"),
    (("--diagnose_every", -1), ">= 0"),
    (("--diagnose_pairs", "rte:mrpc"), "needs --diagnose_every"),
    (("--diagnose_every", 2, "--diagnose_pairs", "rte:qqp"), "'qqp'"),
])
def test_bad_diagnostics_flags_one_line_exit_2(tiny_mt, tmp_path, capsys, flags, message):
    from file_utils import run_cli
    with pytest.raises(SystemExit) as exc:
        run_cli(run_multi_task.main, ["--data_dir", tiny_mt["data"], "--bert_model", tiny_mt["model"],
                                      "--tasks", "rte,mrpc", "--dry_run", *map(str, flags)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not os.path.exists(tmp_path / "runs")


def test_summary_conflict_share_counts_negative_cosines():
    """Two tasks with unit gradients: cosines 0.5, -0.5, -0.2 over three diagnoses -> conflict share
    2/3 (cos < 0), mean cosine -0.2 / 3."""
    grams = [np.array([[[1.0, c], [c, 1.0]]]) for c in (0.5, -0.5, -0.2)]  # [G=1, K=2, K=2] each
    out = diagnostics.summary(["a", "b"], [1, 2, 3], grams)
    (pair,) = out["pairs"]
    assert pair["pair"] == "a~b" and pair["conflict_share"] == pytest.approx(2 / 3)
    assert pair["mean_cos"] == pytest.approx(-0.2 / 3)


class _Stream:
    def next_step(self):
        return []

    def state_dict(self):
        return {}


@pytest.mark.parametrize("method", ["pcgrad", "jd-pcgrad"])
def test_diagnoses_record_the_weights_the_combiner_gave(method, tmp_path, monkeypatch):
    """Two tasks, each step's weights from the combiner as the Trainer asks them, a diagnosis every 2 steps.
    PCGrad of two gradients by hand: orthogonal (G = [[1, 0], [0, 4]]) -> weights 1, 1; in conflict
    (G = [[1, -1], [-1, 4]]): g_a' = g_a + g_b / 4, g_b' = g_b + g_a -> 2, 1.25. Steps 1-2 orthogonal then in
    conflict -> means 1.5, 1.125 at the step-2 diagnosis; steps 3-4 in conflict -> 2, 1.25 at step 4."""
    import types

    import multitask as mt
    pytest.importorskip("torchjd")
    names = ["rte", "sts-b"]
    comb = (mt.LibraryCombiner(method, names, 0, run_multi_task.build_parser().parse_args([]))
            if method.startswith("jd-") else mt.GradientCombiner(method, 2, seed=0, names=names))
    monkeypatch.setattr(diagnostics, "diagnose", lambda model, batches, env=None: (["all"], torch.eye(2)[None]))
    env = types.SimpleNamespace(is_main=True, distributed=False)
    hook = diagnostics.GradientDiagnostics(2, names, [_Stream(), _Stream()], env, str(tmp_path), steps_per_epoch=4)
    logged = []
    trainer = types.SimpleNamespace(global_step=0, extra_state={}, model=None, grad_combiner=comb,
                                    log_scalars=lambda prefix, values: logged.append(values))
    orthogonal, conflict = np.array([[1.0, 0.0], [0.0, 4.0]]), np.array([[1.0, -1.0], [-1.0, 4.0]])
    for gram in (orthogonal, conflict, conflict, conflict):
        comb.weights(gram, [0, 1])
        trainer.global_step += 1
        hook(trainer)
    weights = diagnostics.read_csvs(str(tmp_path))["weights"]
    assert weights["method"] == method and weights["tasks"] == names and weights["steps"] == [2, 4]
    np.testing.assert_allclose(weights["weight"], [[1.5, 1.125], [2.0, 1.25]], rtol=1e-12)
    rows = _csv(tmp_path / "diagnostics" / "weights_1.csv")
    assert [int(r["steps"]) for r in rows] == [2, 2, 2, 2]
    assert [(v["task_weight/rte"], v["task_weight/sts-b"]) for v in logged] == [(1.5, 1.125), (2.0, 1.25)]


def test_interval_weights_skip_unknown_tallies_and_untrained_tasks():
    """A diagnosis without a tally (a checkpoint from before it) gives NaN there and at the next one (no
    base to subtract); a task no step weighted since the previous diagnosis gets NaN, with 0 steps."""
    tallies = [None, {"a": [2.0, 2], "b": [3.0, 2]}, {"a": [5.0, 3], "b": [3.0, 2]}]
    mean, count = diagnostics.interval_weights(tallies, ["a", "b"])
    assert np.isnan(mean[:2]).all() and mean[2, 0] == 3.0 and np.isnan(mean[2, 1])
    assert count[2].tolist() == [1, 0]
