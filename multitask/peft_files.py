"""One LoRA or (IA)^3 task as a PEFT adapter folder and back (scripts/export_adapter.py --format peft,
scripts/import_adapter.py): docs/multitask.md#peft-adapter-folders.

Export writes `adapter_config.json` (every value explicit: PEFT's defaults are not ours) and
`adapter_model.safetensors` (PEFT's names; the head under `modules_to_save`). `base_model_name_or_path`
names the run's own base model when the run was --freeze and the encoder equals that base's weights
(frozen_base); otherwise the export also writes `base_model/`, our shared encoder with the task's head
as a Hugging Face folder, and names it (relative to the adapter folder). Import reads such a folder
(made by PEFT or by us) into our portable names, so import_task_adapter adds it to a model like one of
our own adapter files.
"""
import json
import os

import torch
from safetensors.torch import load_file

import file_utils
import modeling
import task_adapters
from file_utils import ConfigError, atomic_write_json

from .saving import _write_safetensors

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
BASE_DIR = "base_model"
PREFIX = "base_model.model."
# our head type -> (PEFT task_type, transformers class, head module name)
HEADS = {"classification": ("SEQ_CLS", "BertForSequenceClassification", "classifier"),
         "regression": ("SEQ_CLS", "BertForSequenceClassification", "classifier"),
         "token": ("TOKEN_CLS", "BertForTokenClassification", "classifier"),
         "span": ("QUESTION_ANS", "BertForQuestionAnswering", "qa_outputs"),
         "choice": (None, "BertForMultipleChoice", "classifier")}  # PEFT has no multiple-choice task type
# our projection slot -> the module's name in a Hugging Face BERT layer
HF_MODULES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
              "attention_output": "attention.output.dense", "ffn_in": "intermediate.dense",
              "ffn_out": "output.dense"}
SLOT_BY_MODULE = {v: k for k, v in HF_MODULES.items()}


def _method(config):
    """'lora' or 'ia3' when that is the config's only method, else a ConfigError."""
    active = [m.key for m in task_adapters.active_methods(config)]
    if active not in (["lora"], ["ia3"]):
        raise ConfigError(f"the PEFT format holds LoRA or (IA)^3 alone; this model's task modules are "
                          f"{', '.join(active) or 'none'} (export it in our format)")
    return active[0]


def _modules_regex(slots):
    """A regex PEFT fullmatches against module names: exact, where its suffix lists would take
    `attention.output.dense` for `output.dense`."""
    return r"bert\.encoder\.layer\.\d+\.(" + "|".join(HF_MODULES[s].replace(".", r"\.") for s in slots) + ")"


def peft_config(config, head_type, base):
    method = _method(config)
    task_type, _, head = HEADS[head_type]
    common = {"task_type": task_type, "base_model_name_or_path": base, "revision": None, "inference_mode": True,
              "modules_to_save": [head], "layers_to_transform": None, "layers_pattern": None}
    if method == "lora":
        slots = list(config.lora_targets or task_adapters.LORA_TARGETS)
        return dict(common, peft_type="LORA", r=config.lora_r, lora_alpha=config.lora_alpha,
                    lora_dropout=config.lora_dropout, target_modules=_modules_regex(slots), bias="none",
                    fan_in_fan_out=False, use_rslora=False, use_dora=False, init_lora_weights=True,
                    rank_pattern={}, alpha_pattern={}, exclude_modules=None)
    slots = list(config.ia3_targets or task_adapters.IA3_TARGETS)
    inputs = [s for s in slots if s in task_adapters.IA3_INPUT_SIDE]
    return dict(common, peft_type="IA3", target_modules=_modules_regex(slots), fan_in_fan_out=False,
                feedforward_modules=_modules_regex(inputs) if inputs else [], init_ia3_weights=True,
                exclude_modules=None)


