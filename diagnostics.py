"""Gradient-conflict diagnostics of a multi-task run (`run_multi_task.py --diagnose_every N`).

Every N optimizer steps, one batch of every task is drawn from that task's own diagnostic stream,
each task's gradient of its loss with respect to the SHARED parameters (embeddings, encoder
layers, pooler; not adapters or heads) is computed, and for every task pair the cosine similarity
of the two gradients is recorded, over all shared parameters and per layer group (`embeddings`,
`layer.0` ... `layer.L-1`, `pooler`). A pair conflicts when its cosine is negative: a step on one
task's gradient then increases the other task's loss, to first order.

What one diagnosis records is the Gram matrix G[group][i][j] = <g_i, g_j> over each group's
parameters (float64, [groups, K, K]); cosines, norms and conflicts all follow from it, and it
is what the run's checkpoint keeps (trainer.extra_state), so a resumed run writes the same
files. Outputs: TensorBoard (`diagnostics/...`), one CSV per epoch (`diagnostics/epoch_E.csv`),
and at the end the heatmaps of plots.py.

With a gradient combiner (--projection), each diagnosis also records the weights the combiner gave
each task: its running tally (sum and count of each task's weights, multitask.WeightTally, in the
combiner's checkpointed state) at that step, so the mean weight over the steps since the previous
diagnosis follows exactly (`interval_weights`), with no extra work in the step. Outputs:
`diagnostics/task_weight/<task>` in TensorBoard, `diagnostics/weights_E.csv` per epoch and the
weights panel of the cosine picture.

Cost: K forward and backward passes per diagnosis (K tasks), i.e. K/N extra passes per training
step on average, plus K gradient copies of the shared parameters in memory while it runs.

The training run is not disturbed (a run with diagnostics trains bit-identically to one without):
the passes run in eval mode (no dropout, so no random number is drawn), in fp32 whatever the
run's precision (fp16 gradients without a loss scale can underflow to zero), with
torch.autograd.grad (no .grad is written), on data streams of their own (the training streams'
positions do not move). Under DDP every rank takes its share of the batch and the gradients are
all-reduced (example-weighted) before any cosine, so all ranks see the global batch's gradient.
"""
import csv
import logging
import math
import os
import re
import time

import numpy as np
import torch
import torch.distributed as dist

import training
from file_utils import ConfigError, atomic_open

logger = logging.getLogger(__name__)

OUTPUT_DIR = "diagnostics"  # <output_dir>/diagnostics: epoch_E.csv and the heatmaps
ALL = "all"                 # the group of every shared parameter
CSV_COLUMNS = ("step", "group", "task_a", "task_b", "cos", "conflict", "dot", "norm_a", "norm_b")
WEIGHT_COLUMNS = ("step", "method", "task", "weight", "steps")
_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
_CHUNK = 1 << 20  # elements per float64 block of the Gram product (bounds the temporary memory)


def group_of(name):
    """Layer group of a shared parameter name: embeddings, layer.N or pooler (else 'other')."""
    match = _LAYER.search(name)
    if match:
        return f"layer.{match.group(1)}"
    if ".embeddings." in f".{name}":
        return "embeddings"
    if ".pooler." in f".{name}":
        return "pooler"
    return "other"


def parameter_groups(names):
    """Group names in model order, with ALL first, and each parameter's group index."""
    groups, index = [ALL], []
    for name in names:
        group = group_of(name)
        if group not in groups:
            groups.append(group)
        index.append(groups.index(group))
    return groups, index


def parse_pairs(spec, task_names, flag="--diagnose_pairs"):
    """'rte:mrpc,cola:sst-2' -> [('rte', 'mrpc'), ...] (tasks of this run, each pair once)."""
    pairs = []
    for item in str(spec or "").split(","):
        item = item.strip().lower()
        if not item:
            continue
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{flag} item '{item}' is not TASK:TASK")
        for part in parts:
            if part not in task_names:
                raise ConfigError(f"{flag} names '{part}', which is not a task of this run "
                                  f"({', '.join(task_names)})")
        if parts[0] == parts[1]:
            raise ConfigError(f"{flag} item '{item}' pairs a task with itself")
        pair = tuple(sorted(parts, key=task_names.index))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


# ----------------------------------------------------------------------------------------------
# The math: per-task gradients of the shared parameters -> Gram matrices per group -> cosines
# ----------------------------------------------------------------------------------------------

