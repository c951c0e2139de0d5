"""Checkpoints in and out of the model (modeling.py): folders, files, names (docs/model.md#checkpoints-in-and-out).

- Finding a model folder's files and merging its config with an adapter config (`read_pretrained`,
  `resolve_adapter_config`, the bundled configs/ by short name).
- Reading weights (`load_state_dict_file`: safetensors, a weights-only torch file or a TensorFlow
  checkpoint) and copying them into a model under our names (`load_weights`): Hugging Face, Google
  and the PALs reference code's names, tasks matched by name (`match_saved_tasks`), and the model
  surgery a reference checkpoint needs (its heads' label order).
- Writing a model folder (`write_pretrained`), in the Hugging Face layout where transformers runs it.
- The 2019 scripts' loose files assembled into a folder (`assemble_model_folder`, `with_hidden_size_aug`).

This module sits above modeling.py (it imports the model; modeling's from_pretrained/save_pretrained
call into it), and knows nothing about task files or the CLI.
"""
import functools
import json
import logging
import os
import re
import shutil
from collections import OrderedDict

import torch
from safetensors.torch import load_file as safetensors_load_file
from safetensors.torch import save as safetensors_save
from torch import nn

import file_utils
import modeling
import task_adapters
import tf_checkpoint
from file_utils import ConfigError, DataError, atomic_open, atomic_write_json, resolve_model_dir, utf8_error
from model_config import ADAPTER_KEYS, OWN_MODEL_TYPE, TASK_KEYS, BertConfig
from modeling import BertForMultiTask, BertModel
from task_adapters import TaskModuleList

logger = logging.getLogger(__name__)

CONFIG_NAMES = ("config.json", "bert_config.json")
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
# Standard keys that fix tensor shapes or the function computed: an adapter config must agree with
# the checkpoint on these. (Dropout/init keys of an adapter config simply override the checkpoint's.)
STRUCTURAL_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                   "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
                   "layer_norm_eps")
# Short names of the bundled adapter configs (`--config pals`). configs/ holds each for bert-base
# (hidden 768, `<name>_config.json`) and for the bundled MiniLM (hidden 384, `minilm_<name>_config.json`).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
ADAPTER_CONFIGS = ("pals", "low_rank", "top_attn", "top_bert_layer", "houlsby", "houlsby_plus_pals",
                   "houlsby_original", "lhuc", "lora", "lora_budget", "ia3",
                   "parallel_adapter", "parallel_adapter_budget", "prefix", "prefix_budget")
_CONFIG_PREFIX_BY_HIDDEN = {768: "", 384: "minilm_"}


def adapter_config_path(name, hidden_size):
    """configs/ file of the bundled adapter config `name` for a model of width `hidden_size`."""
    prefix = _CONFIG_PREFIX_BY_HIDDEN.get(hidden_size)
    path = os.path.join(CONFIGS_DIR, f"{prefix}{name}_config.json") if prefix is not None else None
    if path is None or not os.path.isfile(path):
        raise ConfigError(f"no bundled '{name}' config for hidden size {hidden_size}: pass a config JSON file")
    return path


def resolve_adapter_config(config, model_dir):
    """--config value -> a config path (or BertConfig), or None for 'none' / no adapters.

    A short name (ADAPTER_CONFIGS) picks the configs/ file matching the model folder's width."""
    if config is None or isinstance(config, BertConfig):
        return config
    if str(config).lower() == "none":
        return None
    if config in ADAPTER_CONFIGS:
        hidden = BertConfig.from_json_file(_find_file(model_dir, CONFIG_NAMES, "config.json/bert_config.json"))
        return adapter_config_path(config, hidden.hidden_size)
    if not os.path.isfile(config):
        raise ConfigError(f"--config {config}: no such file (or a bundled name: {', '.join(ADAPTER_CONFIGS)}, none)")
    return config


