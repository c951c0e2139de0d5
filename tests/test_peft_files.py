"""PEFT adapter folders: export_adapter.py --format peft writes a LoRA / (IA)^3 task that
peft.PeftModel.from_pretrained loads onto transformers' BertFor* class (the two-line load of
docs/multitask.md) with our predictions; import_adapter.py reads a folder PEFT wrote (from a model
PEFT built) back as a task with PEFT's predictions. The adapters carry non-identity values, a scale
alpha / r != 1 and a non-square projection, so a wrong weight name (PEFT leaves the module at its
init), scale or transposition changes the predictions or fails to load."""
import json
import os
import subprocess
import sys

import peft
import pytest
import torch
import transformers

import modeling
import multitask as mt
from file_utils import ConfigError
from test_training_helpers import single_thread, write_tiny_model
from tree_scripts import load_script

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
export_adapter = load_script("scripts/export_adapter.py")
import_adapter = load_script("scripts/import_adapter.py")
TASKS = ["rte", "mnli", "sts-b", "squad", "swag", "conll"]
TYPES = ["classification", "classification", "regression", "span", "choice", "token"]
LABELS = [2, 3, 1, 2, 4, 5]
SEQ = transformers.BertForSequenceClassification
HF = {"classification": SEQ, "regression": SEQ,
      "span": transformers.BertForQuestionAnswering, "choice": transformers.BertForMultipleChoice,
      "token": transformers.BertForTokenClassification}
METHODS = {"lora": dict(lora=True, lora_r=4, lora_alpha=12, lora_dropout=0.0,
                        lora_targets=["query", "value", "ffn_out"]),
           "ia3": dict(ia3=True)}


def _trained(tmp_path, name):
    """A multi-task model folder whose task modules and heads hold random values (as if trained)."""
    base = write_tiny_model(str(tmp_path / "tiny"), hidden_size=16, intermediate_size=24)
    model = modeling.BertForMultiTask.from_pretrained(base, config=modeling.BertConfig(**METHODS[name]),
                                                      task_num_labels=LABELS, task_types=TYPES, task_names=TASKS)
    torch.manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "_adapters." in n or n.startswith("heads."):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "ia3_l" in n else 0.0))
    folder = str(tmp_path / "model")
    model.save_pretrained(folder, vocab_file=os.path.join(base, "vocab.txt"))
    return folder, model.eval(), base


def _inputs(head_type):
    g = torch.Generator().manual_seed(2)
    shape = (3, 4, 9) if head_type == "choice" else (3, 9)
    ids = torch.randint(1, 100, shape, generator=g)
    mask = torch.ones_like(ids)
    mask[..., 7:] = 0
    return ids, torch.zeros_like(ids), mask


def _ours(model, task_id, head_type):
    ids, types, mask = _inputs(head_type)
    with torch.no_grad():
        out = model(ids, types, mask, task_id=task_id)
    return torch.stack([out["start_logits"], out["end_logits"]]) if head_type == "span" else out["logits"]


def _theirs(peft_model, head_type):
    ids, types, mask = _inputs(head_type)
    with torch.no_grad():
        out = peft_model(input_ids=ids, token_type_ids=types, attention_mask=mask)
    if head_type == "span":
        return torch.stack([out.start_logits, out.end_logits])
    return out.logits.squeeze(-1) if head_type == "regression" else out.logits