def to_peft_names(pairs, state, head_type):
    """{PEFT name: tensor} of one task from [(portable, state-dict name)]; (IA)^3 vectors get PEFT's
    [out, 1] (output side) or [1, in] (input side) shape."""
    head = HEADS[head_type][2]
    out = {}
    for portable, name in pairs:
        tensor = state[name].detach().to("cpu").contiguous().clone()
        if portable.startswith("heads."):
            out[f"{PREFIX}{head}.{portable.rsplit('.', 1)[1]}"] = tensor
            continue
        module, param = portable.split("_adapters.", 1)
        slot = SLOT_BY_MODULE[module.split(".", 4)[4]]
        if param == "ia3_l":
            tensor = tensor[None, :] if slot in task_adapters.IA3_INPUT_SIDE else tensor[:, None]
        out[f"{PREFIX}{module}.{param}"] = tensor
    return out


def export_peft_adapter(model, task_id, out_dir, labels, vocab_file, base_name=None):
    """Write task `task_id` of `model` as a PEFT adapter folder; returns the adapter config written.
    `base_name` (the frozen run's own base model, frozen_base): base_model_name_or_path names it and
    no encoder is written; None: our encoder with the task's head goes beside it in base_model/."""
    head_type = model.task_types[task_id]
    if head_type not in HEADS:
        raise ConfigError(f"a '{head_type}' head has no transformers class a PEFT adapter loads onto")
    config = peft_config(model.config, head_type, base_name or BASE_DIR)
    tensors = to_peft_names(modeling.task_parameter_pairs(model, task_id), model.state_dict(), head_type)
    base = None if base_name else _base_model(model, task_id)

    def write(tmp):
        _write_safetensors(os.path.join(tmp, PEFT_WEIGHTS), tensors)
        atomic_write_json(os.path.join(tmp, PEFT_CONFIG), config)
        if base is not None:
            base.save_pretrained(os.path.join(tmp, BASE_DIR), vocab_file=vocab_file, labels=labels)
    file_utils.replace_dir_atomically(out_dir, write)
    return config


def frozen_base(model_dir, model):
    """(base name, why) for a model trained with --freeze: the --bert_model of its run_config.json (in
    the model folder or, for a run_multi_task best/ folder, its parent), provided that base is a
    Hugging Face folder here whose weights equal every shared parameter of `model`. The name is written
    as given when it is an absolute path or a Hub name, else as the absolute folder (a bundled name, a
    path relative to some earlier working directory). (None, why) when the encoder must be written
    instead: not frozen, no run_config.json, the base not found here, or weights that differ."""
    for folder in (model_dir, os.path.dirname(os.path.normpath(model_dir))):
        path = os.path.join(folder, "run_config.json")
        if os.path.isfile(path):
            break
    else:
        return None, "no run_config.json beside the model: whether the encoder was trained is unknown"
    with open(path, encoding="utf-8") as f:
        run_flags = (json.load(f) or {}).get("flags") or {}
    if not run_flags.get("freeze"):
        return None, f"the encoder was trained ({path} has no --freeze)"
    given = run_flags.get("bert_model")
    try:
        folder = file_utils.resolve_model_dir(given)
    except ConfigError as exc:
        return None, f"the run's base model '{given}' is not found here ({exc})"
    differs = _differs_from_file(model, os.path.join(folder, "model.safetensors"))
    if differs:
        return None, f"the encoder is not the base's '{given}' ({differs})"
    name = given if os.path.isabs(given) or not os.path.isdir(given) and given not in file_utils.BUNDLED_MODELS \
        else os.path.abspath(folder)
    return name, f"--freeze run: its encoder equals the base model '{given}'"


def _differs_from_file(model, path):
    """'' when every shared parameter of `model` is in the safetensors file `path` (names with or
    without 'bert.') with equal values, else what differs first."""
    if not os.path.isfile(path):
        return f"{path} is missing (only a Hugging Face safetensors folder is checked and named)"
    saved = load_file(path)
    for name, p in model.named_shared_parameters():
        short = name[len("bert."):] if name.startswith("bert.") else name
        tensor = saved.get(name, saved.get(short))
        if tensor is None:
            return f"{short} is not in {path}"
        if tensor.shape != p.shape or not torch.equal(tensor.to(p.dtype), p.detach().cpu()):
            return f"{short} differs"
    return ""


