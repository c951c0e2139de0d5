"""BERT with task-specific modules (PALs and friends) for multi-task fine-tuning: the model.

Top to bottom:
- The encoder (`BertModel`): embeddings, layers using `F.scaled_dot_product_attention`, pooler.
  State-dict names are the Hugging Face BERT names, so checkpoints move both ways. `BertLayer` and
  `BertEncoder` hold the adapters that task_adapters.py builds from the config, in its slots.
- Heads (`classification`, `regression`, `span`, `token`, `choice`, `pretraining`) and
  `BertForMultiTask`, which routes ONE task id per batch through adapters and head.
- Parameter grouping (shared vs task-specific, counts).

Beside it (docs/model.md#code-layout): the configuration `BertConfig` in model_config.py, the
adapter modules and where they sit in task_adapters.py, checkpoints in and out (`from_pretrained`,
`save_pretrained`, the names of other layouts) in model_io.py. Their public names are reachable
here too (`modeling.BertConfig`, `modeling.read_pretrained`, ...).
This module knows nothing about task file formats, tokenizers or the CLI (docs/model.md).
"""
import torch
import torch.nn.functional as F
from torch import nn

import task_adapters
from file_utils import ConfigError
from model_config import (  # noqa: F401 (re-exported: modeling.BertConfig, modeling.ADAPTER_KEYS, ...)
    ACTIVATIONS,
    ADAPTER_KEYS,
    ALL_KEYS,
    FOREIGN_KEYS,
    HEAD_TYPES,
    OWN_MODEL_TYPE,
    TASK_KEYS,
    BertConfig,
    BertKeys,
)
from task_adapters import TaskModuleList

# Additive attention-mask value: the reference's -10000 fits fp16/bf16 and makes exp() underflow to 0.
MASK_VALUE = -10000.0
# On CUDA, SDPA's memory-efficient kernel (the only fused one that takes a padding mask) needs the
# head size to be a multiple of 8 (4 in fp32) and the mask's strides multiples of 8 elements;
# otherwise it falls back to the math kernel or copies the mask in every call. BERT's heads (64)
# fit; PALs' (204/6 = 34) and top attention's (17) are zero-padded to this multiple on CUDA (see
# docs/model.md#attention-kernels). 1 turns the padding off.
SDPA_ALIGN = 8


# ----------------------------------------------------------------------------------------------
# Encoder building blocks (Hugging Face names)
# ----------------------------------------------------------------------------------------------

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


def project(linear, adapters, x, task_id):
    """`linear(x)`, through task `task_id`'s wrapper of it when a method wraps it (LoRA, (IA)^3)."""
    return linear(x) if adapters is None else adapters[task_id](x, linear)


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

    def __init__(self, size, num_heads, dropout, projections=None):
        super().__init__()
        projections = projections or {}
        if size % num_heads:
            raise ConfigError(f"attention size {size} is not divisible by its {num_heads} heads")
        self.num_heads, self.head_size = num_heads, size // num_heads
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.value = nn.Linear(size, size)
        # task_adapters' projection slots: per-task wrappers of query / key / value, or None
        self.query_adapters = projections.get("query")
        self.key_adapters = projections.get("key")
        self.value_adapters = projections.get("value")
        self.prefix = projections.get("prefix")  # per-task prefix keys/values (prefix tuning), or None
        self.dropout_p = dropout

    def forward(self, x, mask, task_id=0):  # x [B,S,size], mask additive [B,1,1,S] or None
        B, S, _ = x.shape

        def heads(t):  # [B,S,size] -> [B,h,S,hd]
            return t.view(B, S, self.num_heads, self.head_size).transpose(1, 2)

        q, k, v = (heads(project(lin, ad, x, task_id)) for lin, ad in (
            (self.query, self.query_adapters), (self.key, self.key_adapters), (self.value, self.value_adapters)))
        if self.prefix is not None:
            k, v, mask = self._with_prefix(k, v, mask, task_id)
        if mask is not None and mask.dtype != q.dtype:  # BertModel builds it in q's dtype; others may not
            mask = mask.to(q.dtype)
        ctx = sdpa(q, k, v, mask, self.dropout_p if self.training else 0.0,
                   head_align=SDPA_ALIGN if q.is_cuda else 1)
        return ctx.transpose(1, 2).reshape(B, S, self.num_heads * self.head_size)


    def _with_prefix(self, k, v, mask, task_id):
        """Task `task_id`'s prefix keys/values before the tokens' [B,h,L+S,hd]; the mask gets L zeros
        (attended) in front, so padding stays masked."""
        B = k.shape[0]
        pk, pv = (t.to(k.dtype).view(1, -1, self.num_heads, self.head_size).transpose(1, 2).expand(B, -1, -1, -1)
                  for t in self.prefix[task_id]())
        if mask is not None:
            mask = F.pad(mask, (pk.shape[2], 0))
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), mask


