"""BERT with task-specific modules (PALs and friends) for multi-task fine-tuning.

Top to bottom:
- `BertConfig`: the standard BERT keys, the adapter keys of the PALs reference
  (Stickland & Murray, ICML 2019) and the task metadata saved with a fine-tuned model, one field
  each. Strict: an unknown or ill-typed key is a `ConfigError` naming the key.
- The encoder (`BertModel`): embeddings, layers using `F.scaled_dot_product_attention`, pooler.
  State-dict names are the Hugging Face BERT names, so checkpoints move both ways.
- Adapters, each written once and keyed by task id (`TaskModuleList`): `PAL` (projected
  attention layer, V^E/V^D shared across layers), `LowRankAdapter` (also the Houlsby
  bottleneck), `LHUC`, `TopProjectedAttention`. `BertLayer` composes them in three slots:
  serial after the attention output, serial/parallel at the FFN output, parallel to the layer.
- Heads (`classification`, `regression`, `span`, `token`, `choice`, `pretraining`) and
  `BertForMultiTask`, which routes ONE task id per batch through adapters and head.
- Parameter grouping (shared vs task-specific, counts).
- Checkpoints in and out (`from_pretrained`, `save_pretrained`): the key mapping from other
  checkpoint layouts and the lists of foreign config keys we accept.

This module knows nothing about task file formats, tokenizers or the CLI (docs/model.md).
"""
import functools
import json
import logging
import math
import os
import re
import shutil
import typing
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import List, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file as safetensors_load_file
from safetensors.torch import save as safetensors_save
from torch import nn

import file_utils
import tf_checkpoint
from file_utils import ConfigError, DataError, atomic_open, atomic_write_json, resolve_model_dir, utf8_error

logger = logging.getLogger(__name__)

HEAD_TYPES = ("classification", "regression", "span", "token", "choice", "pretraining")
TOP_NUM_BLOCKS = 6  # stacked attention blocks in the top projected-attention module (reference constant)
# Additive attention-mask value: the reference's -10000 fits fp16/bf16 and makes exp() underflow to 0.
MASK_VALUE = -10000.0
# On CUDA, SDPA's memory-efficient kernel (the only fused one that takes a padding mask) needs the
# head size to be a multiple of 8 (4 in fp32) and the mask's strides multiples of 8 elements;
# otherwise it falls back to the math kernel or copies the mask in every call. BERT's heads (64)
# fit; PALs' (204/6 = 34) and top attention's (17) are zero-padded to this multiple on CUDA (see
# docs/model.md#attention-kernels). 1 turns the padding off.
SDPA_ALIGN = 8
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

def _key(default, group):
    """A config field; `group` says which keys an adapter config may set (see _merge_configs)."""
    return field(default=default, metadata={"group": group})


