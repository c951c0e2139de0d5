"""Multi-task machinery of run_multi_task.py: which task each optimizer step trains, how the tasks'
gradients are combined, how the joint model is evaluated and selected.

Task-agnostic: tasks come in as objects of the `tasks.base.Task` interface (built by the runner);
nothing here imports a task module. What lives here (the runner only wires flags to these):
- per-task flag values (`--task_batch_sizes cola=16,...`);
- sampling schedules (Stickland & Murray 2019, section 4): p_i proportional to N_i^alpha with the real
  training-set sizes N_i; `prop` (alpha 1), `sqrt` (alpha 0.5), `anneal` (alpha = 1 - 0.8 (e-1)/(E-1)
  for 1-based epoch e of E) and a round-robin `rr` that, unlike the reference, really cycles;
- `TaskSampler`: a seeded numpy Generator whose state is checkpointed (exact resume, identical task
  sequence on every DDP rank because every rank starts from the same seed);
- `MultiTaskStream`: the engine's step stream over many tasks: one optimizer step = the
  micro-batches of one task (or of N tasks for gradient surgery), each from that task's EpochStream;
- gradient surgery combiners for `training.Trainer(grad_combiner=...)`: PCGrad (Yu et al. 2020) and
  Gradient Vaccine (Wang et al. 2021);
- reports: expected steps/passes per task, parameter counts and multipliers (`--dry_run`);
- one task's modules and head as a file (export/import, checked against the base encoder's fingerprint);
- evaluation of every task, model selection on the mean of the tasks' main scores (for GLUE-only
  runs the leaderboard's GLUE average; joint best + per-task best modules), early stopping, the
  per-epoch dev table, and every task's official prediction files.
"""
import hashlib
import json
import logging
import math
import os

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

import file_utils
import modeling
import training
from file_utils import ConfigError, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)
SAMPLING_MODES = ("prop", "sqrt", "anneal", "rr")
TASK_LABELS_FILE = "task_labels.json"  # {task: label strings} saved beside a multi-task model (tasks reads it)
PROJECTIONS = ("none", "pcgrad", "vaccine")
COMBINE_STRATEGIES = ("all", "sampled")


# ----------------------------------------------------------------------------------------------
# Task lists
# ----------------------------------------------------------------------------------------------

def parse_task_values(spec, tasks, flag, convert=int, check=None):
    """'cola=16,mnli=64' -> {'cola': 16, 'mnli': 64} for --task_batch_sizes and friends (tasks of
    this run only; `convert` parses a value, `check(value)` returns an error text or None)."""
    result = {}
    for item in str(spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"{flag} item '{item}' is not TASK=VALUE")
        name, value = (part.strip() for part in item.split("=", 1))
        name = name.lower()
        if name not in tasks:
            raise ConfigError(f"{flag} names '{name}', which is not in --tasks ({', '.join(tasks)})")
        try:
            parsed = convert(value)
        except ValueError:
            raise ConfigError(f"{flag}: value for '{name}' is not {getattr(convert, '__name__', 'valid')}: "
                              f"'{value}'") from None
        problem = check(parsed) if check is not None else None
        if problem:
            raise ConfigError(f"{flag}: value for '{name}' {problem}, got {value}")
        result[name] = parsed
    return result


def parse_task_batch_sizes(spec, tasks):
    """'cola=16,mnli=64' -> {'cola': 16, 'mnli': 64} (only tasks of this run)."""
    return parse_task_values(spec, tasks, "--task_batch_sizes",
                             check=lambda v: "must be positive" if v <= 0 else None)


def batch_size_flag(task):
    """Per-task batch-size flag name: 'sts-b' -> 'batch_size_sts_b' (dest) / '--batch_size_sts_b'."""
    return "batch_size_" + task.replace("-", "_")


# ----------------------------------------------------------------------------------------------
# Sampling schedules
# ----------------------------------------------------------------------------------------------

def sampling_alpha(mode, epoch, num_epochs):
    """Exponent alpha of p_i ~ N_i^alpha for 1-based `epoch` of `num_epochs` (None for rr)."""
    if mode == "prop":
        return 1.0
    if mode == "sqrt":
        return 0.5
    if mode == "anneal":
        if num_epochs <= 1:
            return 1.0
        epoch = min(max(int(epoch), 1), int(num_epochs))
        return 1.0 - 0.8 * (epoch - 1) / (num_epochs - 1)
    if mode == "rr":
        return None
    raise ConfigError(f"unknown sampling mode '{mode}' (choose from {', '.join(SAMPLING_MODES)})")


def task_probabilities(sizes, mode, epoch, num_epochs):
    """Target probability of each task at 1-based `epoch` (rr: the uniform visiting frequency)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 1 or len(sizes) == 0:
        raise ConfigError("need at least one task to sample from")
    if np.any(sizes <= 0):
        raise ConfigError("every task needs at least one training example to be sampled")
    alpha = sampling_alpha(mode, epoch, num_epochs)
    if alpha is None:
        return np.full(len(sizes), 1.0 / len(sizes))
    weights = sizes ** alpha
    return weights / weights.sum()


def inclusion_probabilities(probs, k):
    """P(task i is among k tasks drawn WITHOUT replacement, each draw ~ p renormalised).

    This is the law of numpy's Generator.choice(n, k, replace=False, p=p). Exact, by dynamic
    programming over the sets drawn so far (fine for the <= 10 GLUE tasks).
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if k >= n:
        return np.ones(n)
    if k <= 0:
        return np.zeros(n)
    if n > 16:
        raise ConfigError("exact inclusion probabilities are limited to 16 tasks")
    reach = {0: 1.0}  # bitmask of tasks drawn so far -> probability of that set being drawn first
    for _ in range(k):
        nxt = {}
        for mask, p_mask in reach.items():
            remaining = 1.0 - sum(probs[j] for j in range(n) if mask >> j & 1)
            for j in range(n):
                if mask >> j & 1 or probs[j] == 0:
                    continue
                nxt[mask | 1 << j] = nxt.get(mask | 1 << j, 0.0) + p_mask * probs[j] / remaining
        reach = nxt
    inclusion = np.zeros(n)
    for mask, p_mask in reach.items():
        for j in range(n):
            if mask >> j & 1:
                inclusion[j] += p_mask
    return inclusion


