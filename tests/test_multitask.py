"""Tests for multitask.py: sampling schedules, round-robin, task streams' sampler state,
gradient surgery (PCGrad, Gradient Vaccine) against hand-computed projections, model selection.

Expected values are computed by hand (written as literals) or taken from the reference's
published sampling probabilities (reference/bert_n_pals.md section 3.4).
"""
import math
import os

import numpy as np
import pytest
import torch

import file_utils
import multitask as mt
from file_utils import ConfigError

# ------------------------------------------------------------------ sampling probabilities

def test_prop_and_sqrt_probabilities_hand_computed():
    assert np.allclose(mt.task_probabilities([100, 400], "prop", 1, 5), [0.2, 0.8])
    # sqrt: 10 and 20 -> 1/3, 2/3
    assert np.allclose(mt.task_probabilities([100, 400], "sqrt", 3, 5), [1 / 3, 2 / 3])
    # prop/sqrt do not depend on the epoch
    assert np.allclose(mt.task_probabilities([100, 400], "sqrt", 1, 5), [1 / 3, 2 / 3])


def test_anneal_alpha_and_probabilities_per_epoch():
    # alpha = 1 - 0.8 (e-1)/(E-1), E = 3: 1.0, 0.6, 0.2
    assert [mt.sampling_alpha("anneal", e, 3) for e in (1, 2, 3)] == pytest.approx([1.0, 0.6, 0.2])
    # 25 epochs (paper): epoch 13 -> 1 - 0.8*12/24 = 0.6; last -> 0.2
    assert mt.sampling_alpha("anneal", 13, 25) == pytest.approx(0.6)
    assert mt.sampling_alpha("anneal", 25, 25) == pytest.approx(0.2)
    assert mt.sampling_alpha("anneal", 1, 1) == 1.0  # E = 1 -> alpha 1
    # hand computed: 100^0.6 = 15.848932, 400^0.6 = 36.411284; 100^0.2 = 2.511886, 400^0.2 = 3.314454
    assert mt.task_probabilities([100, 400], "anneal", 1, 3) == pytest.approx([0.2, 0.8])
    assert mt.task_probabilities([100, 400], "anneal", 2, 3) == pytest.approx([0.303270, 0.696730], abs=1e-5)
    assert mt.task_probabilities([100, 400], "anneal", 3, 3) == pytest.approx([0.431126, 0.568874], abs=1e-5)


def test_reference_published_probabilities():
    # bert_n_pals.md 3.4: the reference's (hard-coded) sizes and its rounded probabilities.
    sizes = [6680, 2865, 306798, 1945, 4491, 52616, 284257, 84715]
    expect = {("prop", 1): [.009, .004, .412, .003, .006, .071, .382, .114],
              ("sqrt", 1): [.044, .029, .299, .024, .036, .124, .288, .157],
              ("anneal", 25): [.091, .077, .196, .071, .084, .138, .193, .151]}
    for (mode, epoch), probs in expect.items():
        assert mt.task_probabilities(sizes, mode, epoch, 25) == pytest.approx(probs, abs=1.5e-3)


def test_bad_sampling_inputs():
    with pytest.raises(ConfigError):
        mt.task_probabilities([10, 0], "prop", 1, 3)
    with pytest.raises(ConfigError):
        mt.TaskSampler([10, 20], "uniformish", 3, 0)


def test_inclusion_probabilities_hand_and_numpy():
    # P(task 0 in 2 draws w/o replacement) = .2 + .3*.2/.7 + .5*.2/.5
    inc = mt.inclusion_probabilities([0.2, 0.3, 0.5], 2)
    assert inc[0] == pytest.approx(0.2 + 0.3 * 0.2 / 0.7 + 0.5 * 0.2 / 0.5)
    assert inc.sum() == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    hits = np.zeros(3)
    for _ in range(20000):
        hits[rng.choice(3, size=2, replace=False, p=[0.2, 0.3, 0.5])] += 1
    assert hits / 20000 == pytest.approx(inc, abs=0.015)


# ------------------------------------------------------------------ sampler

