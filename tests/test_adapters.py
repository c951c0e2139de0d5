"""Adapters: parameter budgets of the reference configs, exact wiring per mode against a hand-written
layer, task routing, cross-layer sharing of PAL V^E/V^D, identity/near-identity inits, parameter groups."""
import copy
import glob
import json
import os

import pytest
import torch

import model_io
import task_adapters
from file_utils import ConfigError
from modeling import BertConfig, BertForMultiTask, BertModel, count_parameters, task_specific_parameter_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
GLUE_LABELS = [2, 2, 3, 2, 1, 2, 2, 2]  # CoLA MRPC MNLI RTE STS-B SST-2 QQP QNLI
BERT_BASE = 109_482_240

# Totals derived from the reference code (bert_n_pals.md 4.2): 8 GLUE tasks, unique parameters.
BUDGETS = {
    "pals_config.json": 124_053_232,
    "low_rank_config.json": 124_323_472,
    "top_attn_config.json": 120_058_096,
    "houlsby_config.json": 124_397_200,
    "houlsby_plus_pals_config.json": 125_923_888,
    "top_bert_layer_config.json": 166_197_520,
    "bert_base_config.json": BERT_BASE + 12_304,
}
# LoRA and (IA)^3, by hand: heads 769 x 16 outputs = 12,304 (MiniLM: 385 x 16 = 6,160); per task and layer
# LoRA r (d_in + d_out) per projection (query, value: 2 x r x 2d), (IA)^3 d (key) + d (value) + d (input
# of the attention output) + d_ff (input of the FFN output).
MINILM, MINILM_HEADS = 22_713_216, 6_160
BUDGETS.update({
    "lora_config.json": BERT_BASE + 12_304 + 8 * 12 * 2 * 8 * (768 + 768),          # 1.022x
    "lora_budget_config.json": BERT_BASE + 12_304 + 8 * 12 * 2 * 49 * (768 + 768),  # 1.132x, PALs 1.133x
    "ia3_config.json": BERT_BASE + 12_304 + 8 * 12 * (3 * 768 + 3072),              # 1.005x
    "minilm_lora_config.json": MINILM + MINILM_HEADS + 8 * 6 * 2 * 8 * (384 + 384),
    "minilm_lora_budget_config.json": MINILM + MINILM_HEADS + 8 * 6 * 2 * 29 * (384 + 384),  # 1.094x, PALs 1.095x
    "minilm_ia3_config.json": MINILM + MINILM_HEADS + 8 * 6 * (3 * 384 + 1536),
    "minilm_pals_config.json": 24_862_816,  # 1.095x (docs/model.md)
    # parallel adapter, per task and layer: down d x b + b, up b x d + d
    "parallel_adapter_config.json": BERT_BASE + 12_304 + 8 * 12 * (2 * 768 * 64 + 64 + 768),
    "parallel_adapter_budget_config.json": BERT_BASE + 12_304 + 8 * 12 * (2 * 768 * 98 + 98 + 768),  # 1.133x
    "minilm_parallel_adapter_config.json": MINILM + MINILM_HEADS + 8 * 6 * (2 * 384 * 64 + 64 + 384),
    "minilm_parallel_adapter_budget_config.json": MINILM + MINILM_HEADS + 8 * 6 * (2 * 384 * 58 + 58 + 384),
    # prefix tuning, per task: E (20 x d) + W1 (d x m + m) + W2 (m x 2 layers d + 2 layers d)
    "prefix_config.json": BERT_BASE + 12_304 + 8 * (20 * 768 + 768 * 512 + 512 + 512 * 18_432 + 18_432),
    "prefix_budget_config.json": BERT_BASE + 12_304 + 8 * (20 * 768 + 768 * 93 + 93 + 93 * 18_432 + 18_432),  # 1.133x
    "minilm_prefix_config.json": MINILM + MINILM_HEADS + 8 * (20 * 384 + 384 * 512 + 512 + 512 * 4_608 + 4_608),
    "minilm_prefix_budget_config.json": MINILM + MINILM_HEADS + 8 * (20 * 384 + 384 * 51 + 51 + 51 * 4_608 + 4_608),
})


