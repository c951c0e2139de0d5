"""TorchJD's Gram-matrix weightings as `--projection jd-<name>` (docs/multitask.md#library-methods).

The list is read from the installed torchjd (every `GramianWeightedAggregator` but Krum, a
Byzantine-robust rule, not a multi-task one), so a library upgrade adds its methods here; a test
checks that each method's parameters have a flag with the library's default. The library only sees
the K x K Gram matrix the Trainer already builds (no per-task gradient copy), unscaled (FairGrad,
CAGrad and the eps terms are not scale-invariant), with the tasks in --tasks order (PCD's first row
is its primary task). Three of its behaviours would break our guarantees, so LibraryCombiner wraps
them: PCGrad/GradVac draw from torch's global RNG (here: our own seeded RNG state, the same on every
DDP rank, checkpointed, the global RNG left untouched); GradVac keys its EMA by position and resets
it when the number of tasks changes (here: kept per task pair and handed in per step); GradVac's and
PCD's state does not round-trip through `state_dict` (here: saved by task name in the stream's
checkpoint).

Two methods the library defines on the per-task gradient matrix J [K, shared] itself, Nash-MTL and
ConFIG, depend on J only through its Gram matrix: they are run here on a K x K factor R of it (R R^T
= J J^T), which is J written in an orthonormal basis of its row space, and their result is mapped back
to weights of J's rows (FACTOR_METHODS). Handing them J would cost a gradient-sized vector (Nash-MTL)
or several [K, shared] copies (ConFIG) per step (docs/multitask.md#nash-mtl-and-config)."""
import dataclasses
import inspect
import warnings

import numpy as np
import torch

from file_utils import ConfigError
from flags import flag

from .gradients import WeightTally

PREFIX = "jd-"
LEFT_OUT = {"Krum": "Byzantine-robust aggregation, not a multi-task method"}
# Constructor parameters not offered as flags: a tensor or an object, not a number; or the run's number of tasks.
NOT_FLAGGED = ("pref_vector", "projector", "n_tasks")
# Run on a K x K factor of the Gram matrix (module docstring): --projection name -> the library's class.
FACTOR_METHODS = {"jd-nashmtl": "NashMTL", "jd-config": "ConFIG"}
# Methods that need every task at every step, and why.
NEEDS_ALL_TASKS = {"jd-pcd": "treats the first task as the primary one",
                   "jd-nashmtl": "starts each step's solve from the previous step's weights of the same tasks"}
G = "library projections (--projection jd-*; defaults are TorchJD's)"


@dataclasses.dataclass(frozen=True)
class LibraryFlags:
    """Each library method's hyperparameters: --jd_<method>_<constructor parameter>, the library's default
    (None where the library has none and the flag is required for that method)."""
    jd_mgda_epsilon: float = flag(0.001, "MGDA: Frank-Wolfe stopping tolerance", group=G)
    jd_mgda_max_iters: int = flag(100, "MGDA: Frank-Wolfe iterations", group=G)
    jd_cagrad_c: float = flag(None, "CAGrad: radius scale c of the ball constraint (required: no library default)",
                              group=G, type=float)
    jd_cagrad_norm_eps: float = flag(0.0001, "CAGrad: norm below which the direction is zero", group=G)
    jd_fairgrad_alpha: float = flag(None, "FairGrad: alpha of alpha-fairness (required: no library default)",
                                    group=G, type=float)
    jd_fairgrad_max_iters: int = flag(None, "FairGrad: least-squares evaluations (default: scipy's)", group=G,
                                      type=int)
    jd_gradvac_beta: float = flag(0.5, "GradVac: EMA rate of the cosine targets (our --vaccine_beta: 0.01)",
                                  group=G)
    jd_gradvac_eps: float = flag(1e-08, "GradVac: constant added to its denominators", group=G)
    jd_pcd_tau: float = flag(0.02, "PCD: progress fraction guaranteed to each secondary task", group=G)
    jd_pcd_beta: float = flag(0.999, "PCD: EMA decay of the squared gradient norms", group=G)
    jd_pcd_eps: float = flag(1e-08, "PCD: constant added to the EMA before its inverse square root", group=G)
    jd_alignedmtl_scale_mode: str = flag("min", "Aligned-MTL: eigenvalue that scales the balance transformation",
                                         group=G, choices=("min", "median", "rmse"))
    jd_nashmtl_max_norm: float = flag(1.0, "Nash-MTL: largest norm of the combined gradient (0: no clipping)",
                                      group=G)
    jd_nashmtl_update_weights_every: int = flag(1, "Nash-MTL: steps between two solves (the weights are kept "
                                                   "in between)", group=G)
    jd_nashmtl_optim_niter: int = flag(20, "Nash-MTL: iterations of its sequence of convex problems", group=G)