@dataclass
class BertConfig:
    """BERT + adapter configuration: the keys of config.json / bert_config.json / an adapter config.

    Build it with `from_dict` / `from_json_file` to read files (foreign Hugging Face keys are
    accepted there) or with keyword arguments in code. Every value is type-checked and the
    combination validated in `__post_init__`.
    """
    # -- standard BERT keys (Google / Hugging Face names) --
    vocab_size: int = _key(30522, "standard")             # rows of the word-embedding matrix
    hidden_size: int = _key(768, "standard")              # d, the width of every layer
    num_hidden_layers: int = _key(12, "standard")         # L, transformer layers
    num_attention_heads: int = _key(12, "standard")       # heads of BERT's own attention
    intermediate_size: int = _key(3072, "standard")       # FFN width
    hidden_act: str = _key("gelu", "standard")            # FFN activation (a key of ACTIVATIONS)
    hidden_dropout_prob: float = _key(0.1, "standard")    # dropout on embeddings and sublayer outputs
    attention_probs_dropout_prob: float = _key(0.1, "standard")  # dropout on attention probabilities
    max_position_embeddings: int = _key(512, "standard")  # longest input in word pieces
    type_vocab_size: int = _key(2, "standard")            # segment ids (A/B)
    initializer_range: float = _key(0.02, "standard")     # std of the N(0, std) init of new weights
    layer_norm_eps: float = _key(1e-12, "standard")       # epsilon inside every LayerNorm
    pad_token_id: Optional[int] = _key(0, "standard")     # embedding row kept at zero; None: none
    classifier_dropout: Optional[float] = _key(None, "standard")  # before the heads; None: hidden_dropout_prob
    # -- adapters (keys of the PALs reference configs; docs/model.md shows where each sits) --
    hidden_size_aug: int = _key(204, "adapter")           # d_s, the small dimension of PALs/low-rank/top
    pals: bool = _key(False, "adapter")                   # adapters are PALs (else low-rank MLPs)
    mult: bool = _key(False, "adapter")                   # one adapter per layer, parallel to the layer
    houlsby: bool = _key(False, "adapter")                # reference Houlsby-style: serial + FFN-parallel
    houlsby_original: bool = _key(False, "adapter")       # Houlsby et al. 2019: serial after attn and FFN
    top: bool = _key(False, "adapter")                    # a per-task module on top of the encoder
    bert_lay_top: bool = _key(False, "adapter")           # with top: a full BERT layer instead of projected attention
    lhuc: bool = _key(False, "adapter")                   # per-task LHUC scaling of each layer
    extra_dim: Optional[int] = _key(None, "adapter")      # low-rank bottleneck if not hidden_size_aug
    num_tasks: Optional[int] = _key(None, "adapter")      # adapter copies; None: len(task lists) or 1
    pal_num_heads: int = _key(6, "adapter")               # heads of the PAL attention (reference: 6)
    top_num_heads: int = _key(12, "adapter")              # heads of the top projected attention (12)
    # -- task metadata written with a fine-tuned model --
    task_names: Optional[List[str]] = _key(None, "task")  # e.g. ["cola", "mrpc"]; index = task id
    task_num_labels: Optional[List[int]] = _key(None, "task")  # head outputs per task
    task_types: Optional[List[str]] = _key(None, "task")  # head type per task (HEAD_TYPES)

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

    def to_json_string(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path):
        atomic_write_json(path, self.to_dict())

    def copy(self):
        new = BertConfig.from_dict(self.to_dict())
        new._explicit = set(self._explicit)
        return new

    # -- checks ---------------------------------------------------------------------------------
    def validate(self):  # noqa: C901
        """Raise ConfigError for values/combinations that would crash or silently misbehave later."""
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size", "hidden_size_aug", "num_tasks",
                    "pal_num_heads", "top_num_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(self, key)}")
        if self.extra_dim is not None and self.extra_dim < 1:
            raise ConfigError(f"config key 'extra_dim' must be >= 1 or null, got {self.extra_dim}")
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
        if self.houlsby and self.mult:
            raise ConfigError("config keys 'houlsby' and 'mult' are both true: choose one adapter placement")
        if self.houlsby and self.houlsby_original:
            raise ConfigError("config keys 'houlsby' (reference placement) and 'houlsby_original' are both true")
        if self.pals and not (self.mult or self.houlsby):
            raise ConfigError("config key 'pals' needs 'mult' (PALs in parallel to each layer) or 'houlsby'")
        if self.pals and self.hidden_size_aug % self.pal_num_heads:
            raise ConfigError(f"hidden_size_aug ({self.hidden_size_aug}) must be divisible by "
                              f"pal_num_heads ({self.pal_num_heads}) for PALs")
        if self.bert_lay_top and not self.top:
            raise ConfigError("config key 'bert_lay_top' needs 'top': true")
        if self.top and not self.bert_lay_top and self.hidden_size_aug % self.top_num_heads:
            raise ConfigError(f"hidden_size_aug ({self.hidden_size_aug}) must be divisible by "
                              f"top_num_heads ({self.top_num_heads}) for top projected attention")
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
STANDARD_KEYS, ADAPTER_KEYS, TASK_KEYS = _group("standard"), _group("adapter"), _group("task")


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


# ----------------------------------------------------------------------------------------------
# Encoder building blocks (Hugging Face names)
# ----------------------------------------------------------------------------------------------

class TaskModuleList(nn.ModuleList):
    """One module per task; index = task id. Marks its parameters as task-specific."""


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None):
        seq_len = input_ids.shape[1]
        position_ids = torch.arange(seq_len, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


def sdpa(q, k, v, mask, dropout_p, head_align=1):
    """F.scaled_dot_product_attention, with the head size zero-padded to a multiple of `head_align`.

    Zero columns add nothing to q.k, so with the scale of the true head size the attention weights
    are unchanged, and the zero columns of v give zero output columns, cut off again. PyTorch pads
    this way itself for its flash kernel, which takes no mask; its memory-efficient kernel, which
    does, refuses unaligned heads instead (math fallback)."""
    head_size = q.shape[-1]
    pad = -head_size % head_align
    if not pad:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=head_size ** -0.5)
    return ctx[..., :head_size]