def build_meta(path, labels=GLUE_LABELS):
    with torch.device("meta"):  # no memory, no init cost: bert-base x 8 tasks in milliseconds
        return BertForMultiTask(BertConfig.from_json_file(path), task_num_labels=labels)


def test_bert_base_size():
    with torch.device("meta"):
        base = BertModel(BertConfig.from_json_file(os.path.join(CONFIGS, "bert_base_config.json")))
        assert count_parameters(base) == BERT_BASE


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_reference_parameter_budgets(name):
    model = build_meta(os.path.join(CONFIGS, name))
    total = count_parameters(model)
    print(f"{name}: {total:,} parameters = {total / BERT_BASE:.3f}x BERT-base")
    assert total == BUDGETS[name]
    assert model.config.num_tasks == len(GLUE_LABELS)


def test_pals_multiplier_and_per_task_budget():
    model = build_meta(os.path.join(CONFIGS, "pals_config.json"))
    assert round(count_parameters(model) / BERT_BASE, 3) == 1.133
    # Per task: PAL adapters 1,819,836 (4.2) + the task's head.
    head0 = 768 * 2 + 2
    assert sum(p.numel() for p in model.task_parameters(0)) == 1_819_836 + head0
    assert sum(p.numel() for p in model.task_parameters(4)) == 1_819_836 + 769  # STS-B: 1 output
    shared = sum(p.numel() for p in model.shared_parameters())
    assert shared == BERT_BASE


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.json"))), ids=os.path.basename)
def test_every_shipped_config_loads_and_builds(path):
    config = BertConfig.from_json_file(path)
    model = build_meta(path)  # every mode also runs for real in the wiring tests below (tiny sizes)
    assert count_parameters(model) > count_parameters(model.bert.embeddings)
    if os.path.basename(path).startswith("minilm_"):  # must fit the bundled MiniLM checkpoint
        assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size,
                config.num_attention_heads, config.vocab_size) == (384, 6, 1536, 12, 30522)
    else:
        assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (768, 12, 3072)


def test_reference_config_values_are_exact():
    def load(name):
        with open(os.path.join(CONFIGS, name)) as f:
            return json.load(f)

    extra = {k: v for k, v in load("houlsby_plus_pals_config.json").items() if k not in load("bert_base_config.json")}
    assert extra == {"hidden_size_aug": 156, "extra_dim": 50, "houlsby": True, "pals": True}
    assert {k: load("pals_config.json")[k] for k in ("hidden_size_aug", "mult", "pals")} == \
        {"hidden_size_aug": 204, "mult": True, "pals": True}
    assert load("low_rank_config.json")["hidden_size_aug"] == 100
    assert load("top_attn_config.json")["hidden_size_aug"] == 204
    assert load("houlsby_config.json")["hidden_size_aug"] == 50
    assert load("minilm_pals_config.json")["hidden_size_aug"] == 102
    assert load("minilm_top_attn_config.json")["hidden_size_aug"] % 12 == 0


# ------------------------------------------------------------------------------------------- wiring