def _config_hint(adapter_config, ckpt_config):
    """The end of a size-mismatch error: a config file that exists and fits the checkpoint's width."""
    path = getattr(adapter_config, "_path", None)
    hidden = ckpt_config.hidden_size
    if path:
        stem = os.path.basename(path)
        for prefix in _CONFIG_PREFIX_BY_HIDDEN.values():
            if prefix and stem.startswith(prefix):
                stem = stem[len(prefix):]
        stem = stem[:-len("_config.json")] if stem.endswith("_config.json") else None
        candidates = []
        if stem in ADAPTER_CONFIGS and _CONFIG_PREFIX_BY_HIDDEN.get(hidden) is not None:
            candidates.append(os.path.join(CONFIGS_DIR, f"{_CONFIG_PREFIX_BY_HIDDEN[hidden]}{stem}_config.json"))
        prefix = _CONFIG_PREFIX_BY_HIDDEN.get(hidden)
        if prefix:
            candidates.append(os.path.join(os.path.dirname(path) or ".", prefix + os.path.basename(path)))
        for candidate in candidates:
            if os.path.isfile(candidate) and os.path.abspath(candidate) != os.path.abspath(path):
                short = f" (or --config {stem})" if candidate.startswith(CONFIGS_DIR) else ""
                return f"; for a model of hidden size {hidden} use {candidate}{short}"
    return (f"; use an adapter config written for this checkpoint's sizes "
            f"(or a short name: {', '.join(ADAPTER_CONFIGS)})")


def _find_file(directory, names, what):
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise ConfigError(f"{directory}: no {what} found (looked for {', '.join(names)})")


def _merge_configs(ckpt_config, adapter_config):
    """Checkpoint config + adapter config: adapter keys (and explicit dropout/init keys) come from the
    adapter config; its explicit structural keys must equal the checkpoint's."""
    where = getattr(adapter_config, "_path", "the adapter config")
    for key in STRUCTURAL_KEYS:
        if key in adapter_config._explicit and getattr(adapter_config, key) != getattr(ckpt_config, key):
            raise ConfigError(
                f"{where}: '{key}' is {getattr(adapter_config, key)!r} but the checkpoint has "
                f"{getattr(ckpt_config, key)!r}{_config_hint(adapter_config, ckpt_config)}")
    merged = ckpt_config.to_dict()
    for key in ADAPTER_KEYS:
        merged[key] = getattr(adapter_config, key)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "classifier_dropout"):
        if key in adapter_config._explicit:
            merged[key] = getattr(adapter_config, key)
    for key in TASK_KEYS:  # a checkpoint's task metadata wins over the adapter config's
        if merged[key] is None:
            merged[key] = getattr(adapter_config, key)
    lists = [merged[k] for k in TASK_KEYS if merged[k] is not None]
    merged["num_tasks"] = len(lists[0]) if lists else adapter_config.num_tasks
    return merged


def read_pretrained(name_or_path, config=None):
    """Model folder -> (folder, merged config dict, weights path). `config`: adapter config (path or BertConfig).

    The weights are model.safetensors or pytorch_model.bin, else a Google TensorFlow checkpoint in the
    folder (`*.ckpt.index` + data shards, or a `checkpoint` file naming the prefix): then the weights
    path is the checkpoint prefix, read by tf_checkpoint without TensorFlow."""
    directory = resolve_model_dir(name_or_path)
    ckpt_config = BertConfig.from_json_file(_find_file(directory, CONFIG_NAMES, "config.json/bert_config.json"))
    config = resolve_adapter_config(config, directory)
    if config is None:
        merged = ckpt_config.to_dict()
    else:
        if not isinstance(config, BertConfig):
            config = BertConfig.from_json_file(config)
        merged = _merge_configs(ckpt_config, config)
    try:
        weights_path = _find_file(directory, WEIGHTS_NAMES, "weights")
    except ConfigError:
        weights_path = tf_checkpoint.find_tf_checkpoint(directory)
        if weights_path is None:
            raise ConfigError(f"{directory}: no weights found (looked for {', '.join(WEIGHTS_NAMES)} and a "
                              "TensorFlow checkpoint *.ckpt.index)") from None
    return directory, merged, weights_path