@pytest.mark.parametrize("name", sorted(METHODS))
def test_export_loads_in_peft_with_our_predictions(tmp_path, name):
    folder, model, plain = _trained(tmp_path, name)
    for task_id, (task, head_type) in enumerate(zip(TASKS, TYPES)):
        out = tmp_path / f"peft-{task}"
        assert export_adapter.main([folder, "--task", task, "--format", "peft", "--output_dir", str(out)]) == 0
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "base_model" and config["inference_mode"] is True
        if name == "lora":
            assert (config["r"], config["lora_alpha"], config["use_dora"], config["bias"]) == (4, 12, False, "none")
        # the two-line load: the base with from_pretrained, then the adapter
        base = HF[head_type].from_pretrained(str(out / config["base_model_name_or_path"]))
        loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
        torch.testing.assert_close(_theirs(loaded, head_type), _ours(model, task_id, head_type), atol=1e-5, rtol=1e-5)
        # and it reads back as a task of the plain BERT it was trained on, with the same predictions
        again, info = mt.import_task_adapter(plain, str(out), task="again")
        assert info["head_type"] == head_type and again.config.task_names[-1] == "again"
        if head_type != "choice":
            assert info["num_labels"] == model.task_num_labels[task_id]
        else:  # the script records SWAG's 4 choices, as run_swag.py does, not the head's 1 output
            assert import_adapter.main([plain, str(out), "--task", "swag", "--output_dir", str(tmp_path / "sw")]) == 0
            saved = json.loads((tmp_path / "sw" / "config.json").read_text())
            assert saved["task_num_labels"] == [model.task_num_labels[task_id]] == [4]
        torch.testing.assert_close(_ours(again.eval(), again.num_tasks - 1, head_type),
                                   _ours(model, task_id, head_type), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_import_of_a_folder_peft_wrote(tmp_path, name):
    base = write_tiny_model(str(tmp_path / "tiny"), hidden_size=16, intermediate_size=24)
    hf = transformers.BertForSequenceClassification.from_pretrained(base, num_labels=3)
    cfg = (peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=12,
                           target_modules=["query", "key", "intermediate.dense"])
           if name == "lora" else peft.IA3Config(task_type="SEQ_CLS"))
    wrapped = peft.get_peft_model(hf, cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    wrapped.save_pretrained(str(tmp_path / "peft"))
    out = tmp_path / "ours"
    assert import_adapter.main([base, str(tmp_path / "peft"), "--task", "mnli", "--output_dir", str(out)]) == 0
    model = modeling.BertForMultiTask.from_pretrained(str(out)).eval()
    assert model.config.task_names == ["mnli"] and model.task_types == ["classification"]
    torch.testing.assert_close(_ours(model, 0, "classification"), _theirs(wrapped.eval(), "classification"),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(use_dora=True), "DoRA"), (dict(use_rslora=True), "rsLoRA"), (dict(rank_pattern={"query": 2}), "rank_pattern"),
    (dict(alpha_pattern={"query": 2}), "alpha_pattern"), (dict(layers_to_transform=[0]), "layers_to_transform"),
    (dict(bias="all"), "bias"), (dict(peft_type="PREFIX_TUNING"), "only LORA and IA3")])
def test_unsupported_peft_options_are_one_line_exit_2(tmp_path, change, message):
    folder, _, plain = _trained(tmp_path, "lora")
    out = tmp_path / "peft"
    assert export_adapter.main([folder, "--task", "rte", "--format", "peft", "--output_dir", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(dict(config, **change)))
    with pytest.raises(ConfigError, match=message):
        mt.import_task_adapter(plain, str(out), task="rte2")
    if message != "DoRA":  # the CLI once (a process start costs seconds): one line, exit 2
        return
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "import_adapter.py"), plain,
                           str(out), "--task", "rte2", "--output_dir", str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


def test_export_of_other_methods_is_refused(tmp_path):
    base = write_tiny_model(str(tmp_path / "tiny"), hidden_size=16, intermediate_size=24)
    model = modeling.BertForMultiTask.from_pretrained(base, config=modeling.BertConfig(lhuc=True),
                                                      task_num_labels=[2], task_names=["rte"])
    model.save_pretrained(str(tmp_path / "m"), vocab_file=os.path.join(base, "vocab.txt"))
    with pytest.raises(ConfigError, match="LoRA or"):
        export_adapter.main([str(tmp_path / "m"), "--task", "rte", "--format", "peft", "--output_dir",
                             str(tmp_path / "o")])
