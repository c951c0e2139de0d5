"""TorchJD's loss scalarizers as `--loss_weighting uw|dwa|famo` (docs/multitask.md#loss-weighting).

A scalarizer S turns the step's per-task mean losses L (one float each, in --tasks order) into one
loss; the step's gradient is its gradient, sum_t dS/dL_t * grad L_t. The Trainer asks this module
for the multipliers dS/dL_t before the backward (`multipliers`) and weights each task's
micro-batches by them instead of by their share of the step's examples; it hands over the step's
losses after the forward (`observe`: UW returns its own loss term, whose backward reaches its
log-variances) and, for FAMO, the losses recomputed on the same batches after the optimizer step
(`update`). The multipliers are the library's: autograd of a copy of the library object at the
losses, so nothing of its formula is written here.

What the library's objects would break, and what this module does instead:
- exact resume: DWA's `state_dict` holds nothing and FAMO's inner Adam is not in it; here every
  piece of state (UW's log-variances, DWA's epoch sums and averages, FAMO's logits, its Adam's
  state and its last losses) goes into the Trainer's checkpoint and comes back from it;
- DDP: the Trainer all-reduces the losses before they reach this module, so every rank computes
  the same multipliers and the same state;
- FAMO's weights depend on the step's own losses, known only after the forward while our engine
  backpropagates each micro-batch straight after its forward: the Trainer runs a no-grad forward
  of the step first, with the same dropout draws (docs/benchmarks.md#loss-weighting for its cost);
- DWA's epoch is ours (--steps_per_epoch steps): `step()` is called here, every that many steps.

UW's log-variances train in the run's optimizer in a group of their own: no weight decay (a decay
would pull every task's weight towards 1, which the paper does not do), learning rate --uw_lr
(default: --learning_rate, on the run's schedule).
"""
import copy
import dataclasses
import inspect
import math

import torch

from file_utils import ConfigError
from flags import flag

from .gradients import WeightTally

LOSS_WEIGHTINGS = ("none", "uw", "dwa", "famo")
G = "loss weighting (--loss_weighting; defaults are TorchJD's)"


@dataclasses.dataclass(frozen=True)
class LossWeightingFlags:
    """--loss_weighting and each scalarizer's hyperparameters (the library's defaults; a test compares them)."""
    loss_weighting: str = flag("none", "weigh each task's loss by a TorchJD scalarizer: uw (uncertainty "
                                       "weighting), dwa (dynamic weight average), famo; needs --combine_strategy all",
                               group=G, choices=LOSS_WEIGHTINGS)
    uw_lr: float = flag(None, "UW: learning rate of the log-variances (default: --learning_rate)", group=G,
                        type=float)
    dwa_temperature: float = flag(2.0, "DWA: temperature T of the softmax over the loss ratios", group=G)
    famo_lr: float = flag(0.025, "FAMO: learning rate of the inner Adam on the task logits", group=G)
    famo_weight_decay: float = flag(0.001, "FAMO: weight decay of that Adam", group=G)


# {method: (TorchJD class name, {constructor parameter: our flag})}; `shape` is the number of tasks.
LIBRARY = {"uw": ("UW", {}), "dwa": ("DWA", {"temperature": "dwa_temperature"}),
           "famo": ("FAMO", {"lr": "famo_lr", "weight_decay": "famo_weight_decay"})}


def library_class(method):
    import torchjd.scalarization as scalarization
    return getattr(scalarization, LIBRARY[method][0])


def check(args, combine_strategy):
    """ConfigError for a loss weighting these flags cannot run (before anything is built)."""
    method = args.loss_weighting
    if method == "none":
        return
    if method not in LIBRARY:
        raise ConfigError(f"unknown --loss_weighting '{method}' (choose from {', '.join(LOSS_WEIGHTINGS)})")
    if combine_strategy != "all":
        raise ConfigError(f"--loss_weighting {method} weighs every task's loss at every step: it needs "
                          f"--combine_strategy all (got {combine_strategy})")
    if (args.reference_accumulation or args.reference_protocol) and args.gradient_accumulation_steps > 1:
        raise ConfigError(f"--loss_weighting {method} weighs each task's mean loss, --reference_accumulation "
                          "divides each micro-batch's by N: leave one out")
    if args.uw_lr is not None and not args.uw_lr > 0:
        raise ConfigError(f"--uw_lr must be > 0, got {args.uw_lr}")
    make_scalarizer(method, 2, args)  # the library refuses a value (a temperature <= 0, ...): exit 2 now


def run_flags(args):
    """{flag: value} of the loss weighting for the run's fingerprint ({} without one: old checkpoints resume)."""
    if args.loss_weighting == "none":
        return {}
    flags = {"loss_weighting": args.loss_weighting}
    flags.update({name: getattr(args, name) for name in LIBRARY[args.loss_weighting][1].values()})
    if args.loss_weighting == "uw":
        flags["uw_lr"] = args.uw_lr
    return flags


def make_scalarizer(method, num_tasks, options):
    try:
        cls = library_class(method)
    except ImportError:
        raise ConfigError(f"--loss_weighting {method} needs the torchjd package (pip install torchjd==0.18.0, "
                          "see requirements-dev.txt)") from None
    kwargs = {param: getattr(options, name) for param, name in LIBRARY[method][1].items()}
    try:
        return cls(num_tasks, **kwargs) if "shape" in inspect.signature(cls).parameters else cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"--loss_weighting {method}: {exc}") from None


