"""Tests for optimization.py: BertAdam's update rule against hand-written arithmetic, schedules
against their formulas, state_dict resume, parameter groups and the optimizer factory."""
import copy
import io
import math

import pytest
import torch
from torch import nn

from file_utils import ConfigError
from optimization import BertAdam, build_optimizer, get_lr_lambda, param_groups, task_parameter_names

# --------------------------------------------------------------------------- update rule

def _ref_update(p, g, m, v, lr, wd, max_norm, b1=0.9, b2=0.999, e=1e-6):
    """One BertAdam step on plain Python lists, written out from the reference's definition."""
    if max_norm > 0:
        norm = math.sqrt(sum(x * x for x in g))
        coef = min(1.0, max_norm / (norm + 1e-6))
        g = [x * coef for x in g]
    m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
    v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
    update = [mi / (math.sqrt(vi) + e) + wd * pi for mi, vi, pi in zip(m, v, p)]
    p = [pi - lr * ui for pi, ui in zip(p, update)]
    return p, m, v


def test_first_step_has_no_bias_correction():
    # m = 0.1 g, v = 0.001 g^2 => update = 0.1 |g| / (0.0316228 |g| + 1e-6) ~= 3.16228 sign(g):
    # Adam with bias correction would move by lr * 1.0 instead.
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = BertAdam([p], lr=0.01, weight_decay=0.0, max_grad_norm=-1)
    p.grad = torch.tensor([0.5, -4.0], dtype=torch.float64)
    opt.step()
    expected_1 = 1.0 - 0.01 * (0.05 / (math.sqrt(0.001 * 0.25) + 1e-6))
    expected_2 = -2.0 + 0.01 * (0.4 / (math.sqrt(0.001 * 16.0) + 1e-6))
    assert p.tolist() == pytest.approx([expected_1, expected_2], abs=1e-12)
    # ~ lr * 3.16228 (the eps shifts the small-gradient entry by ~2e-6), not lr * 1.
    assert p.tolist() == pytest.approx([1.0 - 0.0316228, -2.0 + 0.0316228], abs=1e-5)
    state = opt.state[p]
    assert state["step"] == 1
    assert state["next_m"].tolist() == pytest.approx([0.05, -0.4])
    assert state["next_v"].tolist() == pytest.approx([0.00025, 0.016])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(1, 2)
        with torch.no_grad():
            self.dense.weight.copy_(torch.tensor([[1.0], [2.0]]))
            self.dense.bias.copy_(torch.tensor([0.5, -0.5]))


# Per step: (weight grad, bias grad or None). Step 0's weight grad has norm 5 (clipped to 1);
# the bias gets no grad at step 1 (skipped, its step counter stays); step 2 clips both.
GRADS = [([[3.0], [4.0]], [0.1, -0.2]),
         ([[0.3], [-0.4]], None),
         ([[1.0], [1.0]], [2.0, 0.0])]