def _autocast_dtype(device_type):
    """The autocast dtype if autocast is on for this device type, else None."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except RuntimeError:  # a device type autocast does not know (meta)
        return None


def attention_bias(attention_mask, dtype, compute_dtype=torch.float32):
    """[B,S] 1/0 attention mask -> additive mask [B,1,1,S] of `dtype`: 0 for tokens, MASK_VALUE for padding.

    Computed in `compute_dtype` and then cast, so under autocast the values equal a cast of the
    fp32 mask. The storage of the last dimension is padded to a multiple of 8 elements (the view
    keeps size S): SDPA's memory-efficient kernel then uses it as it is, where an unaligned mask
    is padded into a fresh copy in every attention call."""
    B, S = attention_mask.shape
    bias = (1.0 - attention_mask[:, None, None, :].to(compute_dtype)) * MASK_VALUE
    aligned = -(-S // 8) * 8
    storage = torch.zeros((B, 1, 1, aligned), dtype=dtype, device=attention_mask.device)
    storage[..., :S] = bias
    return storage[..., :S]


class BertSelfAttention(nn.Module):
    """Multi-head self-attention without output projection, on `size`-dim inputs.

    Used for BERT's own attention (size d, 12 heads), inside PALs (size d_s, pal_num_heads)
    and in the top projected attention (size d_s, top_num_heads).
    """

    def __init__(self, size, num_heads, dropout):
        super().__init__()
        if size % num_heads:
            raise ConfigError(f"attention size {size} is not divisible by its {num_heads} heads")
        self.num_heads, self.head_size = num_heads, size // num_heads
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.value = nn.Linear(size, size)
        self.dropout_p = dropout

    def forward(self, x, mask):  # x [B,S,size], mask additive [B,1,1,S] or None
        B, S, _ = x.shape

        def heads(t):  # [B,S,size] -> [B,h,S,hd]
            return t.view(B, S, self.num_heads, self.head_size).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if mask is not None and mask.dtype != q.dtype:  # BertModel builds it in q's dtype; others may not
            mask = mask.to(q.dtype)
        ctx = sdpa(q, k, v, mask, self.dropout_p if self.training else 0.0,
                   head_align=SDPA_ALIGN if q.is_cuda else 1)
        return ctx.transpose(1, 2).reshape(B, S, self.num_heads * self.head_size)


class BertSelfOutput(nn.Module):
    """dense -> dropout -> [serial adapter: x + A_t(x)] -> LayerNorm(x + input)."""

    def __init__(self, size, dropout, eps, adapters=None):
        super().__init__()
        self.dense = nn.Linear(size, size)
        self.LayerNorm = nn.LayerNorm(size, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.adapters = adapters

    def forward(self, x, input_tensor, task_id=0, mask=None):
        x = self.dropout(self.dense(x))
        if self.adapters is not None:
            x = x + self.adapters[task_id](x, mask)
        return self.LayerNorm(x + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, size, num_heads, attn_dropout, hidden_dropout, eps, adapters=None):
        super().__init__()
        self.self = BertSelfAttention(size, num_heads, attn_dropout)
        self.output = BertSelfOutput(size, hidden_dropout, eps, adapters)

    def forward(self, x, mask, task_id=0):
        return self.output(self.self(x, mask), x, task_id, mask)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    """dense -> dropout -> [+ A_t(.)] -> [+ parallel branch] -> LayerNorm(. + ffn_input).

    `serial=True`: the adapter reads the FFN output (Houlsby et al. 2019);
    `serial=False`: it reads the FFN input (the reference's Houlsby-style A2, in parallel to the FFN).
    """

    def __init__(self, config, adapters=None, serial=False):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.adapters = adapters
        self.serial = serial

    def forward(self, x, input_tensor, task_id=0, mask=None, parallel=None):
        y = self.dropout(self.dense(x))
        if self.adapters is not None:
            y = y + self.adapters[task_id](y if self.serial else input_tensor, mask)
        if parallel is not None:
            y = y + parallel
        return self.LayerNorm(y + input_tensor)


# ----------------------------------------------------------------------------------------------
# Adapters (each written once; all take (x, mask) so a slot can hold any of them)
# ----------------------------------------------------------------------------------------------

class LowRankAdapter(nn.Module):
    """TS(x) = V^D GELU(V^E x): the reference low-rank adapter and the Houlsby bottleneck.

    `near_identity=True` (Houlsby et al. 2019): weights ~ N(0, 1e-2) truncated at 2 std, biases 0,
    so x + TS(x) ~ x at init. Otherwise the BERT init N(0, initializer_range) of the reference.
    """

    def __init__(self, size, bottleneck, near_identity=False):
        super().__init__()
        self.down = nn.Linear(size, bottleneck)
        self.up = nn.Linear(bottleneck, size)
        self.near_identity = near_identity

    def forward(self, x, mask=None):
        return self.up(F.gelu(self.down(x)))


class PAL(nn.Module):
    """Projected attention layer: TS(h) = GELU(V^D MHA(V^E h)).

    Only the multi-head attention in the small dimension is per layer. V^E / V^D are per task and
    shared by every layer: they are registered once on the encoder (`pal_encoders.T`,
    `pal_decoders.T`) and held here by plain reference, so the state dict has no aliases.
    """

    def __init__(self, config, size, encoder, decoder):
        super().__init__()
        self.attention = BertSelfAttention(size, config.pal_num_heads, config.attention_probs_dropout_prob)
        self._shared = (encoder, decoder)  # a tuple is not registered as submodules on purpose

    @property
    def encoder(self):
        return self._shared[0]

    @property
    def decoder(self):
        return self._shared[1]

    def forward(self, x, mask=None):
        enc, dec = self._shared
        return F.gelu(dec(self.attention(enc(x), mask)))


class LHUC(nn.Module):
    """Learning hidden unit contributions: x * 2 sigmoid(v), v = 0 at init (identity)."""

    def __init__(self, size):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size))

    def forward(self, x, mask=None):
        return x * (2.0 * torch.sigmoid(self.weight))


class BertLayer(nn.Module):
    """One transformer layer whose adapter slots are filled by the encoder from the config.

    Slots (each a TaskModuleList or None):
    - `attention.output.adapters`: serial, x + A_t(x) after the attention output dense.
    - `output.adapters`: at the FFN output, serial (reads FFN output) or parallel (reads FFN input).
    - `adapters`: parallel to the whole layer, reads the layer input h, added before the output LN
      (PALs / low-rank of `mult`): out = LN2(F(a) + a + TS_t(h)).
    - `lhuc`: scales the `adapters` output if present, else the layer output.
    """

    def __init__(self, config, attn_adapters=None, ffn_adapters=None, ffn_serial=False, adapters=None, lhuc=None):
        super().__init__()
        self.attention = BertAttention(config.hidden_size, config.num_attention_heads,
                                       config.attention_probs_dropout_prob, config.hidden_dropout_prob,
                                       config.layer_norm_eps, attn_adapters)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, ffn_adapters, ffn_serial)
        self.adapters = adapters
        self.lhuc = lhuc

    def forward(self, h, mask, task_id=0):
        a = self.attention(h, mask, task_id)
        parallel = None
        if self.adapters is not None:
            parallel = self.adapters[task_id](h, mask)
            if self.lhuc is not None:
                parallel = self.lhuc[task_id](parallel)
        out = self.output(self.intermediate(a), a, task_id, mask, parallel)
        if self.lhuc is not None and self.adapters is None:
            out = self.lhuc[task_id](out)
        return out


class TopProjectedAttention(nn.Module):
    """Per-task top module: V^E -> 6 x (attention block in d_s with dense+dropout+residual+LN) -> V^D.

    Its output replaces the last layer's hidden states (no residual, no nonlinearity: reference).
    """

    def __init__(self, config):
        super().__init__()
        a = config.hidden_size_aug
        self.down = nn.Linear(config.hidden_size, a)
        self.blocks = nn.ModuleList(
            BertAttention(a, config.top_num_heads, config.attention_probs_dropout_prob,
                          config.hidden_dropout_prob, config.layer_norm_eps)
            for _ in range(TOP_NUM_BLOCKS))
        self.up = nn.Linear(a, config.hidden_size)

    def forward(self, h, mask, task_id=0):
        x = self.down(h)
        for block in self.blocks:
            x = block(x, mask)
        return self.up(x)


class BertEncoder(nn.Module):
    """The stack of layers plus the adapters the config asks for (see BertLayer for the slots)."""

    def __init__(self, config):
        super().__init__()
        T, d, a = config.num_tasks, config.hidden_size, config.hidden_size_aug
        low_rank_dim = config.extra_dim or a
        if config.pals:
            # Per-task V^E / V^D shared across all layers (the reference's mult_aug_dense / dense2).
            self.pal_encoders = TaskModuleList(nn.Linear(d, a) for _ in range(T))
            self.pal_decoders = TaskModuleList(nn.Linear(a, d) for _ in range(T))

        def pal_or_low_rank():
            if config.pals:
                return TaskModuleList(PAL(config, a, self.pal_encoders[t], self.pal_decoders[t]) for t in range(T))
            return TaskModuleList(LowRankAdapter(d, low_rank_dim) for _ in range(T))

        def bottlenecks(near_identity):
            return TaskModuleList(LowRankAdapter(d, low_rank_dim, near_identity) for _ in range(T))

        layers = []
        for _ in range(config.num_hidden_layers):
            slots = {}
            if config.mult:
                slots["adapters"] = pal_or_low_rank()
            if config.houlsby:  # reference: A1 serial after attention dense, A2 parallel to the FFN
                slots["attn_adapters"] = bottlenecks(False)
                slots["ffn_adapters"] = pal_or_low_rank()
            if config.houlsby_original:  # Houlsby et al. 2019: serial after attention and after FFN
                slots["attn_adapters"] = bottlenecks(True)
                slots["ffn_adapters"] = bottlenecks(True)
                slots["ffn_serial"] = True
            if config.lhuc:
                slots["lhuc"] = TaskModuleList(LHUC(d) for _ in range(T))
            layers.append(BertLayer(config, **slots))
        self.layer = nn.ModuleList(layers)
        self.top = None
        if config.top:
            if config.bert_lay_top:
                self.top = TaskModuleList(BertLayer(config) for _ in range(T))
            else:
                self.top = TaskModuleList(TopProjectedAttention(config) for _ in range(T))

    def forward(self, h, mask, task_id=0):
        for layer in self.layer:
            h = layer(h, mask, task_id)
        if self.top is not None:
            h = self.top[task_id](h, mask, task_id)
        return h


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output):
        return torch.tanh(self.dense(sequence_output[:, 0]))



def _init_module(module, config):
    """BERT init: Linear/Embedding ~ N(0, initializer_range), biases 0, LayerNorm gamma 1 beta 0.

    The reference draws LayerNorm gamma AND beta from N(0, 0.02); that makes new LayerNorms (top
    attention blocks, top BERT layer) start with ~zero output. We use gamma 1, beta 0 instead.
    """
    std = config.initializer_range
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, LowRankAdapter) and module.near_identity:
        for lin in (module.down, module.up):
            nn.init.trunc_normal_(lin.weight, 0.0, 1e-2, -2e-2, 2e-2)
            nn.init.zeros_(lin.bias)
    elif isinstance(module, LHUC):
        nn.init.zeros_(module.weight)
    elif isinstance(module, PreTrainingHead):
        nn.init.zeros_(module.predictions.bias)



# ----------------------------------------------------------------------------------------------
# BertModel
# ----------------------------------------------------------------------------------------------

class BertModel(nn.Module):
    """Embeddings -> encoder (with the config's adapters) -> pooler. One task id per batch."""

    def __init__(self, config, _init=True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        if _init:
            self.apply(lambda m: _init_module(m, config))

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, task_id=0):
        """-> (sequence_output [B,S,H], pooled_output [B,H])."""
        h = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None:
            # Built once in the dtype the attention runs in (autocast's, else the model's), so no
            # layer has to cast or copy it.
            mask = attention_bias(attention_mask, _autocast_dtype(h.device.type) or h.dtype, compute_dtype=h.dtype)
        h = self.encoder(h, mask, task_id)
        return h, self.pooler(h)

    @classmethod
    def from_pretrained(cls, name_or_path, config=None, allow_random_init=False):
        """The bare encoder from a checkpoint folder (see `read_pretrained` / `load_weights`)."""
        _, merged, weights_path = read_pretrained(name_or_path, config)
        model = cls(BertConfig.from_dict(merged))
        load_weights(model, weights_path, allow_random_init)
        return model

    def save_pretrained(self, directory, vocab_file=None):
        write_pretrained(self, directory, vocab_file)


# ----------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------

def _head_dropout(config):
    return config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout


class SequenceHead(nn.Module):
    """classification / regression / choice: dropout(pooled) -> Linear(H, C)."""

    def __init__(self, config, num_labels, head_type):
        super().__init__()
        self.head_type = head_type
        self.dropout = nn.Dropout(_head_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, num_labels)

    def forward(self, sequence_output, pooled_output, labels=None, num_choices=None):
        logits = self.classifier(self.dropout(pooled_output))
        out = {}
        if self.head_type == "regression":
            logits = logits.squeeze(-1)
            if labels is not None:
                out["loss"] = F.mse_loss(logits.float(), labels.float())
        elif self.head_type == "choice":
            logits = logits.view(-1, num_choices)  # [B*K,1] -> [B,K]
            if labels is not None:
                out["loss"] = F.cross_entropy(logits.float(), labels)
        elif labels is not None:
            out["loss"] = F.cross_entropy(logits.float(), labels)
        out["logits"] = logits
        return out


class TokenHead(nn.Module):
    """token classification: dropout(sequence) -> Linear(H, C); labels -100 are ignored."""

    def __init__(self, config, num_labels):
        super().__init__()
        self.dropout = nn.Dropout(_head_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, num_labels)

    def forward(self, sequence_output, pooled_output, labels=None):
        logits = self.classifier(self.dropout(sequence_output))
        out = {"logits": logits}
        if labels is not None:
            # Sum / count rather than the mean: a window without scored tokens gives 0, not NaN.
            total = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100,
                                    reduction="sum")
            out["loss"] = total / (labels != -100).sum().clamp(min=1)
        return out


class SpanHead(nn.Module):
    """SQuAD: Linear(H, 2) on every token -> start/end logits (names as HF `qa_outputs`)."""

    def __init__(self, config, num_labels=2):
        super().__init__()
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output, start_positions=None, end_positions=None):
        logits = self.qa_outputs(sequence_output)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        out = {"start_logits": start_logits, "end_logits": end_logits}
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]  # positions outside the window are clamped here and ignored
            start = start_positions.view(-1).clamp(0, ignored)
            end = end_positions.view(-1).clamp(0, ignored)
            loss_start = F.cross_entropy(start_logits.float(), start, ignore_index=ignored)
            loss_end = F.cross_entropy(end_logits.float(), end, ignore_index=ignored)
            out["loss"] = (loss_start + loss_end) / 2
        return out


class PredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class LMPredictionHead(nn.Module):
    """transform -> logits = x E^T + bias, with E the (tied) word-embedding matrix."""

    def __init__(self, config, word_embeddings):
        super().__init__()
        self.transform = PredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self._tied = (word_embeddings,)  # not registered: the decoder weight IS the embedding matrix

    def forward(self, x):
        return F.linear(self.transform(x), self._tied[0].weight, self.bias)


class PreTrainingHead(nn.Module):
    """Masked LM + next sentence. Names mirror HF `cls.predictions.*` / `cls.seq_relationship.*`."""

    def __init__(self, config, word_embeddings):
        super().__init__()
        self.predictions = LMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output, masked_lm_labels=None, next_sentence_label=None):
        prediction_logits = self.predictions(sequence_output)
        nsp_logits = self.seq_relationship(pooled_output)
        out = {"prediction_logits": prediction_logits, "seq_relationship_logits": nsp_logits}
        loss = None
        if masked_lm_labels is not None:
            loss = F.cross_entropy(prediction_logits.float().view(-1, prediction_logits.shape[-1]),
                                   masked_lm_labels.view(-1), ignore_index=-100)
        if next_sentence_label is not None:
            nsp = F.cross_entropy(nsp_logits.float(), next_sentence_label.view(-1))
            loss = nsp if loss is None else loss + nsp
        if loss is not None:
            out["loss"] = loss
        return out


