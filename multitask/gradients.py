"""How several tasks' gradients of one step combine: `--projection`/`--tasks_per_step`/
`--combine_strategy` resolved (`combination_plan`), and the gradient-surgery combiners for
`training.Trainer(grad_combiner=...)`: PCGrad (Yu et al. 2020) and Gradient Vaccine (Wang et al. 2021)."""
import math

import numpy as np
import torch

import training
from file_utils import ConfigError

PROJECTIONS = ("none", "pcgrad", "vaccine")  # ours; the library's (jd-*) are library.library_methods()
COMBINE_STRATEGIES = ("all", "sampled")


def combination_plan(num_tasks, projection, tasks_per_step, combine_strategy):
    """Resolve --projection/--tasks_per_step/--combine_strategy into (tasks_per_step, strategy, method)."""
    from . import library  # imports this module (WeightTally)
    if projection not in PROJECTIONS and not library.is_library(projection):
        raise ConfigError(f"unknown --projection '{projection}' (ours: {', '.join(PROJECTIONS)}; the library's: "
                          f"{', '.join(library.library_methods()) or 'pip install torchjd'})")
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
    if projection in library.NEEDS_ALL_TASKS and combine_strategy != "all":
        raise ConfigError(f"--projection {projection} {library.NEEDS_ALL_TASKS[projection]}, so every step "
                          "must train every task: --combine_strategy all")
    method = {"none": "sum", "pcgrad": "pcgrad", "vaccine": "vaccine"}.get(projection, projection)
    return tasks_per_step, combine_strategy, method


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
    def project(c, gram, i, j):
        dot = c @ gram[:, j]
        if dot < 0 and gram[j, j] > 0:
            c[j] -= dot / gram[j, j]
    return _sum_of_adjusted(gram, orders, project)


def gradvac_weights(gram, phi_hat, beta, orders=None):
    """Gradient Vaccine (Wang et al. 2021) on the Gram matrix for one step: w with
    sum_i g_i' = sum_k w_k g_k; updates the EMA `phi_hat` (K x K) in place.

    For each g_i' (running copy) and each other j in `orders[i]`: phi = cos(g_i', g_j); if
    phi < phi_hat[i, j], g_i' <- g_i' + g_j |g_i'| (phi_hat sqrt(1-phi^2) - phi sqrt(1-phi_hat^2))
    / (|g_j| sqrt(1-phi_hat^2)), which sets cos(g_i', g_j) to phi_hat; then
    phi_hat[i, j] <- (1-beta) phi_hat[i, j] + beta phi. `phi_hat` is indexed by the positions in
    `gram` (callers map global task ids)."""
    def vaccinate(c, gram, i, j):
        norm_i = math.sqrt(max(0.0, c @ gram @ c))
        norm_j = math.sqrt(max(0.0, gram[j, j]))
        if norm_i == 0 or norm_j == 0:
            return
        phi = min(1.0, max(-1.0, (c @ gram[:, j]) / (norm_i * norm_j)))
        target = float(phi_hat[i][j])
        if phi < target:
            c[j] += (norm_i * (target * math.sqrt(max(0.0, 1 - phi * phi))
                               - phi * math.sqrt(max(0.0, 1 - target * target)))
                     / (norm_j * math.sqrt(max(1e-12, 1 - target * target))))
        phi_hat[i][j] = (1 - beta) * target + beta * phi
    return _sum_of_adjusted(gram, orders, vaccinate)


def _sum_of_adjusted(gram, orders, adjust):
    """sum_i of g_i' as coefficients of the task gradients: each g_i' starts as g_i (c = e_i) and
    `adjust(c, gram, i, j)` moves it against each other task j in `orders[i]` in turn (PCGrad, Vaccine)."""
    gram = np.asarray(gram, dtype=np.float64)
    k = len(gram)
    orders = orders if orders is not None else _other_orders(k, None)
    total = np.zeros(k)
    for i in range(k):
        c = np.zeros(k)
        c[i] = 1.0
        for j in orders[i]:
            adjust(c, gram, i, j)
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


class WeightTally:
    """Sum and count of the weight each task got from a combiner, keyed by task name (a mixin; in the
    combiner's state, so a resumed run reports the same means): `mean_weights()` goes to results.json."""

    def _tally(self, names, weights):
        tally = self.__dict__.setdefault("weight_tally", {})
        for name, w in zip(names, weights):
            entry = tally.setdefault(name, [0.0, 0])
            entry[0] += float(w)
            entry[1] += 1

    def weight_totals(self):
        """{task: [sum of its weights, number of steps that weighted it]} so far (a copy)."""
        return {name: [float(s), int(n)] for name, (s, n) in self.__dict__.get("weight_tally", {}).items()}

    def mean_weights(self):
        """{task: mean weight over the steps that trained it with others}."""
        return {name: s / n for name, (s, n) in sorted(self.__dict__.get("weight_tally", {}).items()) if n}

    def _tally_state(self):
        return {name: list(v) for name, v in self.__dict__.get("weight_tally", {}).items()}

    def _load_tally(self, state):
        self.weight_tally = {name: [float(s), int(n)] for name, (s, n) in state.get("weight_tally", {}).items()}


class GradientCombiner(WeightTally):
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

    def __init__(self, method, num_tasks, seed=0, beta=0.01, names=None):
        if method not in ("sum", "pcgrad", "vaccine"):
            raise ConfigError(f"unknown gradient combination '{method}'")
        self.method, self.num_tasks, self.beta = method, int(num_tasks), float(beta)
        self.names = list(names) if names is not None else [str(i) for i in range(self.num_tasks)]
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
        ids = list(task_ids) if task_ids is not None else list(range(k))
        if self.method == "pcgrad":
            result = pcgrad_weights(gram, orders)
            self._tally([self.names[i] for i in ids], result)
            return result
        local = self.phi_hat[np.ix_(ids, ids)].copy()
        result = gradvac_weights(gram, local, self.beta, orders)
        for a, ta in enumerate(ids):
            for b, tb in enumerate(ids):
                if a != b:
                    self.phi_hat[ta, tb] = local[a][b]
        self._tally([self.names[i] for i in ids], result)
        return result

    def __call__(self, grads, task_ids=None):
        grads = list(grads)
        if task_ids is None and self.stream is not None and len(self.stream.last_tasks) == len(grads):
            task_ids = self.stream.last_tasks
        rows = _rows(grads)
        return _combine(rows, self.weights(training.gram_matrix(rows).cpu().numpy(), task_ids))

    def state_dict(self):
        return {"method": self.method, "rng": self.rng.bit_generator.state, "phi_hat": self.phi_hat.tolist(),
                "calls": self.calls, "beta": self.beta, "weight_tally": self._tally_state()}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.phi_hat = np.asarray(state["phi_hat"], dtype=np.float64)
        self.calls = int(state["calls"])
        self._load_tally(state)  # absent in checkpoints before the tally: starts empty