@pytest.mark.parametrize("foreach", [False, True])
def test_three_hand_computed_steps_with_clipping_decay_and_schedule(foreach):
    torch.manual_seed(0)
    model = Tiny().double()
    groups = param_groups(model, weight_decay=0.01, lr=0.1)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # weight decays, bias does not
    opt = BertAdam(groups, lr=0.1, max_grad_norm=1.0, foreach=foreach)
    # warmup_linear, w = 0.5 over 4 steps: multipliers f(0)=0, f(1)=0.25/0.5=0.5, f(2)=(0.5-1)/(0.5-1)=1.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, get_lr_lambda("warmup_linear", 0.5, 4))
    expected_lrs = [0.0, 0.05, 0.1]
    W = dict(p=[1.0, 2.0], m=[0.0, 0.0], v=[0.0, 0.0])
    B = dict(p=[0.5, -0.5], m=[0.0, 0.0], v=[0.0, 0.0])
    for step, (gw, gb) in enumerate(GRADS):
        lr = expected_lrs[step]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr, lr])
        if step == 2:
            assert model.dense.weight.view(-1).tolist() == pytest.approx([0.80144, 1.94241], abs=1e-5)
        model.dense.weight.grad = torch.tensor(gw, dtype=torch.float64)
        model.dense.bias.grad = None if gb is None else torch.tensor(gb, dtype=torch.float64)
        opt.step()
        sched.step()
        W["p"], W["m"], W["v"] = _ref_update(W["p"], [x[0] for x in gw], W["m"], W["v"], lr, 0.01, 1.0)
        if gb is not None:
            B["p"], B["m"], B["v"] = _ref_update(B["p"], gb, B["m"], B["v"], lr, 0.0, 1.0)
        assert model.dense.weight.view(-1).tolist() == pytest.approx(W["p"], abs=1e-12)
        assert model.dense.bias.tolist() == pytest.approx(B["p"], abs=1e-12)
        assert opt.state[model.dense.weight]["next_m"].view(-1).tolist() == pytest.approx(W["m"], abs=1e-15)
        assert opt.state[model.dense.bias]["next_v"].tolist() == pytest.approx(B["v"], abs=1e-15)
    assert opt.state[model.dense.weight]["step"] == 3 and opt.state[model.dense.bias]["step"] == 2
    # The same numbers worked by hand (rounded):
    # step 0 (lr 0): g_W = (3, 4) / (5 + 1e-6) = (.6, .8); m_W = (.06, .08); v_W = (.00036, .00064); no move.
    #   bias: g = (.1, -.2) (norm .22, not clipped); m_B = (.01, -.02); v_B = (1e-5, 4e-5).
    # step 1 (lr .05): g_W = (.3, -.4); m_W = (.084, .032); v_W[0] = .999 * .00036 + .001 * .09 = .00044964;
    #   W[0] = 1 - .05 * (.084 / (.0212047 + 1e-6) + .01 * 1) = 1 - .05 * 3.97119 = .80144. Bias skipped.
    # step 2 (lr .1): bias g = (2, 0) / (2 + 1e-6) = (1, 0); m_B = (.109, -.018); v_B = (.00101, 3.996e-5);
    #   B = (.5 - .1 * .109 / .031780, -.5 + .1 * .018 / .0063214) = (.15703, -.21530).
    assert W["p"] == pytest.approx([0.32576, 1.66433], abs=1e-5)
    assert B["p"] == pytest.approx([0.15703, -0.21530], abs=1e-5)
    assert model.dense.weight.view(-1).tolist() == pytest.approx([0.32576, 1.66433], abs=1e-5)
    # p.grad itself is left untouched by the per-tensor clipping.
    assert model.dense.bias.grad.tolist() == [2.0, 0.0]


def test_foreach_and_loop_paths_agree():
    torch.manual_seed(1)
    shapes = [(4, 3), (7,), (2, 2, 2)]
    a = [nn.Parameter(torch.randn(s)) for s in shapes]
    b = [nn.Parameter(t.detach().clone()) for t in a]
    oa = BertAdam(a, lr=0.05, foreach=False, t_total=6, warmup=0.3)
    ob = BertAdam(b, lr=0.05, foreach=True, t_total=6, warmup=0.3)
    for step in range(5):
        for i, (pa, pb) in enumerate(zip(a, b)):
            g = None if (step + i) % 3 == 0 else torch.randn(pa.shape) * 2
            pa.grad = None if g is None else g.clone()
            pb.grad = None if g is None else g.clone()
        oa.step()
        ob.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_foreach_matches_cpu_loop():
    torch.manual_seed(4)
    cpu = [nn.Parameter(torch.randn(s)) for s in [(64, 32), (32,), (3,)]]
    gpu = [nn.Parameter(p.detach().cuda()) for p in cpu]
    oc, og = BertAdam(cpu, lr=0.01, foreach=False), BertAdam(gpu, lr=0.01)  # default: foreach
    for _ in range(3):
        for pc, pg in zip(cpu, gpu):
            g = torch.randn(pc.shape) * 5
            pc.grad, pg.grad = g, g.cuda()
        oc.step()
        og.step()
    for pc, pg in zip(cpu, gpu):
        torch.testing.assert_close(pc, pg.cpu(), rtol=1e-5, atol=1e-6)


