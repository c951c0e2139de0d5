"""Adding tasks to a trained multi-task model (run_multi_task.py --add_tasks).

A tiny model trained on rte and mrpc gets sts-b and sst-2 added (dropout on): every tensor of the
old model is bit-identical in the new one (encoder, LayerNorms, the old tasks' modules and heads),
so the old tasks' dev predictions are bit-identical; the saved model serves old and new tasks
(config task names, task_labels.json); the new regression task's training loss falls; flags that
cannot work are one-line errors before anything is written.
"""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import modeling
import run_multi_task
import tokenization
import training
from file_utils import run_cli
from tasks import glue
from test_training_helpers import single_thread
from tiny_multitask import run

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


@pytest.fixture(scope="module")
def runs(tiny_mt, tmp_path_factory):
    base = tmp_path_factory.mktemp("add")
    old, new = base / "old", base / "new"
    assert run(tiny_mt, old, "--tasks", "rte,mrpc", "--num_train_epochs", 1, "--steps_per_epoch", 4, "--no_plots") == 0
    assert run(tiny_mt, new, "--add_tasks", "sts-b,sst-2", "--num_train_epochs", 3, "--steps_per_epoch", 6,
               "--learning_rate", "1e-2", "--no_plots", config=None, model=str(old / "best")) == 0
    return old, new


def _dev_logits(model_dir, data_dir, task, task_id):
    model = modeling.BertForMultiTask.from_pretrained(model_dir)
    tok = tokenization.BertTokenizer.from_pretrained(model_dir)
    feats = glue.convert_examples_to_features(glue.read_examples(task, data_dir, "dev"), task, tok, 32)
    return training.predict(model, feats, task_id, 5)["logits"]


def test_old_tasks_bit_identical_new_tasks_served(runs, tiny_mt):
    old, new = runs
    before = load_file(str(old / "best" / "model.safetensors"))
    for folder in ("best", "checkpoint"):
        after = load_file(str(new / folder / "model.safetensors"))
        assert set(before) < set(after)
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert not changed, changed[:5]
        # and it holds the new tasks' modules and heads
        assert any(".2." in k for k in after) and any(k.startswith("heads.3.") for k in after)
    for task_id, task in enumerate(("rte", "mrpc")):
        a = _dev_logits(str(old / "best"), tiny_mt["data"], task, task_id)
        b = _dev_logits(str(new / "best"), tiny_mt["data"], task, task_id)
        assert np.array_equal(a, b), task
    config = json.loads((new / "best" / "config.json").read_text())
    assert config["task_names"] == ["rte", "mrpc", "sts-b", "sst-2"]
    assert config["task_types"] == ["classification", "classification", "regression", "classification"]
    labels = json.loads((new / "best" / "task_labels.json").read_text())
    assert labels["rte"] == ["entailment", "not_entailment"] and labels["sst-2"] == ["0", "1"]
    res = json.loads((new / "results.json").read_text())
    assert res["tasks"] == ["sts-b", "sst-2"] and res["carried_tasks"] == ["rte", "mrpc"]
    assert set(res["history"][0]["results"]) == {"sts-b", "sst-2"}


def test_new_task_learns(runs):
    _, new = runs
    history = json.loads((new / "results.json").read_text())["history"]
    losses = [h["task_train_loss"]["sts-b"] for h in history]
    assert losses[-1] < 0.8 * losses[0], losses


def test_combined_model_evaluates_all_tasks(runs, tiny_mt, tmp_path):
    old, new = runs
    out = tmp_path / "eval"
    assert run_multi_task.main(["--data_dir", tiny_mt["data"], "--bert_model", str(new / "best"), "--config", "none",
                                "--tasks", "rte,mrpc,sts-b,sst-2", "--no_train", "--output_dir", str(out),
                                "--max_seq_length", "32", "--cache_dir", "none"]) == 0
    evaluated = json.loads((out / "results.json").read_text())["history"][0]["results"]
    trained = json.loads((old / "results.json").read_text())["history"][0]["results"]
    for task in ("rte", "mrpc"):
        assert evaluated[task] == pytest.approx(trained[task], abs=1e-9)


@pytest.mark.parametrize("extra, message", [
    (("--tasks", "rte,sst-2"), "leave --tasks out"),
    (("--config", "pals"), "leave --config out"),
    (("--no_train",), "--no_train"),
    (("--freeze",), "--freeze"),
    (("--projection", "pcgrad"), "--projection"),
    (("--add_tasks", "mrpc"), "already a task"),
])
def test_bad_add_tasks_flags(runs, tiny_mt, tmp_path, capsys, extra, message):
    old, _ = runs
    argv = ["--data_dir", tiny_mt["data"], "--bert_model", str(old / "best"), "--output_dir", str(tmp_path / "x"),
            "--add_tasks", "sst-2", *extra]
    with pytest.raises(SystemExit) as exc:
        run_cli(run_multi_task.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "x")


def test_add_tasks_needs_a_multi_task_model(tiny_mt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(run_multi_task.main, ["--data_dir", tiny_mt["data"], "--bert_model", tiny_mt["model"],
                                      "--add_tasks", "sst-2", "--output_dir", str(tmp_path / "x")])
    assert exc.value.code == 2 and "not a fine-tuned multi-task model" in capsys.readouterr().err
