"""modeling.py: BertConfig validation, BertModel vs Hugging Face on real MiniLM weights, heads and losses."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
import transformers

import modeling
from file_utils import ConfigError
from modeling import BertConfig, BertForMultiTask, BertModel
from test_training_helpers import assert_close_in_low_precision

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny(**kw):
    return BertConfig(**dict(TINY, **kw))


def padded_batch(vocab=30000, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab // 2), vocab, (3, 19), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    token_type = torch.zeros_like(ids)
    token_type[:, 7:] = 1
    token_type[mask == 0] = 0
    return ids, token_type, mask


# ---------------------------------------------------------------------------------------------- config

def test_config_defaults_and_json_roundtrip(tmp_path):
    c = BertConfig()
    assert (c.hidden_size_aug, c.pal_num_heads, c.top_num_heads, c.layer_norm_eps, c.pad_token_id) == (204, 6, 12,
                                                                                                       1e-12, 0)
    assert not any((c.pals, c.mult, c.houlsby, c.houlsby_original, c.top, c.bert_lay_top, c.lhuc))
    c2 = BertConfig(hidden_size=384, mult=True, pals=True, hidden_size_aug=102, task_names=["a", "b"],
                    task_num_labels=[2, 1], task_types=["classification", "regression"], num_tasks=2)
    path = tmp_path / "c.json"
    c2.to_json_file(path)
    on_disk = json.loads(path.read_text())
    assert on_disk["task_num_labels"] == [2, 1] and on_disk["pals"] is True and on_disk["model_type"] == "bert"
    c3 = BertConfig.from_json_file(path)
    assert c3 == c2 and c3.to_dict() == c2.to_dict()
    assert BertConfig.from_dict(c2.to_dict()) == c2
    assert BertConfig(task_num_labels=[2, 3, 1]).num_tasks == 3  # counted when not given


@pytest.mark.parametrize("key,value", [
    ("hidden_sise", 768),               # typo: unknown key
    ("hidden_size", "768"),             # str for int
    ("hidden_size", 768.0),             # float for int
    ("pals", 1),                        # int for bool
    ("hidden_dropout_prob", "0.1"),
    ("num_hidden_layers", True),        # bool for int
    ("task_num_labels", [2, "3"]),
    ("extra_dim", "50"),
])
def test_config_unknown_or_ill_typed_key_names_the_key(tmp_path, key, value):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(ConfigError) as err:
        BertConfig.from_json_file(path)
    assert f"'{key}'" in str(err.value) and str(path) in str(err.value)


def test_config_accepts_real_hf_config_files(minilm_dir, tmp_path):
    c = BertConfig.from_json_file(os.path.join(minilm_dir, "config.json"))  # has architectures, model_type, ...
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size) == (384, 6, 1536, 30522)
    hf = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "transformers_version": "4.40.0",
          "_name_or_path": "x", "gradient_checkpointing": False, "position_embedding_type": "absolute",
          "use_cache": True, "torch_dtype": "float32", "classifier_dropout": None, "pad_token_id": None,
          "is_decoder": False, "tie_word_embeddings": True, "bos_token_id": None}
    assert BertConfig.from_dict(hf).pad_token_id is None
    with pytest.raises(ConfigError, match="position_embedding_type"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})
    with pytest.raises(ConfigError, match="model_type"):
        BertConfig.from_dict({"model_type": "roberta"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        (tmp_path / "x.json").write_text("{")
        BertConfig.from_json_file(tmp_path / "x.json")


@pytest.mark.parametrize("kw,needle", [
    (dict(mult=True, pals=True, hidden_size_aug=100), "pal_num_heads"),            # 100 % 6
    (dict(top=True, hidden_size_aug=100), "top_num_heads"),                        # 100 % 12
    (dict(hidden_size=100, num_attention_heads=12), "num_attention_heads"),
    (dict(houlsby=True, mult=True), "houlsby"),
    (dict(houlsby=True, houlsby_original=True), "houlsby_original"),
    (dict(pals=True), "pals"),
    (dict(bert_lay_top=True), "bert_lay_top"),
    (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
    (dict(hidden_act="gelux"), "hidden_act"),
    (dict(num_tasks=2, task_num_labels=[2]), "task_num_labels"),
    (dict(task_types=["classify"]), "classify"),
])
def test_config_validation_errors(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        BertConfig(**kw)


def test_divisible_adapter_sizes_are_accepted():
    pals = BertConfig(mult=True, pals=True, hidden_size_aug=204)  # 204 = 6 x 34
    top = BertConfig(top=True, hidden_size_aug=96)                # 96 = 12 x 8
    top_layer = BertConfig(top=True, bert_lay_top=True, hidden_size_aug=100)  # full top layer: d_s unused
    assert (pals.hidden_size_aug, pals.pal_num_heads) == (204, 6)
    assert (top.hidden_size_aug, top.top_num_heads) == (96, 12)
    assert top_layer.hidden_size_aug == 100 and top_layer.bert_lay_top


# ---------------------------------------------------------------------------------------------- encoder

def test_bert_model_matches_transformers_on_minilm_with_padding(minilm_dir):
    ours = BertModel.from_pretrained(minilm_dir).eval()
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    ids, token_type, mask = padded_batch()
    with torch.no_grad():
        seq, pooled = ours(ids, token_type, mask)
        ref = hf(input_ids=ids, token_type_ids=token_type, attention_mask=mask)
    real = mask.bool()
    assert seq.shape == (3, 19, 384) and pooled.shape == (3, 384)
    torch.testing.assert_close(seq[real], ref.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-5, rtol=0)
    # Padding really is masked: changing padded token ids leaves real positions unchanged.
    ids2 = ids.clone()
    ids2[mask == 0] = 5
    with torch.no_grad():
        seq2, _ = ours(ids2, token_type, mask)
    torch.testing.assert_close(seq2[real], seq[real], atol=1e-5, rtol=0)


def test_attention_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = BertModel(tiny(attention_probs_dropout_prob=0.5))
    ids = torch.randint(1, 99, (2, 9))
    model.train()
    a, _ = model(ids)
    b, _ = model(ids)
    assert not torch.allclose(a, b)
    model.eval()
    a, _ = model(ids)
    b, _ = model(ids)
    assert torch.equal(a, b)


def test_autocast_bf16_with_mask_runs_and_stays_close():
    torch.manual_seed(0)
    model = BertForMultiTask(tiny(mult=True, pals=True, hidden_size_aug=12, pal_num_heads=3), [2, 3]).eval()
    ids, token_type, mask = padded_batch(vocab=99)
    with torch.no_grad():
        ref = model(ids, token_type, mask, task_id=1)["logits"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, token_type, mask, task_id=1, labels=torch.tensor([0, 2, 1]))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert_close_in_low_precision(out["logits"].float(), ref, torch.bfloat16)


def test_init_follows_bert_and_layernorm_is_identity():
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2))
    w = model.encoder.layer[0].intermediate.dense.weight
    assert abs(w.std().item() - 0.02) < 0.002 and model.encoder.layer[0].intermediate.dense.bias.abs().max() == 0
    ln = model.encoder.layer[1].output.LayerNorm
    assert torch.equal(ln.weight, torch.ones(64)) and torch.equal(ln.bias, torch.zeros(64))
    assert model.embeddings.word_embeddings.weight[0].abs().max() == 0  # padding row


# ---------------------------------------------------------------------------------------------- heads

ALL_TYPES = ["classification", "regression", "span", "token", "choice", "pretraining"]


@pytest.fixture(scope="module")
def multi_head_model():
    torch.manual_seed(0)
    model = BertForMultiTask(tiny(), task_num_labels=[3, 1, 2, 5, 2, 0], task_types=ALL_TYPES)
    return model.eval()


def test_task_types_default_from_num_labels():
    model = BertForMultiTask(tiny(), task_num_labels=[2, 1, 3])
    assert model.task_types == ["classification", "regression", "classification"]
    assert model.config.num_tasks == 3 and model.config.task_num_labels == [2, 1, 3]
    with pytest.raises(ConfigError, match="regression"):
        BertForMultiTask(tiny(), task_num_labels=[2], task_types=["regression"])
    with pytest.raises(ConfigError, match="task_num_labels"):
        BertForMultiTask(tiny())


def test_classification_and_regression_losses(multi_head_model):
    m = multi_head_model
    ids, token_type, mask = padded_batch(vocab=99)
    seq, pooled = m.bert(ids, token_type, mask)
    labels = torch.tensor([0, 2, 1])
    out = m(ids, token_type, mask, task_id=0, labels=labels)
    logits = pooled @ m.heads[0].classifier.weight.T + m.heads[0].classifier.bias
    torch.testing.assert_close(out["logits"], logits)
    log_probs = logits - logits.logsumexp(-1, keepdim=True)
    torch.testing.assert_close(out["loss"], -log_probs[torch.arange(3), labels].mean())
    assert m.heads[0].dropout.p == m.config.hidden_dropout_prob

    target = torch.tensor([0.2, 0.9, 0.5])
    out = m(ids, token_type, mask, task_id=1, labels=target)
    pred = (pooled @ m.heads[1].classifier.weight.T + m.heads[1].classifier.bias)[:, 0]
    assert out["logits"].shape == (3,)
    torch.testing.assert_close(out["loss"], ((pred - target) ** 2).mean())
    assert "loss" not in m(ids, token_type, mask, task_id=1)


def test_span_loss_clamps_and_ignores_out_of_window(multi_head_model):
    m = multi_head_model
    ids, token_type, mask = padded_batch(vocab=99)
    start, end = torch.tensor([3, 40, 0]), torch.tensor([5, 41, 2])  # example 1: answer outside window
    out = m(ids, token_type, mask, task_id=2, start_positions=start, end_positions=end)
    assert out["start_logits"].shape == (3, 19) and out["end_logits"].shape == (3, 19)

    def ce_kept(logits, pos):
        keep = pos < 19
        lp = logits - logits.logsumexp(-1, keepdim=True)
        return -lp[keep.nonzero()[:, 0], pos[keep]].mean()

    expected = (ce_kept(out["start_logits"], start) + ce_kept(out["end_logits"], end)) / 2
    torch.testing.assert_close(out["loss"], expected)


def test_token_head_ignores_minus_100(multi_head_model):
    m = multi_head_model
    ids, token_type, mask = padded_batch(vocab=99)
    labels = torch.full((3, 19), -100)
    labels[0, 1], labels[0, 2], labels[1, 4], labels[2, 1] = 4, 0, 3, 2
    out = m(ids, token_type, mask, task_id=3, labels=labels)
    assert out["logits"].shape == (3, 19, 5)
    keep = labels != -100
    lp = out["logits"][keep].log_softmax(-1)
    torch.testing.assert_close(out["loss"], -lp[torch.arange(4), labels[keep]].mean())


def test_multiple_choice_shapes_and_loss(multi_head_model):
    m = multi_head_model
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (2, 4, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[:, :, 9:] = 0
    labels = torch.tensor([3, 1])
    out = m(ids, torch.zeros_like(ids), mask, task_id=4, labels=labels)
    assert out["logits"].shape == (2, 4)
    # Each choice scored independently: equals running the flattened [B*K,S] batch by hand.
    _, pooled = m.bert(ids.view(8, 11), torch.zeros(8, 11, dtype=torch.long), mask.view(8, 11))
    by_hand = (pooled @ m.heads[4].classifier.weight.T + m.heads[4].classifier.bias).view(2, 4)
    torch.testing.assert_close(out["logits"], by_hand)
    torch.testing.assert_close(out["loss"], F.cross_entropy(by_hand, labels))


def test_pretraining_head_tied_decoder_and_loss(multi_head_model):
    m = multi_head_model
    ids, token_type, mask = padded_batch(vocab=99)
    mlm = torch.full((3, 19), -100)
    mlm[0, 2], mlm[1, 5], mlm[2, 1] = 7, 50, 98
    nsp = torch.tensor([0, 1, 1])
    out = m(ids, token_type, mask, task_id=5, masked_lm_labels=mlm, next_sentence_label=nsp)
    assert out["prediction_logits"].shape == (3, 19, 99) and out["seq_relationship_logits"].shape == (3, 2)
    seq, pooled = m.bert(ids, token_type, mask)
    head = m.heads[5]
    t = head.predictions.transform
    x = F.layer_norm(F.gelu(seq @ t.dense.weight.T + t.dense.bias), (32,), t.LayerNorm.weight, t.LayerNorm.bias, 1e-12)
    emb = m.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(out["prediction_logits"], x @ emb.T + head.predictions.bias)
    keep = mlm != -100
    lp = out["prediction_logits"][keep].log_softmax(-1)
    mlm_loss = -lp[torch.arange(3), mlm[keep]].mean()
    nsp_lp = out["seq_relationship_logits"].log_softmax(-1)
    torch.testing.assert_close(out["loss"], mlm_loss - nsp_lp[torch.arange(3), nsp].mean())
    # The decoder has no weight of its own: the parameter set holds the embedding matrix once.
    assert not any("decoder" in n for n, _ in m.named_parameters())


def _head_inputs(kind, ids):
    b, s = ids.shape[0], ids.shape[-1]
    return {"classification": {"labels": torch.tensor([0, 1, 1][:b])},
            "regression": {"labels": torch.tensor([0.2, 0.9, 0.5][:b])},
            "span": {"start_positions": torch.tensor([1, 2, 3][:b]), "end_positions": torch.tensor([2, 3, 4][:b])},
            "token": {"labels": torch.ones(b, s, dtype=torch.long)},
            "choice": {"labels": torch.tensor([1, 0][:b])},
            "pretraining": {"masked_lm_labels": torch.full((b, s), 7), "next_sentence_label": torch.zeros(b).long()},
            }[kind]


@pytest.mark.parametrize("kind", ALL_TYPES)
@pytest.mark.parametrize("tasks", [1, 2])
@pytest.mark.parametrize("adapter", [{}, dict(mult=True, pals=True, hidden_size_aug=12, pal_num_heads=3)])
def test_ddp_unused_parameter_search_matches_autograd(kind, tasks, adapter):
    """DDP is told to look for unused parameters exactly when a step leaves some without a gradient
    (autograd decides here: one backward of task 0, then which parameters got no .grad)."""
    labels = {"classification": 2, "regression": 1, "span": 2, "token": 3, "choice": 2, "pretraining": 0}[kind]
    model = BertForMultiTask(tiny(**adapter), task_num_labels=[labels] * tasks, task_types=[kind] * tasks)
    ids = torch.randint(1, 99, (2, 3, 7) if kind == "choice" else (2, 7))
    model(ids, task_id=0, **_head_inputs(kind, ids))["loss"].backward()
    all_used = all(p.grad is not None for p in model.parameters())
    assert modeling.uses_all_parameters(model) == all_used


def test_forward_rejects_wrong_inputs(multi_head_model):
    ids = torch.randint(1, 99, (2, 5))
    with pytest.raises(TypeError, match="start_positions"):
        multi_head_model(ids, task_id=0, start_positions=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="labels"):
        multi_head_model(ids, task_id=2, labels=torch.tensor([1, 2]))
    with pytest.raises(IndexError, match="task_id 6"):
        multi_head_model(ids, task_id=6)
    with pytest.raises(ValueError, match=r"\[B, K, S\]"):
        multi_head_model(ids, task_id=4)


def test_backward_reaches_shared_and_own_head_only(multi_head_model):
    m = multi_head_model
    m.zero_grad(set_to_none=True)
    m(torch.randint(1, 99, (2, 5)), task_id=0, labels=torch.tensor([1, 2]))["loss"].backward()
    assert m.heads[0].classifier.weight.grad is not None
    assert m.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    assert all(p.grad is None for p in m.heads[1].parameters())
    m.zero_grad(set_to_none=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_matches_fp32(dtype):
    torch.manual_seed(0)
    model = BertForMultiTask(BertConfig(mult=True, pals=True, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0, num_hidden_layers=4), [3, 1]).cuda()
    ids, token_type, mask = (t.cuda() for t in padded_batch())
    labels = torch.tensor([0, 2, 1], device="cuda")
    ref = model(ids, token_type, mask, task_id=0, labels=labels)
    with torch.autocast("cuda", dtype=dtype):
        out = model(ids, token_type, mask, task_id=0, labels=labels)
    out["loss"].backward()
    assert out["loss"].dtype == torch.float32
    # 8 eps: a 4-layer bert-base-width model accumulates more rounding than the tiny CPU ones (not yet run on a GPU)
    assert_close_in_low_precision(out["logits"].float(), ref["logits"], dtype, ulps=8)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------- attention kernels
#
# The additive mask is built once per forward (modeling.attention_bias: in the attention's dtype,
# last-dim storage aligned to 8 elements) instead of as a contiguous fp32 tensor that every layer
# casts; on CUDA unaligned head sizes are zero-padded for SDPA (modeling.sdpa). Neither may change
# results on CPU.

def _old_form_outputs(model, ids, token_type, mask, autocast=False):
    """The encoder run with the previous mask form: fp32, contiguous, cast by each attention layer."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        h = model.embeddings(ids, token_type)
        old_mask = (1.0 - mask[:, None, None, :].to(h.dtype)) * -10000.0
        seq = model.encoder(h, old_mask.contiguous(), 0)
        return seq, model.pooler(seq)


