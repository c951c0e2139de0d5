"""A multi-task model on disk beside its task metadata: best/ with task_labels.json, each task's own-best
modules and head (per_task_best/), their combination, and the checks when a saved model's tasks are
used again (--no_train)."""
import json
import os

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

import file_utils
import modeling
import training
from file_utils import TASK_LABELS_FILE, ConfigError, atomic_write_json

from .parameters import task_parameter_names


def task_labels(tasks):
    """{task: label strings} of the tasks whose head needs them to be read back (e.g. NER tags)."""
    return {t.name: list(t.labels) for t in tasks if t.labels is not None}


def save_with_task_labels(model, directory, tokenizer, tasks, carried_labels=None):
    """training.save_model + task_labels.json (what the heads' outputs mean, for a later run);
    `carried_labels`: {task: labels} of tasks the model holds but this run does not train."""
    training.save_model(model, directory, tokenizer)
    atomic_write_json(os.path.join(directory, TASK_LABELS_FILE), dict(carried_labels or {}, **task_labels(tasks)))


def check_saved_tasks(model, opts, tasks, saved_labels, reference_order, allow_random_heads,
                      flag="--allow_random_heads"):
    """After loading a fine-tuned model for the run's `tasks` by name (--no_train): refuse a task
    whose head or task modules are fresh (unless `allow_random_heads`), naming the tasks the model
    has (`reference_order`: the paper's, for a 2019 checkpoint); put each classification head's rows
    in the task's label order when `saved_labels` ({task: labels}, task_labels.json) has them in
    another (labels matched by name)."""
    _, merged, weights_path = modeling.read_pretrained(opts.model_dir, opts.config)
    saved_names = list(merged.get("task_names") or [])
    fresh = modeling.fresh_task_parts(model, [t.name for t in tasks])
    if fresh and not allow_random_heads:
        has = modeling.saved_task_names(weights_path, saved_names, reference_order)
        hint = " (a Hugging Face head has no task name: give exactly one task with --tasks)" \
            if has and has[0].startswith("(") and len(tasks) > 1 else ""
        raise ConfigError(f"{opts.model_dir}: no trained head or task modules for {', '.join(fresh)} (the model's "
                          f"tasks: {', '.join(has) or 'none'}){hint}; pass {flag} to evaluate fresh, random ones")
    saved = saved_labels if saved_names else {}
    for task_id, task in enumerate(tasks):
        theirs, ours = saved.get(task.name), task.labels
        if theirs is None or ours is None or task.head_type != "classification" or task.name in fresh:
            continue
        theirs = [str(x) for x in theirs]
        if sorted(theirs) != sorted(ours):
            raise ConfigError(f"{opts.model_dir}: task {task.name}'s labels were {', '.join(theirs)} "
                              f"({TASK_LABELS_FILE}), not {', '.join(ours)}")
        if theirs != list(ours):
            head = model.heads[task_id].classifier
            order = [theirs.index(label) for label in ours]
            with torch.no_grad():
                head.weight.copy_(head.weight[order].clone())
                head.bias.copy_(head.bias[order].clone())


def recover_output_dirs(output_dir):
    """On --resume: finish any per_task_best/<task>/ swap a kill interrupted (best/ is the engine's)."""
    per_task = os.path.join(output_dir, "per_task_best")
    if os.path.isdir(per_task):
        for name in {n[:-4] if n.endswith(".old") else n for n in os.listdir(per_task)}:
            file_utils.recover_dir(os.path.join(per_task, name))


def _write_safetensors(path, state):
    """safetensors' save_file, through atomic_open: on a full disk save_file raises a SafetensorError
    that names no file; this is an OSError naming `path`. The tensors are one task's (MBs)."""
    with file_utils.atomic_open(path, "wb") as f:
        f.write(safetensors_bytes(state))


def save_task_parameters(model, task_id, task_name, directory, info):
    """Save ONLY task `task_id`'s parameters (its modules + head) and `info` (epoch, score)."""
    names = task_parameter_names(model, task_id)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items() if k in names}

    def write(tmp):
        _write_safetensors(os.path.join(tmp, "task_parameters.safetensors"), state)
        atomic_write_json(os.path.join(tmp, "task_info.json"), dict(
            info, task=task_name, task_id=task_id, num_parameters=sum(v.numel() for v in state.values())))
    file_utils.replace_dir_atomically(directory, write)


def assemble_per_task_best(model, per_task_dir, task_names):
    """Load each task's own-best parameters from per_task_dir/<task>/ into `model` (in place).

    `model` should hold the selected joint model (output_dir/best/); returns {task: epoch}.
    """
    epochs = {}
    own = model.state_dict()
    for task_id, task in enumerate(task_names):
        folder = os.path.join(per_task_dir, task)
        path = os.path.join(folder, "task_parameters.safetensors")
        if not os.path.exists(path):
            raise ConfigError(f"no per-task best parameters for '{task}' in {folder}")
        with open(os.path.join(folder, "task_info.json"), encoding="utf-8") as f:
            info = json.load(f)
        if int(info["task_id"]) != task_id:
            raise ConfigError(f"{folder}: saved for task id {info['task_id']}, expected {task_id}")
        state = load_file(path)
        for name, value in state.items():
            if name not in own or own[name].shape != value.shape:
                raise ConfigError(f"{path}: parameter {name} does not fit the model")
            own[name].copy_(value)
        epochs[task] = int(info["epoch"])
    return epochs


def write_per_task_combined(output_dir, tasks, tokenizer=None):
    """best/ (joint model) + each task's own-best modules and head -> per_task_best/combined/."""
    model = modeling.BertForMultiTask.from_pretrained(os.path.join(output_dir, "best"))
    epochs = assemble_per_task_best(model, os.path.join(output_dir, "per_task_best"), [t.name for t in tasks])
    target = os.path.join(output_dir, "per_task_best", "combined")

    def write(tmp):
        save_with_task_labels(model, tmp, tokenizer, tasks)
        atomic_write_json(os.path.join(tmp, "selection.json"), {"task_epochs": epochs, "shared_from": "best"})
    file_utils.replace_dir_atomically(target, write)
    return {"path": os.path.relpath(target, output_dir), "task_epochs": epochs}
