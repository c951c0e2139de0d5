"""Checkpoint loading/saving: HF and old pytorch-pretrained-BERT formats, safety, error messages,
round trips of fine-tuned multi-task models, and our saved encoder loading into transformers."""
import json
import logging
import os
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file

from file_utils import ConfigError
from modeling import BertConfig, BertForMultiTask, BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def batch(seed=0, vocab=30000):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (2, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return ids, torch.zeros_like(ids), mask


def modeling_warnings(caplog):
    return [r for r in caplog.records if r.name == "model_io" and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def minilm_state(minilm_dir):
    return load_file(os.path.join(minilm_dir, "model.safetensors"))


def test_bundled_model_by_short_name_and_by_folder(minilm_dir, minilm_state):
    by_name = BertModel.from_pretrained("minilm-l6")
    by_path = BertModel.from_pretrained(minilm_dir)
    for key, value in by_name.state_dict().items():
        assert torch.equal(value, by_path.state_dict()[key])
        assert torch.equal(value, minilm_state[key])  # every encoder tensor comes from the checkpoint
    assert by_name.config.hidden_size == 384


def test_old_names_prefix_bin_and_bert_config(tmp_path, minilm_dir, minilm_state, caplog):
    """pytorch-pretrained-BERT 0.4 layout: bert_config.json, pytorch_model.bin, `bert.` prefix, gamma/beta."""
    old = {}
    for key, value in minilm_state.items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        old["bert." + key] = value  # includes bert.embeddings.position_ids (ignored silently)
    old["cls.predictions.bias"] = torch.zeros(30522)  # no pretraining task here: reported as unused
    torch.save(old, tmp_path / "pytorch_model.bin")
    with open(os.path.join(minilm_dir, "config.json")) as f:
        cfg = json.load(f)
    (tmp_path / "bert_config.json").write_text(json.dumps(cfg))
    caplog.set_level(logging.WARNING)
    model = BertForMultiTask.from_pretrained(str(tmp_path), task_num_labels=[3])
    state = model.state_dict()
    for key, value in minilm_state.items():
        if key != "embeddings.position_ids":
            assert torch.equal(state["bert." + key], value), key
    records = modeling_warnings(caplog)
    assert len(records) == 1  # ONE message for everything new or unused
    msg = records[0].getMessage()
    assert "heads.*.classifier.weight" in msg and "cls.predictions.bias" in msg and "position_ids" not in msg
    # Fresh heads keep their init: N(0, 0.02), bias 0.
    assert model.heads[0].classifier.bias.abs().max() == 0 and 0 < model.heads[0].classifier.weight.std() < 0.05


def test_pickle_with_code_is_refused(tmp_path, minilm_dir):
    marker = tmp_path / "code_ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    shutil.copy(os.path.join(minilm_dir, "config.json"), tmp_path / "config.json")
    torch.save({"embeddings.word_embeddings.weight": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="weights_only"):
        BertModel.from_pretrained(str(tmp_path))
    assert not marker.exists()


def test_missing_files_and_corrupt_weights(tmp_path, minilm_dir):
    with pytest.raises(ConfigError, match="config.json"):
        BertModel.from_pretrained(str(tmp_path))
    shutil.copy(os.path.join(minilm_dir, "config.json"), tmp_path / "config.json")
    with pytest.raises(ConfigError, match="model.safetensors"):
        BertModel.from_pretrained(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="safetensors"):
        BertModel.from_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="model folder .*nope does not exist"):
        BertModel.from_pretrained(str(tmp_path / "nope"))


def test_adapter_config_for_other_size_names_key_and_fix():
    with pytest.raises(ConfigError) as err:
        BertForMultiTask.from_pretrained("minilm-l6", config=os.path.join(CONFIGS, "pals_config.json"),
                                         task_num_labels=[2])
    msg = str(err.value)
    assert "'hidden_size' is 768" in msg and "384" in msg and "minilm_pals_config.json" in msg


def test_adapters_fresh_and_encoder_loaded(minilm_state, caplog):
    caplog.set_level(logging.WARNING)
    model = BertForMultiTask.from_pretrained("minilm-l6", config=os.path.join(CONFIGS, "minilm_pals_config.json"),
                                             task_num_labels=[2, 1], task_names=["rte", "sts"])
    assert model.config.pals and model.config.hidden_size_aug == 102 and model.config.num_tasks == 2
    assert torch.equal(model.bert.encoder.layer[5].output.dense.weight,
                       minilm_state["encoder.layer.5.output.dense.weight"])
    w = model.bert.encoder.pal_encoders[1].weight
    assert w.shape == (102, 384) and 0.015 < w.std().item() < 0.025
    [record] = modeling_warnings(caplog)
    assert "pal_encoders" in record.getMessage() and "adapters.*.attention.query.weight (x12)" in record.getMessage()


def test_shape_mismatch_names_key_and_shapes(tmp_path, caplog):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    two_tasks = BertForMultiTask(cfg, [3, 2])
    two_tasks.save_pretrained(str(tmp_path / "multi"))
    with pytest.raises(ConfigError) as err:  # our own multi-task layout: a head of another size is an error
        BertForMultiTask.from_pretrained(str(tmp_path / "multi"), task_num_labels=[2, 2])
    msg = str(err.value)
    assert "'heads.0.classifier.weight' has shape (3, 32)" in msg and "has shape (2, 32)" in msg
    assert "'heads.0.classifier.bias' has shape (3,)" in msg
    # A one-task folder (Hugging Face layout): a new task of another size starts from the encoder with a
    # fresh head, as transformers does for a new label count; the unused head is reported.
    BertForMultiTask(cfg, [3]).save_pretrained(str(tmp_path / "single"))
    with caplog.at_level("WARNING"):
        model = BertForMultiTask.from_pretrained(str(tmp_path / "single"), task_num_labels=[2])
    assert "unused checkpoint keys: classifier.bias, classifier.weight" in caplog.text
    assert "newly initialised (not in checkpoint): heads.*.classifier.bias, heads.*.classifier.weight" in caplog.text
    assert model.heads[0].classifier.weight.shape == (2, 32)


def test_fine_tuned_pals_model_round_trip(tmp_path, minilm_dir):
    model = BertForMultiTask.from_pretrained("minilm-l6", config=os.path.join(CONFIGS, "minilm_pals_config.json"),
                                             task_num_labels=[3, 1, 2], task_types=["classification", "regression",
                                                                                    "token"],
                                             task_names=["mnli", "sts-b", "ner"])
    with torch.no_grad():  # pretend fine-tuning moved everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    out_dir = tmp_path / "out"
    model.save_pretrained(str(out_dir))
    assert sorted(os.listdir(out_dir)) == ["config.json", "model.safetensors", "vocab.txt"]  # no temp files left
    with open(out_dir / "config.json") as f:
        saved = json.load(f)
    assert saved["task_num_labels"] == [3, 1, 2] and saved["task_types"] == ["classification", "regression", "token"]
    assert saved["task_names"] == ["mnli", "sts-b", "ner"] and saved["pals"] and saved["num_tasks"] == 3
    assert (out_dir / "vocab.txt").read_bytes() == open(os.path.join(minilm_dir, "vocab.txt"), "rb").read()

    again = BertForMultiTask.from_pretrained(str(out_dir)).eval()  # heads from the saved task metadata
    assert again.task_types == model.task_types and again.config.task_names == ["mnli", "sts-b", "ner"]
    ids, tt, mask = batch()
    with torch.no_grad():
        for t in range(3):
            a, b = model(ids, tt, mask, task_id=t), again(ids, tt, mask, task_id=t)
            assert torch.equal(a["logits"], b["logits"])
    # The same adapter config passed again is accepted (its standard keys match).
    BertForMultiTask.from_pretrained(str(out_dir), config=os.path.join(CONFIGS, "minilm_pals_config.json"))


def test_saved_encoder_loads_into_transformers(tmp_path, minilm_dir):
    model = BertForMultiTask.from_pretrained(minilm_dir, task_num_labels=[2, 1])
    with torch.no_grad():
        for p in model.bert.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    model.save_pretrained(str(tmp_path), vocab_file=os.path.join(minilm_dir, "vocab.txt"))
    hf = transformers.BertModel.from_pretrained(str(tmp_path)).eval()
    ids, tt, mask = batch(1)
    with torch.no_grad():
        seq, pooled = model.bert(ids, tt, mask)
        ref = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(seq[real], ref.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-5, rtol=0)


def test_hf_pretraining_checkpoint_maps_to_pretraining_head(tmp_path):
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=40)
    hf = transformers.BertForPreTraining(hf_cfg).eval()
    with torch.no_grad():
        hf.cls.predictions.bias.normal_()
        hf.cls.predictions.transform.LayerNorm.weight.normal_()
    hf.save_pretrained(str(tmp_path / "hf"))
    ours = BertForMultiTask.from_pretrained(str(tmp_path / "hf"), task_num_labels=[0],
                                            task_types=["pretraining"]).eval()
    ids, tt, mask = batch(2, vocab=120)
    with torch.no_grad():
        a = ours(ids, tt, mask)
        b = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(a["prediction_logits"][real], b.prediction_logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["seq_relationship_logits"], b.seq_relationship_logits, atol=1e-5, rtol=0)
    # Tied decoder survives save (safetensors: stored once) and reload.
    ours.save_pretrained(str(tmp_path / "ours"))
    again = BertForMultiTask.from_pretrained(str(tmp_path / "ours")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, tt, mask)["prediction_logits"], a["prediction_logits"])
        again.bert.embeddings.word_embeddings.weight[5] += 1.0
        assert not torch.allclose(again(ids, tt, mask)["prediction_logits"][..., 5], a["prediction_logits"][..., 5])