class TaskSampler:
    """Chooses the task(s) of each optimizer step; its state is checkpointed for exact resume.

    `sample(epoch, k)` returns k distinct task indices: for prop/sqrt/anneal drawn from a seeded
    numpy Generator with p_i ~ N_i^alpha(epoch) (k > 1: without replacement); for rr the next k
    tasks of the cycle 0, 1, ..., K-1, 0, ... Every DDP rank builds the sampler with the same seed
    and calls it once per step, so all ranks train the same task at every step.
    """

    def __init__(self, sizes, mode, num_epochs, seed):
        if mode not in SAMPLING_MODES:
            raise ConfigError(f"unknown --sample '{mode}' (choose from {', '.join(SAMPLING_MODES)})")
        self.sizes = [int(s) for s in sizes]
        task_probabilities(self.sizes, mode, 1, num_epochs)  # validates sizes
        self.mode, self.num_epochs, self.seed = mode, int(num_epochs), int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.rr_next = 0
        self.counts = [0] * len(self.sizes)

    @property
    def num_tasks(self):
        return len(self.sizes)

    def probabilities(self, epoch):
        return task_probabilities(self.sizes, self.mode, epoch, self.num_epochs)

    def sample(self, epoch, k=1):
        n = self.num_tasks
        if not 1 <= k <= n:
            raise ConfigError(f"cannot train {k} tasks per step with {n} task(s)")
        if self.mode == "rr":
            tasks = [(self.rr_next + i) % n for i in range(k)]
            self.rr_next = (self.rr_next + k) % n
        elif k == n:
            tasks = list(range(n))
        elif k == 1:
            tasks = [int(self.rng.choice(n, p=self.probabilities(epoch)))]
        else:
            tasks = [int(t) for t in self.rng.choice(n, size=k, replace=False, p=self.probabilities(epoch))]
        for t in tasks:
            self.counts[t] += 1
        return tasks

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "rr_next": self.rr_next, "counts": list(self.counts),
                "mode": self.mode, "sizes": list(self.sizes), "seed": self.seed}

    def load_state_dict(self, state):
        if list(state["sizes"]) != self.sizes or state["mode"] != self.mode:
            raise ConfigError("cannot resume: the checkpoint was made with other tasks, data sizes or --sample "
                              f"(checkpoint: {state['mode']} {state['sizes']}; now: {self.mode} {self.sizes})")
        self.rng.bit_generator.state = state["rng"]
        self.rr_next = int(state["rr_next"])
        self.counts = [int(c) for c in state["counts"]]


def schedule_report(task_names, sizes, batch_sizes, mode, num_epochs, steps_per_epoch,
                    tasks_per_step=1, accumulation=1):
    """Expected training per task: probabilities per epoch, expected steps and dataset passes.

    A step trains `tasks_per_step` tasks (1 normally); each of its tasks consumes one effective
    batch of `batch_sizes[i]` examples (accumulation does not change the effective batch).
    Returns a dict with 'epochs' (list of per-epoch probability lists), 'steps', 'passes'.
    """
    del accumulation  # the effective batch is what counts; kept for the caller's clarity
    epochs = []
    expected_steps = np.zeros(len(sizes))
    for epoch in range(1, num_epochs + 1):
        probs = task_probabilities(sizes, mode, epoch, num_epochs)
        if mode == "rr":
            per_step = np.full(len(sizes), min(tasks_per_step, len(sizes)) / len(sizes))
        else:
            per_step = inclusion_probabilities(probs, tasks_per_step)
        epochs.append({"epoch": epoch, "alpha": sampling_alpha(mode, epoch, num_epochs),
                       "probabilities": probs.tolist()})
        expected_steps += per_step * steps_per_epoch
    # one pass over task i = ceil(N_i / batch_i) steps (the last batch of a pass is smaller)
    steps_per_pass = np.ceil(np.asarray(sizes, dtype=np.float64) / np.asarray(batch_sizes, dtype=np.float64))
    passes = expected_steps / steps_per_pass
    return {"tasks": list(task_names), "sizes": [int(s) for s in sizes], "batch_sizes": list(batch_sizes),
            "epochs": epochs, "steps": expected_steps.tolist(), "passes": passes.tolist(),
            "steps_per_epoch": steps_per_epoch, "num_epochs": num_epochs, "tasks_per_step": tasks_per_step}