D, A, HEADS, PAL_HEADS, TOP_HEADS = 32, 12, 4, 3, 4
TINY = dict(vocab_size=99, hidden_size=D, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            hidden_size_aug=A, pal_num_heads=PAL_HEADS, top_num_heads=TOP_HEADS)
MODES = {
    "pals": dict(mult=True, pals=True),
    "low_rank": dict(mult=True),
    "houlsby": dict(houlsby=True),
    "houlsby_plus_pals": dict(houlsby=True, pals=True, extra_dim=5),
    "houlsby_original": dict(houlsby_original=True, extra_dim=6),
    "lhuc": dict(lhuc=True),
    "pals_lhuc": dict(mult=True, pals=True, lhuc=True),
    "houlsby_lhuc": dict(houlsby=True, lhuc=True),
    "top_attn": dict(top=True),
    "top_bert_layer": dict(top=True, bert_lay_top=True),
    "houlsby_original_pals_lhuc": dict(houlsby_original=True, mult=True, pals=True, lhuc=True, extra_dim=6),
    "low_rank_top_attn": dict(mult=True, top=True),
    "parallel_adapter": dict(parallel_adapter=True, parallel_adapter_size=5, parallel_adapter_scale=3.0),
    # every projection slot wrapped, both sides of (IA)^3, beside a parallel adapter
    "lora_ia3_parallel": dict(lora=True, lora_r=3, lora_alpha=9.0, lora_targets=["query", "ffn_in", "ffn_out"],
                              ia3=True, ia3_targets=["key", "value", "attention_output"], parallel_adapter=True,
                              parallel_adapter_size=5),
    "prefix_tuning": dict(prefix_tuning=True, prefix_length=3, prefix_hidden=6),
    "prefix_pals_lora": dict(prefix_tuning=True, prefix_length=2, prefix_hidden=5, mult=True, pals=True, lora=True,
                             lora_r=2, lora_alpha=5.0),
}
INPUT_SCALED = ("attention.output.dense", "output.dense")  # (IA)^3 scales these projections' inputs


def make(mode, tasks=(2, 3), scramble=True, seed=0):
    torch.manual_seed(seed)
    model = BertForMultiTask(BertConfig(**TINY, **MODES[mode]), task_num_labels=list(tasks)).eval()
    if scramble:  # large random values everywhere so that every term visibly matters
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3)
    return model


def lin(x, m):
    return x @ m.weight.T + m.bias


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / 2 ** 0.5))


def layer_norm(x, m, eps=1e-12):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * m.weight + m.bias


def proj(x, linear, wrappers, t, cfg, name):
    """A projection, with task t's LoRA (W x + b + alpha/r B A x) or (IA)^3 ((W x + b) l, W (x l) + b) if any."""
    if wrappers is None:
        return lin(x, linear)
    w = wrappers[t]
    if cfg.get("lora") and hasattr(w, "lora_A"):
        return lin(x, linear) + x @ w.lora_A.weight.T @ w.lora_B.weight.T * (cfg["lora_alpha"] / cfg["lora_r"])
    return lin(x * w.ia3_l, linear) if name in INPUT_SCALED else lin(x, linear) * w.ia3_l


def prefix_kv(enc, t, index):
    """Li & Liang's reparametrisation by hand: P = W2 tanh(W1 E + b1) + b2, columns (layer, key/value, d)."""
    pe = enc.prefix_encoders[t]
    p = lin(torch.tanh(lin(pe.embedding.weight, pe.mlp[0])), pe.mlp[2])
    p = p.view(p.shape[0], len(enc.layer), 2, -1)
    return p[:, index, 0], p[:, index, 1]


def mha(x, sa, heads, mask, t=0, cfg=None, prefix=None):
    """Plain softmax attention (no SDPA), context without output projection; `prefix`: (keys,
    values) [L, size] put before the tokens' and always attended."""
    B, S, size = x.shape
    hd = size // heads

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, hd).transpose(1, 2)

    q, k, v = (split(proj(x, getattr(sa, n), getattr(sa, f"{n}_adapters", None), t, cfg or {}, n))
               for n in ("query", "key", "value"))
    if prefix is not None:
        pk, pv = (split(p[None]).expand(B, -1, -1, -1) for p in prefix)
        k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        mask = torch.cat([torch.ones(B, prefix[0].shape[0]), mask], 1)
    scores = q @ k.transpose(-1, -2) / hd ** 0.5 + (1.0 - mask[:, None, None, :]) * -10000.0
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, S, size)


def low_rank(x, m):
    return lin(gelu(lin(x, m.down)), m.up)


def pal(x, m, enc, dec, mask):
    return gelu(lin(mha(lin(x, enc), m.attention, PAL_HEADS, mask), dec))


