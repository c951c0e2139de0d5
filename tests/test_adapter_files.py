"""One task's modules and head as a file (scripts/export_adapter.py, scripts/import_adapter.py,
multitask.export_task_adapter / import_task_adapter).

A tiny PALs model trained with --freeze (its encoder stays the plain base's) on rte and sts-b:
each task exported and imported onto the plain base model gives bit-identical dev predictions,
and importing both rebuilds the trained model tensor for tensor. Another base (different encoder
weights), other task modules, or a task the model already has are refused with one line and exit
code 2. The sizes printed are the hand-counted PAL budget; for bert-base the count is the
reference's 1,819,836 PAL parameters + the head.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import modeling
import multitask as mt
import tokenization
import training
from file_utils import run_cli
from tasks import glue
from test_training_helpers import single_thread
from tiny_multitask import AUG, HIDDEN, LAYERS, run
from tree_scripts import load_script

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
export_adapter = load_script("scripts/export_adapter.py")
import_adapter = load_script("scripts/import_adapter.py")


def _pal_task_params(num_labels):
    # V^E (H->A) + V^D (A->H) shared by the layers, per layer Q/K/V (A->A), head (H->C)
    return (HIDDEN * AUG + AUG) + (AUG * HIDDEN + HIDDEN) + LAYERS * 3 * (AUG * AUG + AUG) + HIDDEN * num_labels \
        + num_labels


def _cli(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err.strip().splitlines()


@pytest.fixture(scope="module")
def trained(tiny_mt, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters") / "run"
    assert run(tiny_mt, out, "--tasks", "rte,sts-b", "--num_train_epochs", 1, "--steps_per_epoch", 4, "--freeze",
               "--task_lr", "1e-2", "--no_plots") == 0
    return out / "best"


def _dev_outputs(model_dir, data_dir, task, task_id):
    model = modeling.BertForMultiTask.from_pretrained(str(model_dir))
    tok = tokenization.BertTokenizer.from_pretrained(str(model_dir))
    feats = glue.convert_examples_to_features(glue.read_examples(task, data_dir, "dev"), task, tok, 32)
    return training.predict(model, feats, task_id, 5)["logits"]


def test_round_trip_identical_predictions_and_sizes(trained, tiny_mt, tmp_path, capsys):
    rte, sts = tmp_path / "rte_adapter", tmp_path / "sts_adapter"
    code, out, _ = _cli(export_adapter.main, [trained, "--task", "rte", "--output_dir", rte], capsys)
    assert code == 0
    n = _pal_task_params(2)
    assert f"rte: {n:,} parameters (modules + head)" in out
    assert sorted(os.listdir(rte)) == ["adapter.json", "adapter.safetensors"]
    assert os.path.getsize(rte / "adapter.safetensors") < 4 * n + 4096  # fp32 tensors + a small header
    info = json.loads((rte / "adapter.json").read_text())
    assert info["task"] == "rte" and info["labels"] == ["entailment", "not_entailment"]
    assert info["adapter_config"]["pals"] and info["adapter_config"]["hidden_size_aug"] == AUG
    assert info["num_parameters"] == n
    assert _cli(export_adapter.main, [trained, "--task", "sts-b", "--output_dir", sts], capsys)[0] == 0
    # onto the plain base model (the run used --freeze, so its encoder is the base's)
    only_rte, both = tmp_path / "only_rte", tmp_path / "both"
    code, out, _ = _cli(import_adapter.main, [tiny_mt["model"], rte, "--output_dir", only_rte], capsys)
    assert code == 0 and "rte added as task 0" in out
    assert np.array_equal(_dev_outputs(only_rte, tiny_mt["data"], "rte", 0),
                          _dev_outputs(trained, tiny_mt["data"], "rte", 0))
    assert _cli(import_adapter.main, [only_rte, sts, "--output_dir", both], capsys)[0] == 0
    assert np.array_equal(_dev_outputs(both, tiny_mt["data"], "sts-b", 1),
                          _dev_outputs(trained, tiny_mt["data"], "sts-b", 1))
    a, b = load_file(str(trained / "model.safetensors")), load_file(str(both / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((both / "task_labels.json").read_text())["rte"] == ["entailment", "not_entailment"]
    assert json.loads((both / "config.json").read_text())["task_names"] == ["rte", "sts-b"]


def test_refusals(trained, tiny_mt, tmp_path, capsys):
    rte = tmp_path / "rte_adapter"
    assert _cli(export_adapter.main, [trained, "--task", "rte", "--output_dir", rte], capsys)[0] == 0
    plain_task = tmp_path / "plain_task"  # one task, no adapters (another kind of task modules)
    model = modeling.BertForMultiTask.from_pretrained(tiny_mt["model"], task_num_labels=[2], task_names=["mrpc"])
    model.save_pretrained(str(plain_task), vocab_file=os.path.join(tiny_mt["model"], "vocab.txt"))
    broken = tmp_path / "broken"
    shutil.copytree(rte, broken)
    (broken / "adapter.json").write_text("{}")
    cases = [(import_adapter.main, [tiny_mt["other_model"], rte], "exported from another base model"),
             (import_adapter.main, [trained, rte], "already has a task 'rte'"),
             (import_adapter.main, [plain_task, rte], "other task modules"),
             (import_adapter.main, [tiny_mt["model"], broken], "not an adapter file"),
             (export_adapter.main, [trained, "--task", "cola"], "no task 'cola'"),
             (export_adapter.main, [trained, "--task", "rte"], "not empty")]
    for i, (main, argv, message) in enumerate(cases):
        target = rte if main is export_adapter.main and "not empty" in message else tmp_path / f"out{i}"
        code, _, err = _cli(main, [*argv, "--output_dir", target], capsys)
        assert code == 2 and len(err) == 1 and message in err[0], (message, err)
        if target != rte:
            assert not os.path.exists(target)


def _broken_copy(rte, folder, edit_info=None, weights=None):
    shutil.copytree(rte, folder)
    if edit_info is not None:
        info = json.loads((folder / "adapter.json").read_text())
        edit_info(info)
        (folder / "adapter.json").write_text(json.dumps(info))
    if weights is not None:
        data = (folder / "adapter.safetensors").read_bytes()
        (folder / "adapter.safetensors").write_bytes(weights(data))
    return folder


@pytest.mark.parametrize("case", ["truncated", "not_safetensors", "num_labels_text", "num_labels_float",
                                  "base_model_text", "adapter_config_list", "adapter_config_foreign_key",
                                  "adapter_config_bad_value", "labels_text", "labels_count"])
def test_malformed_adapter_files_are_one_line(trained, tiny_mt, tmp_path, capsys, case):
    """Issue 19 item 10: each used to be a traceback (SafetensorError, ValueError, TypeError,
    AttributeError), or silently read (num_labels 2.5 -> 2, labels "ab" -> ["a", "b"])."""
    rte = tmp_path / "rte_adapter"
    assert _cli(export_adapter.main, [trained, "--task", "rte", "--output_dir", rte], capsys)[0] == 0
    info_file, weights_file = "adapter.json", "adapter.safetensors"
    edits = {
        "truncated": (None, lambda data: data[:len(data) // 2], weights_file, "not an adapter weights file"),
        "not_safetensors": (None, lambda data: b"PK\x03\x04 a zip, say", weights_file, "not an adapter weights"),
        "num_labels_text": (lambda i: i.update(num_labels="two"), None, info_file, "'num_labels' must be"),
        "num_labels_float": (lambda i: i.update(num_labels=2.5), None, info_file, "'num_labels' must be"),
        "base_model_text": (lambda i: i.update(base_model="bert"), None, info_file, "'base_model' must be"),
        "adapter_config_list": (lambda i: i.update(adapter_config=["pals"]), None, info_file,
                                "'adapter_config' must be"),
        "adapter_config_foreign_key": (lambda i: i["adapter_config"].update(hidden_size=8), None, info_file,
                                       "'adapter_config' must be"),
        "adapter_config_bad_value": (lambda i: i["adapter_config"].update(hidden_size_aug="x"), None, info_file,
                                     "hidden_size_aug"),
        "labels_text": (lambda i: i.update(labels="ab"), None, info_file, "'labels' must be"),
        "labels_count": (lambda i: i.update(labels=["entailment"]), None, info_file, "1 'labels' for a head"),
    }
    edit_info, weights, named, message = edits[case]

    def edit(info):
        info["task"] = "mrpc"  # a task `trained` lacks, so that only the edited field can be wrong
        edit_info(info)
    broken = _broken_copy(rte, tmp_path / "broken", edit_info and edit, weights)
    out = tmp_path / "out"
    # a plain BERT, and a multi-task model (whose adapter keys are compared with the adapter's first)
    for model in (tiny_mt["model"],) + (() if case == "adapter_config_bad_value" else (trained,)):
        code, _, err = _cli(import_adapter.main, [model, broken, "--output_dir", out], capsys)
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: {broken / named}: ") and message in err[0], err
        assert not os.path.exists(out)


def test_full_disk_names_the_file(trained, tmp_path, capsys, monkeypatch):
    """Issue 19 item 11: export_adapter.py and per_task_best/ on a full disk: one line naming the file
    being written (was a SafetensorError traceback), and nothing left behind."""
    from test_file_utils import simulate_full_disk
    model = modeling.BertForMultiTask.from_pretrained(str(trained))
    simulate_full_disk(monkeypatch)
    out = tmp_path / "rte_adapter"
    code, _, err = _cli(export_adapter.main, [trained, "--task", "rte", "--output_dir", out], capsys)
    assert code == 2 and err == [f"error: {out / 'adapter.safetensors'}: {os.strerror(28)}"], err
    assert os.listdir(tmp_path) == []
    best = tmp_path / "per_task_best" / "rte"
    with pytest.raises(OSError) as excinfo:
        mt.save_task_parameters(model, 0, "rte", str(best), {"epoch": 1})
    assert excinfo.value.filename == str(best / "task_parameters.safetensors")
    assert os.listdir(tmp_path / "per_task_best") == []


def test_bert_base_pals_task_size():
    config = modeling.BertConfig.from_json_file(os.path.join(ROOT, "configs", "pals_config.json"))
    with torch.device("meta"):
        model = modeling.BertForMultiTask(config, [2])
    own = dict(model.named_parameters())
    task = sum(own[name].numel() for _, name in modeling.task_parameter_pairs(model, 0))
    shared = sum(p.numel() for p in model.shared_parameters())
    assert task == 1819836 + 768 * 2 + 2 and shared == 109482240  # reference/bert_n_pals.md 4.2
    assert mt.ADAPTER_FORMAT == 1