def format_schedule_report(report):
    names = report["tasks"]
    width = max(8, *(len(n) for n in names))
    lines = [f"Sampling: {report['num_epochs']} epoch(s) x {report['steps_per_epoch']} optimizer steps, "
             f"{report['tasks_per_step']} task(s) per step",
             "Task probabilities per epoch:",
             "epoch  alpha  " + " ".join(f"{n:>{width}}" for n in names)]
    for row in report["epochs"]:
        alpha = "   rr" if row["alpha"] is None else f"{row['alpha']:5.3f}"
        lines.append(f"{row['epoch']:5d}  {alpha}  " + " ".join(f"{p:>{width}.4f}" for p in row["probabilities"]))
    lines.append("Expected training per task:")
    lines.append(f"{'task':<{width}} {'train size':>10} {'batch':>6} {'exp. steps':>11} {'exp. passes':>11}")
    for i, name in enumerate(names):
        lines.append(f"{name:<{width}} {report['sizes'][i]:>10d} {report['batch_sizes'][i]:>6d} "
                     f"{report['steps'][i]:>11.1f} {report['passes'][i]:>11.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The multi-task step stream
# ----------------------------------------------------------------------------------------------

class MultiTaskStream:
    """Step stream over several tasks for `training.Trainer.train`.

    `task_streams[i]` is task i's `training.EpochStream` (its own batch size and data position).
    Each `next_step()` asks the sampler for the step's task(s) and returns the concatenated
    micro-batches [(task_id, batch), ...]: all micro-batches of a task's share of the step come from
    that task, so gradient accumulation never mixes tasks within one task's gradient.
    `combiner` (optional, the Trainer's grad_combiner) is checkpointed with the stream, because its
    state (random order, vaccine EMA) advances with the steps.
    """

    def __init__(self, task_streams, sampler, steps_per_epoch, tasks_per_step=1, combiner=None):
        if len(task_streams) != sampler.num_tasks:
            raise ConfigError("one EpochStream per task is needed")
        self.task_streams, self.sampler = list(task_streams), sampler
        self.steps_per_epoch, self.tasks_per_step = int(steps_per_epoch), int(tasks_per_step)
        self.combiner = combiner
        if combiner is not None and hasattr(combiner, "stream"):
            combiner.stream = self
        self.step = 0
        self.last_tasks = []
        self.epoch_counts = {}  # 1-based epoch -> steps per task in that epoch

    @property
    def epoch(self):
        """1-based epoch of the NEXT step."""
        return self.step // self.steps_per_epoch + 1

    def next_step(self):
        epoch = self.epoch
        tasks = self.sampler.sample(epoch, self.tasks_per_step)
        self.last_tasks = tasks
        counts = self.epoch_counts.setdefault(epoch, [0] * self.sampler.num_tasks)
        micro_batches = []
        for t in tasks:
            counts[t] += 1
            micro_batches.extend(self.task_streams[t].next_step())
        self.step += 1
        return micro_batches

    def realized_frequencies(self, epoch=None):
        """Share of task draws per task, over one 1-based epoch or (None) the whole run so far."""
        counts = self.sampler.counts if epoch is None else self.epoch_counts.get(epoch, [0] * self.sampler.num_tasks)
        total = sum(counts)
        return [c / total if total else 0.0 for c in counts]

    def state_dict(self):
        return {"step": self.step, "sampler": self.sampler.state_dict(),
                "streams": [s.state_dict() for s in self.task_streams],
                "epoch_counts": {str(k): list(v) for k, v in self.epoch_counts.items()},
                "combiner": self.combiner.state_dict() if hasattr(self.combiner, "state_dict") else None}

    def load_state_dict(self, state):
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        if len(state["streams"]) != len(self.task_streams):
            raise ConfigError("cannot resume: the checkpoint has a different number of tasks")
        for stream, s in zip(self.task_streams, state["streams"]):
            stream.load_state_dict(s)
        self.epoch_counts = {int(k): list(v) for k, v in (state.get("epoch_counts") or {}).items()}
        if state.get("combiner") is not None and hasattr(self.combiner, "load_state_dict"):
            self.combiner.load_state_dict(state["combiner"])


# ----------------------------------------------------------------------------------------------
# Gradient surgery
# ----------------------------------------------------------------------------------------------

def _other_orders(num, rng):
    """For each task i, the other tasks in a random order (rng=None: ascending)."""
    orders = []
    for i in range(num):
        others = [j for j in range(num) if j != i]
        if rng is not None:
            others = [others[k] for k in rng.permutation(len(others))]
        orders.append(others)
    return orders


# The projections below work on the Gram matrix G (G[i, j] = g_i . g_j) instead of the gradients:
# every projected g_i is a combination sum_k c_k g_k of the original gradients, so all its dot
# products and norms follow from G (g_i' . g_j = c . G[:, j]), and the combined gradient is
# sum_k w_k g_k with w = sum_i c_i. A step then needs the task gradients once (the Trainer's
# buffer) plus K x K numbers, not a float64 copy per pair; and w does not change when every
# gradient is scaled alike (the fp16 loss scale).

def pcgrad_weights(gram, orders=None):
    """PCGrad (Yu et al. 2020) on the Gram matrix: w with sum_i g_i' = sum_k w_k g_k.

    For each g_i: over the other tasks j in `orders[i]`, if g_i' . g_j < 0 then
    g_i' <- g_i' - (g_i' . g_j / |g_j|^2) g_j, with g_i' the running projected copy and g_j the
    ORIGINAL gradient of task j."""
    gram = np.asarray(gram, dtype=np.float64)
    k = len(gram)
    orders = orders if orders is not None else _other_orders(k, None)
    total = np.zeros(k)
    for i in range(k):
        c = np.zeros(k)
        c[i] = 1.0
        for j in orders[i]:
            dot = c @ gram[:, j]
            if dot < 0 and gram[j, j] > 0:
                c[j] -= dot / gram[j, j]
        total += c
    return total


def gradvac_weights(gram, phi_hat, beta, orders=None):
    """Gradient Vaccine (Wang et al. 2021) on the Gram matrix for one step: w with
    sum_i g_i' = sum_k w_k g_k; updates the EMA `phi_hat` (K x K) in place.

    For each g_i' (running copy) and each other j in `orders[i]`: phi = cos(g_i', g_j); if
    phi < phi_hat[i, j], g_i' <- g_i' + g_j |g_i'| (phi_hat sqrt(1-phi^2) - phi sqrt(1-phi_hat^2))
    / (|g_j| sqrt(1-phi_hat^2)), which sets cos(g_i', g_j) to phi_hat; then
    phi_hat[i, j] <- (1-beta) phi_hat[i, j] + beta phi. `phi_hat` is indexed by the positions in
    `gram` (callers map global task ids)."""
    gram = np.asarray(gram, dtype=np.float64)
    k = len(gram)
    orders = orders if orders is not None else _other_orders(k, None)
    total = np.zeros(k)
    for i in range(k):
        c = np.zeros(k)
        c[i] = 1.0
        for j in orders[i]:
            norm_i = math.sqrt(max(0.0, c @ gram @ c))
            norm_j = math.sqrt(max(0.0, gram[j, j]))
            if norm_i == 0 or norm_j == 0:
                continue
            phi = min(1.0, max(-1.0, (c @ gram[:, j]) / (norm_i * norm_j)))
            target = float(phi_hat[i][j])
            if phi < target:
                c[j] += (norm_i * (target * math.sqrt(max(0.0, 1 - phi * phi))
                                   - phi * math.sqrt(max(0.0, 1 - target * target)))
                         / (norm_j * math.sqrt(max(1e-12, 1 - target * target))))
            phi_hat[i][j] = (1 - beta) * target + beta * phi
        total += c
    return total


def _rows(grads):
    return torch.stack([g.reshape(-1) for g in grads])


def _combine(rows, weights):
    """sum_k weights[k] rows[k], in the rows' dtype."""
    out = torch.empty(rows.shape[1], dtype=rows.dtype, device=rows.device)
    training.weighted_rows_into(out, rows, torch.as_tensor(np.asarray(weights), dtype=rows.dtype, device=rows.device))
    return out


def pcgrad(grads, orders=None):
    """PCGrad of a list of flat gradients (see pcgrad_weights); returns sum_i g_i' (the inputs' dtype)."""
    rows = _rows(grads)
    return _combine(rows, pcgrad_weights(training.gram_matrix(rows).cpu().numpy(), orders))


def gradvac(grads, phi_hat, beta, orders=None):
    """Gradient Vaccine of a list of flat gradients (see gradvac_weights); updates `phi_hat` in place."""
    rows = _rows(grads)
    return _combine(rows, gradvac_weights(training.gram_matrix(rows).cpu().numpy(), phi_hat, beta, orders))


class GradientCombiner:
    """`grad_combiner` for training.Trainer: combines per-task gradients of the shared params.

    The Trainer calls `weights(gram, task_ids)` (gram: the K x K dot products of the step's task
    gradients; task_ids: their global task indices, which lets the vaccine keep one EMA per task
    pair) and writes sum_k w_k g_k itself. Called as combiner(grads) or combiner(grads, task_ids)
    on a list of flat gradients, it returns that sum; without task_ids it takes `stream.last_tasks`
    of the MultiTaskStream it is attached to (which sets `stream`), else the positions. The random
    order over the other tasks comes from a seeded numpy Generator: the same on every DDP rank,
    and its state (plus the vaccine EMA) is in `state_dict()` for exact resume.

    A Gram matrix with an inf/NaN (an fp16 overflow: the GradScaler skips that step) leaves the
    state untouched, so a skipped step cannot poison the vaccine targets; the weights are then a
    plain sum. "sum" is the plain sum of the gradients (the Trainer does not even ask it).
    """

    def __init__(self, method, num_tasks, seed=0, beta=0.01):
        if method not in ("sum", "pcgrad", "vaccine"):
            raise ConfigError(f"unknown gradient combination '{method}'")
        self.method, self.num_tasks, self.beta = method, int(num_tasks), float(beta)
        self.rng = np.random.default_rng(seed)
        self.phi_hat = np.zeros((self.num_tasks, self.num_tasks), dtype=np.float64)
        self.calls = 0
        self.stream = None

    def weights(self, gram, task_ids=None):
        gram = np.asarray(gram, dtype=np.float64)
        k = len(gram)
        if not np.isfinite(gram).all():
            return np.ones(k)
        self.calls += 1
        if self.method == "sum":
            return np.ones(k)
        orders = _other_orders(k, self.rng)
        if self.method == "pcgrad":
            return pcgrad_weights(gram, orders)
        ids = list(task_ids) if task_ids is not None else list(range(k))
        local = self.phi_hat[np.ix_(ids, ids)].copy()
        result = gradvac_weights(gram, local, self.beta, orders)
        for a, ta in enumerate(ids):
            for b, tb in enumerate(ids):
                if a != b:
                    self.phi_hat[ta, tb] = local[a][b]
        return result

    def __call__(self, grads, task_ids=None):
        grads = list(grads)
        if task_ids is None and self.stream is not None and len(self.stream.last_tasks) == len(grads):
            task_ids = self.stream.last_tasks
        rows = _rows(grads)
        return _combine(rows, self.weights(training.gram_matrix(rows).cpu().numpy(), task_ids))

    def state_dict(self):
        return {"method": self.method, "rng": self.rng.bit_generator.state, "phi_hat": self.phi_hat.tolist(),
                "calls": self.calls, "beta": self.beta}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.phi_hat = np.asarray(state["phi_hat"], dtype=np.float64)
        self.calls = int(state["calls"])


# ----------------------------------------------------------------------------------------------
# Parameter report
# ----------------------------------------------------------------------------------------------

def parameter_report(model, task_names, count_fn):
    """Total / shared / per-task parameter counts and multipliers (`count_fn` = modeling.count_parameters).

    'one BERT' = the shared parameters (encoder + pooler, i.e. what one fine-tuned BERT without its head
    has); K separate fine-tuned BERTs = K x (one BERT + that task's head only).
    """
    total = count_fn(model)
    shared = _count_unique(model.shared_parameters())
    per_task = [_count_unique(model.task_parameters(t)) for t in range(len(task_names))]
    heads = [_count_unique(model.heads[t].parameters()) for t in range(len(task_names))]
    separate = sum(shared + h for h in heads)
    return {"total": int(total), "shared": int(shared), "per_task": dict(zip(task_names, map(int, per_task))),
            "task_specific_total": int(total - shared), "one_bert": int(shared),
            "multiplier_vs_one_bert": total / shared if shared else float("nan"),
            "separate_models_total": int(separate),
            "separate_multiplier": separate / shared if shared else float("nan"),
            "fewer_than_separate": separate / total if total else float("nan")}


def _count_unique(params):
    seen, n = set(), 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def format_parameter_report(report):
    lines = ["Parameters:",
             f"  total                     {report['total']:>14,d}  ({report['multiplier_vs_one_bert']:.3f}x one BERT)",
             f"  shared encoder (one BERT) {report['shared']:>14,d}",
             f"  task-specific, all tasks  {report['task_specific_total']:>14,d}"]
    for name, n in report["per_task"].items():
        lines.append(f"    {name:<23} {n:>14,d}  (modules + head)")
    k = len(report["per_task"])
    lines.append(f"  {k} separate fine-tuned BERTs {report['separate_models_total']:>12,d}  "
                 f"({report['separate_multiplier']:.2f}x one BERT; this model is "
                 f"{report['fewer_than_separate']:.2f}x smaller)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Evaluation table, model selection, early stopping
# ----------------------------------------------------------------------------------------------

def format_eval_table(epoch, results, main_scores, average, average_label="GLUE avg"):
    """results: {eval set: {metric: value}}; main_scores: {eval set: value}. Scores are shown as 0-100."""
    width = max(8, *(len(t) for t in results))
    lines = [f"Dev results after epoch {epoch}:",
             f"{'task':<{width}} | {'metrics':<52} | main"]
    for task, metrics in results.items():
        shown = ", ".join(f"{k} {_pct(v)}" for k, v in metrics.items() if k != "loss" and training.is_number(v))
        lines.append(f"{task:<{width}} | {shown:<52} | {_pct(main_scores[task])}")
    lines.append(f"{average_label:<{width}} | {'':<52} | {_pct(average)}")
    return "\n".join(lines)


def _pct(v):
    v = float(v)
    return "  nan" if math.isnan(v) else f"{100 * v:5.2f}"


def recover_output_dirs(output_dir):
    """On --resume: finish any per_task_best/<task>/ swap a kill interrupted (best/ is the engine's)."""
    per_task = os.path.join(output_dir, "per_task_best")
    if os.path.isdir(per_task):
        for name in {n[:-4] if n.endswith(".old") else n for n in os.listdir(per_task)}:
            file_utils.recover_dir(os.path.join(per_task, name))


def _write_safetensors(path, state):
    """safetensors' save_file, through atomic_open: on a full disk save_file raises a SafetensorError
    that names no file; this is an OSError naming `path`. The tensors are one task's (MBs)."""
    with file_utils.atomic_open(path, "wb") as f:
        f.write(safetensors_bytes(state))


def save_task_parameters(model, task_id, task_name, directory, info):
    """Save ONLY task `task_id`'s parameters (its modules + head) and `info` (epoch, score)."""
    names = task_parameter_names(model, task_id)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items() if k in names}

    def write(tmp):
        _write_safetensors(os.path.join(tmp, "task_parameters.safetensors"), state)
        atomic_write_json(os.path.join(tmp, "task_info.json"), dict(
            info, task=task_name, task_id=task_id, num_parameters=sum(v.numel() for v in state.values())))
    file_utils.replace_dir_atomically(directory, write)


def task_parameter_names(model, task_id):
    """State-dict names of the parameters that belong to task `task_id` only."""
    ids = {id(p) for p in model.task_parameters(task_id)}
    return {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in ids}


def freeze_all_but(model, task_ids):
    """Leave only the modules and heads of `task_ids` trainable (--add_tasks): the shared encoder
    (LayerNorms included) and every other task's parameters get requires_grad False, so the
    optimizer never sees them and the other tasks' outputs cannot change. Returns the number of
    trainable parameters."""
    keep = {id(p) for t in task_ids for p in model.task_parameters(t)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return _count_unique(p for p in model.parameters() if p.requires_grad)


def assemble_per_task_best(model, per_task_dir, task_names):
    """Load each task's own-best parameters from per_task_dir/<task>/ into `model` (in place).

    `model` should hold the selected joint model (output_dir/best/); returns {task: epoch}.
    """
    epochs = {}
    own = model.state_dict()
    for task_id, task in enumerate(task_names):
        folder = os.path.join(per_task_dir, task)
        path = os.path.join(folder, "task_parameters.safetensors")
        if not os.path.exists(path):
            raise ConfigError(f"no per-task best parameters for '{task}' in {folder}")
        with open(os.path.join(folder, "task_info.json"), encoding="utf-8") as f:
            info = json.load(f)
        if int(info["task_id"]) != task_id:
            raise ConfigError(f"{folder}: saved for task id {info['task_id']}, expected {task_id}")
        state = load_file(path)
        for name, value in state.items():
            if name not in own or own[name].shape != value.shape:
                raise ConfigError(f"{path}: parameter {name} does not fit the model")
            own[name].copy_(value)
        epochs[task] = int(info["epoch"])
    return epochs


# ----------------------------------------------------------------------------------------------
# One task's modules and head as a file (scripts/export_adapter.py, scripts/import_adapter.py)
# ----------------------------------------------------------------------------------------------

ADAPTER_WEIGHTS = "adapter.safetensors"  # the task's tensors under portable names (no task index)
ADAPTER_INFO = "adapter.json"            # task, head, labels, adapter config, the base model's identity
ADAPTER_FORMAT = 1


def encoder_fingerprint(model):
    """sha256 over the shared parameters (embeddings, encoder layers with their LayerNorms, pooler):
    name, dtype, shape and bytes of each, in name order. Equal fingerprints = the same base model
    for every task's modules, whatever file or layout it was loaded from."""
    digest = hashlib.sha256()
    for name, p in sorted(getattr(model, "module", model).named_shared_parameters()):
        tensor = p.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _adapter_keys(config):
    """The config keys that decide which task modules exist and their shapes (not num_tasks)."""
    return {k: getattr(config, k) for k in modeling.ADAPTER_KEYS if k != "num_tasks"}


def export_task_adapter(model_dir, task, out_dir, labels=None):
    """Write task `task` of the fine-tuned multi-task model in `model_dir` (its modules + head) as
    out_dir/adapter.safetensors + adapter.json (`labels`: the head's label strings, kept there).
    Returns the info dict (with parameter counts)."""
    model = modeling.BertForMultiTask.from_pretrained(model_dir)
    names = list(model.config.task_names or [])
    if task not in names:
        raise ConfigError(f"{model_dir}: no task '{task}' (its tasks: {', '.join(names) or 'none'})")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"{out_dir} exists and is not empty; export into a new folder")
    task_id = names.index(task)
    own = model.state_dict()
    state = {portable: own[name].detach().to("cpu").contiguous().clone()
             for portable, name in modeling.task_parameter_pairs(model, task_id)}
    info = {"format": ADAPTER_FORMAT, "task": task, "head_type": model.task_types[task_id],
            "num_labels": model.task_num_labels[task_id], "labels": labels,
            "adapter_config": _adapter_keys(model.config),
            "base_model": {"encoder_sha256": encoder_fingerprint(model), "source": os.path.abspath(model_dir),
                           **{k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers",
                                                                    "vocab_size")}},
            "num_parameters": sum(v.numel() for v in state.values()),
            "base_parameters": sum(p.numel() for p in model.shared_parameters())}

    def write(tmp):
        _write_safetensors(os.path.join(tmp, ADAPTER_WEIGHTS), state)
        atomic_write_json(os.path.join(tmp, ADAPTER_INFO), info)
    file_utils.replace_dir_atomically(out_dir, write)
    return info