def test_rr_visits_every_task_in_order():
    sampler = mt.TaskSampler([5, 1000, 7], "rr", 3, seed=1)
    assert [sampler.sample(1)[0] for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert sampler.counts == [3, 2, 2]
    pair = mt.TaskSampler([5, 1000, 7], "rr", 3, seed=1)
    assert [pair.sample(1, k=2) for _ in range(3)] == [[0, 1], [2, 0], [1, 2]]


def test_sampler_frequencies_follow_probabilities():
    sampler = mt.TaskSampler([100, 300, 600], "prop", 1, seed=3)
    draws = [sampler.sample(1)[0] for _ in range(20000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert freq == pytest.approx([0.1, 0.3, 0.6], abs=0.015)
    assert sampler.counts == np.bincount(draws, minlength=3).tolist()


def test_sampler_same_seed_same_sequence_and_state_resume():
    a = mt.TaskSampler([10, 20, 30, 40], "anneal", 4, seed=42)
    b = mt.TaskSampler([10, 20, 30, 40], "anneal", 4, seed=42)
    first = [a.sample(e) for e in (1, 1, 2, 3, 4)]
    assert first == [b.sample(e) for e in (1, 1, 2, 3, 4)]  # what every DDP rank sees
    state = a.state_dict()
    cont = [a.sample(4, k=2) for _ in range(10)]
    c = mt.TaskSampler([10, 20, 30, 40], "anneal", 4, seed=7)
    c.load_state_dict(state)
    assert [c.sample(4, k=2) for _ in range(10)] == cont
    assert c.counts == a.counts
    d = mt.TaskSampler([10, 20, 30, 41], "anneal", 4, seed=42)
    with pytest.raises(ConfigError, match="resume"):
        d.load_state_dict(state)


def test_sampler_k_without_replacement():
    sampler = mt.TaskSampler([10, 20, 30], "sqrt", 2, seed=0)
    for _ in range(50):
        tasks = sampler.sample(1, k=2)
        assert len(set(tasks)) == 2
    assert sampler.sample(1, k=3) == [0, 1, 2]


class _FakeStream:
    """Stand-in for training.EpochStream: yields (task_id, position) per micro-batch."""

    def __init__(self, task_id, accumulation):
        self.task_id, self.accumulation, self.pos = task_id, accumulation, 0

    def next_step(self):
        out = [(self.task_id, {"pos": self.pos + i}) for i in range(self.accumulation)]
        self.pos += self.accumulation
        return out

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def test_multitask_stream_steps_epochs_and_resume():
    def build(seed=5):
        streams = [_FakeStream(t, 2) for t in range(3)]
        return mt.MultiTaskStream(streams, mt.TaskSampler([10, 50, 40], "anneal", 3, seed), 4)

    stream = build()
    seen = []
    for step in range(6):
        assert stream.epoch == step // 4 + 1
        micro = stream.next_step()
        assert len(micro) == 2 and micro[0][0] == micro[1][0]  # accumulation: one task per step
        seen.append(micro)
    state = stream.state_dict()
    rest = [stream.next_step() for _ in range(6)]
    resumed = build(seed=99)
    resumed.load_state_dict(state)
    assert [resumed.next_step() for _ in range(6)] == rest
    assert sum(resumed.sampler.counts) == 12
    assert resumed.realized_frequencies() == pytest.approx([c / 12 for c in resumed.sampler.counts])


def test_multitask_stream_several_tasks_per_step():
    streams = [_FakeStream(t, 1) for t in range(3)]
    stream = mt.MultiTaskStream(streams, mt.TaskSampler([10, 50, 40], "prop", 3, 0), 4, tasks_per_step=3)
    assert sorted(t for t, _ in stream.next_step()) == [0, 1, 2]


# ------------------------------------------------------------------ schedule / parameter reports

def test_schedule_report_expected_steps_and_passes():
    report = mt.schedule_report(["a", "b"], [100, 400], [10, 20], "prop", 2, 50)
    # p = .2/.8 both epochs: 100 steps -> a: 20 steps * 10 / 100 = 2 passes; b: 80 * 20 / 400 = 4
    assert report["steps"] == pytest.approx([20, 80])
    assert report["passes"] == pytest.approx([2.0, 4.0])
    rr = mt.schedule_report(["a", "b", "c"], [10, 10, 10], [1, 1, 1], "rr", 1, 30, tasks_per_step=2)
    assert rr["steps"] == pytest.approx([20, 20, 20])
    text = mt.format_schedule_report(report)
    assert "exp. passes" in text and "0.2000" in text and "0.8000" in text


class _TinyMulti(torch.nn.Module):
    """Minimal model with the modeling.py selection API: shared encoder + per-task adapters/heads."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4)          # 20 shared
        self.adapters = torch.nn.ModuleList([torch.nn.Linear(4, 2), torch.nn.Linear(4, 1)])  # 10, 5
        self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 3), torch.nn.Linear(4, 1)])     # 15, 5

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def task_parameters(self, t):
        return list(self.adapters[t].parameters()) + list(self.heads[t].parameters())


def test_parameter_report_counts_and_multipliers():
    model = _TinyMulti()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    report = mt.parameter_report(model, ["x", "y"], count)
    assert report["total"] == 55 and report["shared"] == 20
    assert report["per_task"] == {"x": 25, "y": 10}
    assert report["multiplier_vs_one_bert"] == pytest.approx(55 / 20)
    assert report["separate_models_total"] == (20 + 15) + (20 + 5)
    assert report["separate_multiplier"] == pytest.approx(60 / 20)
    text = mt.format_parameter_report(report)
    assert "2.750x one BERT" in text and "2 separate fine-tuned BERTs" in text


# ------------------------------------------------------------------ gradient surgery

def _t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_pcgrad_two_tasks_hand_computed():
    # g1.g2 = -1: g1 - (-1/2) g2 = (0.5, 0.5); g2 - (-1/1) g1 = (0, 1); sum (0.5, 1.5)
    assert torch.allclose(mt.pcgrad([_t(1, 0), _t(-1, 1)]), _t(0.5, 1.5))
    # no conflict: plain sum
    assert torch.allclose(mt.pcgrad([_t(1, 0), _t(1, 1)]), _t(2, 1))


def test_pcgrad_three_tasks_order_and_original_gradients():
    g = [_t(1, 0, 0), _t(-1, 1, 0), _t(0, -1, 1)]
    # ascending order, worked by hand:
    # g1: vs g2 -> (0.5, 0.5, 0); vs g3 (dot -0.5, |g3|^2 2) -> (0.5, 0.25, 0.25)
    # g2: vs g1 -> (0, 1, 0); vs g3 (dot -1) -> (0, 0.5, 0.5)
    # g3: vs g1 (dot 0) -> unchanged; vs ORIGINAL g2 (dot -1, |g2|^2 2) -> (-0.5, -0.5, 1)
    assert torch.allclose(mt.pcgrad(g, [[1, 2], [0, 2], [0, 1]]), _t(0.0, 0.25, 1.75))
    # g1 visiting g3 first: dot 0 -> then g2 -> (0.5, 0.5, 0)
    assert torch.allclose(mt.pcgrad(g, [[2, 1], [0, 2], [0, 1]]), _t(0.0, 0.5, 1.5))
    # inputs untouched
    assert torch.equal(g[0], _t(1, 0, 0))


def test_gradvac_with_zero_target_equals_pcgrad_and_updates_ema():
    phi_hat = np.zeros((2, 2))
    out = mt.gradvac([_t(1, 0), _t(-1, 1)], phi_hat, beta=0.01)
    assert torch.allclose(out, _t(0.5, 1.5))
    # phi = cos = -1/sqrt(2) for both pairs (computed before the correction)
    assert phi_hat[0, 1] == pytest.approx(-0.01 / math.sqrt(2))
    assert phi_hat[1, 0] == pytest.approx(-0.01 / math.sqrt(2))


def test_gradvac_positive_target_hand_computed():
    # orthogonal grads, target 0.5: g1 + |g1| (0.5*1 - 0*sqrt(.75)) / (|g2| sqrt(.75)) g2 = (1, 1/sqrt(3))
    phi_hat = np.array([[0.0, 0.5], [0.5, 0.0]])
    out = mt.gradvac([_t(1, 0), _t(0, 1)], phi_hat, beta=0.01)
    s = 1 / math.sqrt(3)
    assert torch.allclose(out, _t(1 + s, 1 + s), atol=1e-6)
    assert phi_hat[0, 1] == pytest.approx(0.99 * 0.5)  # EMA with phi = 0
    # the corrected g1 has cosine 0.5 (the target) with g2: (1, 1/sqrt3) . (0, 1) / (2/sqrt3) = 0.5
    # no correction when the cosine already exceeds the target
    phi_hat = np.array([[0.0, 0.1], [0.1, 0.0]])
    assert torch.allclose(mt.gradvac([_t(1, 0), _t(1, 1)], phi_hat, beta=0.5), _t(2, 1))
    assert phi_hat[0, 1] == pytest.approx(0.5 * 0.1 + 0.5 / math.sqrt(2))


def test_combiner_task_ids_state_and_same_seed():
    comb = mt.GradientCombiner("vaccine", num_tasks=4, seed=3, beta=0.01)
    comb([_t(1, 0), _t(-1, 1)], task_ids=[1, 3])
    assert comb.phi_hat[1, 3] == pytest.approx(-0.01 / math.sqrt(2))
    assert comb.phi_hat[0, 1] == 0.0
    state = comb.state_dict()
    grads = [torch.randn(6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    expected = comb(grads, task_ids=[0, 1, 2])
    again = mt.GradientCombiner("vaccine", num_tasks=4, seed=0)
    again.load_state_dict(state)
    assert torch.allclose(again(grads, task_ids=[0, 1, 2]), expected)
    assert np.allclose(again.phi_hat, comb.phi_hat)
    a, b = mt.GradientCombiner("pcgrad", 3, seed=11), mt.GradientCombiner("pcgrad", 3, seed=11)
    for _ in range(5):
        assert torch.equal(a(grads), b(grads))
    assert torch.allclose(mt.GradientCombiner("sum", 3)(grads), grads[0] + grads[1] + grads[2])


def test_combination_plan():
    assert mt.combination_plan(8, "none", None, None) == (1, "sampled", "sum")
    assert mt.combination_plan(8, "pcgrad", None, None) == (8, "all", "pcgrad")
    assert mt.combination_plan(8, "vaccine", 3, None) == (3, "sampled", "vaccine")
    with pytest.raises(ConfigError):
        mt.combination_plan(8, "pcgrad", 1, None)
    with pytest.raises(ConfigError, match="--tasks_per_step 3 is not the number of tasks"):
        mt.combination_plan(8, "pcgrad", 3, "all")
    # --combine_strategy all alone: every task at every step (the documented meaning), no projection needed
    assert mt.combination_plan(8, "none", None, "all") == (8, "all", "sum")
    assert mt.combination_plan(3, "none", 3, "all") == (3, "all", "sum")
    with pytest.raises(ConfigError):
        mt.combination_plan(8, "none", 9, None)


# ------------------------------------------------------------------ task lists, selection

def test_per_task_values_and_batch_sizes():
    assert mt.parse_task_batch_sizes("cola=16, mnli=64", ["cola", "mnli"]) == {"cola": 16, "mnli": 64}
    for bad in ("cola", "cola=x", "cola=0", "rte=8"):
        with pytest.raises(ConfigError):
            mt.parse_task_batch_sizes(bad, ["cola", "mnli"])
    assert mt.batch_size_flag("sts-b") == "batch_size_sts_b"
    assert mt.parse_task_values("squad2=/d/s, conll=c", ["squad2", "conll"], "--task_data", convert=str) == {
        "squad2": "/d/s", "conll": "c"}


def test_model_selector_best_per_task_and_patience():
    state = {}
    sel = mt.ModelSelector(state, ["a", "b"], patience=2)
    assert sel.update(1, {}, {"a": 0.5, "b": 0.7}, 0.6) == (True, ["a", "b"], False)
    assert sel.update(2, {}, {"a": 0.6, "b": 0.5}, 0.55) == (False, ["a"], False)
    assert sel.update(3, {}, {"a": 0.4, "b": 0.6}, 0.5) == (False, [], True)
    assert state["best_epoch"] == 1 and state["best_average"] == pytest.approx(0.6)
    assert state["task_best"] == {"a": {"score": 0.6, "epoch": 2}, "b": {"score": 0.7, "epoch": 1}}
    # a resumed selector continues from the saved state
    again = mt.ModelSelector(state, ["a", "b"], patience=2)
    assert again.update(4, {}, {"a": 0.9, "b": 0.9}, 0.9)[0] is True and state["bad_epochs"] == 0
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]


def test_eval_table_format():
    text = mt.format_eval_table(2, {"cola": {"mcc": 0.25, "loss": 1.0}, "mrpc": {"acc": 0.8, "f1": 0.85}},
                                {"cola": 0.25, "mrpc": 0.825}, 0.5375)
    lines = text.splitlines()
    assert lines[0] == "Dev results after epoch 2:"
    assert "mcc 25.00" in lines[2] and "loss" not in lines[2] and lines[2].endswith("25.00")
    assert lines[3].endswith("82.50") and lines[-1].startswith("GLUE avg") and lines[-1].endswith("53.75")


def test_per_task_best_folder_swap_is_recovered_on_resume(tmp_path):
    target = tmp_path / "per_task_best" / "rte"
    file_utils.replace_dir_atomically(str(target), lambda d: open(os.path.join(d, "v"), "w").write("2"))
    os.replace(target, str(target) + ".old")  # a kill between the two renames of the swap
    mt.recover_output_dirs(str(tmp_path))
    assert (target / "v").read_text() == "2" and not os.path.exists(str(target) + ".old")


def test_task_parameters_saved_and_assembled(tmp_path):
    torch.manual_seed(0)
    src, dst = _TinyMulti(), _TinyMulti()
    dst.load_state_dict(src.state_dict())
    with torch.no_grad():
        for p in src.task_parameters(1):
            p.add_(1.0)
    mt.save_task_parameters(src, 1, "y", str(tmp_path / "y"), {"epoch": 3, "score": 0.5})
    mt.save_task_parameters(src, 0, "x", str(tmp_path / "x"), {"epoch": 1, "score": 0.4})
    assert set(mt.task_parameter_names(src, 1)) == {"adapters.1.weight", "adapters.1.bias",
                                                    "heads.1.weight", "heads.1.bias"}
    epochs = mt.assemble_per_task_best(dst, str(tmp_path), ["x", "y"])
    assert epochs == {"x": 1, "y": 3}
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError):
        mt.assemble_per_task_best(dst, str(tmp_path), ["y", "x"])  # task ids do not match


def test_selection_average_counts_mnli_once():
    """The GLUE leaderboard's rule: MNLI is one task scored by the mean of -m and -mm, so with
    MNLI-m 0.8, MNLI-mm 0.6 and RTE 0.5 the average is ((0.8 + 0.6) / 2 + 0.5) / 2 = 0.6 (not the
    mean of three sets, 0.6333)."""
    from tasks import glue
    mnli, rte = glue.Glue("mnli", None, None, 32), glue.Glue("rte", None, None, 32)
    mnli.evaluate = lambda predict: {"mnli": {"acc": 0.8}, "mnli-mm": {"acc": 0.6}}
    rte.evaluate = lambda predict: {"rte": {"acc": 0.5}}
    results, task_scores, set_scores, average = mt.evaluate_tasks([mnli, rte], predict=None)
    assert average == pytest.approx(0.6)
    assert task_scores == pytest.approx({"mnli": 0.7, "rte": 0.5})
    assert set_scores == pytest.approx({"mnli": 0.8, "mnli-mm": 0.6, "rte": 0.5})