def task_gradient(model, task_id, micro_batches, params, env=None):
    """Flat fp32 gradient of the task's mean loss over `micro_batches` w.r.t. `params` ([sum numel]).

    Each micro-batch's mean loss is weighted by its share of the batch (its examples, or labelled
    tokens for token classification), summed over DDP ranks, so the result is the gradient of the
    whole (global) batch's mean loss. A parameter the task does not reach has gradient 0."""
    device = params[0].device
    flat = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=device)
    total = 0.0
    for batch in micro_batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        weight = training.loss_count(model, task_id, batch)
        total += weight
        loss = model(**batch, task_id=task_id)["loss"].float() * weight
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        offset = 0
        for p, g in zip(params, grads):
            if g is not None:
                flat[offset:offset + p.numel()] += g.reshape(-1).float()
            offset += p.numel()
    if env is not None and env.distributed:
        count = torch.tensor([total], dtype=torch.float64, device=device)
        dist.all_reduce(flat)
        dist.all_reduce(count)
        total = float(count)
    return flat / max(total, 1e-12)


def gram_matrices(flats, group_index, sizes, num_groups):
    """[num_groups, K, K] float64: <g_i, g_j> over each group's parameters (group 0 = ALL).

    flats: [K, P] task gradients; parameter k occupies `sizes[k]` consecutive entries and belongs
    to group `group_index[k]`. Products in float64, in blocks of _CHUNK elements."""
    k = flats.shape[0]
    gram = torch.zeros(num_groups, k, k, dtype=torch.float64)
    offset = 0
    for g, n in zip(group_index, sizes):
        for start in range(offset, offset + n, _CHUNK):
            block = flats[:, start:min(start + _CHUNK, offset + n)].double()
            gram[g] += (block @ block.T).cpu()
        offset += n
    gram[0] = gram[1:].sum(0) if num_groups > 1 else gram[0]
    return gram


def cosines(gram):
    """Cosine matrices from Gram matrices ([..., K, K]); NaN where a gradient is zero."""
    gram = torch.as_tensor(gram, dtype=torch.float64)
    norms = torch.diagonal(gram, dim1=-2, dim2=-1).clamp(min=0).sqrt()
    denom = norms.unsqueeze(-1) * norms.unsqueeze(-2)
    cos = gram / denom
    cos[denom == 0] = float("nan")
    return cos.clamp(-1.0, 1.0)


