"""Evaluation of every task's dev set(s) into one selection score, the per-epoch dev table, and every
task's official prediction files, over task objects (the tasks.base.Task interface)."""
import math
import os

import numpy as np

import training

SELECTIONS = ("average", "reference_sum")


def predictor(model, opts, env):
    """predict(features, task_id, padding=None) -> the engine's outputs for `model` (`padding`: the task's
    own, Task.padding, for the engine's collate): run_multi_task.py's dev evaluation, test predictions and
    --predict files all go through here (collective under DDP)."""
    return lambda features, task_id, padding=None: training.predict(model, features, task_id, opts.eval_batch_size,
                                                                    env, pad_to=opts.pad_to, padding=padding)


def evaluate_tasks(tasks, predict, selection="average", task_ids=None):
    """Dev metrics of every task -> (results {eval set: metrics}, {task: main score},
    {eval set: main score}, selection score).

    `predict(features, task_id, padding=...)` runs the model (`padding`: the task's own, Task.padding,
    passed on to the engine's collate); task i of `tasks` is task id i (or `task_ids[i]`,
    when a run trains only some tasks of its model, as --add_tasks does). The selection
    score is the unweighted mean of the tasks' main scores (for GLUE tasks the leaderboard's GLUE
    score: MNLI counts once, as the mean of -m and -mm), or with "reference_sum" the 2019 rule: the
    sum of each task's `selection_score` (GLUE: per-batch metrics, MNLI-m only)."""
    results, task_scores, set_scores, parts = {}, {}, {}, []
    for task_id, task in zip(task_ids or range(len(tasks)), tasks):
        task_results = task.evaluate(lambda features, t=task_id, p=task.padding: predict(features, t, padding=p))
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


def predict_tasks(tasks, predict, out_dir, env, task_ids=None):
    """Official prediction files of every task into out_dir (each family's format; in a subfolder
    named after the task unless the task's files are made to sit together, as GLUE's submission
    files). Collective under DDP: every rank calls it; rank 0 writes."""
    written = []
    with training.output_dir_of_rank(env, out_dir) as folder:
        for task_id, task in zip(task_ids or range(len(tasks)), tasks):
            target = folder if task.flat_predictions else os.path.join(folder, task.name)
            written.extend(task.write_predictions(
                lambda features, t=task_id, p=task.padding: predict(features, t, padding=p), target))
    return written