def test_save_pretrained_vocab_errors(tmp_path):
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    model = BertModel(cfg)
    with pytest.raises(ConfigError, match="vocab"):
        model.save_pretrained(str(tmp_path), vocab_file=str(tmp_path / "missing.txt"))
    (tmp_path / "v.txt").write_text("[PAD]\n")
    model.save_pretrained(str(tmp_path / "m"), vocab_file=str(tmp_path / "v.txt"))
    again = BertModel.from_pretrained(str(tmp_path / "m"))
    assert (tmp_path / "m" / "vocab.txt").read_text() == "[PAD]\n"
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_hf_sequence_classification_head_becomes_task_0(tmp_path, caplog):
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=40, num_labels=3)
    hf = transformers.BertForSequenceClassification(hf_cfg).eval()
    hf.save_pretrained(str(tmp_path))
    ours = BertForMultiTask.from_pretrained(str(tmp_path), task_num_labels=[3, 2]).eval()
    ids, tt, mask = batch(3, vocab=120)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, tt, mask, task_id=0)["logits"],
                                   hf(input_ids=ids, token_type_ids=tt, attention_mask=mask).logits, atol=1e-5, rtol=0)
    caplog.set_level(logging.WARNING)
    other = BertForMultiTask.from_pretrained(str(tmp_path), task_num_labels=[2])  # another size: fresh head
    assert other.heads[0].classifier.bias.abs().max() == 0
    assert "unused checkpoint keys: classifier.bias, classifier.weight" in modeling_warnings(caplog)[-1].getMessage()


def test_save_handles_tensors_sharing_storage(tmp_path):
    """safetensors refuses tensors that share memory; save_pretrained stores copies."""
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    model = BertModel(cfg)
    block = torch.randn(2, 32, 32)
    model.pooler.dense.weight = torch.nn.Parameter(block[0])
    model.encoder.layer[0].attention.self.query.weight = torch.nn.Parameter(block[1])
    model.save_pretrained(str(tmp_path))
    again = BertModel.from_pretrained(str(tmp_path))
    assert torch.equal(again.pooler.dense.weight, block[0])
    assert torch.equal(again.encoder.layer[0].attention.self.query.weight, block[1])