def _aggregation():
    try:
        import torchjd.aggregation as aggregation
    except ImportError:
        return None
    return aggregation


def library_methods():
    """{--projection name: TorchJD Weighting class} of the installed torchjd ({} without it)."""
    agg = _aggregation()
    if agg is None:
        return {}
    methods = {}
    for name in agg.__all__:
        cls = getattr(agg, name)
        if (inspect.isclass(cls) and issubclass(cls, agg.GramianWeightedAggregator)
                and cls is not agg.GramianWeightedAggregator and name not in LEFT_OUT):
            methods[PREFIX + name.lower()] = getattr(agg, name + "Weighting")
    for method, name in FACTOR_METHODS.items():
        if hasattr(agg, name):
            methods[method] = getattr(agg, name)
    return methods


def is_library(projection):
    return str(projection).startswith(PREFIX)


def parameters(method):
    """{constructor parameter: inspect.Parameter} of a library method's Weighting, the flagged ones."""
    cls = library_methods()[method]
    return {name: p for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and name not in NOT_FLAGGED}


def flag_name(method, parameter):
    return f"jd_{method[len(PREFIX):]}_{parameter}"


def method_flags(projection, options):
    """{flag field: value} of a library method's hyperparameters ({} for ours): part of the run's fingerprint."""
    if not is_library(projection) or projection not in library_methods():
        return {}
    return {flag_name(projection, name): getattr(options, flag_name(projection, name))
            for name in parameters(projection)}


def make_weighting(method, options, num_tasks=None):
    """The library's Weighting for --projection `method`, its parameters from `options` (ConfigError:
    unknown method, a required flag missing, a solver package not installed, a value it refuses); for
    a FACTOR_METHODS one, what runs on the factor (Nash-MTL's matrix weighting, ConFIG's aggregator)."""
    if _aggregation() is None:
        raise ConfigError(f"--projection {method} needs the torchjd package (pip install torchjd==0.18.0, "
                          "see requirements-dev.txt)")
    methods = library_methods()
    if method not in methods:
        raise ConfigError(f"unknown --projection '{method}' (library methods: {', '.join(methods)})")
    kwargs = {}
    for name, param in parameters(method).items():
        value = getattr(options, flag_name(method, name))
        if value is None and param.default is inspect.Parameter.empty:
            raise ConfigError(f"--projection {method} needs --{flag_name(method, name)} (the library has no default)")
        kwargs[name] = value
    if "n_tasks" in inspect.signature(methods[method].__init__).parameters:
        kwargs["n_tasks"] = num_tasks or 2  # None: the runner's early flag check, any count does
    try:
        made = methods[method](**kwargs)
        return made.weighting if method == "jd-nashmtl" else made
    except ImportError as exc:  # the library's own message names the missing packages and the pip extra
        raise ConfigError(f"--projection {method}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--projection {method}: {exc}") from None


