"""Optimizers, learning-rate schedules and weight-decay parameter groups.

- `BertAdam`: the optimizer of the original BERT / pytorch-pretrained-BERT / PALs code: Adam
  WITHOUT bias correction, gradient clipping per parameter TENSOR, decoupled weight decay added
  to the update, eps 1e-6. It reads `group['lr']` at every step, so the engine drives the
  schedule with `torch.optim.lr_scheduler.LambdaLR`; the old internal schedule
  (warmup/t_total/schedule arguments) is still available but off by default.
- `get_lr_lambda`: schedules as LambdaLR multipliers of the optimizer-step count
  (0 for the first step, so linear warmup starts at lr 0, as in the reference).
- `param_groups`: no weight decay for biases and LayerNorm weights; an optional separate
  learning rate for task-specific parameters (adapters + heads).
- `build_optimizer`: 'bertadam' (default) or 'adamw' (torch.optim.AdamW, bias-corrected; it does
  no clipping itself: the engine clips the global gradient norm for it).

Neither loops over parameters in Python: BertAdam updates each group with multi-tensor
(`torch._foreach_*`) ops, on CPU and GPU, and keeps its per-tensor loop (`foreach=False`) as the
readable reference (bit-identical results on CPU); AdamW runs torch's fused kernel (one pass per
tensor; CPU and CUDA), else torch's foreach implementation. Measured: docs/benchmarks.md.
"""
import logging
import math
import re

import torch
from torch.optim import Optimizer

from file_utils import ConfigError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- schedules

def _linear(x, w):
    """v0.6.2 WarmupLinearSchedule: continuous, 1 at the end of warmup, 0 at x = 1."""
    if x < w:
        return x / w
    if w >= 1.0:
        return 0.0
    return max((x - 1.0) / (w - 1.0), 0.0)


def _linear_legacy(x, w):
    """v0.4-0.6.1 / TF BERT / PALs paper code: jumps from 1 to 1 - w at x = w.
    Clamped at 0 (the original went negative past t_total, #132); within training x < 1 anyway."""
    if x < w:
        return x / w
    return max(1.0 - x, 0.0)


def _constant_after_warmup(x, w):
    return x / w if x < w else 1.0


def _cosine(x, w, cycles=0.5):
    """v0.6.2 WarmupCosineSchedule: half a cosine from 1 to 0 over the post-warmup part.
    Progress is clamped at 1 so the rate stays 0 past t_total instead of rising again."""
    if x < w:
        return x / w
    if w >= 1.0:
        return 0.0
    p = min((x - w) / (1.0 - w), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * 2.0 * cycles * p))


def _cosine_hard_restarts(x, w, cycles=1.0):
    """v0.6.2 WarmupCosineWithHardRestartsSchedule: `cycles` cosine decays, each restarting at 1.
    With cycles=1 this equals warmup_cosine inside training (0 <= x < 1)."""
    if x < w:
        return x / w
    if w >= 1.0:
        return 0.0
    p = (x - w) / (1.0 - w)
    return 0.5 * (1.0 + math.cos(math.pi * ((cycles * p) % 1.0)))


SCHEDULES = {
    "constant": None,
    "warmup_constant": _constant_after_warmup,
    "warmup_linear": _linear,
    "warmup_linear_legacy": _linear_legacy,
    "warmup_cosine": _cosine,
    "warmup_cosine_hard_restarts": _cosine_hard_restarts,
}
_ALIASES = {None: "constant", "none": "constant", "constant_lr": "constant"}


class LRLambda:
    """LR multiplier for step s (= optimizer steps done so far): f(s / t_total, warmup).

    A callable object (not a closure) so that LambdaLR.state_dict() can save and restore it.
    t_total <= 0 means a constant multiplier of 1 (as in the reference); warmup < 0 counts as 0.
    """

    def __init__(self, name, warmup_proportion, t_total, cycles=None):
        name = _ALIASES.get(name, name)
        if name not in SCHEDULES:
            raise ConfigError(f"unknown schedule '{name}' (choose from {', '.join(sorted(SCHEDULES))})")
        self.name = name
        self.warmup = max(float(warmup_proportion or 0.0), 0.0)
        self.t_total = int(t_total) if t_total is not None else -1
        self.cycles = cycles

    def __call__(self, step):
        fn = SCHEDULES[self.name]
        if fn is None or self.t_total <= 0:
            return 1.0
        x = step / self.t_total
        if self.cycles is not None and self.name in ("warmup_cosine", "warmup_cosine_hard_restarts"):
            return fn(x, self.warmup, self.cycles)
        return fn(x, self.warmup)

    def __repr__(self):
        return f"LRLambda({self.name!r}, warmup={self.warmup}, t_total={self.t_total})"