def _check_adapter_info(info):
    """Why the adapter.json object `info` is not one export_task_adapter writes, or None."""
    if not isinstance(info, dict) or info.get("format") != ADAPTER_FORMAT:
        return f"format {info.get('format') if isinstance(info, dict) else None!r}, expected {ADAPTER_FORMAT}"
    for key in ("task", "head_type", "num_labels", "adapter_config", "base_model"):
        if key not in info:
            return f"no '{key}'"

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    base, config, labels = info["base_model"], info["adapter_config"], info.get("labels")
    checks = [
        ("task", isinstance(info["task"], str) and info["task"].strip() != "", "a task name"),
        ("head_type", info["head_type"] in modeling.HEAD_TYPES, f"one of {', '.join(modeling.HEAD_TYPES)}"),
        ("num_labels", is_int(info["num_labels"]), "an integer >= 0"),
        ("num_parameters", is_int(info.get("num_parameters", 0)), "an integer >= 0"),
        ("labels", labels is None or (isinstance(labels, list) and all(isinstance(x, str) for x in labels)),
         "a list of label strings or null"),
        ("adapter_config", isinstance(config, dict) and set(config) <= set(modeling.ADAPTER_KEYS) - {"num_tasks"},
         f"an object of adapter keys ({', '.join(k for k in modeling.ADAPTER_KEYS if k != 'num_tasks')})"),
        ("base_model", isinstance(base, dict) and isinstance(base.get("encoder_sha256"), str),
         'an object with "encoder_sha256"'),
    ]
    for key, ok, expected in checks:
        if not ok:
            return f"'{key}' must be {expected}, got {json.dumps(info.get(key))[:80]}"
    if labels is not None and info["head_type"] == "classification" and len(labels) != info["num_labels"]:
        return f"{len(labels)} 'labels' for a head of 'num_labels' {info['num_labels']}"
    return None


