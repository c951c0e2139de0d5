"""One task's modules and head as a file (scripts/export_adapter.py, scripts/import_adapter.py), checked
against the base encoder's fingerprint on import."""
import hashlib
import json
import logging
import os

import torch
from safetensors.torch import load_file

import file_utils
import modeling
from file_utils import ConfigError, atomic_write_json

from . import peft_files
from .saving import _write_safetensors

ADAPTER_WEIGHTS = "adapter.safetensors"  # the task's tensors under portable names (no task index)
ADAPTER_INFO = "adapter.json"            # task, head, labels, adapter config, the base model's identity
ADAPTER_FORMAT = 1


def encoder_fingerprint(model):
    """sha256 over the shared parameters (embeddings, encoder layers with their LayerNorms, pooler):
    name, dtype, shape and bytes of each, in name order. Equal fingerprints = the same base model
    for every task's modules, whatever file or layout it was loaded from."""
    digest = hashlib.sha256()
    for name, p in sorted(getattr(model, "module", model).named_shared_parameters()):
        tensor = p.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _adapter_keys(config):
    """The config keys that decide which task modules exist and their shapes (not num_tasks)."""
    return {k: getattr(config, k) for k in modeling.ADAPTER_KEYS if k != "num_tasks"}


def model_for_export(model_dir, task, out_dir):
    """(the fine-tuned multi-task model in `model_dir`, the id of its task `task`), once `out_dir` is
    known to be new or empty: what every export starts from (ours and PEFT's)."""
    model = modeling.BertForMultiTask.from_pretrained(model_dir)
    names = list(model.config.task_names or [])
    if task not in names:
        raise ConfigError(f"{model_dir}: no task '{task}' (its tasks: {', '.join(names) or 'none'})")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"{out_dir} exists and is not empty; export into a new folder")
    return model, names.index(task)


def export_task_adapter(model_dir, task, out_dir, labels=None):
    """Write task `task` of the fine-tuned multi-task model in `model_dir` (its modules + head) as
    out_dir/adapter.safetensors + adapter.json (`labels`: the head's label strings, kept there).
    Returns the info dict (with parameter counts)."""
    model, task_id = model_for_export(model_dir, task, out_dir)
    own = model.state_dict()
    state = {portable: own[name].detach().to("cpu").contiguous().clone()
             for portable, name in modeling.task_parameter_pairs(model, task_id)}
    info = {"format": ADAPTER_FORMAT, "task": task, "head_type": model.task_types[task_id],
            "num_labels": model.task_num_labels[task_id], "labels": labels,
            "adapter_config": _adapter_keys(model.config),
            "base_model": {"encoder_sha256": encoder_fingerprint(model), "source": os.path.abspath(model_dir),
                           **{k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers",
                                                                    "vocab_size")}},
            "num_parameters": sum(v.numel() for v in state.values()),
            "base_parameters": sum(p.numel() for p in model.shared_parameters())}

    def write(tmp):
        _write_safetensors(os.path.join(tmp, ADAPTER_WEIGHTS), state)
        atomic_write_json(os.path.join(tmp, ADAPTER_INFO), info)
    file_utils.replace_dir_atomically(out_dir, write)
    return info


def _check_adapter_info(info):
    """Why the adapter.json object `info` is not one export_task_adapter writes, or None."""
    if not isinstance(info, dict) or info.get("format") != ADAPTER_FORMAT:
        return f"format {info.get('format') if isinstance(info, dict) else None!r}, expected {ADAPTER_FORMAT}"
    for key in ("task", "head_type", "num_labels", "adapter_config", "base_model"):
        if key not in info:
            return f"no '{key}'"

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    base, config, labels = info["base_model"], info["adapter_config"], info.get("labels")
    checks = [
        ("task", isinstance(info["task"], str) and info["task"].strip() != "", "a task name"),
        ("head_type", info["head_type"] in modeling.HEAD_TYPES, f"one of {', '.join(modeling.HEAD_TYPES)}"),
        ("num_labels", is_int(info["num_labels"]), "an integer >= 0"),
        ("num_parameters", is_int(info.get("num_parameters", 0)), "an integer >= 0"),
        ("labels", labels is None or (isinstance(labels, list) and all(isinstance(x, str) for x in labels)),
         "a list of label strings or null"),
        ("adapter_config", isinstance(config, dict) and set(config) <= set(modeling.ADAPTER_KEYS) - {"num_tasks"},
         f"an object of adapter keys ({', '.join(k for k in modeling.ADAPTER_KEYS if k != 'num_tasks')})"),
        ("base_model", isinstance(base, dict) and isinstance(base.get("encoder_sha256"), str),
         'an object with "encoder_sha256"'),
    ]
    for key, ok, expected in checks:
        if not ok:
            return f"'{key}' must be {expected}, got {json.dumps(info.get(key))[:80]}"
    if labels is not None and info["head_type"] == "classification" and len(labels) != info["num_labels"]:
        return f"{len(labels)} 'labels' for a head of 'num_labels' {info['num_labels']}"
    return None