def ref_layer(layer, h, mask, t, cfg, enc=None):
    """The reference wiring (bert_n_pals.md 1.3) written out for one layer and task t."""
    out_dense = layer.attention.output
    prefix = prefix_kv(enc, t, list(enc.layer).index(layer)) if cfg.get("prefix_tuning") else None
    x = proj(mha(h, layer.attention.self, HEADS, mask, t, cfg, prefix), out_dense.dense,
             getattr(out_dense, "dense_adapters", None), t, cfg, "attention.output.dense")
    if cfg.get("houlsby") or cfg.get("houlsby_original"):
        x = x + low_rank(x, layer.attention.output.adapters[t])          # A1 serial
    a = layer_norm(x + h, layer.attention.output.LayerNorm)
    f = proj(gelu(proj(a, layer.intermediate.dense, getattr(layer.intermediate, "dense_adapters", None), t, cfg,
                       "intermediate.dense")),
             layer.output.dense, getattr(layer.output, "dense_adapters", None), t, cfg, "output.dense")
    if cfg.get("parallel_adapter"):  # He et al. 2022: s up(ReLU(down(a))) beside the FFN, before its residual + LN
        pa = layer.output.adapters[t]
        f = f + cfg.get("parallel_adapter_scale", 4.0) * lin(torch.relu(lin(a, pa.down)), pa.up)
    if cfg.get("houlsby"):
        a2 = layer.output.adapters[t]
        f = f + (pal(a, a2, enc.pal_encoders[t], enc.pal_decoders[t], mask) if cfg.get("pals") else low_rank(a, a2))
    if cfg.get("houlsby_original"):
        f = f + low_rank(f, layer.output.adapters[t])                    # A2 serial, reads FFN output
    lhuc = None if not cfg.get("lhuc") else 2 * torch.sigmoid(layer.lhuc[t].weight)
    if cfg.get("mult"):
        ad = layer.adapters[t]
        ts = pal(h, ad, enc.pal_encoders[t], enc.pal_decoders[t], mask) if cfg.get("pals") else low_rank(h, ad)
        f = f + (ts * lhuc if lhuc is not None else ts)                  # parallel, reads layer input h
    out = layer_norm(f + a, layer.output.LayerNorm)
    if lhuc is not None and not cfg.get("mult"):
        out = out * lhuc
    return out


def ref_encoder(model, ids, mask, t, mode):
    emb = model.bert.embeddings
    h = emb.word_embeddings.weight[ids] + emb.position_embeddings.weight[: ids.shape[1]] \
        + emb.token_type_embeddings.weight[0]
    h = layer_norm(h, emb.LayerNorm)
    enc = model.bert.encoder
    for layer in enc.layer:
        h = ref_layer(layer, h, mask, t, MODES[mode], enc)
    if MODES[mode].get("top") and MODES[mode].get("bert_lay_top"):
        h = ref_layer(enc.top[t], h, mask, t, {})  # a plain per-task BERT layer
    elif MODES[mode].get("top"):
        top = enc.top[t]
        x = lin(h, top.down)
        for block in top.blocks:
            x = layer_norm(lin(mha(x, block.self, TOP_HEADS, mask), block.output.dense) + x, block.output.LayerNorm)
        h = lin(x, top.up)  # replaces the last hidden states: no residual
    return h