def shared_named_parameters(model):
    """(names, params) of the trainable shared parameters, in model order."""
    model = getattr(model, "module", model)
    named = [(n, p) for n, p in model.named_shared_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def diagnose(model, task_batches, env=None):
    """One diagnosis: {task_id: micro-batches} -> (groups, Gram matrices [G, K, K]) in the order of
    task_batches. Runs in eval mode, fp32; restores the model's mode; touches no .grad."""
    names, params = shared_named_parameters(model)
    if not params:
        raise ConfigError("gradient diagnostics need trainable shared parameters (not with --freeze / --add_tasks)")
    groups, index = parameter_groups(names)
    was_training = model.training
    model.eval()
    try:
        flats = torch.stack([task_gradient(model, task_id, batches, params, env)
                             for task_id, batches in task_batches.items()])
    finally:
        model.train(was_training)
    return groups, gram_matrices(flats, index, [p.numel() for p in params], len(groups))


# ----------------------------------------------------------------------------------------------
# The hook in the training loop, its files and its summary
# ----------------------------------------------------------------------------------------------

class GradientDiagnostics:
    """on_step hook for training.Trainer.train: a diagnosis every `every` optimizer steps.

    `streams[i]` is task i's diagnostic EpochStream (its own seed; the training streams are not
    touched) and `task_ids[i]` its model task id. State (steps, Gram matrices, stream positions,
    seconds spent) lives in trainer.extra_state["diagnostics"] and so in checkpoints."""

    def __init__(self, every, task_names, streams, env, output_dir, steps_per_epoch, task_ids=None):
        if every < 1:
            raise ConfigError(f"--diagnose_every must be >= 1, got {every}")
        self.every, self.task_names, self.streams = int(every), list(task_names), list(streams)
        self.task_ids = list(task_ids) if task_ids is not None else list(range(len(task_names)))
        self.env, self.output_dir, self.steps_per_epoch = env, output_dir, int(steps_per_epoch)
        self._loaded = False
        self.groups = None

    def _state(self, trainer):
        state = trainer.extra_state.setdefault("diagnostics", {"steps": [], "grams": [], "seconds": 0.0,
                                                               "streams": None, "groups": None})
        if not self._loaded:  # a resumed run: the diagnostic streams continue where they were
            if state["streams"] is not None:
                for stream, s in zip(self.streams, state["streams"]):
                    stream.load_state_dict(s)
            self._loaded = True
        return state

    def __call__(self, trainer, loss=None):
        step = trainer.global_step
        if step % self.every == 0:
            self.run(trainer)
        if step % self.steps_per_epoch == 0 and self.env.is_main:
            self.write_epoch_csv(trainer, step // self.steps_per_epoch)

    def run(self, trainer):
        state = self._state(trainer)
        start = time.perf_counter()
        batches = {tid: stream.next_step() for tid, stream in zip(self.task_ids, self.streams)}
        batches = {tid: [b for _, b in micro] for tid, micro in batches.items()}
        groups, gram = diagnose(trainer.model, batches, self.env)
        state["seconds"] += time.perf_counter() - start
        state["groups"] = groups
        state["steps"].append(trainer.global_step)
        state["grams"].append(gram)
        state["streams"] = [s.state_dict() for s in self.streams]
        self._record_weights(state, trainer.grad_combiner)
        if self.env.is_main:
            cos = cosines(gram)
            norms = torch.diagonal(gram[0]).clamp(min=0).sqrt()
            values = {f"grad_norm/{t}": float(n) for t, n in zip(self.task_names, norms)}
            if state["weights"][-1] is not None:
                mean, _ = interval_weights(state["weights"][-2:], self.task_names)  # the last interval only
                values.update({f"task_weight/{t}": float(w) for t, w in zip(self.task_names, mean[-1])
                               if not math.isnan(w)})
            for a, b in _pairs(len(self.task_names)):
                values[f"cos/{self.task_names[a]}~{self.task_names[b]}"] = float(cos[0, a, b])
            for g, group in enumerate(groups):
                shares = [float(cos[g, a, b] < 0) for a, b in _pairs(len(self.task_names))
                          if not math.isnan(float(cos[g, a, b]))]
                if shares:
                    values[f"conflict_share/{group}"] = sum(shares) / len(shares)
            trainer.log_scalars("diagnostics", values)

    @staticmethod
    def _record_weights(state, combiner):
        """The combiner's running weight tally at this diagnosis ({task: [sum, count]}; None without a
        combiner), aligned with state["steps"] (a checkpoint from before the tally gets None entries)."""
        weights = state.setdefault("weights", [])
        weights.extend([None] * (len(state["steps"]) - 1 - len(weights)))
        weights.append(combiner.weight_totals() if hasattr(combiner, "weight_totals") else None)
        if combiner is not None:
            state["method"] = getattr(combiner, "method", type(combiner).__name__)

    def epoch_rows(self, trainer, epoch):
        state = self._state(trainer)
        low, high = (epoch - 1) * self.steps_per_epoch, epoch * self.steps_per_epoch
        rows = []
        for step, gram in zip(state["steps"], state["grams"]):
            if low < step <= high:
                rows.extend(csv_rows(step, state["groups"], self.task_names, gram))
        return rows

    def epoch_weight_rows(self, trainer, epoch):
        """Rows of weights_E.csv: per diagnosis of the epoch and task, the mean weight the combiner gave
        the task over the steps since the previous diagnosis, and how many steps gave it one."""
        state = self._state(trainer)
        if not any(w is not None for w in state.get("weights", [])):
            return []
        mean, count = interval_weights(state["weights"], self.task_names)
        low, high = (epoch - 1) * self.steps_per_epoch, epoch * self.steps_per_epoch
        return [{"step": step, "method": state.get("method"), "task": task, "weight": float(mean[d, k]),
                 "steps": int(count[d, k])}
                for d, step in enumerate(state["steps"][:len(mean)]) if low < step <= high
                for k, task in enumerate(self.task_names)]

    def write_epoch_csv(self, trainer, epoch):
        rows = self.epoch_rows(trainer, epoch)
        if not rows:
            return None
        path = os.path.join(self.output_dir, OUTPUT_DIR, f"epoch_{epoch}.csv")
        write_csv(path, rows)
        weight_rows = self.epoch_weight_rows(trainer, epoch)
        if weight_rows:
            write_csv(os.path.join(self.output_dir, OUTPUT_DIR, f"weights_{epoch}.csv"), weight_rows, WEIGHT_COLUMNS)
        return path

    def finish(self, trainer):
        """Write the CSV of a last, incomplete epoch; return the run's summary (rank 0 writes)."""
        state = self._state(trainer)
        step = trainer.global_step
        if step % self.steps_per_epoch and self.env.is_main:
            self.write_epoch_csv(trainer, step // self.steps_per_epoch + 1)
        return summary(self.task_names, state["steps"], state["grams"], every=self.every,
                       seconds=state["seconds"])


def _pairs(k):
    return [(a, b) for a in range(k) for b in range(a + 1, k)]


def csv_rows(step, groups, task_names, gram):
    """Rows of one diagnosis: every group (ALL first) x every task pair."""
    cos = cosines(gram)
    rows = []
    for g, group in enumerate(groups):
        norms = torch.diagonal(gram[g]).clamp(min=0).sqrt()
        for a, b in _pairs(len(task_names)):
            c = float(cos[g, a, b])
            rows.append({"step": step, "group": group, "task_a": task_names[a], "task_b": task_names[b],
                         "cos": c, "conflict": int(c < 0), "dot": float(gram[g, a, b]),
                         "norm_a": float(norms[a]), "norm_b": float(norms[b])})
    return rows


def interval_weights(tallies, task_names):
    """Running tallies ({task: [sum, count]} per diagnosis, None where unknown) -> (mean [D, K], steps
    [D, K]): each task's mean weight over the steps between the previous diagnosis and this one, and
    the number of those steps that weighted it (NaN mean where none did, or the tally is unknown)."""
    mean = np.full((len(tallies), len(task_names)), np.nan)
    count = np.zeros((len(tallies), len(task_names)), dtype=int)
    previous = {}
    for d, tally in enumerate(tallies):
        if tally is None:
            previous = None
            continue
        for k, task in enumerate(task_names):
            total, n = tally.get(task, (0.0, 0))
            if previous is not None:
                before, n_before = previous.get(task, (0.0, 0))
                count[d, k] = n - n_before
                if n > n_before:
                    mean[d, k] = (total - before) / (n - n_before)
        previous = tally
    return mean, count


def write_csv(path, rows, columns=CSV_COLUMNS):
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})


def _read_rows(folder, prefix):
    files = sorted((f for f in os.listdir(folder) if re.fullmatch(prefix + r"_\d+\.csv", f)),
                   key=lambda f: int(f[len(prefix) + 1:-4]))
    rows = []
    for name in files:
        with open(os.path.join(folder, name), encoding="utf-8", newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


def read_weights(folder):
    """{"method", "tasks", "steps", "weight" (numpy [D, K], NaN: no step weighted the task)} from the
    weights_E.csv files, or None (a run without a combiner)."""
    rows = _read_rows(folder, "weights")
    if not rows:
        return None
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    steps = list(dict.fromkeys(int(r["step"]) for r in rows))
    weight = np.full((len(steps), len(tasks)), np.nan)
    for r in rows:
        weight[steps.index(int(r["step"])), tasks.index(r["task"])] = float(r["weight"])
    return {"method": rows[0]["method"], "tasks": tasks, "steps": steps, "weight": weight}


def read_csvs(run_dir):
    """The diagnostics of a run folder, from its epoch CSVs -> {"tasks", "groups", "steps",
    "cos" (numpy [D, G, K, K], NaN on the diagonal), "weights" (read_weights)}, or None when the run
    has none."""
    folder = os.path.join(run_dir, OUTPUT_DIR)
    if not os.path.isdir(folder):
        return None
    rows = _read_rows(folder, "epoch")
    if not rows:
        return None
    tasks, groups, steps = [], [], []
    for row in rows:
        for key, seen in (("task_a", tasks), ("task_b", tasks), ("group", groups)):
            if row[key] not in seen:
                seen.append(row[key])
        if int(row["step"]) not in steps:
            steps.append(int(row["step"]))
    cos = np.full((len(steps), len(groups), len(tasks), len(tasks)), np.nan)
    for row in rows:
        d, g = steps.index(int(row["step"])), groups.index(row["group"])
        a, b = tasks.index(row["task_a"]), tasks.index(row["task_b"])
        cos[d, g, a, b] = cos[d, g, b, a] = float(row["cos"])
    return {"tasks": tasks, "groups": groups, "steps": steps, "cos": cos, "weights": read_weights(folder)}


def summary(task_names, steps, grams, every=None, seconds=None):
    """Mean cosine and conflict share (share of diagnoses with cos < 0) per pair, over all shared
    parameters; the pairs ordered from the most conflicting (lowest mean cosine)."""
    out = {"every": every, "count": len(steps), "seconds": seconds, "pairs": []}
    if not steps:
        return out
    cos = cosines(torch.stack([torch.as_tensor(g) for g in grams]))[:, 0].numpy()  # [D, K, K]
    for a, b in _pairs(len(task_names)):
        values = cos[:, a, b][~np.isnan(cos[:, a, b])]
        if len(values):
            out["pairs"].append({"pair": f"{task_names[a]}~{task_names[b]}", "mean_cos": float(values.mean()),
                                 "conflict_share": float((values < 0).mean())})
    out["pairs"].sort(key=lambda p: p["mean_cos"])
    return out