def _base_model(model, task_id):
    """Our shared encoder with task `task_id`'s head and no task modules: saved in the Hugging Face layout."""
    keys = {k: v for k, v in model.config.to_dict().items() if k in modeling.ALL_KEYS
            and k not in modeling.ADAPTER_KEYS and k not in modeling.TASK_KEYS}
    plain = modeling.BertForMultiTask(modeling.BertConfig.from_dict(keys), [model.task_num_labels[task_id]],
                                      [model.task_types[task_id]], [model.config.task_names[task_id]])
    plain.bert.load_state_dict({k: v for k, v in model.bert.state_dict().items() if "_adapters." not in k})
    plain.heads[0].load_state_dict(model.heads[task_id].state_dict())
    return plain


# ----------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------

REFUSED = (("use_dora", True, "DoRA"), ("use_rslora", True, "rsLoRA"), ("fan_in_fan_out", True, "fan_in_fan_out"))


def is_peft_folder(path):
    return os.path.isfile(os.path.join(path, PEFT_CONFIG))


def read_peft_adapter(adapter_dir, task):
    """(info, tensors) in the form of read_task_adapter (portable names, no encoder fingerprint) for a
    PEFT LoRA or (IA)^3 folder; options we do not implement are a ConfigError naming the file."""
    path = os.path.join(adapter_dir, PEFT_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a PEFT adapter config ({exc})") from None
    kind = cfg.get("peft_type")
    if kind not in ("LORA", "IA3"):
        raise ConfigError(f"{path}: peft_type {kind!r}; only LORA and IA3 adapters are imported")
    for key, bad, name in REFUSED:
        if cfg.get(key) == bad:
            raise ConfigError(f"{path}: {name} ('{key}': {json.dumps(bad)}) is not implemented here")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ConfigError(f"{path}: per-module ranks/scales ('{key}') are not implemented here")
    if cfg.get("layers_to_transform") is not None or cfg.get("layers_pattern"):
        raise ConfigError(f"{path}: 'layers_to_transform' (adapters on some layers only) is not implemented here")
    if kind == "LORA" and cfg.get("bias", "none") != "none":
        raise ConfigError(f"{path}: LoRA bias {cfg['bias']!r} is not implemented here (only \"none\")")
    weights = os.path.join(adapter_dir, PEFT_WEIGHTS)
    try:
        raw = load_file(weights)
    except Exception as exc:  # SafetensorError besides OSError
        raise ConfigError(f"{weights}: not a safetensors file ({str(exc).splitlines()[0] if str(exc) else exc})")
    tensors, slots = _portable(raw, weights, kind == "IA3")
    defaults = modeling.BertConfig()
    keys = {k: getattr(defaults, k) for k in modeling.ADAPTER_KEYS if k != "num_tasks"}
    keys.update(lora=kind == "LORA", ia3=kind == "IA3")
    if kind == "LORA":
        rank = {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")}
        if rank != {cfg.get("r")}:
            raise ConfigError(f"{path}: 'r' is {cfg.get('r')!r} but its lora_A weights have rank(s) {sorted(rank)}")
        keys.update(lora_r=cfg["r"], lora_alpha=float(cfg.get("lora_alpha", 8)),
                    lora_dropout=float(cfg.get("lora_dropout", 0.0)),
                    lora_targets=None if tuple(slots) == task_adapters.LORA_TARGETS else slots)
    else:
        keys.update(ia3_targets=None if tuple(slots) == task_adapters.IA3_TARGETS else slots)
    head_type, num_labels = _head(cfg.get("task_type"), tensors, path, weights)
    labels = peft_labels(adapter_dir, cfg, num_labels) if head_type in ("classification", "token") else None
    info = {"task": task, "head_type": head_type, "num_labels": num_labels, "labels": labels,
            "adapter_config": keys, "base_model": {"encoder_sha256": None},
            "num_parameters": sum(t.numel() for t in tensors.values())}
    return info, tensors


def peft_labels(adapter_dir, cfg, rows):
    """The head's label names from the `id2label` of a config.json beside the adapter, else of its
    base model's (base_model_name_or_path: relative to the adapter folder, else a folder, bundled or
    Hub-cache name found here); None when neither has names (or only transformers' LABEL_0, LABEL_1, ...
    placeholders). id2label must number the head's `rows` outputs 0..rows-1 (ConfigError naming it)."""
    paths = [os.path.join(adapter_dir, "config.json")]
    base = cfg.get("base_model_name_or_path")
    if isinstance(base, str) and base:
        beside = os.path.join(adapter_dir, base)
        try:
            paths.append(os.path.join(beside if os.path.isdir(beside) else file_utils.resolve_model_dir(base),
                                      "config.json"))
        except ConfigError:
            pass  # a base not on this machine: no names from it
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                id2label = json.load(f).get("id2label")
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(id2label, dict) or not id2label:
            continue
        keys = {str(i) for i in range(rows)}
        if set(map(str, id2label)) != keys:
            raise ConfigError(f"{path}: id2label numbers {', '.join(sorted(map(str, id2label)))}; the adapter's head "
                              f"has {rows} outputs (0..{rows - 1})")
        labels = [str(id2label[k] if k in id2label else id2label[int(k)]) for k in map(str, range(rows))]
        if labels != [f"LABEL_{i}" for i in range(rows)]:
            return labels
    return None


def _head(task_type, tensors, path, weights):
    """(our head type, its outputs) from PEFT's task_type and the head in modules_to_save."""
    head = tensors.get("heads.qa_outputs.weight", tensors.get("heads.classifier.weight"))
    if head is None:
        raise ConfigError(f"{weights}: no head under modules_to_save (classifier / qa_outputs): "
                          "nothing to predict with")
    rows = head.shape[0]
    types = {"SEQ_CLS": "regression" if rows == 1 else "classification", "TOKEN_CLS": "token", None: "choice",
             "QUESTION_ANS": "span"}
    if task_type not in types:
        raise ConfigError(f"{path}: task_type {task_type!r} (known: SEQ_CLS, TOKEN_CLS, QUESTION_ANS, null)")
    head_type = types[task_type]
    expected = HEADS[head_type][2]
    if f"heads.{expected}.weight" not in tensors:
        raise ConfigError(f"{weights}: a {task_type} adapter needs its head as '{expected}' in modules_to_save")
    fixed = {"choice": 1, "span": 2}.get(head_type)
    if fixed is not None and rows != fixed:
        raise ConfigError(f"{weights}: a {head_type} head has {fixed} output(s), not {rows}")
    return head_type, rows  # a choice head: 1 (import_task_adapter's num_choices replaces it)


def _portable(raw, weights, ia3):
    """PEFT names -> our portable names; the projection slots found (the same in every layer)."""
    tensors, per_layer = {}, {}
    for name, t in raw.items():
        body = name[len(PREFIX):] if name.startswith(PREFIX) else name
        body = body.replace(".default.", ".")
        if body.split(".")[0] in ("classifier", "qa_outputs"):
            tensors[f"heads.{body}"] = t
            continue
        parts = body.split(".")
        if parts[:3] != ["bert", "encoder", "layer"] or len(parts) < 6:
            raise ConfigError(f"{weights}: tensor {name!r} is not on a BERT layer's projection")
        module = ".".join(parts[4:-2] if not ia3 else parts[4:-1])
        param = ".".join(parts[-2:] if not ia3 else parts[-1:])
        slot = SLOT_BY_MODULE.get(module)
        if slot is None or param not in ("lora_A.weight", "lora_B.weight", "ia3_l"):
            raise ConfigError(f"{weights}: tensor {name!r} is not a LoRA/(IA)^3 weight we implement")
        if ia3:
            input_side = t.shape[0] == 1 and t.shape[-1] != 1
            if input_side != (slot in task_adapters.IA3_INPUT_SIDE):
                raise ConfigError(f"{weights}: {name!r} scales the {'input' if input_side else 'output'} of "
                                  f"{module}; here that projection's (IA)^3 scales its "
                                  f"{'input' if not input_side else 'output'}")
            t = t.reshape(-1)
        per_layer.setdefault(int(parts[3]), set()).add(slot)
        tensors[f"bert.encoder.layer.{parts[3]}.{module}_adapters.{param}"] = t
    layer_slots = {frozenset(s) for s in per_layer.values()}
    if len(layer_slots) > 1:
        raise ConfigError(f"{weights}: the layers have adapters on different projections (not implemented here)")
    slots = [s for s in HF_MODULES if layer_slots and s in next(iter(layer_slots))]
    return tensors, slots