def read_task_adapter(adapter_dir):
    """(info, tensors) of an exported adapter folder; a missing, foreign or malformed file (wrongly
    typed fields, a truncated or non-safetensors weights file) is a ConfigError naming it."""
    path = os.path.join(adapter_dir, ADAPTER_INFO)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        problem = _check_adapter_info(info)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        problem = str(exc)
    if problem:
        raise ConfigError(f"{path}: not an adapter file of export_adapter.py ({problem})")
    weights = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    try:
        tensors = load_file(weights)
    except Exception as exc:  # safetensors raises its own error types (SafetensorError) besides OSError
        raise ConfigError(f"{weights}: not an adapter weights file of export_adapter.py "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if "num_parameters" in info and sum(t.numel() for t in tensors.values()) != info["num_parameters"]:
        raise ConfigError(f"{weights}: holds {sum(t.numel() for t in tensors.values()):,} parameters but {path} "
                          f"says {info['num_parameters']:,} (files of two different exports?)")
    return info, tensors


def _in_task_label_order(info, tensors, adapter_dir, ours):
    """A classification head in the order of the task's own labels `ours` (rows matched by label name,
    in place); the adapter's labels must be those, else a ConfigError naming the difference. Without
    `ours` (a task whose labels come from its data) the adapter's labels become the task's."""
    labels = info.get("labels")
    if labels is None or ours is None or info["head_type"] != "classification":
        return
    if sorted(labels) != sorted(ours) or len(set(labels)) != len(labels):
        only = [x for x in labels if x not in ours]
        missing = [x for x in ours if x not in labels]
        raise ConfigError(f"{adapter_dir}: its labels {', '.join(labels)} are not task {info['task']}'s "
                          f"{', '.join(ours)} (only in the adapter: {', '.join(only) or 'none'}; missing: "
                          f"{', '.join(missing) or 'none'})")
    order = [labels.index(label) for label in ours]
    for name in ("heads.classifier.weight", "heads.classifier.bias"):
        tensors[name] = tensors[name][order].clone()
    info["labels"] = list(ours)


def import_task_adapter(model_dir, adapter_dir, task=None, own_labels=None, num_choices=None):
    """The model in `model_dir` (a multi-task model, or a plain BERT) with the exported task added as
    its last task -> (model, the adapter's info). Refuses an adapter made on another base model
    (encoder fingerprint), with other adapter settings, or for a task the model already has.
    A PEFT LoRA / (IA)^3 folder (peft_files) has no task name and no fingerprint: `task` names it, its
    labels come from an id2label (peft_labels), and a choice head's num_labels is `num_choices` (a PEFT
    folder knows no number of choices). `own_labels(task name)`: the task's own label names (a GLUE
    task's; multitask/ knows no task) or None: the head is put in their order, matched by name (other
    names: ConfigError)."""
    if peft_files.is_peft_folder(adapter_dir):
        if not task:
            raise ConfigError(f"{adapter_dir} is a PEFT adapter folder, which names no task: give --task NAME")
        info, tensors = peft_files.read_peft_adapter(adapter_dir, task)
        if info["head_type"] == "choice" and num_choices:
            info["num_labels"] = int(num_choices)
    else:
        info, tensors = read_task_adapter(adapter_dir)
    _, merged, weights_path = modeling.read_pretrained(model_dir)
    names = list(merged.get("task_names") or [])
    task = info["task"]
    if task in names:
        raise ConfigError(f"{model_dir} already has a task '{task}'")
    if names:  # the new task gets the same kind of modules as the model's tasks
        ours = _adapter_keys(modeling.BertConfig.from_dict(merged))
        differ = [f"{k} {v!r} (adapter: {info['adapter_config'].get(k)!r})" for k, v in ours.items()
                  if info["adapter_config"].get(k) != v]
        if differ:
            raise ConfigError(f"{adapter_dir}: made with other task modules than {model_dir} has: {'; '.join(differ)}")
    merged.update(info["adapter_config"])
    merged.update(task_names=names + [task], task_num_labels=list(merged.get("task_num_labels") or []) +
                  [int(info["num_labels"])], task_types=list(merged.get("task_types") or []) + [info["head_type"]],
                  num_tasks=len(names) + 1)
    try:
        config = modeling.BertConfig.from_dict(merged)
    except ConfigError as exc:  # a value of the adapter's adapter_config (its keys were checked on reading)
        raise ConfigError(f"{os.path.join(adapter_dir, ADAPTER_INFO)}: 'adapter_config' does not fit {model_dir}: "
                          f"{exc}") from None
    model = modeling.BertForMultiTask(config)
    quiet = logging.getLogger(modeling.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "newly initialised" note would name the modules filled in below
    try:
        modeling.load_weights(model, weights_path)
    finally:
        quiet.setLevel(level)
    want, have = info["base_model"]["encoder_sha256"], encoder_fingerprint(model)
    if want is not None and want != have:
        raise ConfigError(f"{adapter_dir}: exported from another base model (encoder sha256 {want[:16]}..., "
                          f"{model_dir} has {have[:16]}...); import it onto the model it came from, or one with the "
                          "same encoder weights")
    _in_task_label_order(info, tensors, adapter_dir, own_labels(task) if own_labels else None)
    pairs = dict(modeling.task_parameter_pairs(model, len(names)))
    if set(pairs) != set(tensors):
        missing, extra = sorted(set(pairs) - set(tensors)), sorted(set(tensors) - set(pairs))
        raise ConfigError(f"{adapter_dir}: its tensors do not fit the task modules of {model_dir} "
                          f"(missing {missing[:3]}, unexpected {extra[:3]})")
    own = model.state_dict()
    with torch.no_grad():
        for portable, name in pairs.items():
            if own[name].shape != tensors[portable].shape:
                raise ConfigError(f"{adapter_dir}: {portable} has shape {tuple(tensors[portable].shape)}, the model "
                                  f"needs {tuple(own[name].shape)}")
            own[name].copy_(tensors[portable])
    return model, info