def test_internal_legacy_schedule_equals_lambdalr():
    # The reference's own schedule (per-parameter step before increment) vs the engine's LambdaLR.
    torch.manual_seed(2)
    p1 = nn.Parameter(torch.randn(5))
    p2 = nn.Parameter(p1.detach().clone())
    internal = BertAdam([p1], lr=0.1, warmup=0.25, t_total=8, schedule="warmup_linear_legacy")
    external = BertAdam([p2], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(external, get_lr_lambda("warmup_linear_legacy", 0.25, 8))
    for _ in range(8):
        g = torch.randn(5)
        p1.grad, p2.grad = g.clone(), g.clone()
        internal.step()
        external.step()
        sched.step()
    torch.testing.assert_close(p1, p2)
    assert internal.get_lr() == [pytest.approx(0.1 * max(1 - 8 / 8, 0))]


def test_sparse_and_invalid_arguments():
    with pytest.raises(ConfigError):
        BertAdam([nn.Parameter(torch.zeros(1))], lr=-1.0)
    with pytest.raises(ConfigError):
        BertAdam([nn.Parameter(torch.zeros(1))], lr=0.1, b1=1.0)
    with pytest.raises(ConfigError):
        BertAdam([nn.Parameter(torch.zeros(1))], lr=0.1, schedule="nope")
    emb = nn.Embedding(4, 2, sparse=True)
    opt = BertAdam(emb.parameters(), lr=0.1)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# --------------------------------------------------------------------------- resume

def _train(model, opt, sched, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = torch.randn(8, 6, generator=gen)
        loss = model(x).pow(2).mean()
        loss.backward()
        if step % 2 == 1:
            model[2].weight.grad = None  # a parameter without a gradient on some steps
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


def _setup(model):
    groups = param_groups(model, 0.01, 1e-2)
    opt = build_optimizer("bertadam", groups, 1e-2, max_grad_norm=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, get_lr_lambda("warmup_linear", 0.2, 10))
    return opt, sched


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 1))
    straight = copy.deepcopy(base)
    opt, sched = _setup(straight)
    _train(straight, opt, sched, 3, seed=10)
    _train(straight, opt, sched, 4, seed=11)

    first = copy.deepcopy(base)
    opt1, sched1 = _setup(first)
    _train(first, opt1, sched1, 3, seed=10)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict(), "sched": sched1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = copy.deepcopy(base)
    opt2, sched2 = _setup(resumed)
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert opt2.state[resumed[0].weight]["step"] == 3
    assert opt2.param_groups[0]["lr"] == opt1.param_groups[0]["lr"]
    _train(resumed, opt2, sched2, 4, seed=11)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- schedules

W, T = 0.1, 100


@pytest.mark.parametrize("name,expected", [
    # step: 0, 5 (x=.05), 10 (x=.1), 32.5->use 325/1000 below, 55 (x=.55), 99, 100, 150
    ("warmup_linear", {0: 0.0, 5: 0.5, 10: 1.0, 55: (0.55 - 1) / (0.1 - 1), 99: 0.01 / 0.9, 100: 0.0, 150: 0.0}),
    ("warmup_linear_legacy", {0: 0.0, 5: 0.5, 10: 0.9, 55: 0.45, 99: 0.01, 100: 0.0, 150: 0.0}),
    ("warmup_constant", {0: 0.0, 5: 0.5, 10: 1.0, 55: 1.0, 99: 1.0, 100: 1.0, 150: 1.0}),
    ("warmup_cosine", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.5, 99: 0.5 * (1 + math.cos(math.pi * 0.89 / 0.9)),
                       100: 0.0, 150: 0.0}),
    ("warmup_cosine_hard_restarts", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.5,
                                     99: 0.5 * (1 + math.cos(math.pi * 0.89 / 0.9)), 100: 1.0}),
    ("constant", {0: 1.0, 5: 1.0, 10: 1.0, 55: 1.0, 99: 1.0, 100: 1.0, 150: 1.0}),
])
def test_schedule_formulas(name, expected):
    f = get_lr_lambda(name, W, T)
    for step, value in expected.items():
        assert f(step) == pytest.approx(value, abs=1e-12), (name, step)