@pytest.mark.parametrize("mode", list(MODES))
def test_wiring_matches_hand_written_reference(mode):
    model = make(mode)
    ids = torch.randint(1, 99, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 7)
    mask[1, 5:] = 0
    for t in (0, 1):
        with torch.no_grad():
            seq, _ = model.bert(ids, None, mask.long(), task_id=t)
            ref = ref_encoder(model, ids, mask, t, mode)
        real = mask.bool()
        torch.testing.assert_close(seq[real], ref[real], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", list(MODES))
def test_task_routing_changes_outputs_and_gradients(mode):
    model = make(mode)
    ids = torch.randint(1, 99, (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        s0, _ = model.bert(ids, task_id=0)
        s1, _ = model.bert(ids, task_id=1)
    assert not torch.allclose(s0, s1, atol=1e-4)
    # A task-0 step touches shared weights and task 0's modules, never task 1's.
    model.zero_grad(set_to_none=True)
    model(ids, task_id=0, labels=torch.tensor([0, 1]))["loss"].backward()
    names = task_specific_parameter_names(model)
    params = dict(model.named_parameters())
    assert all(params[n].grad is None for n in names[1])
    assert any(params[n].grad is not None for n in names[0] if not n.startswith("heads."))
    assert all(p.grad is not None for p in model.shared_parameters())


def test_plain_shared_model_ignores_task_id():
    torch.manual_seed(0)
    model = BertForMultiTask(BertConfig(**TINY), task_num_labels=[2, 2]).eval()
    ids = torch.randint(1, 99, (2, 7))
    s0, p0 = model.bert(ids, task_id=0)
    s1, p1 = model.bert(ids, task_id=1)
    assert torch.equal(s0, s1) and torch.equal(p0, p1)
    assert task_specific_parameter_names(model)[1] == ["heads.1.classifier.weight", "heads.1.classifier.bias"]


def test_minilm_pals_task_ids_differ(minilm_dir):
    model = BertForMultiTask.from_pretrained(minilm_dir, config=os.path.join(CONFIGS, "minilm_pals_config.json"),
                                             task_num_labels=[2, 2]).eval()
    ids = torch.randint(1000, 30000, (2, 9))
    with torch.no_grad():
        assert not torch.allclose(model.bert(ids, task_id=0)[0], model.bert(ids, task_id=1)[0], atol=1e-5)


@pytest.mark.parametrize("mode", ["pals", "houlsby_plus_pals"])
def test_pal_projections_are_shared_across_layers(mode):
    model = make(mode, tasks=(2, 2, 3), scramble=False)
    enc = model.bert.encoder
    for t in range(3):
        pals = [(layer.adapters if MODES[mode].get("mult") else layer.output.adapters)[t] for layer in enc.layer]
        assert all(p.encoder is enc.pal_encoders[t] and p.decoder is enc.pal_decoders[t] for p in pals)
        assert pals[0].attention is not pals[1].attention  # the attention itself is per layer
    # Stored once: no aliases in the state dict, and only under pal_encoders / pal_decoders.
    keys = list(model.state_dict())
    assert sum(k.startswith("bert.encoder.pal_encoders.0.") for k in keys) == 2
    assert not any(".encoder.weight" in k or "decoder.weight" in k for k in keys)
    # Still shared after deepcopy (memo) and after a device/dtype move.
    clone = copy.deepcopy(model).double()
    layer = clone.bert.encoder.layer[1]
    pal = (layer.adapters if MODES[mode].get("mult") else layer.output.adapters)[2]
    assert pal.encoder is clone.bert.encoder.pal_encoders[2] and pal.encoder.weight.dtype == torch.float64
    if mode == "houlsby_plus_pals":
        a1 = enc.layer[0].attention.output.adapters[0]
        assert a1.down.out_features == 5  # extra_dim for the low-rank A1


def test_lhuc_is_identity_at_init():
    torch.manual_seed(0)
    plain = BertForMultiTask(BertConfig(**TINY), task_num_labels=[2, 2]).eval()
    lhuc = BertForMultiTask(BertConfig(**TINY, lhuc=True), task_num_labels=[2, 2]).eval()
    missing, unexpected = lhuc.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".lhuc." in k for k in missing)
    ids = torch.randint(1, 99, (2, 7))
    with torch.no_grad():
        assert torch.equal(plain.bert(ids)[0], lhuc.bert(ids, task_id=1)[0])


def test_houlsby_original_is_near_identity_at_init():
    torch.manual_seed(0)
    plain = BertForMultiTask(BertConfig(**TINY), task_num_labels=[2, 2]).eval()
    torch.manual_seed(1)
    houlsby = BertForMultiTask(BertConfig(**dict(TINY, houlsby_original=True, hidden_size_aug=8)),
                               task_num_labels=[2, 2]).eval()
    houlsby.load_state_dict(plain.state_dict(), strict=False)
    adapter = houlsby.bert.encoder.layer[0].output.adapters[1]
    assert adapter.up.weight.abs().max() <= 0.02 and adapter.up.bias.abs().max() == 0
    ids = torch.randint(1, 99, (2, 7))
    with torch.no_grad():
        a, b = plain.bert(ids)[0], houlsby.bert(ids, task_id=1)[0]
    diff = (a - b).abs().max().item()
    assert 0 < diff < 1e-2


def test_parameter_groups_partition_the_model():
    model = make("houlsby_plus_pals", tasks=(2, 3, 1), scramble=False)
    all_names = {n for n, _ in model.named_parameters()}
    shared = {n for n, _ in model.named_shared_parameters()}
    per_task = [{n for n, _ in model.named_task_parameters(t)} for t in range(3)]
    assert shared.isdisjoint(set().union(*per_task))
    assert shared | set().union(*per_task) == all_names
    assert all(a.isdisjoint(b) for i, a in enumerate(per_task) for b in per_task[i + 1:])
    assert "bert.encoder.pal_encoders.1.weight" in per_task[1] and "heads.1.classifier.weight" in per_task[1]
    assert "bert.encoder.layer.0.attention.output.adapters.2.down.weight" in per_task[2]
    assert "bert.encoder.layer.1.output.adapters.0.attention.query.weight" in per_task[0]
    assert "bert.embeddings.word_embeddings.weight" in shared and "bert.pooler.dense.weight" in shared
    assert len(model.task_parameters(1)) == len(per_task[1]) and len(model.shared_parameters()) == len(shared)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


class Scale(torch.nn.Module):
    """A toy method for the registry tests: y * (1 + s_t), s_t = 0 at init."""

    def __init__(self, size):
        super().__init__()
        self.s = torch.nn.Parameter(torch.zeros(size))

    def forward(self, x, mask=None):
        return x * self.s  # added to the FFN output by the after_ffn slot: y + y * s


def test_a_method_added_to_the_registry_is_built_routed_and_saved_as_ours(monkeypatch, tmp_path):
    """docs/model.md#adding-an-adapter: a module class and one METHODS entry (here keyed on an existing
    switch) are enough for the model to build it in its slot, route it by task, count it as the task's,
    and save it under our model type (never the Hugging Face layout, which would drop it)."""
    toy = task_adapters.Method("lhuc", slots={"after_ffn": lambda build, t: Scale(build.config.hidden_size)})
    monkeypatch.setattr(task_adapters, "METHODS", task_adapters.METHODS + (toy,))
    torch.manual_seed(0)
    model = BertForMultiTask(BertConfig(**TINY, lhuc=True), task_num_labels=[2, 2]).eval()
    assert isinstance(model.bert.encoder.layer[1].output.adapters[0], Scale)
    assert "bert.encoder.layer.1.output.adapters.1.s" in task_specific_parameter_names(model)[1]
    with torch.no_grad():
        model.bert.encoder.layer[1].output.adapters[1].s.fill_(0.5)
    ids = torch.randint(1, 99, (2, 7))
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():
        h = model.bert.embeddings(ids)
        h = model.bert.encoder.layer[0](h, None, task_id=1)
        a = layer.attention(h, None, task_id=1)
        y = layer.output.dense(layer.intermediate(a))
        by_hand = layer.lhuc[1](layer.output.LayerNorm(y * 1.5 + a))
        seq1, seq0 = model.bert(ids, task_id=1)[0], model.bert(ids, task_id=0)[0]
    torch.testing.assert_close(seq1, by_hand)
    assert not torch.allclose(seq0, seq1)
    one = BertForMultiTask(BertConfig(**TINY, lhuc=True), task_num_labels=[2]).eval()
    assert model_io.hf_layout(one) is None
    one.save_pretrained(str(tmp_path), vocab_file=None)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert-pals"


def test_two_methods_filling_one_place_are_refused(monkeypatch):
    toy = task_adapters.Method("lhuc", slots={"beside_layer": lambda build, t: Scale(build.config.hidden_size)})
    monkeypatch.setattr(task_adapters, "METHODS", task_adapters.METHODS + (toy,))
    with pytest.raises(ConfigError, match="config keys 'mult' and 'lhuc' both put adapters at adapters"):
        BertForMultiTask(BertConfig(**TINY, mult=True, lhuc=True), task_num_labels=[2])