# Which keyword arguments each head type accepts in BertForMultiTask.forward.
HEAD_INPUTS = {
    "classification": ("labels",), "regression": ("labels",), "choice": ("labels",), "token": ("labels",),
    "span": ("start_positions", "end_positions"),
    "pretraining": ("masked_lm_labels", "next_sentence_label"),
}


# ----------------------------------------------------------------------------------------------
# Multi-task model
# ----------------------------------------------------------------------------------------------

def _resolve_tasks(config, task_num_labels, task_types, task_names):
    if task_num_labels is None:
        task_num_labels = config.task_num_labels
    if task_num_labels is None:
        raise ConfigError("BertForMultiTask needs task_num_labels (one entry per task), "
                          "or a config/checkpoint with task_num_labels")
    task_num_labels = [int(n) for n in task_num_labels]
    if not task_num_labels:
        raise ConfigError("task_num_labels is empty: at least one task is needed")
    if task_types is None:
        fits = config.task_types is not None and len(config.task_types) == len(task_num_labels)
        task_types = config.task_types if fits \
            else ["regression" if n == 1 else "classification" for n in task_num_labels]
    task_types = list(task_types)
    if len(task_types) != len(task_num_labels):
        raise ConfigError(f"task_types has {len(task_types)} entries but task_num_labels has {len(task_num_labels)}")
    for i, (t, n) in enumerate(zip(task_types, task_num_labels)):
        if t not in HEAD_TYPES:
            raise ConfigError(f"task {i}: unknown head type {t!r} (known: {', '.join(HEAD_TYPES)})")
        if t == "classification" and n < 2:
            raise ConfigError(f"task {i}: a classification head needs >= 2 labels, got {n} (1 label = regression)")
        if t == "regression" and n != 1:
            raise ConfigError(f"task {i}: a regression head has exactly 1 output, got task_num_labels {n}")
        if t == "token" and n < 1:
            raise ConfigError(f"task {i}: a token head needs >= 1 label, got {n}")
    if task_names is None:
        fits = config.task_names is not None and len(config.task_names) == len(task_num_labels)
        task_names = config.task_names if fits \
            else None
    if task_names is not None:
        task_names = [str(n) for n in task_names]
        if len(task_names) != len(task_num_labels):
            raise ConfigError(f"task_names has {len(task_names)} entries but task_num_labels has "
                              f"{len(task_num_labels)}")
    return task_num_labels, task_types, task_names