def test_schedule_details():
    # Cosine a quarter into the decay: 0.5 (1 + cos(pi/4)).
    assert get_lr_lambda("warmup_cosine", 0.1, 1000)(325) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # Two hard-restart cycles: each cycle is half the decay; at a quarter p=.25 -> 0.5 (1 + cos(pi/2)) = 0.5.
    f = get_lr_lambda("warmup_cosine_hard_restarts", 0.0, 100, cycles=2)
    assert f(25) == pytest.approx(0.5) and f(50) == pytest.approx(1.0) and f(49) < 0.01
    # No warmup: linear decay from 1; t_total <= 0 means constant; None/'none' alias constant.
    assert get_lr_lambda("warmup_linear", 0.0, 10)(0) == 1.0
    assert get_lr_lambda("warmup_linear", 0.0, 10)(4) == pytest.approx(0.6)
    assert get_lr_lambda("warmup_linear", 0.1, -1)(5) == 1.0
    assert get_lr_lambda(None, 0.1, 10)(0) == 1.0 and get_lr_lambda("none", 0.1, 10)(3) == 1.0
    with pytest.raises(ConfigError, match="unknown schedule"):
        get_lr_lambda("linear_warmup", 0.1, 10)


def test_lambdalr_uses_step_count_from_zero():
    p = nn.Parameter(torch.zeros(1))
    opt = BertAdam([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, get_lr_lambda("warmup_linear", 0.5, 4))
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(1)
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.0, 1.0, 2.0, 1.0, 0.0])
    # The multiplier is a plain object, so the scheduler state round-trips.
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == {"name": "warmup_linear", "warmup": 0.5, "t_total": 4, "cycles": None}


# --------------------------------------------------------------------------- parameter groups

class LegacyNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(3))
        self.beta = nn.Parameter(torch.zeros(3))