def get_lr_lambda(name, warmup_proportion, t_total, cycles=None):
    """LambdaLR multiplier for schedule `name` (see SCHEDULES), over `t_total` optimizer steps."""
    return LRLambda(name, warmup_proportion, t_total, cycles)


# --------------------------------------------------------------------------- BertAdam

class BertAdam(Optimizer):
    """Adam as in the original BERT: no bias correction, per-tensor clipping, decoupled decay.

    For each parameter tensor p with gradient g (parameters with grad None are skipped and
    their step counter does not advance):
        g = g * min(1, max_grad_norm / (||g|| + 1e-6))        if max_grad_norm > 0 (this tensor only)
        m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
        update = m / (sqrt(v) + e) + weight_decay * p
        p = p - lr_t * update ;  step += 1
    lr_t = group['lr'] (set by LambdaLR), times the internal schedule at this tensor's step
    counter before the increment if `t_total > 0` (legacy compatibility; off by default).
    p.grad itself is not modified.

    `foreach=True` (default; None means the same): every group is updated with multi-tensor
    `torch._foreach_*` ops (one call per operation for all tensors instead of one per tensor: far
    fewer kernel launches on GPU, no per-tensor Python overhead on CPU). `foreach=False`: the
    per-tensor loop `_update_loop`, the readable reference. Both do the same operations in the
    same order; on CPU the results are bit-identical.
    """

    # The multi-tensor update makes temporaries (clipped grads, denominators, updates) for all the
    # tensors of one call and runs each of its ~12 operations over all of them before the next.
    # On CPU a call is limited to 256K elements (1 MiB per fp32 list; bigger tensors go alone):
    # its operands then stay in cache from one operation to the next and the allocator reuses the
    # same temporaries. bert-base on 1 thread (bench/bench_optimizer.py): unchunked 2x slower than
    # the loop (page faults of fresh memory), 4M-element chunks ~0.95x, 256K 1.1-1.2x faster. Elsewhere
    # (CUDA) calls take up to 64M elements: few kernel launches, bounded extra memory.
    FOREACH_CHUNK_NUMEL = {"cpu": 1 << 18}

    def __init__(self, params, lr, b1=0.9, b2=0.999, e=1e-6, weight_decay=0.01, max_grad_norm=1.0,
                 warmup=-1, t_total=-1, schedule="warmup_linear", foreach=True):
        if lr is None or not lr >= 0.0:
            raise ConfigError(f"invalid learning rate {lr} (must be >= 0)")
        if not 0.0 <= b1 < 1.0:
            raise ConfigError(f"invalid b1 {b1} (must be in [0, 1))")
        if not 0.0 <= b2 < 1.0:
            raise ConfigError(f"invalid b2 {b2} (must be in [0, 1))")
        if not e >= 0.0:
            raise ConfigError(f"invalid epsilon {e} (must be >= 0)")
        if not weight_decay >= 0.0:
            raise ConfigError(f"invalid weight_decay {weight_decay} (must be >= 0)")
        if not (warmup < 1.0 or warmup == -1):
            raise ConfigError(f"invalid warmup {warmup} (must be in [0, 1) or -1)")
        LRLambda(schedule, 0.0, -1)  # validates the name
        defaults = dict(lr=lr, b1=b1, b2=b2, e=e, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                        warmup=warmup, t_total=t_total, schedule=schedule)
        self.foreach = foreach is None or bool(foreach)
        super().__init__(params, defaults)

    def lr_scale(self, group, step):
        """The internal schedule's factor for a parameter of `group` at its own `step` count."""
        return self._lr_scale(group, step)

    def _lr_scale(self, group, step):
        if group["t_total"] is None or group["t_total"] <= 0:
            return 1.0
        return LRLambda(group["schedule"], group["warmup"], group["t_total"])(step)

    def get_lr(self):
        """Current scheduled learning rate of every parameter ([0] before the first step)."""
        lrs = []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    return [0]
                lrs.append(group["lr"] * self._lr_scale(group, state["step"]))
        return lrs

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, ms, vs, lrs = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["next_v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                ms.append(state["next_m"])
                vs.append(state["next_v"])
                lrs.append(group["lr"] * self._lr_scale(group, state["step"]))
                state["step"] += 1
            if not params:
                continue
            if self.foreach:
                for sl in _chunks(params, self.FOREACH_CHUNK_NUMEL.get(params[0].device.type, 1 << 26)):
                    self._update_foreach(group, params[sl], grads[sl], ms[sl], vs[sl], lrs[sl])
            else:
                self._update_loop(group, params, grads, ms, vs, lrs)
        return loss

    @staticmethod
    def _update_loop(group, params, grads, ms, vs, lrs):
        b1, b2, e = group["b1"], group["b2"], group["e"]
        wd, max_norm = group["weight_decay"], group["max_grad_norm"]
        for p, g, m, v, lr in zip(params, grads, ms, vs, lrs):
            if max_norm is not None and max_norm > 0:
                # Same factor as torch.nn.utils.clip_grad_norm_ on this one tensor.
                coef = (max_norm / (torch.linalg.vector_norm(g) + 1e-6)).clamp(max=1.0)
                g = g * coef
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            update = m / (v.sqrt() + e)
            if wd > 0.0:
                update.add_(p, alpha=wd)
            p.add_(update, alpha=-lr)

    @staticmethod
    def _update_foreach(group, params, grads, ms, vs, lrs):
        # The loop's arithmetic, op for op, as multi-tensor kernels. `max_norm / (norm + 1e-6)` in
        # the loop is Tensor.__rtruediv__ = reciprocal() * max_norm, so the same two ops here.
        b1, b2, e = group["b1"], group["b2"], group["e"]
        wd, max_norm = group["weight_decay"], group["max_grad_norm"]
        if max_norm is not None and max_norm > 0:
            coefs = torch._foreach_norm(grads)
            torch._foreach_add_(coefs, 1e-6)
            torch._foreach_reciprocal_(coefs)
            torch._foreach_mul_(coefs, max_norm)
            torch._foreach_clamp_max_(coefs, 1.0)
            grads = torch._foreach_mul(grads, coefs)  # a copy: p.grad stays as it was
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, grads, alpha=1.0 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
        del grads
        updates = torch._foreach_sqrt(vs)
        torch._foreach_add_(updates, e)
        updates = torch._foreach_div(ms, updates)
        if wd > 0.0:
            torch._foreach_add_(updates, params, alpha=wd)
        # p += -lr * update as ONE op per tensor (add with alpha, as the loop does; a separate
        # multiply would round twice). Tensors of a group share lr unless the legacy internal
        # schedule gives them different step counts: then one call per distinct lr.
        by_lr = {}
        for i, lr in enumerate(lrs):
            by_lr.setdefault(lr, []).append(i)
        for lr, idx in by_lr.items():
            if len(idx) == len(params):
                torch._foreach_add_(params, updates, alpha=-lr)
            else:
                torch._foreach_add_([params[i] for i in idx], [updates[i] for i in idx], alpha=-lr)


def _chunks(tensors, max_numel):
    """Consecutive slices of `tensors` of at most max_numel elements each (a bigger tensor alone)."""
    start, numel = 0, 0
    for i, t in enumerate(tensors):
        if i > start and numel + t.numel() > max_numel:
            yield slice(start, i)
            start, numel = i, 0
        numel += t.numel()
    if start < len(tensors):
        yield slice(start, len(tensors))


# --------------------------------------------------------------------------- parameter groups

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")
# Names used for LayerNorm weight/bias by pre-v0.4 checkpoints and the PALs code.
_LEGACY_NORM_NAMES = ("gamma", "beta")
# Fallback for models without named_shared_parameters(): names of task-specific modules.
_TASK_NAME_MARKERS = ("heads.", "adapter", "pal_", "multi_layer_task_transform", "task_", "lhuc", "houlsby",
                      ".top.")


def _unwrap(model):
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def _norm_parameter_names(model):
    """Names of parameters that belong to a LayerNorm module (whatever the module is called)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("LayerNorm"):
            for n, _ in module.named_parameters(recurse=False):
                names.add(f"{prefix}.{n}" if prefix else n)
    return names


def task_parameter_names(model):
    """Names of the task-specific parameters (adapters + heads) of `model`."""
    model = _unwrap(model)
    if hasattr(model, "named_shared_parameters"):
        shared = {n for n, _ in model.named_shared_parameters()}
        return {n for n, _ in model.named_parameters() if n not in shared}
    return {n for n, _ in model.named_parameters()
            if n.startswith("heads.") or any(m in n for m in _TASK_NAME_MARKERS)}


# The attention weights inside PALs (modeling.PAL.attention, in an adapter slot): what the 2019
# `--optim` option gave a learning rate of its own (its parameter names contained `attn`).
_PAL_ATTENTION = re.compile(r"\.adapters\.\d+\.attention\.")


def param_groups(model, weight_decay, lr, task_lr=None, no_decay=NO_DECAY, pal_attention_lr=None):
    """Optimizer parameter groups: decay / no decay, and (with task_lr) shared / task-specific, and
    (with pal_attention_lr) the PALs' attention weights apart.

    No weight decay for a parameter whose name contains any string of `no_decay` (substring
    match, as the 2019 scripts did), whose last name part is `gamma`/`beta` (old LayerNorm
    names), or that belongs to a LayerNorm module. Only parameters with requires_grad are
    included; empty groups are dropped. Each group has a `name` key for logging.
    """
    model = _unwrap(model)
    norm_names = _norm_parameter_names(model)
    task_names = task_parameter_names(model) if task_lr is not None else set()
    buckets = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (any(nd in name for nd in no_decay) or name.rsplit(".", 1)[-1] in _LEGACY_NORM_NAMES
                     or name in norm_names)
        kind = "pal_attention" if pal_attention_lr is not None and _PAL_ATTENTION.search(name) else \
            "task" if name in task_names else "shared"
        buckets.setdefault((kind, decay), []).append(p)
    rates = {"shared": lr, "task": task_lr, "pal_attention": pal_attention_lr}
    groups = []
    for kind in ("shared", "task", "pal_attention"):
        for decay in (True, False):
            params = buckets.get((kind, decay))
            if not params:
                continue
            groups.append({
                "params": params,
                "weight_decay": weight_decay if decay else 0.0,
                "lr": rates[kind],
                "name": kind + ("_decay" if decay else "_no_decay"),
            })
    if not groups:
        raise ConfigError("no trainable parameters (every parameter has requires_grad=False)")
    return groups


# --------------------------------------------------------------------------- factory

OPTIMIZERS = ("bertadam", "adamw")


def _params_of(groups):
    """The parameter tensors of an optimizer's `params` argument (dict groups or tensors)."""
    out = []
    for item in groups:
        if isinstance(item, dict):
            out.extend([item["params"]] if torch.is_tensor(item["params"]) else item["params"])
        else:
            out.append(item)
    return out


def _fused_adamw_devices():
    """Device types for which torch has a fused AdamW kernel (CPU and CUDA in torch 2.13)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        return set(_get_fused_kernels_supported_devices())
    except ImportError:  # a private torch helper; CUDA has had fused AdamW since torch 2.0
        return {"cuda"}


def build_optimizer(name, groups, lr, max_grad_norm=1.0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6,
                    **kwargs):
    """'bertadam' (default): BertAdam, clipping each tensor to max_grad_norm itself.
    'adamw': torch.optim.AdamW (bias-corrected); it ignores max_grad_norm, because the engine
    clips the GLOBAL gradient norm before the step for it. It runs torch's fused kernel when torch
    has one for the parameters' device (CPU, CUDA) and they are all floating point, else torch's
    multi-tensor implementation (foreach); torch's own default on CPU would be a per-tensor loop,
    6x slower for bert-base (docs/benchmarks.md). `foreach=`/`fused=` in kwargs override this.
    `weight_decay` only applies to groups that do not set their own (param_groups() always does).
    """
    name = (name or "bertadam").lower()
    if name == "bertadam":
        return BertAdam(groups, lr=lr, b1=b1, b2=b2, e=eps, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm, **kwargs)
    if name == "adamw":
        groups = list(groups)  # may be a generator: read twice below
        if "foreach" not in kwargs and "fused" not in kwargs:
            params = _params_of(groups)
            fused_devices = _fused_adamw_devices()
            if params and all(p.device.type in fused_devices and p.is_floating_point() for p in params):
                kwargs["fused"] = True
            else:
                kwargs["foreach"] = True
        return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, **kwargs)
    raise ConfigError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")
