"""Sampling schedules (Stickland & Murray 2019, section 4): p_i proportional to N_i^alpha with the real
training-set sizes N_i; `prop` (alpha 1), `sqrt` (alpha 0.5), `anneal` (alpha = 1 - 0.8 (e-1)/(E-1)
for 1-based epoch e of E) and a round-robin `rr` that, unlike the reference, really cycles.
`TaskSampler` is a seeded numpy Generator whose state is checkpointed (exact resume, identical task
sequence on every DDP rank); the schedule report gives expected steps and passes per task."""
import numpy as np

from file_utils import ConfigError

SAMPLING_MODES = ("prop", "sqrt", "anneal", "rr")


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
