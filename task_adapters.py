"""Per-task adapter modules and where a transformer layer puts them (docs/model.md#adapters).

- `AdapterKeys`: the adapter keys of a config (those of the PALs reference, Stickland & Murray,
  ICML 2019), a base of `modeling.BertConfig`, with their checks.
- The modules, each written once, each taking `(x, mask)` so a slot can hold any of them: `PAL`
  (projected attention layer), `LowRankAdapter` (also the Houlsby bottleneck), `LHUC`,
  `TopProjectedAttention`, `ParallelAdapter`; `LoRA` and `IA3` instead wrap a projection, taking
  `(x, linear)`. One copy per task in a `TaskModuleList` (index = task id).
- `SLOTS`: the places a layer (modeling.BertLayer) or the encoder holds per-task modules, and
  `METHODS`: which config key fills which slot with what. `Build` turns a config into the modules.

Adding a method: its module class, its config key(s) in `AdapterKeys`, one `Method` entry in
`METHODS` (docs/model.md#adding-an-adapter). This module imports nothing from modeling: the
transformer blocks an adapter is made of (attention, a whole layer) are handed in as `Blocks`.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from file_utils import ConfigError

TOP_NUM_BLOCKS = 6  # stacked attention blocks in the top projected-attention module (reference constant)


def config_key(default, group):
    """A config field; `group` says which keys an adapter config may set (model_io._merge_configs)."""
    return field(default=default, metadata={"group": group})


# ----------------------------------------------------------------------------------------------
# Config keys
# ----------------------------------------------------------------------------------------------

@dataclass
class AdapterKeys:
    """The adapter keys of BertConfig (docs/model.md#config-keys shows where each module sits)."""
    hidden_size_aug: int = config_key(204, "adapter")      # d_s, the small dimension of PALs/low-rank/top
    pals: bool = config_key(False, "adapter")              # adapters are PALs (else low-rank MLPs)
    mult: bool = config_key(False, "adapter")              # one adapter per layer, parallel to the layer
    houlsby: bool = config_key(False, "adapter")           # reference Houlsby-style: serial + FFN-parallel
    houlsby_original: bool = config_key(False, "adapter")  # Houlsby et al. 2019: serial after attn and FFN
    top: bool = config_key(False, "adapter")               # a per-task module on top of the encoder
    bert_lay_top: bool = config_key(False, "adapter")      # with top: a full BERT layer instead of projected attention
    lhuc: bool = config_key(False, "adapter")              # per-task LHUC scaling of each layer
    extra_dim: Optional[int] = config_key(None, "adapter")  # low-rank bottleneck if not hidden_size_aug
    num_tasks: Optional[int] = config_key(None, "adapter")  # adapter copies; None: len(task lists) or 1
    pal_num_heads: int = config_key(6, "adapter")          # heads of the PAL attention (reference: 6)
    top_num_heads: int = config_key(12, "adapter")         # heads of the top projected attention (12)
    lora: bool = config_key(False, "adapter")              # per-task LoRA on projections (Hu et al. 2021)
    lora_r: int = config_key(8, "adapter")                 # LoRA rank r
    lora_alpha: float = config_key(16.0, "adapter")        # LoRA scale is lora_alpha / lora_r
    lora_dropout: float = config_key(0.1, "adapter")       # dropout on the LoRA branch's input
    lora_targets: Optional[List[str]] = config_key(None, "adapter")  # PROJECTIONS; None: query, value
    ia3: bool = config_key(False, "adapter")               # per-task (IA)^3 rescaling (Liu et al. 2022)
    ia3_targets: Optional[List[str]] = config_key(None, "adapter")  # PROJECTIONS; None: PEFT's BERT default
    parallel_adapter: bool = config_key(False, "adapter")  # scaled adapter beside each FFN (He et al. 2022)
    parallel_adapter_size: int = config_key(64, "adapter")  # its bottleneck
    parallel_adapter_scale: float = config_key(4.0, "adapter")  # its output scale s
    prefix_tuning: bool = config_key(False, "adapter")     # per-task prefix keys/values (Li & Liang 2021)
    prefix_length: int = config_key(20, "adapter")         # prefix positions per layer
    prefix_hidden: int = config_key(512, "adapter")        # width of the reparametrising MLP

    def validate_adapters(self):
        """Raise ConfigError for adapter settings that would crash or silently misbehave later."""
        for key in ("hidden_size_aug", "num_tasks", "pal_num_heads", "top_num_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(self, key)}")
        if self.extra_dim is not None and self.extra_dim < 1:
            raise ConfigError(f"config key 'extra_dim' must be >= 1 or null, got {self.extra_dim}")
        if self.houlsby and self.mult:
            raise ConfigError("config keys 'houlsby' and 'mult' are both true: choose one adapter placement")
        if self.houlsby and self.houlsby_original:
            raise ConfigError("config keys 'houlsby' (reference placement) and 'houlsby_original' are both true")
        if self.pals and not (self.mult or self.houlsby):
            raise ConfigError("config key 'pals' needs 'mult' (PALs in parallel to each layer) or 'houlsby'")
        if self.pals and self.hidden_size_aug % self.pal_num_heads:
            raise ConfigError(f"hidden_size_aug ({self.hidden_size_aug}) must be divisible by "
                              f"pal_num_heads ({self.pal_num_heads}) for PALs")
        self._validate_projection_methods()
        if self.bert_lay_top and not self.top:
            raise ConfigError("config key 'bert_lay_top' needs 'top': true")
        if self.top and not self.bert_lay_top and self.hidden_size_aug % self.top_num_heads:
            raise ConfigError(f"hidden_size_aug ({self.hidden_size_aug}) must be divisible by "
                              f"top_num_heads ({self.top_num_heads}) for top projected attention")

    def _validate_projection_methods(self):
        for key in ("prefix_length", "prefix_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(self, key)}")
        if self.parallel_adapter_size < 1:
            raise ConfigError(f"config key 'parallel_adapter_size' must be >= 1, got {self.parallel_adapter_size}")
        if self.lora_r < 1:
            raise ConfigError(f"config key 'lora_r' must be >= 1, got {self.lora_r}")
        if not self.lora_alpha > 0:
            raise ConfigError(f"config key 'lora_alpha' must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"config key 'lora_dropout' must be in [0, 1), got {self.lora_dropout}")
        for key in ("lora_targets", "ia3_targets"):
            targets = getattr(self, key)
            if targets is None:
                continue
            unknown = [t for t in targets if t not in PROJECTIONS]
            if unknown or not targets or len(set(targets)) != len(targets):
                raise ConfigError(f"config key '{key}' must list distinct projections of {', '.join(PROJECTIONS)}; "
                                  f"got {targets}")


# ----------------------------------------------------------------------------------------------
# Modules (each written once; all take (x, mask) so a slot can hold any of them)
# ----------------------------------------------------------------------------------------------

class TaskModuleList(nn.ModuleList):
    """One module per task; index = task id. Marks its parameters as task-specific."""


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

    def init_weights(self):
        """Called by modeling's init after the BERT init of the Linear layers."""
        if self.near_identity:
            for lin in (self.down, self.up):
                nn.init.trunc_normal_(lin.weight, 0.0, 1e-2, -2e-2, 2e-2)
                nn.init.zeros_(lin.bias)

    def forward(self, x, mask=None):
        return self.up(F.gelu(self.down(x)))


class PAL(nn.Module):
    """Projected attention layer: TS(h) = GELU(V^D MHA(V^E h)).

    Only the multi-head attention in the small dimension (`attention`, a modeling.BertSelfAttention)
    is per layer. V^E / V^D are per task and shared by every layer: they are registered once on the
    encoder (`pal_encoders.T`, `pal_decoders.T`) and held here by plain reference, so the state dict
    has no aliases.
    """

    def __init__(self, attention, encoder, decoder):
        super().__init__()
        self.attention = attention
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

    def init_weights(self):
        nn.init.zeros_(self.weight)

    def forward(self, x, mask=None):
        return x * (2.0 * torch.sigmoid(self.weight))


class TopProjectedAttention(nn.Module):
    """Per-task top module: V^E -> 6 x (attention block in d_s with dense+dropout+residual+LN) -> V^D.

    `block()` makes one attention block (a modeling.BertAttention in d_s). Its output replaces the
    last layer's hidden states (no residual, no nonlinearity: reference).
    """

    def __init__(self, config, block):
        super().__init__()
        a = config.hidden_size_aug
        self.down = nn.Linear(config.hidden_size, a)
        self.blocks = nn.ModuleList(block() for _ in range(TOP_NUM_BLOCKS))
        self.up = nn.Linear(a, config.hidden_size)

    def forward(self, h, mask, task_id=0):
        x = self.down(h)
        for block in self.blocks:
            x = block(x, mask)
        return self.up(x)


# The linear projections of a layer a method may wrap (slots of the same names, modeling.BertLayer):
# name -> (input size key, output size key) of the config.
PROJECTIONS = {
    "query": ("hidden_size", "hidden_size"),
    "key": ("hidden_size", "hidden_size"),
    "value": ("hidden_size", "hidden_size"),
    "attention_output": ("hidden_size", "hidden_size"),  # attention.output.dense
    "ffn_in": ("hidden_size", "intermediate_size"),        # intermediate.dense
    "ffn_out": ("intermediate_size", "hidden_size"),       # output.dense
}
LORA_TARGETS = ("query", "value")  # Hu et al. 2021 and PEFT's default for BERT
# PEFT's default for BERT is target_modules ["key", "value", "output.dense"] with feed-forward module
# "output.dense"; its suffix match takes `attention.output.dense` as well, so it scales the outputs of
# key and value and the inputs of both output projections. We place it the same way, so files interchange.
IA3_TARGETS = ("key", "value", "attention_output", "ffn_out")
IA3_INPUT_SIDE = ("attention_output", "ffn_out")  # PEFT's feed-forward modules: the input is scaled


class LoRA(nn.Module):
    """Wraps a projection: W x + b + (alpha / r) B A dropout(x) (Hu et al. 2021).

    Init as PEFT's LoraLayer: A Kaiming-uniform (a = sqrt 5), B zero, so the wrapped projection is
    unchanged at init. Parameter names (`lora_A`, `lora_B`) and shapes are PEFT's."""

    def __init__(self, in_features, out_features, r, alpha, dropout):
        super().__init__()
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / r

    def init_weights(self):
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x, linear):
        return linear(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


class IA3(nn.Module):
    """Wraps a projection: (W x + b) * l, or W (x * l) + b for `input_side` (Liu et al. 2022); l = 1 at init."""

    def __init__(self, size, input_side):
        super().__init__()
        self.ia3_l = nn.Parameter(torch.ones(size))
        self.input_side = input_side

    def init_weights(self):
        nn.init.ones_(self.ia3_l)

    def forward(self, x, linear):  # l in the activations' dtype: no fp32 copy of them under autocast
        if self.input_side:
            return linear(x * self.ia3_l.to(x.dtype))
        y = linear(x)
        return y * self.ia3_l.to(y.dtype)


class ParallelAdapter(nn.Module):
    """s * up(ReLU(down(x))) beside the FFN, reading its input (He et al. 2022, "scaled PA").

    Init as their code's LoRA-style init: down Kaiming-uniform (a = sqrt 5), up and biases 0, so the
    layer is unchanged at init."""

    def __init__(self, size, bottleneck, scale):
        super().__init__()
        self.down = nn.Linear(size, bottleneck)
        self.up = nn.Linear(bottleneck, size)
        self.scale = scale

    def init_weights(self):
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        for t in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(t)

    def forward(self, x, mask=None):
        return self.up(F.relu(self.down(x))) * self.scale


class PrefixEncoder(nn.Module):
    """One task's prefixes of every layer, reparametrised (Li & Liang 2021): P = W2 tanh(W1 E + b1) + b2,
    E [prefix_length, d]; the columns of P are (layer, key/value, d). Registered once per task on the
    encoder (`prefix_encoders`) and read by each layer's `PrefixKeyValues`."""

    def __init__(self, config):
        super().__init__()
        d, layers = config.hidden_size, config.num_hidden_layers
        self.embedding = nn.Embedding(config.prefix_length, d)
        self.mlp = nn.Sequential(nn.Linear(d, config.prefix_hidden), nn.Tanh(),
                                 nn.Linear(config.prefix_hidden, layers * 2 * d))
        self.size = d

    def layer(self, index):
        """(keys, values) [prefix_length, d] of layer `index`: only its rows of the last projection."""
        hidden = self.mlp[1](self.mlp[0](self.embedding.weight))
        out = self.mlp[2]
        rows = slice(index * 2 * self.size, (index + 1) * 2 * self.size)
        kv = F.linear(hidden, out.weight[rows], out.bias[rows])
        return kv[:, :self.size], kv[:, self.size:]


class PrefixKeyValues(nn.Module):
    """Layer `index`'s prefix keys and values of one task, from that task's PrefixEncoder (held by
    plain reference, as PAL holds V^E/V^D: no aliases in the state dict; no parameters of its own)."""

    def __init__(self, encoder, index):
        super().__init__()
        self._shared = (encoder,)
        self.index = index

    def forward(self):
        return self._shared[0].layer(self.index)


def lora_slots(config):
    """{projection slot: builder} of the LoRA method (config key `lora_targets`)."""
    return {p: (lambda b, t, p=p: b.lora(p)) for p in config.lora_targets or LORA_TARGETS}


def ia3_slots(config):
    """{projection slot: builder} of the (IA)^3 method (config key `ia3_targets`)."""
    return {p: (lambda b, t, p=p: b.ia3(p)) for p in config.ia3_targets or IA3_TARGETS}


# ----------------------------------------------------------------------------------------------
# Where they go: slots, methods, and building them from a config
# ----------------------------------------------------------------------------------------------

# Slot -> the state-dict place of its TaskModuleList (in a layer, `encoder.layer.N.` before it).
# modeling.BertLayer / BertEncoder apply them:
#   after_attention  serial: x + A_t(x) after the attention output dense, before its LayerNorm
#   beside_ffn       parallel to the FFN: FFN(a) + A_t(a), reads the FFN input a
#   after_ffn        serial after the FFN: y + A_t(y), reads the FFN output y
#   beside_layer     parallel to the whole layer: LN2(F(a) + a + A_t(h)), reads the layer input h
#   scale            multiplies the beside_layer output if there is one, else the layer output
#   top              on top of the encoder: replaces the last layer's hidden states
#   PROJECTIONS      wrap one linear projection: the module gets (x, linear) and returns its output
SLOTS = {
    "after_attention": "attention.output.adapters",
    "beside_ffn": "output.adapters",
    "after_ffn": "output.adapters",
    "beside_layer": "adapters",
    "scale": "lhuc",
    "top": "top",
    "query": "attention.self.query_adapters",
    "key": "attention.self.key_adapters",
    "value": "attention.self.value_adapters",
    "attention_output": "attention.output.dense_adapters",
    "ffn_in": "intermediate.dense_adapters",
    "ffn_out": "output.dense_adapters",
    "prefix": "attention.self.prefix",  # PrefixKeyValues: keys/values put before the layer's own
}
ENCODER_SLOTS = ("top",)


@dataclass(frozen=True)
class Blocks:
    """The transformer blocks of modeling.py an adapter may be made of (handed in by BertEncoder)."""
    self_attention: Callable  # (size, num_heads, dropout) -> attention without output projection
    attention: Callable       # (size, num_heads, attn_dropout, hidden_dropout, eps) -> attention block
    layer: Callable           # (config) -> a transformer layer without adapters


@dataclass
class Build:
    """A config + the blocks, from which METHODS' builders make one task's module."""
    config: object
    blocks: Blocks
    shared: Dict[str, TaskModuleList] = field(default_factory=dict)  # encoder-level modules by name
    layer_index: int = -1  # the layer slots("layer") builds now (counted: the encoder builds them in order)

    def low_rank(self, near_identity=False):
        c = self.config
        return LowRankAdapter(c.hidden_size, c.extra_dim or c.hidden_size_aug, near_identity)

    def pal_or_low_rank(self, task_id):
        """A PAL when the config says `pals`, else the reference low-rank adapter."""
        c = self.config
        if not c.pals:
            return self.low_rank()
        attention = self.blocks.self_attention(c.hidden_size_aug, c.pal_num_heads, c.attention_probs_dropout_prob)
        return PAL(attention, self.shared["pal_encoders"][task_id], self.shared["pal_decoders"][task_id])

    def lora(self, projection):
        c = self.config
        size_in, size_out = (getattr(c, k) for k in PROJECTIONS[projection])
        return LoRA(size_in, size_out, c.lora_r, c.lora_alpha, c.lora_dropout)

    def ia3(self, projection):
        size_in, size_out = (getattr(self.config, k) for k in PROJECTIONS[projection])
        input_side = projection in IA3_INPUT_SIDE
        return IA3(size_in if input_side else size_out, input_side)

    def top(self, task_id):
        c = self.config
        if c.bert_lay_top:
            return self.blocks.layer(c)
        return TopProjectedAttention(c, lambda: self.blocks.attention(
            c.hidden_size_aug, c.top_num_heads, c.attention_probs_dropout_prob, c.hidden_dropout_prob,
            c.layer_norm_eps))

    # -- what the encoder asks for ----------------------------------------------------------------
    def shared_modules(self):
        """{attribute name: TaskModuleList} registered once on the encoder, before its layers."""
        for method in active_methods(self.config):
            for name, make in method.shared.items():
                self.shared[name] = self._per_task(lambda t, make=make: make(self.config))
        return dict(self.shared)

    def slots(self, where):
        """{slot: TaskModuleList} of one layer (`where="layer"`) or of the encoder (`"encoder"`)."""
        filled, places = {}, {}
        if where == "layer":
            self.layer_index += 1
        for method in active_methods(self.config):
            method_slots = method.slots(self.config) if callable(method.slots) else method.slots
            for slot, make in method_slots.items():
                if (slot in ENCODER_SLOTS) != (where == "encoder"):
                    continue
                place = SLOTS[slot]
                if place in places:
                    raise ConfigError(f"config keys '{places[place]}' and '{method.key}' both put adapters "
                                      f"at {place}: choose one")
                places[place] = method.key
                filled[slot] = self._per_task(lambda t, make=make: make(self, t))
        return filled

    def _per_task(self, make):
        return TaskModuleList(make(t) for t in range(self.config.num_tasks))


@dataclass(frozen=True)
class Method:
    """An adapter method: the boolean config key that turns it on, the per-task module it puts in
    each slot (`builder(build, task_id)`; or a function of the config giving that dict, when the
    config chooses the slots), and per-task modules it registers once on the encoder (`shared`:
    name -> `maker(config)`, built before the layers). `task_lr`: the documented default rate of the
    task modules and heads when a run gives neither --task_lr nor --learning_rate (method_task_lr)."""
    key: str
    slots: Union[Dict[str, Callable], Callable] = field(default_factory=dict)
    shared: Dict[str, Callable] = field(default_factory=dict)
    task_lr: Optional[float] = None


# In build order (the order fixes the random init of a seed; append new methods at the end).
METHODS = (
    # PALs' V^E / V^D, one pair per task shared by all layers (the reference's mult_aug_dense / dense2);
    # the PAL modules themselves go where `mult` / `houlsby` put their adapters.
    Method("pals", shared={"pal_encoders": lambda c: nn.Linear(c.hidden_size, c.hidden_size_aug),
                           "pal_decoders": lambda c: nn.Linear(c.hidden_size_aug, c.hidden_size)}),
    Method("mult", slots={"beside_layer": Build.pal_or_low_rank}),
    # reference Houlsby-style: A1 serial after the attention dense, A2 parallel to the FFN
    Method("houlsby", slots={"after_attention": lambda b, t: b.low_rank(),
                             "beside_ffn": Build.pal_or_low_rank}),
    # Houlsby et al. 2019: near-identity bottlenecks serial after the attention and after the FFN
    Method("houlsby_original", slots={"after_attention": lambda b, t: b.low_rank(near_identity=True),
                                      "after_ffn": lambda b, t: b.low_rank(near_identity=True)}),
    Method("lhuc", slots={"scale": lambda b, t: LHUC(b.config.hidden_size)}),
    Method("top", slots={"top": Build.top}),
    Method("lora", slots=lora_slots, task_lr=5e-4),
    Method("ia3", slots=ia3_slots, task_lr=3e-3),
    Method("parallel_adapter", slots={"beside_ffn": lambda b, t: ParallelAdapter(
        b.config.hidden_size, b.config.parallel_adapter_size, b.config.parallel_adapter_scale)}, task_lr=1e-4),
    Method("prefix_tuning", shared={"prefix_encoders": PrefixEncoder},
           slots={"prefix": lambda b, t: PrefixKeyValues(b.shared["prefix_encoders"][t], b.layer_index)},
           task_lr=1e-3),
)


def active_methods(config):
    """The METHODS a config turns on."""
    return [m for m in METHODS if getattr(config, m.key)]


def method_task_lr(merged):
    """(rate, note) for the task modules and heads of a model config (a dict, e.g. read_pretrained's):
    the `task_lr` its methods share, or None (a method without one, such as PALs, trains at --learning_rate;
    methods whose defaults differ: `note` says so)."""
    rates = {m.key: m.task_lr for m in METHODS if merged.get(m.key)}
    values = set(rates.values())
    if len(values) == 1 and None not in values:
        return values.pop(), f"{', '.join(rates)}'s default"
    if values - {None}:
        return None, ("the methods' default task rates differ (" + ", ".join(
            f"{k} {'--learning_rate' if v is None else f'{v:g}'}" for k, v in rates.items())
            + "): the task modules train at --learning_rate; pass --task_lr to choose")
    return None, ""


def has_adapters(config):
    """Whether the config puts any per-task module into the encoder (then no Hugging Face class runs it)."""
    return any(m.slots for m in active_methods(config))