def loss_weighter(args, names, task_ids, steps_per_epoch, device):
    """The Trainer's `loss_weighter` for --loss_weighting, or None for none."""
    if args.loss_weighting == "none":
        return None
    return LossWeighter(args.loss_weighting, names, task_ids, steps_per_epoch, args, device)


class LossWeighter(WeightTally):
    """`loss_weighter` for training.Trainer running one TorchJD scalarizer over the tasks' mean losses.

    The Trainer's protocol: `needs_step_losses` (the multipliers depend on this step's losses: a
    no-grad forward first), `multipliers(losses)` -> {task id: dS/dL}, `observe(losses)` -> a loss
    term of this object's own parameters or None, `updates_after_step` and `update(losses)`,
    `parameters()`, `last` ({task name: multiplier} of the last step, for TensorBoard),
    `state_dict()`/`load_state_dict()`. Losses come as {task id: the task's mean loss over the
    global batch}, the same on every rank."""

    def __init__(self, method, names, task_ids, steps_per_epoch, options, device=None):
        self.method, self.names, self.ids = method, list(names), list(task_ids)
        self.steps_per_epoch = int(steps_per_epoch)
        self.scalarizer = make_scalarizer(method, len(self.names), options).to(device or "cpu")
        self.device = device or torch.device("cpu")
        self.needs_step_losses = self.updates_after_step = method == "famo"
        self.steps = 0  # observed steps: DWA's epoch ends
        self.last = {}

    def parameters(self):
        """UW's log-variances (they train in the run's optimizer); the others have none there (FAMO's logits
        are moved by its own Adam)."""
        return [self.scalarizer.log_var] if self.method == "uw" else []

    def param_group(self, lr):
        """The optimizer group of `parameters()` (no weight decay), or None."""
        params = self.parameters()
        return {"params": params, "weight_decay": 0.0, "lr": lr, "name": "loss_weighting"} if params else None

    def _vector(self, losses):
        if set(losses) != set(self.ids):
            raise ValueError(f"--loss_weighting {self.method}: a step of tasks {sorted(losses)}, not all of "
                             f"{self.ids}")
        return torch.tensor([float(losses[t]) for t in self.ids], dtype=torch.float32, device=self.device)

    def multipliers(self, losses=None):
        """{task id: dS/dL_t} at these losses (None: where the method's multipliers do not depend on
        them); the library object itself is left as it was."""
        values = self._vector(losses) if losses is not None else torch.ones(len(self.ids), device=self.device)
        if not torch.isfinite(values).all():  # an fp16 overflow: the scaler skips the step anyway
            return dict.fromkeys(self.ids, 1.0)
        probe = copy.deepcopy(self.scalarizer)
        values.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(probe(values), values)
        weights = [float(w) for w in grad.tolist()]
        if not all(math.isfinite(w) for w in weights):
            raise FloatingPointError(f"--loss_weighting {self.method} gave non-finite task weights {weights} "
                                     f"for the losses {values.tolist()} of tasks {self.names}")
        self.last = dict(zip(self.names, weights))
        self._tally(self.names, weights)
        return dict(zip(self.ids, weights))

    def observe(self, losses):
        """The step's losses into the library object (DWA's epoch sums, FAMO's losses before the update);
        for UW the loss term whose backward reaches the log-variances. Non-finite losses are left out."""
        values = self._vector(losses)
        if not torch.isfinite(values).all():
            return None
        with torch.enable_grad():
            out = self.scalarizer(values)
        self.steps += 1
        if self.method == "dwa" and self.steps % self.steps_per_epoch == 0:
            self.scalarizer.step()
        return out if self.method == "uw" else None

    def update(self, losses):
        """FAMO: the losses of the same batches after the optimizer step move its logits."""
        values = self._vector(losses)
        if torch.isfinite(values).all():
            self.scalarizer.update(values)

    # -- state: everything, since the library's state_dict leaves DWA's and FAMO's Adam's out ----------------

    def state_dict(self):
        s = self.scalarizer
        state = {"method": self.method, "steps": self.steps, "last": dict(self.last),
                 "weight_tally": self._tally_state()}
        if self.method == "uw":
            state["log_var"] = s.log_var.detach().clone()
        elif self.method == "dwa":
            state.update(loss_sum=s._loss_sum, n_batches=s._n_batches, previous_averages=list(s._previous_averages))
        else:
            state.update(w=s._w.detach().clone(), prev_losses=s._prev_losses,
                         adam=s._optimizer.state_dict() if s._optimizer is not None else None)
        return state

    def load_state_dict(self, state):
        if state.get("method") != self.method:
            raise ConfigError(f"the checkpoint's loss weighting is {state.get('method')}, not {self.method}")
        s, dev = self.scalarizer, self.device
        self.steps, self.last = int(state["steps"]), dict(state["last"])
        self._load_tally(state)
        with torch.no_grad():
            if self.method == "uw":
                s.log_var.copy_(state["log_var"])
            elif self.method == "dwa":
                s._loss_sum = None if state["loss_sum"] is None else state["loss_sum"].to(dev)
                s._n_batches = int(state["n_batches"])
                s._previous_averages = [a.to(dev) for a in state["previous_averages"]]
            else:
                s._w.copy_(state["w"])
                s._prev_losses = None if state["prev_losses"] is None else state["prev_losses"].to(dev)
                s._optimizer = None
                if state["adam"] is not None:
                    s._optimizer = torch.optim.Adam([s._w], lr=s.lr, weight_decay=s.weight_decay)
                    s._optimizer.load_state_dict(state["adam"])