class BertForMultiTask(nn.Module):
    """Shared BERT (+ per-task adapters) + one head per task; forward routes ONE task id per batch."""

    def __init__(self, config, task_num_labels=None, task_types=None, task_names=None):
        super().__init__()
        task_num_labels, task_types, task_names = _resolve_tasks(config, task_num_labels, task_types, task_names)
        config = config.copy()
        config.num_tasks = len(task_num_labels)  # one adapter copy per task, always
        config.task_num_labels, config.task_types, config.task_names = task_num_labels, task_types, task_names
        config.validate()
        self.config = config
        self.task_num_labels, self.task_types = task_num_labels, task_types
        self.bert = BertModel(config)
        heads = []
        for n, t in zip(task_num_labels, task_types):
            if t in ("classification", "regression"):
                heads.append(SequenceHead(config, n, t))
            elif t == "choice":
                heads.append(SequenceHead(config, 1, t))
            elif t == "token":
                heads.append(TokenHead(config, n))
            elif t == "span":
                heads.append(SpanHead(config))
            else:
                heads.append(PreTrainingHead(config, self.bert.embeddings.word_embeddings))
        self.heads = nn.ModuleList(heads)
        self.heads.apply(lambda m: _init_module(m, config))

    @property
    def num_tasks(self):
        return len(self.task_types)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, task_id=0, labels=None, **head_inputs):
        task_id = int(task_id)
        if not 0 <= task_id < len(self.heads):
            raise IndexError(f"task_id {task_id} out of range: this model has {len(self.heads)} tasks")
        head_type = self.task_types[task_id]
        allowed = HEAD_INPUTS[head_type]
        for key in head_inputs:
            if key not in allowed:
                raise TypeError(f"unexpected input '{key}' for a {head_type} head (task {task_id}); "
                                f"accepted: {', '.join(allowed)}")
        if labels is not None:
            if "labels" not in allowed:
                raise TypeError(f"a {head_type} head (task {task_id}) takes {', '.join(allowed)}, not 'labels'")
            head_inputs["labels"] = labels
        head = self.heads[task_id]
        if head_type == "choice":  # [B,K,S] -> [B*K,S]; the head folds logits back to [B,K]
            if input_ids.dim() != 3:
                raise ValueError(f"a choice head (task {task_id}) needs input_ids [B, K, S], "
                                 f"got {tuple(input_ids.shape)}")
            head_inputs["num_choices"] = input_ids.shape[1]
            flat = lambda t: None if t is None else t.reshape(-1, t.shape[-1])  # noqa: E731
            input_ids, token_type_ids, attention_mask = flat(input_ids), flat(token_type_ids), flat(attention_mask)
        sequence_output, pooled_output = self.bert(input_ids, token_type_ids, attention_mask, task_id)
        return head(sequence_output, pooled_output, **head_inputs)

    # -- parameter groups -----------------------------------------------------------------------
    def named_task_parameters(self, task_id):
        """(name, parameter) of task `task_id`'s adapters and head."""
        names = set(task_specific_parameter_names(self)[task_id])
        return [(n, p) for n, p in self.named_parameters() if n in names]

    def task_parameters(self, task_id):
        return [p for _, p in self.named_task_parameters(task_id)]

    def named_shared_parameters(self):
        """(name, parameter) of everything shared by all tasks (embeddings, encoder, pooler)."""
        specific = set().union(*task_specific_parameter_names(self).values())
        return [(n, p) for n, p in self.named_parameters() if n not in specific]

    def shared_parameters(self):
        return [p for _, p in self.named_shared_parameters()]

    # -- checkpoints ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path, config=None, task_num_labels=None, task_types=None, task_names=None,
                        allow_random_init=False, match_tasks=None):
        """A BERT checkpoint (HF, Google TF, old pytorch-pretrained-BERT, or our own save) + adapter config.

        Heads come from `task_num_labels`/`task_types`/`task_names` when given (they replace the
        checkpoint's task metadata), else from the checkpoint's config. New adapters/heads keep
        their fresh init; what was new or unused is logged once. `match_tasks` (the 2019 task order,
        with `task_names`): load each task's modules and head from the checkpoint's task of that name
        (match_saved_tasks) instead of the one at the same position.
        """
        _, merged, weights_path = read_pretrained(name_or_path, config)
        saved_names = list(merged.get("task_names") or [])
        if task_num_labels is not None:
            for key in TASK_KEYS:
                merged[key] = None
            merged["num_tasks"] = len(task_num_labels)
        model = cls(BertConfig.from_dict(merged), task_num_labels, task_types, task_names)
        task_map = None
        if match_tasks is not None:
            task_map = functools.partial(match_saved_tasks, model.config.task_names, saved_names, match_tasks)
        load_weights(model, weights_path, allow_random_init, task_map=task_map)
        return model

    def save_pretrained(self, directory, vocab_file=None, labels=None):
        write_pretrained(self, directory, vocab_file, labels)


