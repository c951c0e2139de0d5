"""Pictures of a multi-task run, drawn from its files (results.json, diagnostics/*.csv) as PNGs.

Written at the end of every `run_multi_task.py` training run (rank 0; a picture that fails only
logs a warning: the model and results are already saved) and on demand by
`scripts/plot_run.py RUN_DIR`:

    plots/dev_scores.png     each task's main dev score per epoch
    plots/average.png        the selection score (GLUE average, or the mean of the tasks' main
                             scores) per epoch, the selected epoch marked
    plots/sampling.png       target vs realized share of the steps per task, per epoch
    plots/train_loss.png     mean training loss per epoch, overall and per task
    plots/task_weights.png   (with --projection) the mean weight the method gave each task's gradient
    diagnostics/task_cosines.png          (with --diagnose_every) mean cosine and conflict share
                                          of every task pair's shared-parameter gradients, and with
                                          --projection the weights the method gave each task
                                          between diagnoses, per diagnosis step
    diagnostics/layers_<a>~<b>.png        cosine per layer group x training step for the named
                                          pairs (--diagnose_pairs), else the most conflicting ones

Every function takes the parsed results (or diagnostics) and a path, and returns the data it
actually drew, read back from the figure (lines' x/y, images' arrays), so that tests compare
the picture itself with results.json. Matplotlib's Agg backend: no display is needed.
"""
import json
import logging
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import diagnostics  # noqa: E402
from file_utils import ConfigError, atomic_open  # noqa: E402

logger = logging.getLogger(__name__)
PLOTS_DIR = "plots"
TOP_PAIRS = 3  # layer pictures drawn for this many most-conflicting pairs when none are named


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def _lines(ax):
    """{label: (x, y)} of the labelled lines drawn on `ax` (what the picture shows)."""
    return {line.get_label(): ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
            for line in ax.get_lines() if not line.get_label().startswith("_")}


def _history(results):
    history = results.get("history") or []
    if not history or not any(h.get("epoch", 0) > 0 for h in history):
        raise ConfigError("results.json has no training epochs to draw (an evaluation-only run?)")
    return [h for h in history if h.get("epoch", 0) > 0]


def _task_names(results, history):
    names = list(results.get("tasks") or [])
    return names or list(history[0].get("main", {}))


def plot_dev_scores(results, path):
    """Each task's main dev score (x100) per epoch."""
    history = _history(results)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    epochs = [h["epoch"] for h in history]
    for task in _task_names(results, history):
        ax.plot(epochs, [100 * h["main"][task] for h in history], marker="o", label=task)
    ax.set(xlabel="epoch", ylabel="main dev score", title="Dev score per task")
    ax.set_xticks(epochs)
    ax.legend(fontsize="small", ncol=2)
    drawn = _lines(ax)
    _save(fig, path)
    return drawn


def average_label(history):
    entry = history[0]
    if "glue_average" in entry:
        return "GLUE average"
    if "reference_sum" in entry:
        return "2019 selection sum"
    return "average of the main scores"


def plot_average(results, path):
    """The selection score (x100) per epoch; the selected epoch (results' best_epoch) marked."""
    history = _history(results)
    label = average_label(history)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [100 * h["average"] for h in history], marker="o", label=label)
    best = results.get("best_epoch")
    drawn_best = None
    if best is not None and best in epochs:
        value = 100 * history[epochs.index(best)]["average"]
        ax.plot([best], [value], marker="*", markersize=16, linestyle="none", color="tab:red",
                label=f"selected (epoch {best})")
        ax.axvline(best, color="tab:red", linewidth=0.8, linestyle=":")
        drawn_best = best
    ax.set(xlabel="epoch", ylabel=label, title=f"{label} per epoch")
    ax.set_xticks(epochs)
    ax.legend(fontsize="small")
    drawn = _lines(ax)
    drawn["selected_epoch"] = drawn_best
    _save(fig, path)
    return drawn