@pytest.mark.parametrize("kw", [{}, dict(mult=True, pals=True, hidden_size_aug=12, pal_num_heads=3),
                                dict(top=True, hidden_size_aug=12, top_num_heads=4)],
                         ids=["plain", "pals", "top"])
@pytest.mark.parametrize("seq_len", [19, 16])  # unaligned and aligned mask lengths
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_mask_form_does_not_change_cpu_results(kw, seq_len, autocast):
    torch.manual_seed(0)
    model = BertModel(tiny(**kw)).eval()
    ids, token_type, mask = (t[:, :seq_len] for t in padded_batch(vocab=99))
    assert (mask == 0).any()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            seq, pooled = model(ids, token_type, mask)
        old_seq, old_pooled = _old_form_outputs(model, ids, token_type, mask, autocast)
    assert seq.dtype == old_seq.dtype
    torch.testing.assert_close(seq, old_seq, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, old_pooled, atol=1e-6, rtol=0)


def test_attention_bias_values_dtype_and_aligned_strides():
    _, _, mask = padded_batch()  # [3, 19], rows 1 and 2 padded
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        bias = modeling.attention_bias(mask, dtype)
        assert bias.shape == (3, 1, 1, 19) and bias.dtype == dtype
        # Every stride but the last is a multiple of 8 (SDPA's memory-efficient kernel then takes the
        # mask as it is); the last dimension is contiguous.
        assert bias.stride()[-1] == 1 and all(s % 8 == 0 for s in bias.stride()[:-1])
        expected = torch.where(mask.bool(), 0.0, -10000.0)[:, None, None, :].to(dtype)
        assert torch.equal(bias, expected)
    # An aligned length keeps a plain contiguous layout.
    assert modeling.attention_bias(mask[:, :16], torch.float32).is_contiguous()