class LibraryCombiner(WeightTally):
    """`grad_combiner` for training.Trainer (see GradientCombiner for the protocol) running a TorchJD
    weighting; `unscaled_gram` asks the Trainer for the Gram matrix divided by the fp16 loss scale squared.

    State kept here, not in the library object: `rng` (the torch CPU RNG state the library's
    torch.randperm draws from, seeded by --seed), GradVac's cosine targets per ordered task pair and
    PCD's squared-norm EMA per task, both keyed by task name in `state_dict()`."""

    unscaled_gram = True

    def __init__(self, method, task_names, seed, options):
        self.method, self.names = method, list(task_names)
        self.weighting = make_weighting(method, options, len(self.names))
        self.rng = torch.Generator().manual_seed(int(seed)).get_state()
        n = len(self.names)
        self.phi = np.zeros((n, n))           # GradVac: target cosine of task a's gradient with task b's
        self.sq_norm_ema = np.zeros(n)        # PCD
        self.pcd_steps = 0
        self.nash_alpha = np.ones(n)          # Nash-MTL: the last solve's weights (its next start), its step count
        self.nash_steps = 0
        self.calls = 0
        self.stream = None

    def weights(self, gram, task_ids=None):
        gram = np.asarray(gram, dtype=np.float64)
        k = len(gram)
        if not np.isfinite(gram).all():
            return np.ones(k)
        ids = list(task_ids) if task_ids is not None else list(range(k))
        order = np.argsort(ids, kind="stable")  # the library sees the tasks in --tasks order
        sub = [int(ids[i]) for i in order]
        self._load(sub)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng)
            sub_gram = np.ascontiguousarray(gram[np.ix_(order, order)])
            if self.method in FACTOR_METHODS:
                w = factor_weights(self.weighting, sub_gram)
            else:
                w = self.weighting(torch.from_numpy(sub_gram))
            self.rng = torch.get_rng_state()
        self._store(sub)
        out = np.empty(k)
        out[order] = w.double().numpy()
        if not np.isfinite(out).all():
            raise FloatingPointError(f"--projection {self.method} gave non-finite task weights {out.tolist()} "
                                     f"for tasks {[self.names[i] for i in ids]}")
        self.calls += 1
        self._tally([self.names[i] for i in ids], out)
        return out

    def _load(self, sub):
        w = self.weighting
        if hasattr(w, "_phi_t"):
            w._phi_t = torch.from_numpy(self.phi[np.ix_(sub, sub)].copy())
            w._state_key = (len(sub), torch.float64)
        if hasattr(w, "_sq_norm_ema"):
            w._sq_norm_ema = torch.from_numpy(self.sq_norm_ema[sub].copy())
            w._n_steps = torch.tensor(self.pcd_steps)
            w._state_key = len(sub)
        if hasattr(w, "prvs_alpha"):
            w.prvs_alpha = self.nash_alpha[sub].copy()
            w.step = float(self.nash_steps)
            if w.step > 0 and getattr(w, "prob", None) is None:  # a resumed run: the solver's problem anew
                w._init_optim_problem()

    def _store(self, sub):
        w = self.weighting
        if hasattr(w, "_phi_t"):
            self.phi[np.ix_(sub, sub)] = w._phi_t.double().numpy()
        if hasattr(w, "_sq_norm_ema"):
            self.sq_norm_ema[sub] = w._sq_norm_ema.double().numpy()
            self.pcd_steps = int(w._n_steps)
        if hasattr(w, "prvs_alpha"):
            self.nash_alpha[sub] = np.asarray(w.prvs_alpha, dtype=np.float64)
            self.nash_steps = int(w.step)

    def state_dict(self):
        return {"method": self.method, "rng": self.rng.tolist(), "calls": self.calls,
                "phi": {a: {b: float(self.phi[i, j]) for j, b in enumerate(self.names) if j != i}
                        for i, a in enumerate(self.names)},
                "sq_norm_ema": dict(zip(self.names, self.sq_norm_ema.tolist())), "pcd_steps": self.pcd_steps,
                "nash_alpha": dict(zip(self.names, self.nash_alpha.tolist())), "nash_steps": self.nash_steps,
                "weight_tally": self._tally_state()}

    def load_state_dict(self, state):
        if state.get("method") != self.method:
            raise ConfigError(f"the checkpoint's gradient combination is {state.get('method')}, not {self.method}")
        self.rng = torch.tensor(state["rng"], dtype=torch.uint8)
        self.calls = int(state["calls"])
        for i, a in enumerate(self.names):
            for j, b in enumerate(self.names):
                if j != i:
                    self.phi[i, j] = state["phi"][a][b]
            self.sq_norm_ema[i] = state["sq_norm_ema"][a]
        self.pcd_steps = int(state["pcd_steps"])
        if "nash_alpha" in state:  # absent in checkpoints from before Nash-MTL (no method used it)
            self.nash_alpha = np.array([state["nash_alpha"][a] for a in self.names], dtype=np.float64)
            self.nash_steps = int(state["nash_steps"])
        self._load_tally(state)


def gram_factor(gram):
    """R (K x K, float64) with R R^T = `gram`: V sqrt(Lambda) from its eigendecomposition (negative
    rounding-error eigenvalues clipped to 0), i.e. the task gradients' coordinates in an orthonormal basis
    of their span. Any J with J J^T = gram is J = R B^T with B's columns orthonormal."""
    lam, vec = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    return vec * np.sqrt(np.clip(lam, 0.0, None))


def factor_weights(weighting, gram):
    """Weights of the task gradients' rows from a method that the library defines on the matrix J itself,
    run on R = gram_factor(gram). A matrix weighting (Nash-MTL: it reads J only as J J^T and |w J|) gives
    J's weights directly. An aggregator (ConFIG) returns its vector d_R in R's coordinates, and its vector
    for J is B d_R (it is built from pinv, row norms and dot products, all of which B preserves): the
    weights are the c with J^T c = B d_R, i.e. R^T c = d_R (least squares; exact, d_R lies in R's row
    space)."""
    factor = torch.from_numpy(gram_factor(gram))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cvxpy: Nash-MTL's problem "is not DPP", at every solve
        out = weighting(factor)
    if isinstance(weighting, _aggregation().Aggregator):  # out: the combined vector in R's coordinates
        return torch.from_numpy(np.linalg.lstsq(factor.numpy().T, out.double().numpy(), rcond=None)[0])
    return out
