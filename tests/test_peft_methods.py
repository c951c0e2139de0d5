"""LoRA and (IA)^3 (task_adapters.LoRA / IA3) against PEFT's layers on the same weights: logits and
gradients of a tiny random BERT, the PEFT model being transformers' BertForSequenceClassification
wrapped by peft.get_peft_model. Our copy is task 1 of a two-task model (task 0 gets other values), so
the routing by task id is checked too. The names are mapped by hand here (PEFT
`...attention.self.query.lora_A.default.weight` -> ours `...attention.self.query_adapters.1.lora_A.weight`),
so a wrong scale, a transposed or misplaced weight, or a wrong side of an (IA)^3 scaling fails."""
import peft
import pytest
import torch
import transformers

from file_utils import ConfigError
from modeling import BertConfig, BertForMultiTask
from test_training_helpers import single_thread

pytestmark = pytest.mark.usefixtures(single_thread.__name__)

SIZES = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
             max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# PEFT module name -> our slot's attribute (task_adapters.SLOTS)
OURS = {"attention.self.query": "attention.self.query_adapters", "attention.self.key": "attention.self.key_adapters",
        "attention.self.value": "attention.self.value_adapters",
        "attention.output.dense": "attention.output.dense_adapters",
        "intermediate.dense": "intermediate.dense_adapters", "output.dense": "output.dense_adapters"}


def _pair(peft_config, **ours):
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=3, **SIZES))
    model = BertForMultiTask(BertConfig(**SIZES, **ours), task_num_labels=[2, 3])
    missing, unexpected = model.bert.load_state_dict(hf.bert.state_dict(), strict=False)
    assert not unexpected and missing and all("_adapters." in k for k in missing)
    model.heads[1].classifier.load_state_dict(hf.classifier.state_dict())
    wrapped = peft.get_peft_model(hf, peft_config)
    with torch.no_grad():  # PEFT inits LoRA's B (IA3's l) to zero (one): draw values that show every term
        for name, p in wrapped.named_parameters():
            if ".default" in name and ("lora_" in name or "ia3_" in name):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "ia3_" in name else 0.0))
    _copy_peft_into_ours(wrapped, model, task=1)
    return wrapped, model


def _peft_to_ours(name, task):
    """'base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight' -> our name."""
    body = name.split("base_model.model.bert.", 1)[1]
    layer, rest = body.split(".", 3)[2], body.split(".", 3)[3]
    for theirs, ours in OURS.items():
        if rest.startswith(theirs + "."):
            tail = rest[len(theirs) + 1:].replace(".default", "")
            return f"bert.encoder.layer.{layer}.{ours}.{task}.{tail}"
    raise AssertionError(name)


def _copy_peft_into_ours(wrapped, model, task):
    ours = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if ".default" in name and ("lora_" in name or "ia3_" in name):
                ours[_peft_to_ours(name, task)].copy_(p.reshape(ours[_peft_to_ours(name, task)].shape))


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, SIZES["vocab_size"], (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, torch.zeros_like(ids), mask


def _check(wrapped, model, task=1):
    ids, types, mask = _batch()
    labels = torch.tensor([0, 2, 1])
    wrapped.eval(), model.eval()
    theirs = wrapped(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
    ours = model(ids, types, mask, task_id=task, labels=labels)
    torch.testing.assert_close(ours["logits"], theirs.logits, atol=1e-5, rtol=1e-5)
    theirs.loss.backward()
    ours["loss"].backward()
    ours_params = dict(model.named_parameters())
    compared = 0
    for name, p in wrapped.named_parameters():
        if ".default" in name and ("lora_" in name or "ia3_" in name):
            mine = ours_params[_peft_to_ours(name, task)]
            torch.testing.assert_close(mine.grad, p.grad.reshape(mine.shape), atol=1e-5, rtol=1e-4)
            compared += 1
    assert compared
    # PEFT freezes the base; ours trains the shared encoder too unless --freeze
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    other = [p.grad for n, p in model.named_parameters() if "_adapters.0." in n]
    assert other and all(g is None or not g.any() for g in other)  # task 0's modules play no part
    return compared


def test_lora_default_matches_peft():
    # our default (r 8, alpha 16, query and value) against PEFT with the same values stated
    wrapped, model = _pair(peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0,
                                           target_modules=["query", "value"]), lora=True, lora_dropout=0.0)
    assert _check(wrapped, model) == 2 * 2 * 2  # A and B, query and value, 2 layers


def test_lora_rank_alpha_and_every_projection_match_peft():
    # alpha / r = 3: a scale of 1 or r / alpha fails; ffn_in / ffn_out are not square: a transposition fails
    wrapped, model = _pair(
        peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=12, lora_dropout=0.0,
                        target_modules=r".*\.(query|key|value|attention\.output\.dense|intermediate\.dense|"
                                       r"layer\.\d+\.output\.dense)"),
        lora=True, lora_r=4, lora_alpha=12, lora_dropout=0.0,
        lora_targets=["query", "key", "value", "attention_output", "ffn_in", "ffn_out"])
    assert _check(wrapped, model) == 2 * 6 * 2


def test_ia3_default_placement_is_peft_default_for_bert():
    # PEFT's default for BERT (no target_modules given): its suffix match also takes attention.output.dense
    wrapped, model = _pair(peft.IA3Config(task_type="SEQ_CLS"), ia3=True)
    assert _check(wrapped, model) == 4 * 2


def test_ia3_output_side_of_ffn_in_matches_peft():
    wrapped, model = _pair(peft.IA3Config(task_type="SEQ_CLS", target_modules=["query", "intermediate.dense"],
                                          feedforward_modules=[]), ia3=True, ia3_targets=["query", "ffn_in"])
    assert _check(wrapped, model) == 2 * 2


def test_lora_and_ia3_identity_at_init_and_counted_as_task_parameters():
    torch.manual_seed(0)
    plain = BertForMultiTask(BertConfig(**SIZES), task_num_labels=[2])
    for keys, per_layer in ((dict(lora=True), 8 * (16 + 16) * 2), (dict(ia3=True), 16 * 3 + 24)):
        model = BertForMultiTask(BertConfig(**SIZES, **keys), task_num_labels=[2])
        model.bert.load_state_dict(plain.bert.state_dict(), strict=False)
        model.heads.load_state_dict(plain.heads.state_dict())
        ids, types, mask = _batch()
        plain.eval(), model.eval()
        torch.testing.assert_close(model(ids, types, mask)["logits"], plain(ids, types, mask)["logits"])
        task = sum(p.numel() for p in model.task_parameters(0))
        assert task == 2 * per_layer + 16 * 2 + 2  # layers x modules + the head


@pytest.mark.parametrize("keys, message", [
    (dict(lora=True, lora_r=0), "lora_r"),
    (dict(lora=True, lora_dropout=1.0), "lora_dropout"),
    (dict(lora=True, lora_targets=["qkv"]), "lora_targets"),
    (dict(ia3=True, ia3_targets=[]), "ia3_targets"),
    (dict(lora=True, ia3=True), "both put adapters"),  # both default to 'value'
])
def test_bad_lora_ia3_keys_are_refused(keys, message):
    with pytest.raises(ConfigError, match=message):
        BertForMultiTask(BertConfig(**SIZES, **keys), task_num_labels=[2])
