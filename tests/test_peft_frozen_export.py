"""export_adapter.py --format peft of a run trained with --freeze: base_model_name_or_path names the
run's own base model (its --bert_model in run_config.json) and no encoder copy is written; the pair
loads with transformers + PeftModel.from_pretrained with our predictions. When the run was not frozen,
or the weights say the encoder is not the base's, the encoder is written beside the adapter as before."""
import json
import os

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import modeling
import multitask as mt
import run_classifier
from glue_fixtures import write_glue_fixture
from test_training_helpers import single_thread, write_tiny_model
from tree_scripts import load_script

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
export_adapter = load_script("scripts/export_adapter.py")


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory, vocab_file):
    """A tiny base BERT (HF layout) and a run_classifier --freeze LoRA run on it (MNLI: 3 labels)."""
    root = tmp_path_factory.mktemp("frozen")
    base = write_tiny_model(str(root / "base"), vocab_file=vocab_file, hidden_size=16, intermediate_size=24)
    config = root / "lora.json"
    config.write_text(json.dumps(dict(lora=True, lora_r=4, lora_alpha=12, lora_dropout=0.0, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)))
    write_glue_fixture(str(root / "glue"), tasks=["mnli"], n=12)
    out = root / "run"
    assert run_classifier.main(["--task_name", "mnli", "--data_dir", str(root / "glue"), "--bert_model", base,
                                "--config", str(config), "--freeze", "--do_train", "--output_dir", str(out),
                                "--max_seq_length", "32", "--train_batch_size", "4", "--num_train_epochs", "1",
                                "--learning_rate", "5e-2", "--warmup_proportion", "0", "--cache_dir", "none"]) == 0
    return {"root": root, "base": base, "run": str(out)}


def _inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 2000, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    return ids, torch.zeros_like(ids), mask


def _ours(folder):
    ids, types, mask = _inputs()
    with torch.no_grad():
        return modeling.BertForMultiTask.from_pretrained(folder).eval()(ids, types, mask, task_id=0)["logits"]


def test_frozen_run_names_its_base_and_writes_no_encoder(frozen_run, tmp_path):
    out = tmp_path / "peft"
    assert export_adapter.main([frozen_run["run"], "--task", "mnli", "--format", "peft", "--output_dir",
                                str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == frozen_run["base"]
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    base = transformers.BertForSequenceClassification.from_pretrained(frozen_run["base"], num_labels=3)
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    ids, types, mask = _inputs()
    with torch.no_grad():
        theirs = loaded(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    ours = _ours(frozen_run["run"])
    assert float(ours.std()) > 1e-3  # trained head and LoRA, not a constant
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_trained_encoder_is_written_and_named(frozen_run, tmp_path):
    """The same run folder, told it was not frozen: the export writes the encoder as today."""
    run = tmp_path / "run"
    os.makedirs(run)
    for name in os.listdir(frozen_run["run"]):
        if os.path.isfile(os.path.join(frozen_run["run"], name)):
            os.symlink(os.path.join(frozen_run["run"], name), run / name)
    meta = json.loads((run / "run_config.json").read_text())
    meta["flags"]["freeze"] = False
    (run / "run_config.json").unlink()
    (run / "run_config.json").write_text(json.dumps(meta))
    out = tmp_path / "peft"
    assert export_adapter.main([str(run), "--task", "mnli", "--format", "peft", "--output_dir", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base_model" and (out / "base_model" / "config.json").is_file()
    base = transformers.BertForSequenceClassification.from_pretrained(str(out / "base_model"))
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    ids, types, mask = _inputs()
    with torch.no_grad():
        theirs = loaded(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    torch.testing.assert_close(theirs, _ours(frozen_run["run"]), atol=1e-5, rtol=1e-5)


def test_a_frozen_flag_with_an_encoder_that_differs_writes_the_encoder(frozen_run, tmp_path):
    """run_config.json says --freeze, but one encoder tensor differs from the base's: never name the base."""
    run = tmp_path / "run"
    os.makedirs(run)
    for name in os.listdir(frozen_run["run"]):
        if os.path.isfile(os.path.join(frozen_run["run"], name)) and name != "model.safetensors":
            os.symlink(os.path.join(frozen_run["run"], name), run / name)
    state = load_file(os.path.join(frozen_run["run"], "model.safetensors"))
    key = "bert.encoder.layer.1.output.LayerNorm.bias"
    state[key] = state[key] + 1e-3
    save_file(state, str(run / "model.safetensors"), metadata={"format": "pt"})
    model = modeling.BertForMultiTask.from_pretrained(str(run))
    name, why = mt.peft_files.frozen_base(str(run), model)
    assert name is None and "encoder.layer.1.output.LayerNorm.bias differs" in why
    out = tmp_path / "peft"
    assert export_adapter.main([str(run), "--task", "mnli", "--format", "peft", "--output_dir", str(out)]) == 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "base_model"
