"""The configuration of the model: `BertConfig`, one dataclass field per key of config.json /
bert_config.json / an adapter config (docs/model.md#config-keys).

Its fields: the standard BERT keys (`BertKeys`, Google / Hugging Face names), the adapter keys of the
PALs reference (`task_adapters.AdapterKeys`) and the task metadata saved with a fine-tuned model.
Strict: an unknown or ill-typed key is a `ConfigError` naming the key; the foreign keys other tools
write (FOREIGN_KEYS) are accepted and ignored. modeling.py re-exports these names.
"""
import json
import math
import typing
from dataclasses import dataclass, fields
from typing import List, Optional

import torch
import torch.nn.functional as F

from file_utils import ConfigError, atomic_write_json, utf8_error
from task_adapters import AdapterKeys, config_key

HEAD_TYPES = ("classification", "regression", "span", "token", "choice", "pretraining")
ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}

# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

@dataclass
class BertKeys:
    """The standard BERT keys of BertConfig (Google / Hugging Face names)."""
    vocab_size: int = config_key(30522, "standard")             # rows of the word-embedding matrix
    hidden_size: int = config_key(768, "standard")              # d, the width of every layer
    num_hidden_layers: int = config_key(12, "standard")         # L, transformer layers
    num_attention_heads: int = config_key(12, "standard")       # heads of BERT's own attention
    intermediate_size: int = config_key(3072, "standard")       # FFN width
    hidden_act: str = config_key("gelu", "standard")            # FFN activation (a key of ACTIVATIONS)
    hidden_dropout_prob: float = config_key(0.1, "standard")    # dropout on embeddings and sublayer outputs
    attention_probs_dropout_prob: float = config_key(0.1, "standard")  # dropout on attention probabilities
    max_position_embeddings: int = config_key(512, "standard")  # longest input in word pieces
    type_vocab_size: int = config_key(2, "standard")            # segment ids (A/B)
    initializer_range: float = config_key(0.02, "standard")     # std of the N(0, std) init of new weights
    layer_norm_eps: float = config_key(1e-12, "standard")       # epsilon inside every LayerNorm
    pad_token_id: Optional[int] = config_key(0, "standard")     # embedding row kept at zero; None: none
    classifier_dropout: Optional[float] = config_key(None, "standard")  # before the heads; None: hidden_dropout_prob

    def validate_standard(self):
        """Raise ConfigError for standard values that would crash or silently misbehave later."""
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(self, key)}")
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"config key '{key}' must be in [0, 1), got {value}")
        for key in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"config key '{key}' must be a positive number, got {value}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"config key 'pad_token_id' ({self.pad_token_id}) must be in "
                              f"[0, vocab_size={self.vocab_size})")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"config key 'hidden_act' must be one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by "
                              f"num_attention_heads ({self.num_attention_heads})")