def plot_sampling(results, path):
    """Target (dashed) and realized (solid) share of the steps per task, per epoch."""
    history = [h for h in _history(results) if h.get("sampling")]
    if not history:
        raise ConfigError("results.json has no per-epoch sampling shares")
    fig, ax = plt.subplots(figsize=(6.4, 4))
    epochs = [h["epoch"] for h in history]
    for i, task in enumerate(_task_names(results, history)):
        color = f"C{i % 10}"
        ax.plot(epochs, [h["sampling"]["target"][task] for h in history], linestyle="--", marker=".",
                color=color, label=f"{task} target")
        ax.plot(epochs, [h["sampling"]["realized"][task] for h in history], linestyle="-", marker="o",
                color=color, label=f"{task} realized")
    ax.set(xlabel="epoch", ylabel="share of the epoch's steps", title="Task sampling: target vs realized")
    ax.set_xticks(epochs)
    ax.legend(fontsize="x-small", ncol=2)
    drawn = _lines(ax)
    _save(fig, path)
    return drawn


def plot_train_loss(results, path):
    """Mean training loss per epoch: all steps (thick) and each task's steps (thin)."""
    history = [h for h in _history(results) if h.get("train_loss") is not None]
    if not history:
        raise ConfigError("results.json has no per-epoch training loss")
    fig, ax = plt.subplots(figsize=(6.4, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], color="black", linewidth=2.5, marker="o", label="all steps")
    for task in _task_names(results, history):
        points = [(h["epoch"], h["task_train_loss"].get(task)) for h in history
                  if (h.get("task_train_loss") or {}).get(task) is not None]
        if points:
            ax.plot([e for e, _ in points], [v for _, v in points], linewidth=1, marker=".", label=task)
    ax.set(xlabel="epoch", ylabel="mean training loss", title="Training loss per epoch")
    ax.set_xticks(epochs)
    ax.legend(fontsize="small", ncol=2)
    drawn = _lines(ax)
    _save(fig, path)
    return drawn


def _axes_facts(ax):
    """What a panel says: title, axis labels, labelled lines."""
    return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "lines": _lines(ax)}


def plot_task_weights(results, path):
    """Bars: the mean weight the run's gradient combiner gave each task (results.json task_weights)."""
    weights = results.get("task_weights")
    if not weights:
        raise ConfigError("results.json has no task_weights (a run without --projection)")
    tasks = [t for t in _task_names(results, _history(results)) if t in weights] or list(weights)
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * len(tasks), 3.6))
    bars = ax.bar(tasks, [weights[t] for t in tasks], color=[f"C{i % 10}" for i in range(len(tasks))])
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")  # the plain sum's weight
    ax.set(xlabel="task", ylabel="mean weight of its gradient",
           title=f"Task weights: --projection {results.get('projection')}")
    ax.tick_params(axis="x", labelrotation=45, labelsize="small")
    drawn = dict(_axes_facts(ax), bars={t: float(b.get_height()) for t, b in zip(tasks, bars)})
    _save(fig, path)
    return drawn


def _weights_panel(ax, weights):
    """Each task's mean weight between diagnoses (diagnostics.read_weights), per diagnosis step."""
    for k, task in enumerate(weights["tasks"]):
        ax.plot(weights["steps"], weights["weight"][:, k], marker="o", markersize=3, label=task, color=f"C{k % 10}")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel("training step", fontsize="small")
    ax.set_ylabel("mean weight since the previous diagnosis", fontsize="small")
    ax.set_title(f"task weights ({weights['method']})", fontsize="medium")
    ax.legend(fontsize="x-small")
    return _axes_facts(ax)


def plot_task_cosines(diag, path):
    """Two task x task heatmaps over all shared parameters: the mean cosine over the run's
    diagnoses, and the share of diagnoses in which the pair conflicted (cos < 0); with a gradient
    combiner, a third panel: the weights it gave each task, per diagnosis step."""
    cos = diag["cos"][:, 0]  # [D, K, K], group ALL
    tasks = diag["tasks"]
    with warnings.catch_warnings():  # the diagonal (and a task with a zero gradient) is all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(cos, axis=0)
        share = np.nanmean(np.where(np.isnan(cos), np.nan, (cos < 0).astype(float)), axis=0)
    np.fill_diagonal(mean, 1.0)
    np.fill_diagonal(share, 0.0)
    k = len(tasks)
    weights = diag.get("weights")
    panels = 3 if weights else 2
    height = 0.6 + 0.7 * k
    fig, axes = plt.subplots(1, panels, figsize=(3.2 + 1.4 * k + 4.5, max(3.2, height)) if weights
                             else (3.2 + 1.4 * k, height))
    drawn = {"panels": panels}
    if weights:
        drawn["task weights"] = _weights_panel(axes[2], weights)
    for ax, (name, values, cmap, vmin) in zip(axes, (("mean cosine", mean, "RdBu", -1.0),
                                                     ("conflict share (cos < 0)", share, "Reds", 0.0))):
        image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=1.0)
        ax.set_xticks(range(k), tasks, rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(k), tasks, fontsize="small")
        ax.set_title(name, fontsize="medium")
        for a in range(k):
            for b in range(k):
                if a != b and not np.isnan(values[a, b]):
                    ax.text(b, a, f"{values[a, b]:.2f}", ha="center", va="center", fontsize="x-small")
        fig.colorbar(image, ax=ax, shrink=0.8)
        drawn[name] = np.asarray(image.get_array())
    fig.suptitle(f"Shared-parameter gradients, {len(diag['steps'])} diagnoses", fontsize="medium")
    _save(fig, path)
    return drawn


