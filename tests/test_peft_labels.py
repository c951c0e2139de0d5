"""Label names of a PEFT folder trained elsewhere: the id2label of its base model's config.json become
the imported task's labels; for a GLUE task the head's rows are matched to the task's labels by name
(never by position), and labels that are not the task's are refused with one line naming the difference."""
import json

import peft
import pytest
import torch
import transformers

import modeling
import multitask as mt
from file_utils import run_cli
from tasks import glue
from test_peft_files import _ours, _theirs
from test_training_helpers import single_thread, write_tiny_model
from tree_scripts import load_script

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
import_adapter = load_script("scripts/import_adapter.py")
# MNLI's labels in another order than tasks/glue.py's (contradiction, entailment, neutral)
THEIRS = ["entailment", "neutral", "contradiction"]


def _peft_folder(tmp_path, labels):
    """A LoRA adapter PEFT trained on a BertForSequenceClassification whose config names `labels`."""
    plain = write_tiny_model(str(tmp_path / "tiny"), hidden_size=16, intermediate_size=24)
    hf = transformers.BertForSequenceClassification.from_pretrained(
        plain, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    hf.save_pretrained(str(tmp_path / "their_base"))  # the base PEFT names, with its id2label
    hf = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "their_base"))
    wrapped = peft.get_peft_model(hf, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8))
    torch.manual_seed(3)
    with torch.no_grad():
        for _, p in wrapped.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    wrapped.save_pretrained(str(tmp_path / "peft"))
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(tmp_path / "their_base")
    return plain, str(tmp_path / "peft"), wrapped.eval()


def test_labels_become_the_tasks_matched_by_name(tmp_path):
    plain, folder, wrapped = _peft_folder(tmp_path, THEIRS)
    out = tmp_path / "ours"
    assert import_adapter.main([plain, folder, "--task", "mnli", "--output_dir", str(out)]) == 0
    ours = list(glue.get_task("mnli").labels)
    assert ours != THEIRS and json.loads((out / "task_labels.json").read_text()) == {"mnli": ours}
    model = modeling.BertForMultiTask.from_pretrained(str(out)).eval()
    theirs = _theirs(wrapped, "classification")
    # column j of our logits is the label ours[j]: PEFT's column of that name
    torch.testing.assert_close(_ours(model, 0, "classification"), theirs[:, [THEIRS.index(x) for x in ours]],
                               atol=1e-5, rtol=1e-5)
    # a task the label list of which comes from the data (here: a new name) keeps the adapter's names
    _, info = mt.import_task_adapter(plain, folder, task="my_nli")
    assert info["labels"] == THEIRS


def test_labels_that_are_not_the_tasks_are_refused(tmp_path, capsys):
    plain, folder, _ = _peft_folder(tmp_path, ["entailment", "maybe", "contradiction"])
    capsys.readouterr()  # transformers' progress bars
    with pytest.raises(SystemExit) as exc:
        run_cli(import_adapter.main, [plain, folder, "--task", "mnli", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "only in the adapter: maybe; missing: neutral" in err[0]
    assert not (tmp_path / "out").exists()


def test_placeholder_names_are_no_labels(tmp_path):
    plain, folder, _ = _peft_folder(tmp_path, ["LABEL_0", "LABEL_1", "LABEL_2"])
    _, info = mt.import_task_adapter(plain, folder, task="mnli")
    assert info["labels"] is None