class Fake(nn.Module):
    """Encoder-ish names + task modules, without the modeling.py helpers (name fallback)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 3)
        self.LayerNorm = nn.LayerNorm(3)
        self.old_norm = LegacyNorm()
        self.ln_out = nn.LayerNorm(3)  # a LayerNorm not called LayerNorm
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.adapters = nn.ModuleList([nn.Linear(3, 2)])
        self.heads = nn.ModuleList([nn.Linear(3, 2)])


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_param_groups_decay_and_task_lr_by_name():
    model = Fake()
    groups = param_groups(model, 0.01, 1e-3)
    assert [g["name"] for g in groups] == ["shared_decay", "shared_no_decay"]
    assert _names(model, groups[0]) == ["adapters.0.weight", "encoder.weight", "heads.0.weight"]
    assert _names(model, groups[1]) == ["LayerNorm.bias", "LayerNorm.weight", "adapters.0.bias", "encoder.bias",
                                        "heads.0.bias", "ln_out.bias", "ln_out.weight", "old_norm.beta",
                                        "old_norm.gamma"]
    assert all(g["lr"] == 1e-3 for g in groups)
    groups = param_groups(model, 0.01, 1e-3, task_lr=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert _names(model, by_name["task_decay"]) == ["adapters.0.weight", "heads.0.weight"]
    assert _names(model, by_name["task_no_decay"]) == ["adapters.0.bias", "heads.0.bias"]
    assert by_name["task_decay"]["lr"] == 1e-4 and by_name["shared_decay"]["lr"] == 1e-3
    assert by_name["task_no_decay"]["weight_decay"] == 0.0 and by_name["task_decay"]["weight_decay"] == 0.01
    # Frozen parameters are never handed to the optimizer.
    all_ids = {id(p) for g in groups for p in g["params"]}
    assert id(model.frozen.weight) not in all_ids and len(all_ids) == 12
    with pytest.raises(ConfigError):
        param_groups(nn.Linear(2, 2).requires_grad_(False), 0.01, 1e-3)


def test_param_groups_with_real_multitask_model():
    import modeling
    config = modeling.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=32, pals=True, hidden_size_aug=8,
                                 mult=True, num_tasks=2, pal_num_heads=2)
    model = modeling.BertForMultiTask(config, task_num_labels=[2, 1])
    task = {n for t in (0, 1) for n, _ in model.named_task_parameters(t)}
    assert task_parameter_names(model) == task
    groups = param_groups(model, 0.01, 2e-5, task_lr=1e-4)
    got_task = {n for g in groups if g["lr"] == 1e-4 for n in _names(model, g)}
    assert got_task == task and "heads.1.classifier.weight" in task
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in _names(model, g)}
    assert "bert.embeddings.LayerNorm.weight" in no_decay and "bert.encoder.pal_encoders.0.bias" in no_decay
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay)
    # A DDP-style wrapper (.module) is unwrapped.
    wrapper = nn.Module()
    wrapper.module = model
    assert task_parameter_names(wrapper) == task


# --------------------------------------------------------------------------- factory

def test_build_optimizer():
    model = Tiny()
    groups = param_groups(model, 0.01, 1e-3)
    opt = build_optimizer("bertadam", groups, 1e-3)
    assert isinstance(opt, BertAdam) and opt.defaults["e"] == 1e-6 and opt.defaults["max_grad_norm"] == 1.0
    adamw = build_optimizer("adamw", param_groups(model, 0.01, 1e-3), 1e-3)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["eps"] == 1e-6 and [g["weight_decay"] for g in adamw.param_groups] == [0.01, 0.0]
    with pytest.raises(ConfigError, match="unknown optimizer"):
        build_optimizer("sgd", groups, 1e-3)
    # AdamW does not clip: a huge gradient moves the first step by ~lr (bias-corrected Adam).
    p = nn.Parameter(torch.zeros(2))
    opt = build_optimizer("adamw", [p], 0.1, weight_decay=0.0)
    p.grad = torch.tensor([1e6, -1e6])
    opt.step()
    assert p.tolist() == pytest.approx([-0.1, 0.1], rel=1e-5)


# --------------------------------------------------------------------------- multi-tensor paths
#
# The multi-tensor (foreach) update is the default; the per-tensor loop is the reference. On CPU
# torch runs every _foreach_* op as the same per-tensor ATen kernel the loop calls, and the
# foreach path issues the same operations in the same order (BertAdam._update_foreach), so the
# results must be BIT-equal (torch.equal), not merely close. On CUDA the multi-tensor kernels
# reduce norms in another order: there they agree within float32 rounding (the gpu tests).

SHAPES = [(67, 33), (33,), (9, 5), (130,), (4, 4, 4)]  # odd sizes: vectorised bodies and tails


def _groups(params, lrs=(1e-2, 3e-3)):
    """Two groups with different learning rates: decayed matrices, undecayed vectors."""
    return [{"params": [p for p in params if p.dim() > 1], "weight_decay": 0.01, "lr": lrs[0]},
            {"params": [p for p in params if p.dim() == 1], "weight_decay": 0.0, "lr": lrs[1]}]


def _grads(step, gen):
    """Per-parameter gradients of one step: some None (skipped), some huge (clipped), some small."""
    out = []
    for i, shape in enumerate(SHAPES):
        if (step + i) % 4 == 0 or (step * i) % 3 == 2:
            out.append(None)
        else:
            scale = 50.0 if (step + i) % 3 == 0 else 0.01
            out.append(torch.randn(shape, generator=gen, dtype=torch.float32) * scale)
    return out


def _run_steps(opt, params, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        grads = _grads(step, gen)
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        before = {id(p): (p.detach().clone(), {k: v.clone() if torch.is_tensor(v) else v
                                                for k, v in opt.state[p].items()})
                  for p, g in zip(params, grads) if g is None}
        opt.step()
        for p, g in zip(params, grads):
            if g is None:  # no gradient: the parameter and its state do not move
                value, state = before[id(p)]
                assert torch.equal(p, value)
                assert opt.state[p].keys() == state.keys()
                for k, v in state.items():
                    assert torch.equal(opt.state[p][k], v) if torch.is_tensor(v) else opt.state[p][k] == v
            else:  # the clipping works on a copy
                assert torch.equal(p.grad, g)


def _assert_same(params_a, params_b, opt_a, opt_b):
    for pa, pb in zip(params_a, params_b):
        assert torch.equal(pa, pb)
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k


def _fresh_params(seed):
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float32)) for s in SHAPES]


@pytest.mark.parametrize("legacy_schedule,chunk_numel", [(False, None), (True, None), (True, 200)])
def test_bertadam_foreach_default_is_bit_equal_to_loop(legacy_schedule, chunk_numel, monkeypatch):
    # legacy_schedule: BertAdam's internal warmup gives tensors with different step counts
    # (None grads on different steps) different learning rates inside ONE group.
    # chunk_numel: the multi-tensor update split into several calls per group.
    if chunk_numel is not None:
        monkeypatch.setattr(BertAdam, "FOREACH_CHUNK_NUMEL", {"cpu": chunk_numel})
    extra = dict(warmup=0.3, t_total=12) if legacy_schedule else {}
    loop_p, multi_p = _fresh_params(0), _fresh_params(0)
    loop = BertAdam(_groups(loop_p), lr=1e-2, max_grad_norm=1.0, foreach=False, **extra)
    multi = BertAdam(_groups(multi_p), lr=1e-2, max_grad_norm=1.0, **extra)  # the default
    assert multi.foreach is True and BertAdam(_fresh_params(1), lr=1e-3, foreach=None).foreach is True

    # The default must not touch the loop (and the reference must not touch the foreach path).
    def forbidden(*args, **kwargs):
        raise AssertionError("wrong update path")

    monkeypatch.setattr(multi, "_update_loop", forbidden)
    monkeypatch.setattr(loop, "_update_foreach", forbidden)
    _run_steps(loop, loop_p, 4, seed=5)
    _run_steps(multi, multi_p, 4, seed=5)
    _assert_same(loop_p, multi_p, loop, multi)
    steps = [multi.state[p].get("step", 0) for p in multi_p]
    assert len(set(steps)) > 1  # some tensors really were skipped on some steps
    if legacy_schedule:
        lrs = {multi._lr_scale(multi.param_groups[0], multi.state[p]["step"])
               for p in multi.param_groups[0]["params"]}
        assert len(lrs) > 1  # mixed learning rates inside one group

    # state_dict round trip across the two paths: each resumes the other's saved state.
    buf_loop, buf_multi = io.BytesIO(), io.BytesIO()
    torch.save(loop.state_dict(), buf_loop)
    torch.save(multi.state_dict(), buf_multi)
    buf_loop.seek(0)
    buf_multi.seek(0)
    resumed_multi_p = [nn.Parameter(p.detach().clone()) for p in loop_p]
    resumed_loop_p = [nn.Parameter(p.detach().clone()) for p in multi_p]
    resumed_multi = BertAdam(_groups(resumed_multi_p), lr=1e-2, **extra)
    resumed_loop = BertAdam(_groups(resumed_loop_p), lr=1e-2, foreach=False, **extra)
    resumed_multi.load_state_dict(torch.load(buf_loop, weights_only=True))
    resumed_loop.load_state_dict(torch.load(buf_multi, weights_only=True))
    for opt, params in ((loop, loop_p), (multi, multi_p), (resumed_multi, resumed_multi_p),
                        (resumed_loop, resumed_loop_p)):
        _run_steps(opt, params, 3, seed=6)
    _assert_same(loop_p, multi_p, loop, multi)
    _assert_same(loop_p, resumed_multi_p, loop, resumed_multi)
    _assert_same(loop_p, resumed_loop_p, loop, resumed_loop)


def test_bertadam_foreach_without_clipping_or_decay_matches_hand_computation():
    # Independent of the loop: one step of each path against _ref_update on float64 values.
    for foreach in (False, True):
        p = nn.Parameter(torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64))
        q = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
        opt = BertAdam([{"params": [p], "lr": 0.1}, {"params": [q], "lr": 0.01}], lr=0.1, weight_decay=0.0,
                       max_grad_norm=0.0, foreach=foreach)
        p.grad = torch.tensor([3.0, -0.25, 0.0], dtype=torch.float64)
        q.grad = torch.tensor([-2.0, 5.0], dtype=torch.float64)
        opt.step()
        exp_p = _ref_update([0.5, -1.5, 2.0], [3.0, -0.25, 0.0], [0.0] * 3, [0.0] * 3, 0.1, 0.0, 0.0)[0]
        exp_q = _ref_update([1.0, 1.0], [-2.0, 5.0], [0.0] * 2, [0.0] * 2, 0.01, 0.0, 0.0)[0]
        assert p.tolist() == pytest.approx(exp_p, abs=1e-14)
        assert q.tolist() == pytest.approx(exp_q, abs=1e-14)


def test_adamw_factory_is_fused_on_cpu_and_equals_torch_loop_within_rounding():
    model_p, ref_p = _fresh_params(2), _fresh_params(2)
    opt = build_optimizer("adamw", _groups(model_p), 1e-2, weight_decay=0.01)
    assert opt.defaults["fused"] is True and not opt.defaults["foreach"]
    # torch's default on CPU (foreach=None) is its per-tensor loop; ask for it explicitly.
    ref = torch.optim.AdamW(_groups(ref_p), lr=1e-2, betas=(0.9, 0.999), eps=1e-6, foreach=False)
    _run_steps(opt, model_p, 4, seed=7)
    _run_steps(ref, ref_p, 4, seed=7)
    # Not bit-equal: the fused kernel evaluates the same update in one pass per element with its
    # own operation order (bias corrections folded differently), so the last bits differ: float32
    # rounding, |params| ~ 1 here, differences ~1e-7 (bench: 7e-9 after 9 bert-base steps).
    for a, b in zip(model_p, ref_p):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[a][k], ref.state[b][k], rtol=1e-6, atol=1e-9)
    # Resume from the state_dict; it continues like the loop.
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    resumed_p = [nn.Parameter(p.detach().clone()) for p in model_p]
    resumed = build_optimizer("adamw", _groups(resumed_p), 1e-2)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for o, params in ((ref, ref_p), (resumed, resumed_p), (opt, model_p)):
        _run_steps(o, params, 3, seed=8)
    _assert_same(resumed_p, model_p, resumed, opt)  # same path before and after the resume: exact
    for a, b in zip(resumed_p, ref_p):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_adamw_factory_without_fused_kernel_uses_foreach_bit_equal_to_torch_loop(monkeypatch):
    import optimization
    monkeypatch.setattr(optimization, "_fused_adamw_devices", lambda: {"cuda"})  # as if CPU had none
    model_p, ref_p = _fresh_params(2), _fresh_params(2)
    opt = build_optimizer("adamw", _groups(model_p), 1e-2, weight_decay=0.01)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    ref = torch.optim.AdamW(_groups(ref_p), lr=1e-2, eps=1e-6, foreach=False)
    _run_steps(opt, model_p, 4, seed=7)
    _run_steps(ref, ref_p, 4, seed=7)
    _assert_same(model_p, ref_p, opt, ref)  # torch's foreach ops on CPU are its per-tensor kernels
    # Explicit choices are respected; a generator of parameters works too.
    assert build_optimizer("adamw", (p for p in _fresh_params(3)), 1e-3, foreach=False).defaults["foreach"] is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_adamw_is_fused_and_matches_cpu_loop():
    cpu_p = _fresh_params(4)
    gpu_p = [nn.Parameter(p.detach().cuda()) for p in cpu_p]
    ref = torch.optim.AdamW(_groups(cpu_p), lr=1e-2, eps=1e-6, foreach=False)
    fused = build_optimizer("adamw", _groups(gpu_p), 1e-2)
    assert fused.defaults["fused"] is True
    gen = torch.Generator().manual_seed(9)
    for step in range(4):
        for pc, pg, g in zip(cpu_p, gpu_p, _grads(step, gen)):
            pc.grad = None if g is None else g.clone()
            pg.grad = None if g is None else g.cuda()
        ref.step()
        fused.step()
    # float32 rounding: the fused kernel evaluates the same formula in another order.
    for pc, pg in zip(cpu_p, gpu_p):
        torch.testing.assert_close(pg.cpu(), pc, rtol=1e-5, atol=1e-6)