def plot_layer_cosines(diag, pair, path):
    """Cosine of one task pair's gradients per layer group (rows) x diagnosis step (columns)."""
    tasks = diag["tasks"]
    a, b = tasks.index(pair[0]), tasks.index(pair[1])
    rows = [g for g in diag["groups"] if g != diagnostics.ALL]
    values = np.stack([diag["cos"][:, diag["groups"].index(g), a, b] for g in rows])  # [G, D]
    steps = diag["steps"]
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.25 * len(steps)), 1.2 + 0.3 * len(rows)))
    image = ax.imshow(values, cmap="RdBu", vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(rows)), rows, fontsize="small")
    shown = range(0, len(steps), max(1, len(steps) // 12))
    ax.set_xticks(list(shown), [str(steps[i]) for i in shown], fontsize="small")
    ax.set(xlabel="training step", title=f"cos({pair[0]}, {pair[1]}) per layer group")
    fig.colorbar(image, ax=ax)
    drawn = np.asarray(image.get_array())
    _save(fig, path)
    return drawn


def conflicting_pairs(diag, top=TOP_PAIRS):
    """The `top` pairs with the lowest mean cosine over all shared parameters."""
    tasks, cos = diag["tasks"], diag["cos"][:, 0]
    scored = []
    for a in range(len(tasks)):
        for b in range(a + 1, len(tasks)):
            values = cos[:, a, b][~np.isnan(cos[:, a, b])]
            if len(values):
                scored.append((float(values.mean()), (tasks[a], tasks[b])))
    return [pair for _, pair in sorted(scored)[:top]]


def read_results(run_dir):
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{run_dir}: no results.json (not a run_multi_task.py output folder, or not finished)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def plot_run(run_dir, pairs=None):
    """Every picture of a run folder; returns {name: path} of the files written. `pairs`: task pairs
    for the layer pictures (default: those the run named with --diagnose_pairs, else the most
    conflicting)."""
    results = read_results(run_dir)
    out = os.path.join(run_dir, PLOTS_DIR)
    written = {}
    pictures = [("dev_scores", plot_dev_scores), ("average", plot_average), ("sampling", plot_sampling),
                ("train_loss", plot_train_loss)]
    if results.get("task_weights"):
        pictures.append(("task_weights", plot_task_weights))
    for name, draw in pictures:
        path = os.path.join(out, name + ".png")
        draw(results, path)
        written[name] = path
    diag = diagnostics.read_csvs(run_dir)
    if diag is not None:
        folder = os.path.join(run_dir, diagnostics.OUTPUT_DIR)
        written["task_cosines"] = os.path.join(folder, "task_cosines.png")
        plot_task_cosines(diag, written["task_cosines"])
        if pairs is None:
            named = (results.get("diagnostics") or {}).get("named_pairs") or []
            pairs = [tuple(p) for p in named] or conflicting_pairs(diag)
        for pair in pairs:
            for task in pair:
                if task not in diag["tasks"]:
                    raise ConfigError(f"pair {pair[0]}:{pair[1]}: '{task}' is not a task of the diagnostics "
                                      f"({', '.join(diag['tasks'])})")
            name = f"layers_{pair[0]}~{pair[1]}"
            written[name] = os.path.join(folder, name + ".png")
            plot_layer_cosines(diag, pair, written[name])
    return written
