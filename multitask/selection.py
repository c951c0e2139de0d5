"""Model selection on the mean of the tasks' main scores (GLUE-only runs: the leaderboard's GLUE
average), each task's own best, early stopping; results.json and eval_results.txt."""
import math
import os

import numpy as np
import torch

from file_utils import atomic_write_json, atomic_write_text


class ModelSelector:
    """Keeps the epoch with the best average of the tasks' main scores (and each task's own best),
    counts patience.

    State lives in the plain dict `state` (the Trainer's extra_state) so that a resumed run
    continues with the same history, best scores and patience counter. Each history entry holds
    the average under "average" and, when `average_key` names it differently (GLUE-only runs:
    "glue_average", the leaderboard's GLUE score), under that key too.
    """

    def __init__(self, state, task_names, patience=0, average_key="average", initial_best=None):
        self.task_names, self.patience, self.average_key = list(task_names), int(patience), average_key
        # The 2019 code started from best_score = 0: an epoch whose sum is <= 0 (or NaN) was never kept.
        self.initial_best = initial_best
        self.bind(state)

    def bind(self, state):
        """Use `state` (e.g. the Trainer's extra_state after a resume replaced it)."""
        self.state = state
        state.setdefault("history", [])
        state.setdefault("best_average", None)
        state.setdefault("best_epoch", None)
        state.setdefault("task_best", {})  # task -> {"score", "epoch"}
        state.setdefault("bad_epochs", 0)

    def summary(self):
        """What results.json keeps of the selection: history, best epoch and average, each task's best."""
        return {key: self.state[key] for key in ("history", "best_epoch", "best_average", "task_best")}

    def update(self, epoch, results, main_scores, average):
        """Record an epoch; returns (joint_improved, [tasks whose own best improved], stop)."""
        entry = {"epoch": epoch, "results": _plain(results), "main": _plain(main_scores), "average": float(average)}
        entry[self.average_key] = float(average)
        self.state["history"].append(entry)
        best = self.state["best_average"]
        if best is None:
            best = self.initial_best
        improved = not math.isnan(average) and (best is None or average > best)
        if improved:
            self.state["best_average"], self.state["best_epoch"] = float(average), epoch
            self.state["bad_epochs"] = 0
        else:
            self.state["bad_epochs"] += 1
        task_improved = []
        for task, score in main_scores.items():
            prev = self.state["task_best"].get(task)
            if not math.isnan(score) and (prev is None or score > prev["score"]):
                self.state["task_best"][task] = {"score": float(score), "epoch": epoch}
                task_improved.append(task)
        stop = self.patience > 0 and self.state["bad_epochs"] >= self.patience
        return improved, task_improved, stop


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    return obj


def write_results(output_dir, results):
    """results.json (machine-readable, for scripts/collect_results.py) + eval_results.txt."""
    results = _plain(results)
    atomic_write_json(os.path.join(output_dir, "results.json"), results)
    lines = [f"best_epoch = {results.get('best_epoch')}"]
    for key in ("best_glue_average", "best_average"):
        if key in results:
            lines.append(f"{key} = {results[key]}")
    best = next((h for h in results.get("history", []) if h["epoch"] == results.get("best_epoch")), None)
    if best:
        for task, metrics in best["results"].items():
            for key, value in metrics.items():
                lines.append(f"{task}.{key} = {value}")
    params = results.get("parameters") or {}
    for key in ("total", "shared", "multiplier_vs_one_bert"):
        if key in params:
            lines.append(f"parameters.{key} = {params[key]}")
    atomic_write_text(os.path.join(output_dir, "eval_results.txt"), "\n".join(lines) + "\n")
