"""The Trainer: optimizer steps over a step stream, gradient accumulation, mixed precision, DDP,
gradient surgery across tasks, checkpoints and exact resume."""
import concurrent.futures
import contextlib
import logging
import math
import os
import signal
import sys
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save as safetensors_save
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import file_utils
import modeling
import optimization
from file_utils import ConfigError, DataError, UserError, atomic_open, atomic_write_json
from training.checkpoints import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    CHECKPOINT_META,
    CHECKPOINT_MODEL,
    CHECKPOINT_STATE,
    _check_trainer_state,
    _fingerprint_differences,
    _rng_state,
    _set_rng_state,
    all_gather_plain,
    find_checkpoint,
    read_checkpoint,
    write_state,
)
from training.data import is_number
from training.options import protocol_line
from training.outputs import save_model
from training.prediction import _autocast, _move, predict
from training.weighting import LossWeightingSteps

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "runs"


# fp16: this many optimizer steps skipped in a row by the GradScaler means the loss is broken.
MAX_CONSECUTIVE_SKIPPED_STEPS = 25


class NonFiniteLossError(UserError):
    """Training produced a NaN/inf loss (reported in one line by file_utils.run_cli)."""


def prefetches(opts, device):
    """Whether training collates the next step in a background thread: --num_workers 1, or by default
    on CUDA only (on a CPU that thread competes with the step for the cores and the GIL: measured
    slower, docs/benchmarks.md#demo-run)."""
    return device.type == "cuda" if opts.num_workers is None else bool(opts.num_workers)


class Prefetcher:
    """A step stream read one step ahead: `start()` has a background thread call the stream's
    next_step() (collation, and on CUDA pinning, so that the copy to the GPU can be asynchronous)
    while the current step runs; `next_step()` hands that result over.

    Only the main thread touches the stream while no fetch is running (`wait()`), and `state_dict()`
    is the stream's state from before the fetched step, so checkpoints and resume are exactly as
    without prefetching. Collation draws no random numbers: the batches are identical too."""

    def __init__(self, stream, pin=False):
        self.stream, self.pin = stream, pin
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._future, self._snapshot = None, None

    @staticmethod
    def fits(stream):
        """Prefetching needs a stream that can be put back (state_dict/load_state_dict)."""
        return hasattr(stream, "state_dict") and hasattr(stream, "load_state_dict")

    def _fetch(self):
        micro = self.stream.next_step()
        if self.pin:
            micro = [(task, {k: v.pin_memory() for k, v in batch.items()}) for task, batch in micro]
        return micro

    def start(self):
        self._snapshot = self.stream.state_dict()
        self._future = self._pool.submit(self._fetch)

    def wait(self):
        if self._future is not None:
            concurrent.futures.wait([self._future])

    def next_step(self):
        if self._future is None:
            return self._fetch()
        future, self._future, self._snapshot = self._future, None, None
        return future.result()

    def state_dict(self):
        return self._snapshot if self._future is not None else self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)

    def close(self):
        """End the thread; returns the state to go back to if a fetched step was never used, else None."""
        self.wait()
        snapshot = self._snapshot if self._future is not None else None
        self._future, self._snapshot = None, None
        self._pool.shutdown(wait=True)
        return snapshot


GRAM_CHUNK = 1 << 16  # columns per float64 slice in gram_matrix and weighted_rows_into (8 tasks: 4 MiB)


def gram_matrix(rows, chunk=None):
    """The K x K float64 matrix of dot products of the K rows of `rows` ([K, N]), on their device.

    Summed in float64 over slices of `chunk` (GRAM_CHUNK) columns: as exact as float64 dot products
    of whole rows, while holding only a [K, chunk] float64 slice besides the rows themselves."""
    k, n = rows.shape
    chunk = chunk or GRAM_CHUNK
    gram = torch.zeros(k, k, dtype=torch.float64, device=rows.device)
    for start in range(0, n, chunk):
        block = rows[:, start:start + chunk].double()
        gram.addmm_(block, block.t())
    return gram


def weighted_rows_into(out, rows, weights, offset=0, chunk=None):
    """out[:] = sum_k weights[k] rows[k, offset:offset + out.numel()] (out: a flat view, written in
    place), a slice of `chunk` (GRAM_CHUNK) columns at a time: one matrix-vector product over a
    whole transposed row block would make a temporary of out's size."""
    chunk = chunk or GRAM_CHUNK
    for start in range(0, out.numel(), chunk):
        stop = min(out.numel(), start + chunk)
        out[start:stop] = torch.mv(rows[:, offset + start:offset + stop].t(), weights)


def compile_model(module):
    """torch.compile for training (--compile). A task id is a Python int, so each task gets its own
    graph (and one more for dynamic lengths): allow enough of them for every task of a run."""
    import torch._dynamo
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))
    return torch.compile(module)