@dataclass
class BertConfig(AdapterKeys, BertKeys):
    """BERT + adapter configuration: the keys of config.json / bert_config.json / an adapter config.

    Fields in this order: the standard keys (BertKeys), the adapter keys (task_adapters.AdapterKeys)
    and the task metadata below. Build it with `from_dict` / `from_json_file` to read files (foreign
    Hugging Face keys are accepted there) or with keyword arguments in code. Every value is
    type-checked and the combination validated in `__post_init__`.
    """
    # -- task metadata written with a fine-tuned model --
    task_names: Optional[List[str]] = config_key(None, "task")  # e.g. ["cola", "mrpc"]; index = task id
    task_num_labels: Optional[List[int]] = config_key(None, "task")  # head outputs per task
    task_types: Optional[List[str]] = config_key(None, "task")  # head type per task (HEAD_TYPES)

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _check_type(f.name, f.type, getattr(self, f.name)))
        # Keys given explicitly: only those of an adapter config override a checkpoint's.
        # from_dict replaces this guess with the exact set of keys in the file.
        self._explicit = {f.name for f in fields(self) if getattr(self, f.name) != f.default}
        if self.num_tasks is None:  # a hand-written config may list tasks without counting them
            lists = [getattr(self, k) for k in TASK_KEYS if getattr(self, k) is not None]
            self.num_tasks = len(lists[0]) if lists else 1
        self.validate()

    # -- construction / serialisation -----------------------------------------------------------
    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ConfigError(f"a BERT config must be a JSON object, got {type(d).__name__}")
        known = {}
        for key, value in d.items():
            if key in ALL_KEYS:
                known[key] = value
            elif key in FOREIGN_KEYS:
                if key == "position_embedding_type" and value != "absolute":
                    raise ConfigError(f"config key 'position_embedding_type' must be \"absolute\" "
                                      f"(only absolute position embeddings are implemented), got {value!r}")
                if key == "model_type" and value not in ("bert", OWN_MODEL_TYPE, None):
                    raise ConfigError(f"config key 'model_type' is {value!r}; only \"bert\" models are supported")
            else:
                raise ConfigError(f"unknown config key '{key}' (value {value!r})")
        config = cls(**known)
        config._explicit = set(known)
        return config

    @classmethod
    def from_json_file(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(str(utf8_error(path, universal_newlines=False))) from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
        try:
            config = cls.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        config._path = str(path)
        return config

    def to_dict(self):
        d = {key: getattr(self, key) for key in ALL_KEYS}
        d["model_type"] = "bert"  # lets transformers' AutoConfig read our config.json
        return d

    def to_json_file(self, path):
        atomic_write_json(path, self.to_dict())

    def copy(self):
        new = BertConfig.from_dict(self.to_dict())
        new._explicit = set(self._explicit)
        return new

    # -- checks ---------------------------------------------------------------------------------
    def validate(self):
        """Raise ConfigError for values/combinations that would crash or silently misbehave later."""
        self.validate_standard()
        self.validate_adapters()
        for key in TASK_KEYS:
            value = getattr(self, key)
            if value is not None and len(value) != self.num_tasks:
                raise ConfigError(f"config key '{key}' has {len(value)} entries but num_tasks is {self.num_tasks}")
        for t in self.task_types or ():
            if t not in HEAD_TYPES:
                raise ConfigError(f"config key 'task_types': unknown head type {t!r} (known: {', '.join(HEAD_TYPES)})")


def _group(name):
    return tuple(f.name for f in fields(BertConfig) if f.metadata["group"] == name)


ALL_KEYS = tuple(f.name for f in fields(BertConfig))
ADAPTER_KEYS, TASK_KEYS = _group("adapter"), _group("task")


def _check_type(key, annotation, value):
    """Return `value` if it has the type declared for `key` (ints accepted as floats), else raise ConfigError."""
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        if value is None:
            return None
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is list:
        inner = typing.get_args(annotation)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list of {inner.__name__}, got {value!r}")
        return [_check_type(key, inner, v) for v in value]
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }[annotation]
    if not ok:
        raise ConfigError(f"config key '{key}' must be {annotation.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if annotation is float else value


# Bookkeeping keys written by Hugging Face / older tools: accepted and ignored (checked where they matter).
FOREIGN_KEYS = frozenset([
    "architectures", "model_type", "transformers_version", "_name_or_path", "gradient_checkpointing",
    "position_embedding_type", "use_cache", "torch_dtype", "dtype", "output_past", "bos_token_id",
    "eos_token_id", "sep_token_id", "cls_token_id", "id2label", "label2id", "finetuning_task",
    "problem_type", "is_decoder", "add_cross_attention", "chunk_size_feed_forward", "output_attentions",
    "output_hidden_states", "return_dict", "torchscript", "tie_word_embeddings", "directionality",
    "pooler_fc_size", "pooler_num_attention_heads", "pooler_num_fc_layers", "pooler_size_per_head",
    "pooler_type", "tokenizer_class", "prefix", "pruned_heads", "tf_legacy_loss", "use_bfloat16",
    "_attn_implementation_autoset", "num_labels", "embedding_size", "is_encoder_decoder",
    "decoder_start_token_id", "task_specific_params", "_commit_hash", "_attn_implementation",
])
# What Hugging Face cannot run (adapters, several heads) gets its own model type: transformers' Auto
# classes then refuse the folder instead of silently dropping modules and heads.
OWN_MODEL_TYPE = "bert-pals"
