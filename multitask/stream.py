"""The multi-task step stream: one optimizer step = the micro-batches of one task (or of N tasks for
gradient surgery), each from that task's own EpochStream."""
import training
from file_utils import ConfigError


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


def task_streams(opts, env, tasks, task_ids, batch_sizes, max_lengths, seed):
    """One training EpochStream per task: its model task id, batch size and seed (seed + its index);
    --pad_to_max_length pads to the task's own max length."""
    return [training.make_stream(opts, env, t.train_features, task_id=tid, batch_size=bs, seed=seed + i,
                                 pad_to=max_len if opts.pad_to_max_length else None, padding=t.padding)
            for i, (t, tid, bs, max_len) in enumerate(zip(tasks, task_ids, batch_sizes, max_lengths))]
