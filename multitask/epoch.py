"""The Trainer hooks of a multi-task run: each epoch's training loss per task (`TrainLossLog`) and the
epoch end (`EpochEnd`: evaluate, print, log, keep the best model(s), early stop)."""
import os

import numpy as np

import file_utils
from file_utils import atomic_write_json

from . import evaluation
from .evaluation import format_eval_table
from .sampling import inclusion_probabilities
from .saving import save_task_parameters, save_with_task_labels


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
    `carried_labels` are saved into best/ for the model's tasks this run does not train; `predict`
    (features, task_id) is the runner's prediction function (default: `trainer.predict`)."""

    def __init__(self, tasks, selector, stream, sampler, env, tokenizer, output_dir, per_task_best=False,
                 average_tag="glue_average", average_label="GLUE avg", selection="average", task_ids=None,
                 carried_labels=None, loss_log=None, predict=None):
        self.tasks, self.selector, self.stream, self.sampler = tasks, selector, stream, sampler
        self.env, self.tokenizer = env, tokenizer
        self.output_dir, self.per_task_best = output_dir, per_task_best
        self.average_tag, self.average_label, self.selection = average_tag, average_label, selection
        self.task_ids = list(task_ids) if task_ids is not None else list(range(len(tasks)))
        self.carried_labels, self.loss_log = carried_labels, loss_log
        self.predict = predict  # predict(features, task_id); None: the Trainer's

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
        predict = self.predict or trainer.predict
        results, task_scores, set_scores, average = evaluation.evaluate_tasks(self.tasks, predict, self.selection,
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
