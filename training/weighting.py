"""The Trainer's side of a loss weighting (--loss_weighting, multitask/loss_weighting.py): a mixin of
training.Trainer, kept apart so that the engine module stays readable. With a `loss_weighter`, each
micro-batch's backward weight is its weight within its task's mean loss times the weighter's
multiplier of that task (in place of the task's share of the step's examples); the per-task mean
losses over the global batch (all-reduced: every rank weighs alike) go to the weighter after the
forward, and for a weighter that `updates_after_step` (FAMO) again after the optimizer step, from a
no-grad forward of the same micro-batches. The step's reported loss stays the plain mean."""
import contextlib

import torch
import torch.distributed as dist

from training.prediction import _autocast


class LossWeightingSteps:
    """Trainer methods for a `loss_weighter` (it sets self._task_shares in _loss_weights)."""

    def _within_task(self, weights, micro, i):
        """Micro-batch i's weight in its task's mean loss over the global batch."""
        return weights[i] / (self._task_shares[micro[i][0]] * self.env.world_size)

    def _weigh_tasks(self, micro, tasks, weights):
        """Each micro-batch's backward weight: the loss weighter's multiplier of its task in place of the task's
        share of the step's examples. A weighter whose multipliers depend on this step's losses (FAMO) gets
        them from a no-grad forward first, with the dropout draws the real forward will make."""
        losses = self._task_losses(micro, tasks, weights, same_rng=True) \
            if self.loss_weighter.needs_step_losses else None
        multipliers = self.loss_weighter.multipliers(losses)
        if self.loss_weighter.updates_after_step:
            self._after_step_batches = (micro, tasks, weights)
        return [weights[i] / self._task_shares[tid] * multipliers[tid] for i, (tid, _) in enumerate(micro)]

    def _task_losses(self, micro, tasks, weights, same_rng):
        """{task id: mean loss over the global batch} of these micro-batches, without gradients (all-reduced)."""
        env = self.env
        acc = torch.zeros(len(tasks), dtype=torch.float64, device=env.device)
        keep = torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []) if same_rng \
            else contextlib.nullcontext()
        with keep, torch.no_grad():
            for i, (tid, batch) in enumerate(micro):
                with _autocast(env.device, env.amp_dtype):
                    out = self.ddp_model(**batch, task_id=tid)
                acc[tasks.index(tid)] += out["loss"].float().double() * self._within_task(weights, micro, i)
        if env.distributed:
            dist.all_reduce(acc)
        return dict(zip(tasks, acc.tolist()))

    def _observe_tasks(self, tasks, loss_acc, per_task):
        """All-reduce the step's loss with the per-task losses (one collective), hand those to the loss
        weighter, backpropagate its own loss term (UW's log-variances); returns the step's loss."""
        both = torch.cat([loss_acc.view(1), per_task])
        if self.env.distributed:
            dist.all_reduce(both)
        extra = self.loss_weighter.observe(dict(zip(tasks, both[1:].tolist())))
        if extra is not None:
            self.scaler.scale(extra).backward()
        return both[0]

    def _update_after_step(self):
        """FAMO: the losses of the same micro-batches after the optimizer step (a no-grad forward)."""
        micro, tasks, weights = self._after_step_batches
        self._after_step_batches = None
        self.loss_weighter.update(self._task_losses(micro, tasks, weights, same_rng=False))