def read_task_adapter(adapter_dir):
    """(info, tensors) of an exported adapter folder; a missing, foreign or malformed file (wrongly
    typed fields, a truncated or non-safetensors weights file) is a ConfigError naming it."""
    path = os.path.join(adapter_dir, ADAPTER_INFO)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        problem = _check_adapter_info(info)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        problem = str(exc)
    if problem:
        raise ConfigError(f"{path}: not an adapter file of export_adapter.py ({problem})")
    weights = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    try:
        tensors = load_file(weights)
    except Exception as exc:  # safetensors raises its own error types (SafetensorError) besides OSError
        raise ConfigError(f"{weights}: not an adapter weights file of export_adapter.py "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if "num_parameters" in info and sum(t.numel() for t in tensors.values()) != info["num_parameters"]:
        raise ConfigError(f"{weights}: holds {sum(t.numel() for t in tensors.values()):,} parameters but {path} "
                          f"says {info['num_parameters']:,} (files of two different exports?)")
    return info, tensors


def import_task_adapter(model_dir, adapter_dir):
    """The model in `model_dir` (a multi-task model, or a plain BERT) with the exported task added as
    its last task -> (model, the adapter's info). Refuses an adapter made on another base model
    (encoder fingerprint), with other adapter settings, or for a task the model already has."""
    info, tensors = read_task_adapter(adapter_dir)
    _, merged, weights_path = modeling.read_pretrained(model_dir)
    names = list(merged.get("task_names") or [])
    task = info["task"]
    if task in names:
        raise ConfigError(f"{model_dir} already has a task '{task}'")
    if names:  # the new task gets the same kind of modules as the model's tasks
        ours = _adapter_keys(modeling.BertConfig.from_dict(merged))
        differ = [f"{k} {v!r} (adapter: {info['adapter_config'].get(k)!r})" for k, v in ours.items()
                  if info["adapter_config"].get(k) != v]
        if differ:
            raise ConfigError(f"{adapter_dir}: made with other task modules than {model_dir} has: {'; '.join(differ)}")
    merged.update(info["adapter_config"])
    merged.update(task_names=names + [task], task_num_labels=list(merged.get("task_num_labels") or []) +
                  [int(info["num_labels"])], task_types=list(merged.get("task_types") or []) + [info["head_type"]],
                  num_tasks=len(names) + 1)
    try:
        config = modeling.BertConfig.from_dict(merged)
    except ConfigError as exc:  # a value of the adapter's adapter_config (its keys were checked on reading)
        raise ConfigError(f"{os.path.join(adapter_dir, ADAPTER_INFO)}: 'adapter_config' does not fit {model_dir}: "
                          f"{exc}") from None
    model = modeling.BertForMultiTask(config)
    quiet = logging.getLogger(modeling.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "newly initialised" note would name the modules filled in below
    try:
        modeling.load_weights(model, weights_path)
    finally:
        quiet.setLevel(level)
    want, have = info["base_model"]["encoder_sha256"], encoder_fingerprint(model)
    if want != have:
        raise ConfigError(f"{adapter_dir}: exported from another base model (encoder sha256 {want[:16]}..., "
                          f"{model_dir} has {have[:16]}...); import it onto the model it came from, or one with the "
                          "same encoder weights")
    pairs = dict(modeling.task_parameter_pairs(model, len(names)))
    if set(pairs) != set(tensors):
        missing, extra = sorted(set(pairs) - set(tensors)), sorted(set(tensors) - set(pairs))
        raise ConfigError(f"{adapter_dir}: its tensors do not fit the task modules of {model_dir} "
                          f"(missing {missing[:3]}, unexpected {extra[:3]})")
    own = model.state_dict()
    with torch.no_grad():
        for portable, name in pairs.items():
            if own[name].shape != tensors[portable].shape:
                raise ConfigError(f"{adapter_dir}: {portable} has shape {tuple(tensors[portable].shape)}, the model "
                                  f"needs {tuple(own[name].shape)}")
            own[name].copy_(tensors[portable])
    return model, info


class ModelSelector:
    """Keeps the epoch with the best average of the tasks' main scores (and each task's own best),
    counts patience.

    State lives in the plain dict `state` (the Trainer's extra_state) so that a resumed run
    continues with the same history, best scores and patience counter. Each history entry holds
    the average under "average" and, when `average_key` names it differently (GLUE-only runs:
    "glue_average", the leaderboard's GLUE score), under that key too.
    """

    def __init__(self, state, task_names, patience=0, average_key="average", initial_best=None):
        self.task_names, self.patience, self.average_key = list(task_names), int(patience), average_key
        # The 2019 code started from best_score = 0: an epoch whose sum is <= 0 (or NaN) was never kept.
        self.initial_best = initial_best
        self.bind(state)

    def bind(self, state):
        """Use `state` (e.g. the Trainer's extra_state after a resume replaced it)."""
        self.state = state
        state.setdefault("history", [])
        state.setdefault("best_average", None)
        state.setdefault("best_epoch", None)
        state.setdefault("task_best", {})  # task -> {"score", "epoch"}
        state.setdefault("bad_epochs", 0)

    def update(self, epoch, results, main_scores, average):
        """Record an epoch; returns (joint_improved, [tasks whose own best improved], stop)."""
        entry = {"epoch": epoch, "results": _plain(results), "main": _plain(main_scores), "average": float(average)}
        entry[self.average_key] = float(average)
        self.state["history"].append(entry)
        best = self.state["best_average"]
        if best is None:
            best = self.initial_best
        improved = not math.isnan(average) and (best is None or average > best)
        if improved:
            self.state["best_average"], self.state["best_epoch"] = float(average), epoch
            self.state["bad_epochs"] = 0
        else:
            self.state["bad_epochs"] += 1
        task_improved = []
        for task, score in main_scores.items():
            prev = self.state["task_best"].get(task)
            if not math.isnan(score) and (prev is None or score > prev["score"]):
                self.state["task_best"][task] = {"score": float(score), "epoch": epoch}
                task_improved.append(task)
        stop = self.patience > 0 and self.state["bad_epochs"] >= self.patience
        return improved, task_improved, stop


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    return obj


def write_results(output_dir, results):
    """results.json (machine-readable, for scripts/collect_results.py) + eval_results.txt."""
    results = _plain(results)
    atomic_write_json(os.path.join(output_dir, "results.json"), results)
    lines = [f"best_epoch = {results.get('best_epoch')}"]
    for key in ("best_glue_average", "best_average"):
        if key in results:
            lines.append(f"{key} = {results[key]}")
    best = next((h for h in results.get("history", []) if h["epoch"] == results.get("best_epoch")), None)
    if best:
        for task, metrics in best["results"].items():
            for key, value in metrics.items():
                lines.append(f"{task}.{key} = {value}")
    params = results.get("parameters") or {}
    for key in ("total", "shared", "multiplier_vs_one_bert"):
        if key in params:
            lines.append(f"parameters.{key} = {params[key]}")
    atomic_write_text(os.path.join(output_dir, "eval_results.txt"), "\n".join(lines) + "\n")


def combination_plan(num_tasks, projection, tasks_per_step, combine_strategy):
    """Resolve --projection/--tasks_per_step/--combine_strategy into (tasks_per_step, strategy, method)."""
    if projection not in PROJECTIONS:
        raise ConfigError(f"unknown --projection '{projection}'")
    given = tasks_per_step
    if tasks_per_step is None:  # all tasks for a projection or for --combine_strategy all (which means it)
        tasks_per_step = num_tasks if projection != "none" or combine_strategy == "all" else 1
    if not 1 <= tasks_per_step <= num_tasks:
        raise ConfigError(f"--tasks_per_step must be between 1 and the number of tasks ({num_tasks}), "
                          f"got {tasks_per_step}")
    if projection != "none" and tasks_per_step < 2:
        raise ConfigError(f"--projection {projection} needs at least 2 tasks per step (--tasks_per_step)")
    if combine_strategy is None:
        combine_strategy = "all" if tasks_per_step == num_tasks else "sampled"
    if combine_strategy not in COMBINE_STRATEGIES:
        raise ConfigError(f"unknown --combine_strategy '{combine_strategy}'")
    if combine_strategy == "all" and tasks_per_step != num_tasks:
        raise ConfigError(f"--combine_strategy all trains every task at every step, but --tasks_per_step {given} "
                          f"is not the number of tasks ({num_tasks}): leave --tasks_per_step out or give "
                          f"{num_tasks}")
    method = {"none": "sum", "pcgrad": "pcgrad", "vaccine": "vaccine"}[projection]
    return tasks_per_step, combine_strategy, method


# ----------------------------------------------------------------------------------------------
# Evaluation, predictions and the epoch hook, over task objects (tasks.base.Task interface)
# ----------------------------------------------------------------------------------------------

SELECTIONS = ("average", "reference_sum")


def evaluate_tasks(tasks, predict, selection="average", task_ids=None):
    """Dev metrics of every task -> (results {eval set: metrics}, {task: main score},
    {eval set: main score}, selection score).

    `predict(features, task_id)` runs the model; task i of `tasks` is task id i (or `task_ids[i]`,
    when a run trains only some tasks of its model, as --add_tasks does). The selection
    score is the unweighted mean of the tasks' main scores (for GLUE tasks the leaderboard's GLUE
    score: MNLI counts once, as the mean of -m and -mm), or with "reference_sum" the 2019 rule: the
    sum of each task's `selection_score` (GLUE: per-batch metrics, MNLI-m only)."""
    results, task_scores, set_scores, parts = {}, {}, {}, []
    for task_id, task in zip(task_ids or range(len(tasks)), tasks):
        task_results = task.evaluate(lambda features, t=task_id: predict(features, t))
        results.update(task_results)
        task_scores[task.name] = float(task.main_score(task_results))
        parts.append(float(task.selection_score(task_results)))
        for name, metrics in task_results.items():
            set_scores[name] = float(task.main_score({name: metrics}))
    if selection == "reference_sum":
        score = float(sum(parts))
    else:
        score = float(np.mean(list(task_scores.values()))) if task_scores else float("nan")
    return results, task_scores, set_scores, score


def task_labels(tasks):
    """{task: label strings} of the tasks whose head needs them to be read back (e.g. NER tags)."""
    return {t.name: list(t.labels) for t in tasks if t.labels is not None}


def save_with_task_labels(model, directory, tokenizer, tasks, carried_labels=None):
    """training.save_model + task_labels.json (what the heads' outputs mean, for a later run);
    `carried_labels`: {task: labels} of tasks the model holds but this run does not train."""
    training.save_model(model, directory, tokenizer)
    atomic_write_json(os.path.join(directory, TASK_LABELS_FILE), dict(carried_labels or {}, **task_labels(tasks)))


def check_saved_tasks(model, opts, tasks, saved_labels, reference_order, allow_random_heads,
                      flag="--allow_random_heads"):
    """After loading a fine-tuned model for the run's `tasks` by name (--no_train): refuse a task
    whose head or task modules are fresh (unless `allow_random_heads`), naming the tasks the model
    has (`reference_order`: the paper's, for a 2019 checkpoint); put each classification head's rows
    in the task's label order when `saved_labels` ({task: labels}, task_labels.json) has them in
    another (labels matched by name)."""
    _, merged, weights_path = modeling.read_pretrained(opts.model_dir, opts.config)
    saved_names = list(merged.get("task_names") or [])
    fresh = modeling.fresh_task_parts(model, [t.name for t in tasks])
    if fresh and not allow_random_heads:
        has = modeling.saved_task_names(weights_path, saved_names, reference_order)
        hint = " (a Hugging Face head has no task name: give exactly one task with --tasks)" \
            if has and has[0].startswith("(") and len(tasks) > 1 else ""
        raise ConfigError(f"{opts.model_dir}: no trained head or task modules for {', '.join(fresh)} (the model's "
                          f"tasks: {', '.join(has) or 'none'}){hint}; pass {flag} to evaluate fresh, random ones")
    saved = saved_labels if saved_names else {}
    for task_id, task in enumerate(tasks):
        theirs, ours = saved.get(task.name), task.labels
        if theirs is None or ours is None or task.head_type != "classification" or task.name in fresh:
            continue
        theirs = [str(x) for x in theirs]
        if sorted(theirs) != sorted(ours):
            raise ConfigError(f"{opts.model_dir}: task {task.name}'s labels were {', '.join(theirs)} "
                              f"({TASK_LABELS_FILE}), not {', '.join(ours)}")
        if theirs != list(ours):
            head = model.heads[task_id].classifier
            order = [theirs.index(label) for label in ours]
            with torch.no_grad():
                head.weight.copy_(head.weight[order].clone())
                head.bias.copy_(head.bias[order].clone())


def predict_tasks(tasks, predict, out_dir, env, task_ids=None):
    """Official prediction files of every task into out_dir (each family's format; in a subfolder
    named after the task unless the task's files are made to sit together, as GLUE's submission
    files). Collective under DDP: every rank calls it; rank 0 writes."""
    written = []
    with training.output_dir_of_rank(env, out_dir) as folder:
        for task_id, task in zip(task_ids or range(len(tasks)), tasks):
            target = folder if task.flat_predictions else os.path.join(folder, task.name)
            written.extend(task.write_predictions(lambda features, t=task_id: predict(features, t), target))
    return written


def meta_model(name_or_path, config, task_num_labels, task_types, task_names):
    """The BertForMultiTask a run would build, on the meta device (no weights read, no memory): for
    parameter counts in --dry_run."""
    _, merged, _ = modeling.read_pretrained(name_or_path, config)
    for key in modeling.TASK_KEYS:
        merged[key] = None
    merged["num_tasks"] = len(task_num_labels)
    with torch.device("meta"):
        return modeling.BertForMultiTask(modeling.BertConfig.from_dict(merged), task_num_labels, task_types,
                                         task_names)


class TrainLossLog:
    """on_loss hook for Trainer.train: each epoch's mean step loss, overall and per task (over the
    steps that trained that task alone), kept in trainer.extra_state["train_loss"] (so in
    checkpoints) for the history in results.json and its picture. `task_ids`: the stream's task
    ids in task order (the model's ids, which --add_tasks shifts)."""

    def __init__(self, stream, task_ids=None):
        self.stream = stream
        k = stream.sampler.num_tasks
        self.index = {tid: i for i, tid in enumerate(task_ids if task_ids is not None else range(k))}

    def __call__(self, trainer, step, task_ids, loss):
        epoch = (step - 1) // self.stream.steps_per_epoch + 1
        k = self.stream.sampler.num_tasks
        entry = trainer.extra_state.setdefault("train_loss", {}).setdefault(
            str(epoch), {"sum": 0.0, "steps": 0, "task_sum": [0.0] * k, "task_steps": [0] * k})
        entry["sum"] += loss
        entry["steps"] += 1
        if len(task_ids) == 1:
            t = self.index[task_ids[0]]
            entry["task_sum"][t] += loss
            entry["task_steps"][t] += 1

    @staticmethod
    def epoch_means(trainer, epoch, task_names):
        """(mean step loss, {task: mean step loss or None}) of 1-based `epoch`."""
        entry = trainer.extra_state.get("train_loss", {}).get(str(epoch))
        if not entry or not entry["steps"]:
            return None, {}
        per_task = {name: (s / n if n else None) for name, s, n in zip(task_names, entry["task_sum"],
                                                                        entry["task_steps"])}
        return entry["sum"] / entry["steps"], per_task


class EpochEnd:
    """`on_epoch_end` hook for Trainer.train: evaluate every task's dev set(s), print the table, log
    TensorBoard (metrics, the average, target vs realized task frequencies), keep the best model(s),
    early stop. `average_tag` names the average in logs and files: "glue_average" for GLUE-only
    runs (the leaderboard's GLUE score), "average" (mean of the tasks' main scores) otherwise.

    Each history entry also gets the epoch's sampling shares (`sampling`: target and realized per
    task, steps per task) and, with a TrainLossLog, its mean training loss (`train_loss`,
    `task_train_loss`). `task_ids[i]` is the model task id of tasks[i] (default i);
    `carried_labels` are saved into best/ for the model's tasks this run does not train."""

    def __init__(self, tasks, selector, stream, sampler, env, tokenizer, output_dir, per_task_best=False,
                 average_tag="glue_average", average_label="GLUE avg", selection="average", task_ids=None,
                 carried_labels=None, loss_log=None):
        self.tasks, self.selector, self.stream, self.sampler = tasks, selector, stream, sampler
        self.env, self.tokenizer = env, tokenizer
        self.output_dir, self.per_task_best = output_dir, per_task_best
        self.average_tag, self.average_label, self.selection = average_tag, average_label, selection
        self.task_ids = list(task_ids) if task_ids is not None else list(range(len(tasks)))
        self.carried_labels, self.loss_log = carried_labels, loss_log

    def sampling_shares(self, epoch):
        """{"target": {task: p}, "realized": {task: share}, "steps": {task: count}} of 1-based epoch."""
        probs = self.sampler.probabilities(epoch)
        k = self.stream.tasks_per_step
        target = probs if k == 1 else (np.full(len(probs), 1.0 / len(probs)) if self.sampler.mode == "rr"
                                       else inclusion_probabilities(probs, k) / k)
        realized = self.stream.realized_frequencies(epoch)
        counts = self.stream.epoch_counts.get(epoch, [0] * len(self.tasks))
        names = [t.name for t in self.tasks]
        return {"target": dict(zip(names, map(float, target))), "realized": dict(zip(names, map(float, realized))),
                "steps": dict(zip(names, map(int, counts)))}

    def __call__(self, epoch_index, trainer):
        self.selector.bind(trainer.extra_state)
        epoch = epoch_index + 1
        results, task_scores, set_scores, average = evaluate_tasks(self.tasks, trainer.predict, self.selection,
                                                                   self.task_ids)
        improved, task_improved, stop = self.selector.update(epoch, results, task_scores, average)
        entry = self.selector.state["history"][-1]
        entry["sampling"] = self.sampling_shares(epoch)
        if self.loss_log is not None:
            entry["train_loss"], entry["task_train_loss"] = self.loss_log.epoch_means(
                trainer, epoch, [t.name for t in self.tasks])
        if self.env.is_main:
            note = " (new best)" if improved else f" (best: epoch {self.selector.state['best_epoch']})"
            print(format_eval_table(epoch, results, set_scores, average, self.average_label) + note, flush=True)
            for name, metrics in results.items():
                trainer.log_scalars(f"eval/{name}", metrics)
            trainer.log_scalars("eval", {self.average_tag: average})
            freq = {}
            for part in ("target", "realized"):
                for task, value in entry["sampling"][part].items():
                    freq[f"{task}/{part}"] = value
            trainer.log_scalars("sampling", freq)
            out = self.output_dir
            if improved:
                def write_best(tmp):
                    save_with_task_labels(trainer.model, tmp, self.tokenizer, self.tasks, self.carried_labels)
                    atomic_write_json(os.path.join(tmp, "selection.json"), {
                        "epoch": epoch, self.average_tag: average, "step": trainer.global_step})
                file_utils.replace_dir_atomically(os.path.join(out, "best"), write_best)
            if self.per_task_best:
                for task_id, task in zip(self.task_ids, self.tasks):
                    if task.name in task_improved:
                        save_task_parameters(trainer.model, task_id, task.name,
                                             os.path.join(out, "per_task_best", task.name),
                                             {"epoch": epoch, "score": task_scores[task.name]})
        self.env.barrier()
        return stop


def write_per_task_combined(output_dir, tasks, tokenizer=None):
    """best/ (joint model) + each task's own-best modules and head -> per_task_best/combined/."""
    model = modeling.BertForMultiTask.from_pretrained(os.path.join(output_dir, "best"))
    epochs = assemble_per_task_best(model, os.path.join(output_dir, "per_task_best"), [t.name for t in tasks])
    target = os.path.join(output_dir, "per_task_best", "combined")

    def write(tmp):
        save_with_task_labels(model, tmp, tokenizer, tasks)
        atomic_write_json(os.path.join(tmp, "selection.json"), {"task_epochs": epochs, "shared_from": "best"})
    file_utils.replace_dir_atomically(target, write)
    return {"path": os.path.relpath(target, output_dir), "task_epochs": epochs}