class BertSelfOutput(nn.Module):
    """dense -> dropout -> [serial adapter: x + A_t(x)] -> LayerNorm(x + input)."""

    def __init__(self, size, dropout, eps, adapters=None, dense_adapters=None):
        super().__init__()
        self.dense = nn.Linear(size, size)
        self.LayerNorm = nn.LayerNorm(size, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.adapters = adapters
        self.dense_adapters = dense_adapters

    def forward(self, x, input_tensor, task_id=0, mask=None):
        x = self.dropout(project(self.dense, self.dense_adapters, x, task_id))
        if self.adapters is not None:
            x = x + self.adapters[task_id](x, mask)
        return self.LayerNorm(x + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, size, num_heads, attn_dropout, hidden_dropout, eps, adapters=None, projections=None):
        super().__init__()
        projections = projections or {}
        self.self = BertSelfAttention(size, num_heads, attn_dropout, projections)
        self.output = BertSelfOutput(size, hidden_dropout, eps, adapters, projections.get("attention_output"))

    def forward(self, x, mask, task_id=0):
        return self.output(self.self(x, mask, task_id), x, task_id, mask)


class BertIntermediate(nn.Module):
    def __init__(self, config, dense_adapters=None):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.dense_adapters = dense_adapters

    def forward(self, x, task_id=0):
        return self.act(project(self.dense, self.dense_adapters, x, task_id))


class BertOutput(nn.Module):
    """dense -> dropout -> [+ A_t(.)] -> [+ parallel branch] -> LayerNorm(. + ffn_input).

    `serial=True`: the adapter reads the FFN output (Houlsby et al. 2019);
    `serial=False`: it reads the FFN input (the reference's Houlsby-style A2, in parallel to the FFN).
    """

    def __init__(self, config, adapters=None, serial=False, dense_adapters=None):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.adapters = adapters
        self.serial = serial
        self.dense_adapters = dense_adapters

    def forward(self, x, input_tensor, task_id=0, mask=None, parallel=None):
        y = self.dropout(project(self.dense, self.dense_adapters, x, task_id))
        if self.adapters is not None:
            y = y + self.adapters[task_id](y if self.serial else input_tensor, mask)
        if parallel is not None:
            y = y + parallel
        return self.LayerNorm(y + input_tensor)



class BertLayer(nn.Module):
    """One transformer layer with the adapter slots task_adapters.Build fills from the config.

    `slots` ({slot: TaskModuleList}, task_adapters.SLOTS says where each sits):
    - `after_attention` -> `attention.output.adapters`: serial, x + A_t(x) after the attention dense.
    - `beside_ffn` / `after_ffn` -> `output.adapters`: at the FFN output, reading the FFN input
      (parallel to the FFN) or the FFN output (serial).
    - `beside_layer` -> `adapters`: parallel to the whole layer, reads the layer input h, added
      before the output LN (PALs / low-rank of `mult`): out = LN2(F(a) + a + TS_t(h)).
    - `scale` -> `lhuc`: scales the `adapters` output if present, else the layer output.
    - the projection slots (`query`, `key`, `value`, `attention_output`, `ffn_in`, `ffn_out`) ->
      `<module>.<name>_adapters` beside that projection: per-task wrappers of it (LoRA, (IA)^3).
    """

    def __init__(self, config, slots=None):
        super().__init__()
        slots = slots or {}
        self.attention = BertAttention(config.hidden_size, config.num_attention_heads,
                                       config.attention_probs_dropout_prob, config.hidden_dropout_prob,
                                       config.layer_norm_eps, slots.get("after_attention"), slots)
        self.intermediate = BertIntermediate(config, slots.get("ffn_in"))
        ffn_serial = "after_ffn" in slots
        self.output = BertOutput(config, slots.get("after_ffn" if ffn_serial else "beside_ffn"), ffn_serial,
                                 slots.get("ffn_out"))
        self.adapters = slots.get("beside_layer")
        self.lhuc = slots.get("scale")

    def forward(self, h, mask, task_id=0):
        a = self.attention(h, mask, task_id)
        parallel = None
        if self.adapters is not None:
            parallel = self.adapters[task_id](h, mask)
            if self.lhuc is not None:
                parallel = self.lhuc[task_id](parallel)
        out = self.output(self.intermediate(a, task_id), a, task_id, mask, parallel)
        if self.lhuc is not None and self.adapters is None:
            out = self.lhuc[task_id](out)
        return out


class BertEncoder(nn.Module):
    """The stack of layers plus the adapters the config asks for (task_adapters.METHODS)."""

    def __init__(self, config):
        super().__init__()
        build = task_adapters.Build(config, BLOCKS)
        for name, modules in build.shared_modules().items():  # PALs' V^E / V^D: `pal_encoders`, `pal_decoders`
            setattr(self, name, modules)
        self.layer = nn.ModuleList(BertLayer(config, build.slots("layer")) for _ in range(config.num_hidden_layers))
        self.top = build.slots("encoder").get("top")

    def forward(self, h, mask, task_id=0):
        for layer in self.layer:
            h = layer(h, mask, task_id)
        if self.top is not None:
            h = self.top[task_id](h, mask, task_id)
        return h


# What adapters are made of (task_adapters imports nothing from this module).
BLOCKS = task_adapters.Blocks(self_attention=BertSelfAttention, attention=BertAttention, layer=BertLayer)


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
    elif hasattr(module, "init_weights"):  # an adapter with its own init (task_adapters)
        module.init_weights()
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
        """The bare encoder from a checkpoint folder (model_io.load_pretrained)."""
        import model_io  # it imports this module: checkpoint I/O sits above the model
        return model_io.load_pretrained(cls, name_or_path, config, allow_random_init=allow_random_init)

    def save_pretrained(self, directory, vocab_file=None):
        import model_io
        model_io.write_pretrained(self, directory, vocab_file)


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

    def loss_count(self, task_id, batch):
        """What task `task_id`'s loss on `batch` is a mean over, as its head computes it: the scored
        tokens (labels not -100) for a token head, else the examples. The engine weights micro-batches
        by it, so that a step's loss is the mean over its whole batch."""
        if self.task_types[int(task_id)] == "token" and batch.get("labels") is not None:
            return float((batch["labels"] != -100).sum())
        return float(batch["input_ids"].shape[0])

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

    # -- checkpoints (model_io) ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path, config=None, task_num_labels=None, task_types=None, task_names=None,
                        allow_random_init=False, match_tasks=None, reference_head_rows=None):
        """A BERT checkpoint (HF, Google TF, old pytorch-pretrained-BERT, or our own save) + adapter config.

        Heads come from `task_num_labels`/`task_types`/`task_names` when given (they replace the
        checkpoint's task metadata), else from the checkpoint's config. New adapters/heads keep
        their fresh init; what was new or unused is logged once. `match_tasks` (the 2019 task order,
        with `task_names`): load each task's modules and head from the checkpoint's task of that name
        (model_io.match_saved_tasks) instead of the one at the same position. `reference_head_rows`
        ({task name: row order}): heads saved by the PALs reference code get their rows put in our
        label order (model_io.load_weights).
        """
        import model_io  # it imports this module: checkpoint I/O sits above the model
        return model_io.load_pretrained(
            cls, name_or_path, config, task_num_labels=task_num_labels, task_types=task_types,
            task_names=task_names, allow_random_init=allow_random_init, match_tasks=match_tasks,
            reference_head_rows=reference_head_rows)

    def save_pretrained(self, directory, vocab_file=None, labels=None):
        import model_io
        model_io.write_pretrained(self, directory, vocab_file, labels)


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
# Names that moved: checkpoint I/O (model_io) and the adapter modules (task_adapters)
# ----------------------------------------------------------------------------------------------

# model_io imports this module, so its names are looked up on first use rather than imported here.
_MODEL_IO_NAMES = frozenset([
    "CONFIG_NAMES", "WEIGHTS_NAMES", "STRUCTURAL_KEYS", "CONFIGS_DIR", "ADAPTER_CONFIGS", "adapter_config_path",
    "resolve_adapter_config", "read_pretrained", "load_state_dict_file", "REFERENCE_NAMES", "load_weights",
    "load_pretrained", "match_saved_tasks", "saved_task_names", "fresh_task_parts", "reference_layernorm_init",
    "HF_HEADS", "hf_layout", "write_pretrained", "assemble_model_folder", "with_hidden_size_aug",
])
TOP_NUM_BLOCKS = task_adapters.TOP_NUM_BLOCKS
LowRankAdapter, PAL, LHUC = task_adapters.LowRankAdapter, task_adapters.PAL, task_adapters.LHUC
TopProjectedAttention = task_adapters.TopProjectedAttention


def __getattr__(name):
    if name in _MODEL_IO_NAMES:
        import model_io
        return getattr(model_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