@pytest.mark.parametrize("head_size", [17, 34, 64])
def test_sdpa_head_padding_gives_the_unpadded_attention(head_size, monkeypatch):
    g = torch.Generator().manual_seed(head_size)
    q, k, v = (torch.randn(2, 3, 19, head_size, generator=g) for _ in range(3))  # unit scale: softmax is peaked
    _, _, mask = padded_batch()
    bias = modeling.attention_bias(mask[:2], torch.float32)
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q_, *args, **kwargs):
        seen.append(q_.shape[-1])
        return real_sdpa(q_, *args, **kwargs)

    monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", spy)
    padded = modeling.sdpa(q, k, v, bias, 0.0, head_align=8)
    assert seen == [-(-head_size // 8) * 8]  # the kernel really saw the padded head size
    expected = real_sdpa(q, k, v, attn_mask=bias)
    assert padded.shape == expected.shape
    torch.testing.assert_close(padded, expected, atol=1e-6, rtol=0)
    # A wrong scale (that of the padded size) would be visible at this input scale.
    wrong = real_sdpa(q, k, v, attn_mask=bias, scale=seen[0] ** -0.5)
    assert head_size % 8 == 0 or (wrong - expected).abs().max() > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_padded_batch_runs_memory_efficient_sdpa_and_matches_math(dtype, monkeypatch):
    """A padded batch runs with SDPA restricted to the memory-efficient kernel (an error if any
    attention call cannot use it) and gives the math kernel's outputs and gradients; BERT heads of
    64, PAL heads of 34 (204 / 6) and top-attention heads of 17 (204 / 12) included."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    tol = dict(atol=2e-3, rtol=2e-3) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    ids, token_type, mask = (t.cuda() for t in padded_batch())
    # The kernels themselves, at a scale where attention is peaked (random init is nearly uniform).
    g = torch.Generator(device="cuda").manual_seed(0)
    for head_size in (17, 34, 64):
        q, k, v = (torch.randn(3, 6, 19, head_size, generator=g, device="cuda", dtype=dtype) for _ in range(3))
        bias = modeling.attention_bias(mask, dtype)
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            eff = modeling.sdpa(q, k, v, bias, 0.0, head_align=modeling.SDPA_ALIGN)
        with sdpa_kernel([SDPBackend.MATH]):
            ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        torch.testing.assert_close(eff.float(), ref.float(), **tol)
    for kw in (dict(mult=True, pals=True), dict(top=True)):
        torch.manual_seed(0)
        model = BertModel(BertConfig(num_hidden_layers=2, hidden_size_aug=204, **kw)).cuda().eval()  # no dropout

        def run(backends):
            model.zero_grad(set_to_none=True)
            with sdpa_kernel(backends), torch.autocast(**amp):
                seq, pooled = model(ids, token_type, mask)
                loss = seq[mask.bool()].float().pow(2).mean() + pooled.float().sum()
            loss.backward()
            return [seq[mask.bool()].float(), pooled.float()] + [p.grad.float() for p in model.parameters()
                                                                  if p.grad is not None]

        eff, ref = run([SDPBackend.EFFICIENT_ATTENTION]), run([SDPBackend.MATH])
        for a, b in zip(eff, ref):
            torch.testing.assert_close(a, b, atol=tol["atol"] * max(1.0, b.abs().max().item()), rtol=tol["rtol"])
        # PyTorch's default choice (cuDNN first on H100/H200 with recent cuDNN) agrees in evaluation.
        with torch.no_grad(), torch.autocast(**amp):
            default = model(ids, token_type, mask)[0][mask.bool()].float()
        torch.testing.assert_close(default, ref[0], **tol)
        # Without the head padding, PALs' / top's heads cannot use the memory-efficient kernel.
        monkeypatch.setattr(modeling, "SDPA_ALIGN", 1)
        with pytest.raises(RuntimeError):
            run([SDPBackend.EFFICIENT_ATTENTION])
        monkeypatch.setattr(modeling, "SDPA_ALIGN", 8)