def loss_count(model, task_id, batch):
    """What `model`'s loss of task `task_id` on `batch` is a mean over: the model says (its `loss_count`,
    e.g. the scored tokens of a token head); a model that does not, the batch's examples."""
    count = getattr(getattr(model, "module", model), "loss_count", None)
    return float(next(iter(batch.values())).shape[0]) if count is None else count(task_id, batch)


class Trainer(LossWeightingSteps):
    """Optimizer steps over a step stream; checkpoints; prediction. See the module docstring.

    model: the unwrapped model (BertForMultiTask or anything with the same forward contract).
    num_training_steps: optimizer steps the LR schedule spans (the real number of steps).
    param_groups: optimizer groups (default optimization.param_groups(model, weight_decay, lr)).
    grad_combiner: for steps whose micro-batches come from more than one task (PCGrad, vaccine):
      either an object with `weights(gram, task_ids) -> K floats` (the combined shared gradient is
      sum_k w_k g_k; `gram` is the K x K float64 matrix of the task gradients' dot products, e.g.
      multitask.GradientCombiner), or a function f(list of flat per-task gradients) -> flat gradient.
      One whose `method` is "sum" is not used: the plain accumulation computes the same sum.
    loss_weighter: for steps of every task, weights each task's mean loss by a function of the losses
      (multitask.loss_weighting.LossWeighter: its protocol, and what _weigh_tasks asks of it).
    """

    def __init__(self, opts, env, model, num_training_steps, param_groups=None, grad_combiner=None,
                 loss_weighter=None):
        self.opts, self.env = opts, env
        self.model = model.to(env.device)
        self.num_training_steps = int(num_training_steps)
        # A plain sum needs no per-task gradients: every micro-batch accumulates into .grad as usual.
        self.grad_combiner = None if getattr(grad_combiner, "method", None) == "sum" else grad_combiner
        self.loss_weighter = loss_weighter
        self._task_shares, self._after_step_batches = {}, None
        if env.distributed:
            # Tell DDP about unused parameters only when a step can leave some without a gradient (other
            # tasks' modules, a pooler no head reads): the search costs time and warns when there are none.
            cuda = env.device.type == "cuda"
            self.ddp_model = DistributedDataParallel(self.model, device_ids=[env.local_rank] if cuda else None,
                                                     output_device=env.local_rank if cuda else None,
                                                     find_unused_parameters=not modeling.uses_all_parameters(model))
        else:
            self.ddp_model = self.model
        if opts.compile:
            self.ddp_model = compile_model(self.ddp_model)
        if param_groups is None:
            param_groups = optimization.param_groups(self.model, opts.weight_decay, opts.learning_rate,
                                                     task_lr=getattr(opts, "method_lr", None))
        schedule = {}
        if opts.per_parameter_schedule:  # 2019: BertAdam schedules each parameter at its own step count
            schedule = dict(warmup=opts.warmup_proportion, t_total=max(1, self.num_training_steps),
                            schedule=opts.schedule)
        self.optimizer = optimization.build_optimizer(opts.optimizer, param_groups, opts.learning_rate,
                                                      max_grad_norm=opts.max_grad_norm,
                                                      weight_decay=opts.weight_decay, **schedule)
        self.engine_clips = opts.optimizer != "bertadam" and opts.max_grad_norm > 0
        lr_lambda = optimization.get_lr_lambda("constant" if schedule else opts.schedule, opts.warmup_proportion,
                                               max(1, self.num_training_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        fp16 = env.amp_dtype == torch.float16
        self.static_loss_scale = float(opts.loss_scale) if fp16 and opts.loss_scale > 0 else None
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=fp16,
                                           init_scale=self.static_loss_scale or 2.0 ** 16)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self._shared_params = None
        self.global_step = 0
        self.epoch = 0
        self.extra_state = {}
        self.consecutive_skipped = 0
        self.stopped_early = False  # an on_epoch_end said stop; kept in checkpoints (resume does not go on)
        self._tb_writer = None
        self._stop_signal = None
        self.train_loss_sum, self.train_loss_steps = 0.0, 0
        self.examples_seen = 0.0   # training examples of the steps run by this process (throughput)
        # Step losses stay on the device until a sync point (logging, epoch end, checkpoint), where
        # they are read back in one transfer. On CPU reading costs nothing: every step is checked at
        # once, so a NaN stops the run before its update.
        self.sync_every_step = env.device.type != "cuda"
        self._pending_losses = []  # (step, task ids, loss tensor) not yet read back
        self._on_loss = None  # train(on_loss=...)
        self._resumed = False  # train() continued from a checkpoint
        self._resumed_mode = True  # the checkpoint's model.training, for the train() that resumes it
        self.applied_lr = 0.0  # the learning rate of the last step (logged)
        self._log_loss, self._log_n = 0.0, 0

    # -- logging ---------------------------------------------------------------------------------

    @property
    def tb_writer(self):
        """TensorBoard SummaryWriter on rank 0 (created on first use in <output_dir>/runs), else None."""
        if self._tb_writer is None and self.env.is_main:
            # Imported here: TensorBoard costs start-up time and most runs write no scalars before their first step.
            from torch.utils.tensorboard import SummaryWriter
            self._tb_writer = SummaryWriter(os.path.join(self.opts.output_dir, TENSORBOARD_DIR))
        return self._tb_writer

    def log_scalars(self, tag_prefix, values, step=None):
        """Write every finite number in `values` as TensorBoard scalar `<tag_prefix>/<key>` (rank 0)."""
        if not self.env.is_main:
            return
        step = self.global_step if step is None else step
        writer = self.tb_writer
        for key, value in values.items():
            if is_number(value) and math.isfinite(float(value)):
                writer.add_scalar(f"{tag_prefix}/{key}" if tag_prefix else key, float(value), step)
        writer.flush()

    def close(self):
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None

    # -- one optimizer step ----------------------------------------------------------------------

    def _forward_backward(self, module, task_id, batch, weight):
        """Forward + weighted backward of one micro-batch; returns the detached fp32 loss."""
        with _autocast(self.env.device, self.env.amp_dtype):
            out = module(**batch, task_id=task_id)
        loss = out["loss"].float()
        self.scaler.scale(loss * weight).backward()
        return loss.detach()

    def shared_parameters(self):
        if self._shared_params is None:
            if hasattr(self.model, "shared_parameters"):
                shared = list(self.model.shared_parameters())
            else:
                shared = list(self.model.parameters())
            ids = {id(p) for p in shared}
            self._shared_params = [p for p in self.params if id(p) in ids]
        return self._shared_params

    def _step_microbatches(self, micro):
        """Backward all micro-batches of one step (grads left in .grad); returns the global mean loss
        as a float64 tensor on the device (nothing is read back here)."""
        env = self.env
        weights = self._loss_weights(micro)  # from the host-side batches: no device read
        micro = [(tid, _move(batch, env.device)) for tid, batch in micro]
        tasks = list(dict.fromkeys(tid for tid, _ in micro))
        loss_acc = torch.zeros((), dtype=torch.float64, device=env.device)
        per_task = scaled = None
        if self.loss_weighter is not None:  # per-task mean losses, and the weighting's weights in the backward
            per_task = torch.zeros(len(tasks), dtype=torch.float64, device=env.device)
            scaled = self._weigh_tasks(micro, tasks, weights)
        if self.grad_combiner is None or len(tasks) == 1:
            # DDP reduces once, on the last micro-batch; parameters used in any no_sync micro-batch
            # are reduced too (DDP records them), so micro-batches of different tasks are fine.
            for i, (tid, batch) in enumerate(micro):
                sync = not env.distributed or i == len(micro) - 1
                with contextlib.nullcontext() if sync else self.ddp_model.no_sync():
                    loss = self._forward_backward(self.ddp_model, tid, batch, (scaled or weights)[i])
                loss_acc += loss.double() * weights[i] / env.world_size
                if per_task is not None:
                    per_task[tasks.index(tid)] += loss.double() * self._within_task(weights, micro, i)
        else:
            loss_acc += self._combined_backward(micro, tasks, weights, scaled, per_task)
        if per_task is not None:
            loss_acc = self._observe_tasks(tasks, loss_acc, per_task)
        elif env.distributed:
            dist.all_reduce(loss_acc)
        return loss_acc

    def _loss_weights(self, micro):
        """Weight of each micro-batch's mean loss, so that one step's gradient is the mean over the
        global batch: exact for any accumulation and number of processes.

        Within a task a micro-batch counts by its loss denominator: its examples, or for token
        classification its labelled tokens (so NER gives the token mean of the whole batch, as one
        big batch would). Across the tasks of a gradient-surgery step each task counts by its share
        of the step's examples. x world_size because DDP averages the ranks' gradients. Under
        torchrun the counts' all-reduce also carries a stop asked for by a signal, so that every
        rank stops after the same step (sets self._stop_signal)."""
        env = self.env
        if self.opts.reference_accumulation and self.opts.gradient_accumulation_steps > 1:
            # 2019: each micro-batch's mean loss / N, whatever its size
            # (still collective under torchrun: the all-reduce carries a stop asked for by a signal)
            return self._reference_loss_weights(micro)
        # Counted on the host, in numpy (batches are still CPU tensors here): nothing waits for the device.
        examples = [float(next(iter(b.values())).shape[0]) for _, b in micro]
        denominators = [loss_count(self.model, tid, b) for tid, b in micro]
        signum = file_utils.stop_requested()
        local = np.array(examples + denominators + [1.0 if signum else 0.0], dtype=np.float64)
        totals = local
        if env.distributed:
            reduced = torch.tensor(local, device=env.device)  # a copy: `local` must keep this rank's counts
            dist.all_reduce(reduced)
            totals = reduced.cpu().numpy()
        # The signal that reached this rank (the others stop with it too); SIGTERM if only another rank got one.
        self._stop_signal = (signum or int(signal.SIGTERM)) if float(totals[-1]) > 0 else None
        k = len(micro)
        step_examples = float(totals[:k].sum())
        self.examples_seen += step_examples
        weights = []
        for i, (tid, _) in enumerate(micro):
            same = [j for j, (t, _) in enumerate(micro) if t == tid]
            task_share = float(totals[same].sum()) / step_examples
            task_denominator = float(totals[[k + j for j in same]].sum())
            weights.append(task_share * float(local[k + i]) / max(task_denominator, 1.0) * env.world_size)
            self._task_shares[tid] = task_share
        return weights

    def _reference_loss_weights(self, micro):
        """--reference_accumulation: 1/N per micro-batch (N = --gradient_accumulation_steps); DDP's
        average over ranks is the 2019 DataParallel mean. Sets self._stop_signal as _loss_weights."""
        env = self.env
        signum = file_utils.stop_requested()
        examples = [float(next(iter(b.values())).shape[0]) for _, b in micro]
        local = torch.tensor([sum(examples), 1.0 if signum else 0.0], dtype=torch.float64)
        if env.distributed:
            local = local.to(env.device)
            dist.all_reduce(local)
        totals = local.cpu().tolist()
        self._stop_signal = (signum or int(signal.SIGTERM)) if totals[1] > 0 else None
        self.examples_seen += totals[0]
        return [1.0 / self.opts.gradient_accumulation_steps] * len(micro)

    def _combined_backward(self, micro, tasks, weights, scaled=None, per_task=None):
        """Gradient surgery: one flat gradient of the shared parameters per task -> grad_combiner ->
        written back; task-specific parameters keep their own gradients.

        The task gradients are the rows of ONE [tasks, shared size] float32 buffer, as the loss scaler
        left them: projections are scale-invariant, so a combiner with `weights` gets their Gram
        matrix (float64, built a slice at a time) and the result sum_k w_k g_k is written straight
        into .grad; no other gradient-sized buffer is made. A non-finite gradient (an fp16 overflow,
        routine with dynamic loss scaling) skips the combiner, whose state (random order, vaccine
        targets) must not take it in: the plain sum goes to .grad and the GradScaler skips the step.
        In fp32/bf16 it is an error.

        Under DDP, every task but the last is backpropagated under no_sync and its row all-reduced
        here; the last task's final micro-batch is a normal synced backward, so DDP reduces the
        task-specific gradients and the last task's shared gradient itself and its record of used
        parameters is consumed (a manual-only reduction would leave it stale and break the next
        step). Earlier tasks' shared gradients are zeroed in place, not set to None, for the same
        reason. With a loss weighting the rows are those of the weighted losses (`scaled`), and the tasks'
        mean losses go into `per_task`."""
        shared = self.shared_parameters()
        sizes = [p.numel() for p in shared]
        grads, loss_acc = self._task_gradients(micro, tasks, weights, shared, sizes, scaled, per_task)
        coefficients, combined = self._combination(grads, tasks)
        if combined is None:
            w = torch.as_tensor(coefficients, dtype=grads.dtype, device=grads.device)
        offset = 0
        for p, numel in zip(shared, sizes):
            if p.grad is not None:  # None: no task of this step used the parameter
                if combined is None:
                    weighted_rows_into(p.grad.view(-1), grads, w, offset)
                else:
                    p.grad.copy_(combined[offset:offset + numel].view_as(p.grad))
            offset += numel
        return loss_acc

    def _task_gradients(self, micro, tasks, weights, shared, sizes, scaled=None, per_task=None):
        """Backward every task's micro-batches; returns ([tasks, shared size] float32 rows of the task
        gradients of the shared parameters, all-reduced under DDP; the step's loss as a device tensor)."""
        env = self.env
        grads = torch.empty(len(tasks), sum(sizes), dtype=torch.float32, device=env.device)
        loss_acc = torch.zeros((), dtype=torch.float64, device=env.device)
        for t_index, task in enumerate(tasks):
            idxs = [i for i, (tid, _) in enumerate(micro) if tid == task]
            for k, i in enumerate(idxs):
                sync = not env.distributed or (t_index == len(tasks) - 1 and k == len(idxs) - 1)
                with contextlib.nullcontext() if sync else self.ddp_model.no_sync():
                    loss = self._forward_backward(self.ddp_model, task, micro[i][1], (scaled or weights)[i])
                loss_acc += loss.double() * weights[i] / env.world_size
                if per_task is not None:
                    per_task[t_index] += loss.double() * self._within_task(weights, micro, i)
            for p, part in zip(shared, grads[t_index].split(sizes)):
                if p.grad is None:
                    part.zero_()
                else:
                    part.copy_(p.grad.reshape(-1))
            if t_index < len(tasks) - 1:
                for p in shared:
                    if p.grad is not None:
                        p.grad.zero_()
        if env.distributed:
            for row in grads[:-1]:
                dist.all_reduce(row)
                row /= env.world_size
        return grads, loss_acc

    def _combination(self, grads, tasks):
        """(coefficients of the task rows, None), or (None, the combined flat gradient) for a combiner
        that is a plain function of the flat gradients."""
        gram = gram_matrix(grads).cpu().numpy()
        if not np.isfinite(gram).all():
            if not self.scaler.is_enabled():
                raise NonFiniteLossError(
                    f"non-finite gradient at step {self.global_step + 1} (tasks {','.join(map(str, tasks))}); "
                    "lower --learning_rate, check the input data, or try --bf16/fp32")
            return np.ones(len(tasks)), None  # the plain sum: the scaler sees the inf and skips this step
        if getattr(self.grad_combiner, "unscaled_gram", False) and self.scaler.is_enabled():
            gram = gram / float(self.scaler.get_scale()) ** 2  # a method that is not scale-invariant (FairGrad)
        if hasattr(self.grad_combiner, "weights"):
            return np.asarray(self.grad_combiner.weights(gram, task_ids=tasks), dtype=np.float64), None
        # a plain function of the flat gradients: it sees them at true scale
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        if scale != 1.0:
            grads.div_(scale)
        combined = self.grad_combiner(list(grads)).reshape(-1)
        if scale != 1.0:
            combined = combined * scale
        return None, combined

    def training_step(self, micro):
        """One optimizer step over the given micro-batches; returns the step's mean loss (a float64
        tensor on the device, read back at sync points: see _flush_losses)."""
        loss = self._step_microbatches(micro)
        fp16 = self.scaler.is_enabled()
        tasks = tuple(dict.fromkeys(t for t, _ in micro))
        self._pending_losses.append((self.global_step + 1, tasks, loss))
        if self.sync_every_step:
            self._flush_losses()  # a non-finite loss stops the run before its update (fp32/bf16)
        self.applied_lr = self._learning_rate_now()
        if fp16 or self.engine_clips:
            self.scaler.unscale_(self.optimizer)
        if self.engine_clips:
            torch.nn.utils.clip_grad_norm_(self.params, self.opts.max_grad_norm)
        applied = True
        if fp16:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skips optimizer.step() when a gradient is inf/NaN
            found_inf = self._found_inf()
            self.scaler.update(self.static_loss_scale)
            applied = not (found_inf if found_inf is not None else self.scaler.get_scale() < scale)
            self.consecutive_skipped = 0 if applied else self.consecutive_skipped + 1
            if self.consecutive_skipped >= MAX_CONSECUTIVE_SKIPPED_STEPS:
                raise NonFiniteLossError(
                    f"fp16: {self.consecutive_skipped} optimizer steps in a row skipped for inf/NaN gradients "
                    f"(loss {float(loss)}, loss scale {self.scaler.get_scale():g}) at step {self.global_step + 1}; "
                    "the loss itself is probably non-finite: lower --learning_rate or use --bf16")
        else:
            self.optimizer.step()
        # PyTorch 2 frees gradients: a task's modules unused in the next step then get no update. The
        # 2019 code (PyTorch 0.4) zeroed them, so stale optimizer state kept moving them.
        self.optimizer.zero_grad(set_to_none=not self.opts.zero_grad_in_place)
        if applied:  # a step the GradScaler skipped does not advance the schedule (as in HF and accelerate)
            with warnings.catch_warnings():
                # After a skipped first fp16 step LambdaLR warns that optimizer.step() was not called.
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        if self._after_step_batches is not None:
            if applied:
                self._update_after_step()
            self._after_step_batches = None
        return loss

    def _learning_rate_now(self):
        """The rate this step applies to the first parameter group (the shared encoder): the engine's
        schedule, or with --per_parameter_schedule BertAdam's own at that parameter's step count."""
        group = self.optimizer.param_groups[0]
        if not self.opts.per_parameter_schedule or not group["params"]:
            return group["lr"]
        p = next((p for p in group["params"] if p.grad is not None), group["params"][0])
        step = self.optimizer.state[p].get("step", 0) if p in self.optimizer.state else 0
        return group["lr"] * self.optimizer.lr_scale(group, step)

    def _found_inf(self):
        """Whether the GradScaler found an inf/NaN gradient this step (it then skipped the optimizer
        step): its per-optimizer record, filled by unscale_ (private API). None when that is gone; the
        caller then compares the loss scale before and after update (blind to a static scale)."""
        try:
            found = self.scaler._found_inf_per_device(self.optimizer)
        except (AttributeError, KeyError, TypeError):
            return None
        return any(float(v) > 0 for v in found.values())  # scaler.step already read them: no extra sync

    def _flush_losses(self):
        """Read back the step losses since the last call (one transfer) into the run's and the log's
        running sums. A non-finite loss is left out under fp16 (the scaler skipped that step) and is
        a NonFiniteLossError otherwise. Every step on CPU; at sync points on CUDA."""
        if not self._pending_losses:
            return
        pending, self._pending_losses = self._pending_losses, []
        values = torch.stack([loss.detach() for _, _, loss in pending]).tolist()
        for (step, tasks, _), value in zip(pending, values):
            if math.isfinite(value):
                self.train_loss_sum += value
                self.train_loss_steps += 1
                self._log_loss, self._log_n = self._log_loss + value, self._log_n + 1
                if self._on_loss is not None:
                    self._on_loss(self, step, tasks, value)
            elif not self.scaler.is_enabled():
                raise NonFiniteLossError(
                    f"non-finite training loss ({value}) at step {step} (task {','.join(map(str, tasks))}); "
                    "lower --learning_rate, check the input data, or try --bf16/fp32")

    # -- checkpoints -----------------------------------------------------------------------------

    def _gather_rng(self):
        state = _rng_state(self.env.device)
        if not self.env.distributed:
            return [state]
        return all_gather_plain(state, self.env)

    def save_checkpoint(self, stream):
        """Write <output_dir>/checkpoint atomically: a kill at any moment leaves the previous one intact.
        Collective under torch.distributed (RNG states of every rank are gathered); rank 0 writes.
        The grad_combiner's state is saved beside the stream's: with prefetching, the stream's state
        is the one from before the prefetched step, and a combiner it holds may be older than that."""
        self._flush_losses()  # the running loss sums go into the checkpoint (and a NaN never does)
        rng = self._gather_rng()
        if self.env.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng,
                "stream": stream.state_dict() if hasattr(stream, "state_dict") else None,
                "grad_combiner": (self.grad_combiner.state_dict() if hasattr(self.grad_combiner, "state_dict")
                                  else None),
                "loss_weighter": self.loss_weighter.state_dict() if self.loss_weighter is not None else None,
                "global_step": self.global_step, "epoch": self.epoch, "extra_state": self.extra_state,
                "world_size": self.env.world_size, "consecutive_skipped": self.consecutive_skipped,
                "stopped_early": self.stopped_early,
                "train_loss_sum": self.train_loss_sum, "train_loss_steps": self.train_loss_steps,
                # dropout on or off (--dropout_off_after_eval), and which parameters hold a zeroed rather
                # than freed gradient (--zero_grad_in_place: they move by stale optimizer state next step)
                "model_training": self.model.training,
                "zeroed_grads": [name for name, p in self.model.named_parameters() if p.grad is not None],
            }
            model_state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.model.state_dict().items()}

            def write(tmp):
                with atomic_open(os.path.join(tmp, CHECKPOINT_MODEL), "wb") as f:
                    f.write(safetensors_save(model_state))
                write_state(tmp, CHECKPOINT_STATE, state)
                atomic_write_json(os.path.join(tmp, CHECKPOINT_META), {
                    "format": CHECKPOINT_FORMAT, "global_step": self.global_step, "epoch": self.epoch,
                    "time": time.time(), "num_training_steps": self.num_training_steps,
                    "run": self.opts.fingerprint()})

            final = os.path.join(self.opts.output_dir, CHECKPOINT_DIR)
            file_utils.replace_dir_atomically(final, write)
            logger.info("checkpoint at step %d written to %s", self.global_step, final)
        self.env.barrier()

    def load_checkpoint(self, path, stream):
        """Restore everything save_checkpoint wrote (model, optimizer, schedule, scaler, RNG, stream).
        A corrupt or foreign checkpoint, or one made with other run-defining flags, is a ConfigError."""
        ckpt = read_checkpoint(path)
        changed = _fingerprint_differences(ckpt["meta"].get("run", {}), self.opts.fingerprint())
        if changed:
            raise ConfigError(f"--resume: {path} was made with other settings ({'; '.join(changed)}); resume with "
                              "the same flags, or start a new run in another --output_dir")
        state = ckpt["state"]
        state_file = os.path.join(path, CHECKPOINT_STATE + ".json")
        _check_trainer_state(state, state_file, {name for name, _ in self.model.named_parameters()})
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ConfigError(f"{path}: the checkpoint does not fit this model/optimizer "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("stream") is not None and hasattr(stream, "load_state_dict"):
            try:
                stream.load_state_dict(state["stream"])
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise DataError(state_file, None, f"'stream' is not a data position of this run ({exc!r})") from None
        if state.get("grad_combiner") is not None and hasattr(self.grad_combiner, "load_state_dict"):
            self.grad_combiner.load_state_dict(state["grad_combiner"])  # after the stream's: this one is current
        if state.get("loss_weighter") is not None and self.loss_weighter is not None:
            self.loss_weighter.load_state_dict(state["loss_weighter"])
        rng = state["rng"]
        if len(rng) != self.env.world_size:
            logger.warning("checkpoint was written by %d processes, resuming with %d: dropout RNG differs",
                           len(rng), self.env.world_size)
        try:
            _set_rng_state(rng[self.env.rank] if self.env.rank < len(rng) else rng[0], self.env.device)
        except (TypeError, ValueError, RuntimeError, IndexError, KeyError, OverflowError) as exc:
            raise DataError(state_file, None, f"'rng' is not a random-generator state ({exc})") from None
        self.global_step, self.epoch = state["global_step"], state["epoch"]
        self.extra_state = state.get("extra_state") or {}
        self.consecutive_skipped = state.get("consecutive_skipped", 0)
        self.stopped_early = state.get("stopped_early", False)
        self.train_loss_sum = state.get("train_loss_sum", 0.0)
        self.train_loss_steps = state.get("train_loss_steps", 0)
        self._resumed_mode = state.get("model_training", True)
        params = dict(self.model.named_parameters())
        for name in state.get("zeroed_grads", []):  # the step that wrote the checkpoint ended with zero_grad
            params[name].grad = torch.zeros_like(params[name])
        logger.info("resumed from %s at step %d (epoch %d)", path, self.global_step, self.epoch)

    # -- the loop --------------------------------------------------------------------------------

    def train(self, stream, num_steps, steps_per_epoch=None, on_epoch_end=None, desc="train", on_step=None,
              on_loss=None):
        """Run optimizer steps from stream.next_step() until global_step == num_steps.

        After every optimizer step, on_step(trainer, loss) runs on all ranks (`loss`: the step's
        global mean loss as a device tensor: reading it is a host-device sync). Each finite step
        loss, once read back (every step on CPU, at logging steps, epoch ends and checkpoints on
        CUDA), goes to on_loss(trainer, step, task_ids, value) on all ranks. Both run before
        on_epoch_end and the checkpoint, so state they keep in trainer.extra_state is saved with
        that step. Every `steps_per_epoch` steps,
        on_epoch_end(epoch_index, trainer) runs on all ranks (after the step, before that step's
        checkpoint); returning True stops training. With --resume,
        continues from <output_dir>/checkpoint. Returns {"global_step", "loss" (mean step loss of
        the whole run), "stopped_early"}."""
        opts, env = self.opts, self.env
        steps_per_epoch = steps_per_epoch or getattr(stream, "steps_per_epoch", None) or num_steps
        for line in opts.notes + (protocol_line(opts),):
            logger.info(line)
        if opts.resume:
            path = find_checkpoint(opts.output_dir)
            if env.distributed:
                # Every rank reads the checkpoint: a node that cannot see it would start afresh while the
                # others resume. All ranks learn who lacks it and stop with the same error.
                found = torch.tensor([0.0 if path is None else 1.0], device=env.device)
                dist.all_reduce(found)
                if 0 < int(found.item()) < env.world_size:
                    raise ConfigError(f"--resume: {int(env.world_size - found.item())} of {env.world_size} "
                                      f"processes see no checkpoint in {opts.output_dir}: every node needs the "
                                      "output folder (shared, or the checkpoint/ copied to the same path)")
            if path is not None:
                self.load_checkpoint(path, stream)
                self._resumed = True
            else:
                logger.info("--resume: no checkpoint in %s, starting from scratch", opts.output_dir)
        self.ddp_model.train(self._resumed_mode)  # a resumed run's dropout state is the checkpoint's
        self._resumed_mode = True
        bar = tqdm(total=num_steps, initial=self.global_step, desc=desc,
                   disable=not (env.is_main and sys.stderr.isatty()), dynamic_ncols=True)
        saved_at = self.global_step
        self._on_loss = on_loss
        with file_utils.graceful_interrupts():
            try:
                return self._train_loop(stream, num_steps, steps_per_epoch, on_epoch_end, bar, saved_at, on_step)
            finally:
                self._on_loss = None
                bar.close()
                if self._tb_writer is not None:
                    self._tb_writer.flush()

    def _train_loop(self, stream, num_steps, steps_per_epoch, on_epoch_end, bar, saved_at, on_step=None):
        opts, env = self.opts, self.env
        self._log_loss, self._log_n = 0.0, 0
        start_time, start_step, start_examples = time.time(), self.global_step, self.examples_seen
        # A resumable stream is read one step ahead, in a background thread (--num_workers 1).
        feed = Prefetcher(stream, pin=env.device.type == "cuda") \
            if prefetches(opts, env.device) and Prefetcher.fits(stream) else None
        source = feed or stream
        try:
            while self.global_step < num_steps and not self.stopped_early:
                micro = source.next_step()
                if feed is not None and self.global_step + 1 < num_steps:
                    feed.start()  # the next step's batches are collated while this step runs
                step_loss = self.training_step(micro)
                if feed is not None:
                    feed.wait()  # the stream is idle again: callbacks and checkpoints may read it
                self.global_step += 1
                bar.update(1)
                if on_step is not None:
                    on_step(self, step_loss)
                if self._after_step(source, num_steps, steps_per_epoch, on_epoch_end, bar):
                    saved_at = self.global_step
                if self.stopped_early:
                    logger.info("early stop after epoch %d (step %d)", self.epoch, self.global_step)
                    break
                if self._stop_signal:
                    if saved_at != self.global_step:
                        self.save_checkpoint(source)
                    raise file_utils.Interrupted(
                        f"stopped at step {self.global_step} of {num_steps}; checkpoint in "
                        f"{os.path.join(opts.output_dir, CHECKPOINT_DIR)}: continue with --resume", self._stop_signal)
            # Decided alike on every rank (saving is collective): only rank 0's folder has the files.
            if saved_at != self.global_step or (self.global_step == start_step and not self._resumed):
                self.save_checkpoint(source)
        finally:
            if feed is not None:
                self._close_feed(feed)
        self._flush_losses()
        mean = self.train_loss_sum / self.train_loss_steps if self.train_loss_steps else float("nan")
        runtime = time.time() - start_time  # this process's part (after a resume: the resumed steps)
        return {"global_step": self.global_step, "loss": mean, "stopped_early": self.stopped_early,
                "train_runtime": runtime,
                "train_samples_per_second": (self.examples_seen - start_examples) / max(runtime, 1e-9),
                "train_steps_per_second": (self.global_step - start_step) / max(runtime, 1e-9)}

    def _after_step(self, source, num_steps, steps_per_epoch, on_epoch_end, bar):
        """Logging, the epoch end and a --save_steps checkpoint after one optimizer step; returns
        whether a checkpoint was written."""
        opts = self.opts
        log_now = self.global_step % max(1, opts.logging_steps) == 0 or self.global_step == num_steps
        epoch_end = self.global_step % steps_per_epoch == 0
        save_now = opts.save_steps > 0 and self.global_step % opts.save_steps == 0
        if log_now or epoch_end or save_now or self._stop_signal:
            self._flush_losses()  # the one device read of these steps' losses (NaN check included)
        if log_now:
            self._log_step(bar, num_steps)
        if epoch_end:
            self.epoch += 1
            if on_epoch_end is not None:
                stop = on_epoch_end(self.epoch - 1, self)
                # The 2019 code's evaluation left the model in eval mode: no dropout from then on.
                self.ddp_model.train(not opts.dropout_off_after_eval)
                if stop:
                    self.stopped_early = True
        if save_now:
            self.save_checkpoint(source)
        return save_now

    def _log_step(self, bar, num_steps):
        if self.env.is_main:
            lr = self.applied_lr  # the rate of this step (BertAdam's own with its schedule)
            avg = self._log_loss / max(self._log_n, 1)
            bar.set_postfix(loss=f"{avg:.4f}", lr=f"{lr:.2e}")
            self.log_scalars("train", {"loss": avg, "learning_rate": lr})
            if self.loss_weighter is not None:
                self.log_scalars("loss_weight", self.loss_weighter.last)
            if not sys.stderr.isatty():
                logger.info("step %d/%d loss %.4f lr %.3e", self.global_step, num_steps, avg, lr)
        self._log_loss, self._log_n = 0.0, 0

    def _close_feed(self, feed):
        """Stop the prefetch thread; a step fetched but not trained (early stop, a signal, an error)
        is given back: the stream returns to where training stopped, the combiner keeps its state."""
        snapshot = feed.close()
        if snapshot is not None:
            live = self.grad_combiner.state_dict() if hasattr(self.grad_combiner, "state_dict") else None
            feed.stream.load_state_dict(snapshot)
            if live is not None:
                self.grad_combiner.load_state_dict(live)

    # -- outputs ---------------------------------------------------------------------------------

    def predict(self, features, task_id, batch_size=None, pad_to=None, padding=None):
        """See module-level predict(); collective under torch.distributed."""
        if pad_to is None:
            pad_to = self.opts.pad_to
        return predict(self.model, features, task_id, batch_size or self.opts.eval_batch_size, self.env,
                       pad_to=pad_to, padding=padding)

    def save_model(self, directory, tokenizer=None, labels=None):
        """Rank 0: save_model() into directory."""
        if self.env.is_main:
            save_model(self.model, directory, tokenizer, labels)
        self.env.barrier()