# ----------------------------------------------------------------------------------------------
# Parameter groups: shared encoder vs task-specific modules
# ----------------------------------------------------------------------------------------------

def _unwrap(model):
    return getattr(model, "module", model)  # DDP / DataParallel


def task_specific_parameter_names(model):
    """{task_id: [parameter names]} for every task's adapters and head (shared V^E/V^D included)."""
    model = _unwrap(model)
    result = {}
    if isinstance(model, BertForMultiTask):
        for t in range(len(model.heads)):
            result[t] = [f"heads.{t}.{n}" for n, _ in model.heads[t].named_parameters()]
    for prefix, module in model.named_modules():
        if isinstance(module, TaskModuleList):
            for t, child in enumerate(module):
                result.setdefault(t, []).extend(f"{prefix}.{t}.{n}" for n, _ in child.named_parameters())
    return result


def task_parameter_pairs(model, task_id):
    """[(portable name, state-dict name)] of task `task_id`'s adapters and head. The portable name
    drops the task index (`heads.3.classifier.weight` -> `heads.classifier.weight`), so one task's
    parameters move into a model where the task has another id (adapter files)."""
    model = _unwrap(model)
    pairs = []
    if isinstance(model, BertForMultiTask):
        pairs += [(f"heads.{n}", f"heads.{task_id}.{n}") for n, _ in model.heads[task_id].named_parameters()]
    for prefix, module in model.named_modules():
        if isinstance(module, TaskModuleList):
            pairs += [(f"{prefix}.{n}", f"{prefix}.{task_id}.{n}") for n, _ in module[task_id].named_parameters()]
    return pairs