def load_pretrained(cls, name_or_path, config=None, task_num_labels=None, task_types=None, task_names=None,
                    allow_random_init=False, match_tasks=None, reference_head_rows=None):
    """The body of modeling.BertModel.from_pretrained / BertForMultiTask.from_pretrained (see there):
    the model `cls` built from the merged config, with the checkpoint's weights loaded."""
    _, merged, weights_path = read_pretrained(name_or_path, config)
    if not issubclass(cls, BertForMultiTask):
        model = cls(BertConfig.from_dict(merged))
        load_weights(model, weights_path, allow_random_init)
        return model
    saved_names = list(merged.get("task_names") or [])
    if task_num_labels is not None:
        for key in TASK_KEYS:
            merged[key] = None
        merged["num_tasks"] = len(task_num_labels)
    model = cls(BertConfig.from_dict(merged), task_num_labels, task_types, task_names)
    task_map = None
    if match_tasks is not None:
        task_map = functools.partial(match_saved_tasks, model.config.task_names, saved_names, match_tasks)
    load_weights(model, weights_path, allow_random_init, task_map=task_map, reference_head_rows=reference_head_rows)
    return model


def load_state_dict_file(path):
    """Read model.safetensors, pytorch_model.bin (torch.load with weights_only=True: no code runs) or a
    TensorFlow checkpoint prefix (tf_checkpoint: Google's names mapped to Hugging Face names)."""
    if not path.endswith((".safetensors", ".bin", ".pt", ".pth")) and tf_checkpoint.find_tf_checkpoint(path):
        state, skipped = tf_checkpoint.load_tf_checkpoint(path)
        if skipped:
            logger.info("%s: skipped %d TensorFlow variables that are not model weights (optimizer slots, "
                        "global_step, ...)", path, len(skipped))
        return state
    if path.endswith(".safetensors"):
        try:
            return safetensors_load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ConfigError(f"{path}: cannot read safetensors weights: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: refusing or unable to load weights (only plain tensors are accepted, "
                          f"torch.load weights_only=True): {str(exc).splitlines()[0]}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _compress_names(names):
    """Summarise key lists: layer numbers -> '*', so 12 identical layers print once (with a count)."""
    counts = OrderedDict()
    for name in sorted(names):
        pattern = re.sub(r"\.\d+\.", ".*.", name)
        counts[pattern] = counts.get(pattern, 0) + 1
    return ", ".join(p if c == 1 else f"{p} (x{c})" for p, c in counts.items())


# The PALs reference code (Bert-n-Pals modeling.py) -> our names of the same modules; applied to keys
# with the `bert.` prefix of its BertForMultiTask (a `module.` prefix of DataParallel is stripped
# first). Its PAL layers also list the shared V^E / V^D under every layer (module aliases of
# `mult_aug_dense`): those copies are skipped.
REFERENCE_NAMES = [
    (r"^bert\.encoder\.mult_aug_dense\.(\d+)\.", r"bert.encoder.pal_encoders.\1."),
    (r"^bert\.encoder\.mult_aug_dense2\.(\d+)\.", r"bert.encoder.pal_decoders.\1."),
    (r"^(bert\.encoder\.layer\.\d+\.(?:attention\.output\.|output\.)?)multi_layers\.(\d+)\.attn\.",
     r"\1adapters.\2.attention."),
    (r"^(bert\.encoder\.layer\.\d+\.(?:attention\.output\.|output\.)?)multi_layers\.(\d+)\.aug_dense\.",
     r"\1adapters.\2.down."),
    (r"^(bert\.encoder\.layer\.\d+\.(?:attention\.output\.|output\.)?)multi_layers\.(\d+)\.aug_dense2\.",
     r"\1adapters.\2.up."),
    (r"^(bert\.encoder\.layer\.\d+\.)multi_lhuc\.(\d+)\.lhuc$", r"\1lhuc.\2.weight"),
    (r"^bert\.encoder\.mult_dense\.(\d+)\.", r"bert.encoder.top.\1.down."),
    (r"^bert\.encoder\.mult_dense2\.(\d+)\.", r"bert.encoder.top.\1.up."),
    (r"^bert\.encoder\.multi_layers\.(\d+)\.(\d+)\.", r"bert.encoder.top.\1.blocks.\2."),  # top attention
    (r"^bert\.encoder\.multi_layers\.(\d+)\.", r"bert.encoder.top.\1."),                      # top BERT layer
    (r"^classifier\.(\d+)\.", r"heads.\1.classifier."),
]
REFERENCE_NAMES = [(re.compile(p), r) for p, r in REFERENCE_NAMES]


def _reference_name(name, own):
    """Our name for a key of a Bert-n-Pals checkpoint, or `name` unchanged when no rule applies."""
    for pattern, replacement in REFERENCE_NAMES:
        if pattern.search(name):
            mapped = pattern.sub(replacement, name)
            # PAL layers repeat the shared V^E/V^D of their task: no parameter of ours has that name
            # (task 0 stands for every task: a task map may move task N to another id)
            if mapped.endswith((".down.weight", ".down.bias", ".up.weight", ".up.bias")) and ".adapters." in mapped \
                    and re.sub(r"\.adapters\.\d+\.", ".adapters.0.", mapped) not in own:
                return None
            return mapped
    return name


def _our_name(key, model, own, pretrain_task, hf_head_is_task_0=False):
    """A checkpoint key -> this model's state-dict name (None: skip it silently).

    Accepts Hugging Face names with or without the `bert.` prefix, the old `gamma`/`beta`
    LayerNorm names, HF pre-training heads (`cls.*`, onto our pretraining head), a single-task
    HF head (`classifier.*`, `qa_outputs.*`, onto task 0's head when the shapes fit) and the
    adapter and head names of the PALs reference code (REFERENCE_NAMES)."""
    is_multitask = isinstance(model, BertForMultiTask)
    name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
    if name.startswith("module."):  # saved from DataParallel / DDP
        name = name[len("module."):]
    if is_multitask:
        name = _reference_name(name, own)
        if name is None:
            return None
    if name.endswith("embeddings.position_ids"):
        return None  # an HF buffer, recomputed on the fly here
    if name.startswith(("embeddings.", "encoder.", "pooler.")):
        name = "bert." + name
    if not is_multitask and name.startswith("bert."):
        name = name[len("bert."):]
    if is_multitask and name.startswith("cls.") and pretrain_task is not None:
        name = f"heads.{pretrain_task}." + name[len("cls."):]
        if name.endswith("predictions.decoder.weight"):
            return None  # tied to the word embeddings
        if name.endswith("predictions.decoder.bias"):
            name = name.replace("predictions.decoder.bias", "predictions.bias")
    if is_multitask and name.startswith(("classifier.", "qa_outputs.")):
        target = "heads.0." + name
        if target in own or hf_head_is_task_0:  # hf_head_is_task_0: checkpoint task 0, moved by a task map
            name = target
    return name


def _encoder_names(model):
    """State-dict names of the plain BERT encoder (embeddings + layers, not adapters, heads or pooler)."""
    specific = set().union(*modeling.task_specific_parameter_names(model).values())
    return [n for n, _ in model.named_parameters()
            if n not in specific and ".pooler." not in f".{n}" and not n.startswith("heads.")]


def load_weights(model, weights_path, allow_random_init=False, task_map=None, reference_head_rows=None):
    """Copy checkpoint tensors into `model`; one warning lists what was new or unused.

    Every encoder weight (embeddings and layers) must come from the checkpoint: a file whose keys
    do not fit would otherwise train a random model without a word. `allow_random_init` permits
    that for deliberate from-scratch runs. `task_map(keys)` -> {checkpoint task id: model task id}:
    task modules and heads move to their task's id (those of other tasks are not loaded).
    `reference_head_rows` ({task name: row order}): see _reorder_reference_heads."""
    state = load_state_dict_file(weights_path)
    own = model.state_dict()
    if task_map is not None:
        task_map = task_map(list(state))
        prefixes = ["heads"] + [p for p, m in model.named_modules() if isinstance(m, TaskModuleList)]
    pretrain_task = None
    if isinstance(model, BertForMultiTask) and "pretraining" in model.task_types:
        pretrain_task = model.task_types.index("pretraining")
    mapped, unexpected, mismatched = {}, [], []
    for key, tensor in state.items():
        name = _our_name(key, model, own, pretrain_task, hf_head_is_task_0=task_map is not None)
        if name is not None and task_map is not None:
            name = _task_moved(name, prefixes, task_map)
        if name is None or name in mapped:
            continue
        if name not in own:
            unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(own[name].shape):
            if name.startswith("heads.0.") and not key.startswith("heads."):
                unexpected.append(key)  # a single-task HF head of another size: task 0 gets a fresh one
                continue
            mismatched.append(f"checkpoint tensor '{key}' has shape {tuple(tensor.shape)} "
                              f"but the model's '{name}' has shape {tuple(own[name].shape)}")
            continue
        mapped[name] = tensor
    if mismatched:
        raise ConfigError(f"{weights_path}: " + "; ".join(mismatched))
    missing_encoder = [n for n in _encoder_names(model) if n not in mapped]
    if missing_encoder and not allow_random_init:
        sample = _compress_names(list(state)[:8]) or "none"
        raise ConfigError(
            f"{weights_path}: {len(missing_encoder)} encoder weights are not in the checkpoint "
            f"({_compress_names(missing_encoder)[:300]}); its keys look like: {sample[:300]}. Not a BERT "
            "checkpoint of this size? Pass --allow_random_init to train those weights from scratch")
    missing = [k for k in own if k not in mapped]
    model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        parts = [f"loaded {len(mapped)} tensors from {weights_path}"]
        if missing:
            parts.append(f"newly initialised (not in checkpoint): {_compress_names(missing)}")
        if unexpected:
            parts.append(f"unused checkpoint keys: {_compress_names(unexpected)}")
        logger.warning("; ".join(parts))
    model._source_dir = os.path.dirname(os.path.abspath(weights_path))
    model._newly_initialised = missing
    if reference_head_rows:
        _reorder_reference_heads(model, list(state), task_map, reference_head_rows)
    return missing, unexpected


def _reorder_reference_heads(model, keys, task_map, rows_by_name):
    """Heads saved by the PALs reference code (`classifier.N`) have the rows of its label order; where a
    task's differs from ours (`rows_by_name`: {task name: row order}, tasks.glue.reference_head_rows:
    QNLI and RTE), the rows are put in our order, else every prediction of that task is flipped."""
    saved = sorted({int(m.group(2)) for m in (re.match(r"^(module\.)?classifier\.(\d+)\.", k) for k in keys) if m})
    task_ids = saved if task_map is None else sorted(task_map[i] for i in saved if i in task_map)
    names = model.config.task_names or []
    with torch.no_grad():
        for task_id in task_ids:
            rows = rows_by_name.get(names[task_id]) if task_id < len(names) else None
            if rows is not None:
                head = model.heads[task_id].classifier
                head.weight.copy_(head.weight[rows].clone())
                head.bias.copy_(head.bias[rows].clone())
                logger.info("%s: head rows put in our label order (the 2019 checkpoint's rows in order %s)",
                            names[task_id], list(rows))


def _task_moved(name, prefixes, task_map):
    """`<prefix>.K.rest` of checkpoint task K -> `<prefix>.<its id here>.rest`; None: not a task here."""
    for prefix in prefixes:
        head, dot, rest = name[len(prefix) + 1:].partition(".")
        if name.startswith(prefix + ".") and head.isdigit() and dot:
            target = task_map.get(int(head))
            return None if target is None else f"{prefix}.{target}.{rest}"
    return name


def match_saved_tasks(names, saved_names, reference_order, keys):
    """{checkpoint task id: id in `names`} by task name: the checkpoint's own task_names; else the
    heads of a Bert-n-Pals checkpoint (`classifier.N`), whose N is the position in `reference_order`
    (the paper's); else a single-task Hugging Face head (`classifier.*`/`qa_outputs.*`), task 0 of
    the checkpoint, only when one task is asked for. A task the checkpoint lacks is left out of the
    map (its modules and head stay fresh: callers refuse or allow that, see fresh_task_parts)."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    if saved_names:
        return {saved_names.index(n): i for i, n in enumerate(names) if n in saved_names}
    reference = sorted({int(m.group(1)) for m in (re.match(r"^classifier\.(\d+)\.", k) for k in keys) if m})
    if reference:
        saved = [reference_order[i] for i in reference if i < len(reference_order)]
        return {reference_order.index(n): i for i, n in enumerate(names) if n in saved}
    if len(names) == 1 and any(k.startswith(("classifier.", "qa_outputs.")) for k in keys):
        return {0: 0}
    return {}


def saved_task_names(weights_path, saved_names, reference_order):
    """The task names a checkpoint holds heads for (for messages): its task_names, the paper tasks of
    a Bert-n-Pals checkpoint's heads, or ["(one unnamed Hugging Face head)"] / []."""
    if saved_names:
        return list(saved_names)
    keys = [k[len("module."):] if k.startswith("module.") else k for k in load_state_dict_file(weights_path)]
    reference = sorted({int(m.group(1)) for m in (re.match(r"^classifier\.(\d+)\.", k) for k in keys) if m})
    if reference:
        return [reference_order[i] if i < len(reference_order) else f"classifier.{i}" for i in reference]
    return ["(one unnamed Hugging Face head)"] if any(k.startswith(("classifier.", "qa_outputs.")) for k in keys) \
        else []


def fresh_task_parts(model, names=None):
    """{task name: newly initialised modules/head names} of each task whose head or task modules did
    not come from the checkpoint (load_weights' record)."""
    fresh = set(getattr(model, "_newly_initialised", []))
    names = names or model.config.task_names or [str(t) for t in range(model.num_tasks)]
    result = {}
    for task_id, params in modeling.task_specific_parameter_names(model).items():
        new = [p for p in params if p in fresh]
        if new:
            result[names[task_id]] = new
    return result


def reference_layernorm_init(model, names=None):
    """The PALs reference's init of LayerNorms the checkpoint did not provide: gamma AND beta drawn
    from N(0, initializer_range) (ours: gamma 1, beta 0), so new LayerNorms (top attention blocks, a
    top BERT layer) start with near-zero output. `names`: the newly initialised state-dict names
    (default: what load_weights recorded). Returns the names re-drawn."""
    names = set(getattr(model, "_newly_initialised", []) if names is None else names)
    std = model.config.initializer_range
    redrawn = []
    with torch.no_grad():
        for prefix, module in model.named_modules():
            if isinstance(module, nn.LayerNorm):
                for pname, param in module.named_parameters(recurse=False):
                    full = f"{prefix}.{pname}" if prefix else pname
                    if full in names:
                        param.normal_(0.0, std)
                        redrawn.append(full)
    return redrawn


# A one-task model without adapters is saved in the layout of the matching Hugging Face class, so
# that transformers' Auto classes and pipeline() run it as it is: head type -> (class, our head's
# parameter prefix -> HF prefix).
HF_HEADS = {
    "classification": ("BertForSequenceClassification", [("heads.0.classifier.", "classifier.")]),
    "regression": ("BertForSequenceClassification", [("heads.0.classifier.", "classifier.")]),
    "token": ("BertForTokenClassification", [("heads.0.classifier.", "classifier.")]),
    "choice": ("BertForMultipleChoice", [("heads.0.classifier.", "classifier.")]),
    "span": ("BertForQuestionAnswering", [("heads.0.qa_outputs.", "qa_outputs.")]),
    "pretraining": ("BertForPreTraining", [("heads.0.predictions.", "cls.predictions."),
                                           ("heads.0.seq_relationship.", "cls.seq_relationship.")]),
}


def hf_layout(model):
    """(HF class name, [(our prefix, HF prefix)]) when `model` has exactly the structure of a
    transformers BERT class, else None."""
    config = model.config
    if task_adapters.has_adapters(config):
        return None
    if isinstance(model, BertModel):
        return "BertModel", []
    if isinstance(model, BertForMultiTask) and model.num_tasks == 1:
        return HF_HEADS[model.task_types[0]]
    return None


def write_pretrained(model, directory, vocab_file=None, labels=None):
    """Write config.json (with task metadata), model.safetensors and vocab.txt, each atomically.

    A one-task model without adapters is written under the Hugging Face names of its class
    (`classifier.*`, `qa_outputs.*`, `cls.*`) with `architectures`, `id2label`/`label2id` (from
    `labels`, the label strings of the head's outputs) and `problem_type`, so transformers loads it
    as it is; this module reads that layout back into the same model."""
    os.makedirs(directory, exist_ok=True)
    layout = hf_layout(model)
    renames = layout[1] if layout else []
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():  # safetensors refuses shared storage: store a copy
            tensor = tensor.clone()
        seen.add(ptr)
        for ours, theirs in renames:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
        state[key] = tensor
    if vocab_file is None and getattr(model, "_source_dir", None):
        candidate = os.path.join(model._source_dir, "vocab.txt")
        vocab_file = candidate if os.path.isfile(candidate) else None
    if vocab_file is not None:
        if not os.path.isfile(vocab_file):
            raise ConfigError(f"vocab file {vocab_file} does not exist")
        target = os.path.join(directory, "vocab.txt")
        if os.path.abspath(vocab_file) != os.path.abspath(target):
            with open(vocab_file, "rb") as src, atomic_open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    else:
        logger.warning("save_pretrained(%s): no vocab.txt written (no vocab_file and no source folder)", directory)
    with atomic_open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(safetensors_save(state, metadata={"format": "pt"}))
    config = model.config.to_dict()
    if layout is None:
        config.update(model_type=OWN_MODEL_TYPE, architectures=["BertForMultiTask"])
    else:
        config["architectures"] = [layout[0]]
        head = model.task_types[0] if isinstance(model, BertForMultiTask) else None
        if head in ("classification", "regression", "token"):
            names = list(labels) if labels is not None and len(labels) == model.task_num_labels[0] else \
                [f"LABEL_{i}" for i in range(model.task_num_labels[0])]
            config["id2label"] = {str(i): name for i, name in enumerate(names)}
            config["label2id"] = {name: i for i, name in enumerate(names)}
        if head in ("classification", "regression"):
            config["problem_type"] = "regression" if head == "regression" else "single_label_classification"
    atomic_write_json(os.path.join(directory, "config.json"), config)


# ----------------------------------------------------------------------------------------------
# The 2019 scripts' files: a BERT config, a vocab and weights given one by one
# ----------------------------------------------------------------------------------------------

def assemble_model_folder(base, bert_config_file=None, vocab_file=None, init_checkpoint=None):
    """A model folder made of links to the 2019 command line's files, so that every loader here reads
    them: `bert_config_file` (the combined BERT + adapter config, also returned as the adapter
    config), `vocab_file` and `init_checkpoint` (a .bin / .safetensors state dict, or a TensorFlow
    checkpoint prefix). Files not given come from `base` (a model folder or name). Nothing is copied.

    The folder lives in the user's cache, named by the inputs' absolute paths, sizes and mtimes
    (file_utils.content_addressed_dir): the identical command finds the same folder (its run can
    be resumed), changed inputs give another, and no per-run folder is left behind by a kill."""
    base_dir = resolve_model_dir(base) if base else None

    def pick(path, names, what):
        if path is not None:
            if not os.path.exists(path) and not (what == "weights" and tf_checkpoint.find_tf_checkpoint(path)):
                raise ConfigError(f"{what} {path} does not exist")
            return os.path.abspath(path)
        if base_dir is None:
            raise ConfigError(f"no {what}: give its file or --bert_model")
        return next((os.path.join(base_dir, n) for n in names if os.path.exists(os.path.join(base_dir, n))), None)

    config = pick(bert_config_file, CONFIG_NAMES, "BERT config")
    vocab = pick(vocab_file, ("vocab.txt",), "vocab file")
    if config is None:
        raise ConfigError(f"{base_dir}: no config.json / bert_config.json")
    links = {"bert_config.json": os.path.abspath(config)}
    if vocab is not None:
        links["vocab.txt"] = os.path.abspath(vocab)
    if init_checkpoint is None:
        weights = _find_file(base_dir, WEIGHTS_NAMES, "weights") if base_dir else None
        prefix = None if weights else tf_checkpoint.find_tf_checkpoint(base_dir or "")
        init_checkpoint = weights or prefix
        if init_checkpoint is None:
            raise ConfigError("no weights: give --init_checkpoint or a --bert_model folder with weights")
    prefix = tf_checkpoint.find_tf_checkpoint(init_checkpoint) if not init_checkpoint.endswith(
        (".bin", ".safetensors", ".pt", ".pth")) else None
    if prefix is not None:  # link the index and every data shard under their own names
        directory, stem = os.path.split(os.path.abspath(prefix))
        for name in os.listdir(directory):
            if name.startswith(stem + ".index") or name.startswith(stem + ".data-"):
                links[name] = os.path.join(directory, name)
    else:
        target = "model.safetensors" if init_checkpoint.endswith(".safetensors") else "pytorch_model.bin"
        links[target] = os.path.abspath(init_checkpoint)
    key = {name: file_utils.file_fingerprint(path) for name, path in links.items()}

    def write(folder):
        for name, path in links.items():
            os.symlink(path, os.path.join(folder, name))

    folder = file_utils.content_addressed_dir(file_utils.user_cache_dir("2019-models"), key, write)
    return folder, (config if bert_config_file else None)


def with_hidden_size_aug(config, model_dir, hidden_size_aug):
    """The adapter config `config` (a file or bundled name) with hidden_size_aug replaced (2019 --h_aug),
    written once into the user's cache under a name given by its content (as assemble_model_folder);
    returns its path."""
    path = resolve_adapter_config(config, resolve_model_dir(model_dir))
    if path is None:
        raise ConfigError("--h_aug sets the adapters' size: give an adapter config (--config / --bert_config_file)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError:
        raise utf8_error(path, universal_newlines=False) from None
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(path, None, f"a config must be a JSON object, not {type(data).__name__}")
    data["hidden_size_aug"] = int(hidden_size_aug)
    try:
        BertConfig.from_dict(data)  # the changed config must still be valid (e.g. divisible by the PAL heads)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{path}: with --h_aug {hidden_size_aug}: {exc}") from None

    def write(folder):
        atomic_write_json(os.path.join(folder, "adapter_config.json"), data)

    folder = file_utils.content_addressed_dir(file_utils.user_cache_dir("2019-models"), {"h_aug_config": data}, write)
    return os.path.join(folder, "adapter_config.json")