def uses_all_parameters(model):
    """Whether every forward step gives every trainable parameter a gradient: a one-task model whose
    head reads the pooled output. (Several tasks: the others' modules rest; span/token heads: the
    pooler rests.)"""
    model = _unwrap(model)
    if not isinstance(model, BertForMultiTask):
        return True
    return model.num_tasks == 1 and model.task_types[0] in ("classification", "regression", "choice", "pretraining")


def count_parameters(module, trainable_only=False):
    """Number of unique parameters (a shared tensor counts once)."""
    seen, total = set(), 0
    for p in _unwrap(module).parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


# ----------------------------------------------------------------------------------------------
# Checkpoints in and out
# ----------------------------------------------------------------------------------------------

CONFIG_NAMES = ("config.json", "bert_config.json")
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
# Standard keys that fix tensor shapes or the function computed: an adapter config must agree with
# the checkpoint on these. (Dropout/init keys of an adapter config simply override the checkpoint's.)
STRUCTURAL_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                   "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
                   "layer_norm_eps")
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
# Short names of the bundled adapter configs (`--config pals`). configs/ holds each for bert-base
# (hidden 768, `<name>_config.json`) and for the bundled MiniLM (hidden 384, `minilm_<name>_config.json`).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
ADAPTER_CONFIGS = ("pals", "low_rank", "top_attn", "top_bert_layer", "houlsby", "houlsby_plus_pals",
                   "houlsby_original", "lhuc")
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
    specific = set().union(*task_specific_parameter_names(model).values())
    return [n for n, _ in model.named_parameters()
            if n not in specific and ".pooler." not in f".{n}" and not n.startswith("heads.")]


def load_weights(model, weights_path, allow_random_init=False, task_map=None):
    """Copy checkpoint tensors into `model`; one warning lists what was new or unused.

    Every encoder weight (embeddings and layers) must come from the checkpoint: a file whose keys
    do not fit would otherwise train a random model without a word. `allow_random_init` permits
    that for deliberate from-scratch runs. `task_map(keys)` -> {checkpoint task id: model task id}:
    task modules and heads move to their task's id (those of other tasks are not loaded)."""
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
    # Heads saved by the PALs reference code: their label order is the 2019 code's (callers that know
    # the tasks fix what differs, e.g. tasks.glue.REFERENCE_LABEL_ORDER).
    model._reference_heads = sorted({int(match.group(2)) for match in (
        re.match(r"^(module\.)?classifier\.(\d+)\.", k) for k in state) if match})
    if task_map is not None:
        model._reference_heads = sorted(task_map[i] for i in model._reference_heads if i in task_map)
    return missing, unexpected


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
    for task_id, params in task_specific_parameter_names(model).items():
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
# What Hugging Face cannot run (adapters, several heads) gets its own model type: transformers' Auto
# classes then refuse the folder instead of silently dropping modules and heads.
OWN_MODEL_TYPE = "bert-pals"


def hf_layout(model):
    """(HF class name, [(our prefix, HF prefix)]) when `model` has exactly the structure of a
    transformers BERT class, else None."""
    config = model.config
    if any((config.mult, config.houlsby, config.houlsby_original, config.top, config.lhuc)):
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
