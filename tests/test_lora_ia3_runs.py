"""LoRA and (IA)^3 configs in the runners: every single-task runner trains and reloads one, and a
mixed-family run_multi_task.py run (GLUE, SQuAD v2.0, CoNLL, SWAG) trains one with --freeze and
--task_lr, resumes bit-identically, leaves the encoder as it was and moves every task's modules.
Tiny random BERT (tests/test_run_multi_task_mixed.py's fixture)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import modeling
import run_classifier
import run_multi_task
import run_ner
import run_squad
import run_swag
from test_run_multi_task_mixed import _argv, setup  # noqa: F401 (the module fixture)

METHODS = {"lora": dict(lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1),
           "ia3": dict(ia3=True)}


def _config(setup, name):  # noqa: F811
    path = setup["base"] / f"{name}.json"
    path.write_text(json.dumps(dict(METHODS[name], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    return str(path)


def _adapter_keys(state):
    return [k for k in state if "_adapters." in k]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_mixed_run_with_freeze_task_lr_and_resume(setup, name):  # noqa: F811
    config = _config(setup, name)
    common = ("--config", config, "--num_train_epochs", 2, "--steps_per_epoch", 4, "--sample", "rr", "--freeze",
              "--task_lr", "1e-2", "--warmup_proportion", 0)  # no zero-lr first step
    full, split = setup["base"] / f"{name}-full", setup["base"] / f"{name}-split"
    assert run_multi_task.main(_argv(setup, full, *common)) == 0
    assert run_multi_task.main(_argv(setup, split, *common, "--stop_after_steps", 5)) == 0
    assert run_multi_task.main(_argv(setup, split, *common, "--resume")) == 0
    a, b = json.loads((full / "results.json").read_text()), json.loads((split / "results.json").read_text())
    assert a["history"] == b["history"]
    trained, resumed = load_file(str(full / "best" / "model.safetensors")), load_file(
        str(split / "best" / "model.safetensors"))
    assert trained.keys() == resumed.keys() and all(torch.equal(trained[k], resumed[k]) for k in trained)
    # --freeze: the encoder is the checkpoint's; every task's modules left their identity init
    base = load_file(os.path.join(setup["model"], "model.safetensors"))
    shared = [k for k in trained if k.startswith("bert.") and "_adapters." not in k]
    assert shared and all(torch.equal(trained[k], base[k.replace("bert.", "", 1)]) for k in shared)
    moved = {int(k.split("_adapters.")[1].split(".")[0]) for k in _adapter_keys(trained)
             if ("lora_B" in k and trained[k].any()) or ("ia3_l" in k and (trained[k] != 1).any())}
    assert moved == {0, 1, 2, 3}
    model = modeling.BertForMultiTask.from_pretrained(str(full / "best"))
    assert getattr(model.config, name) and model.config.task_names == ["rte", "squad2", "conll", "swag"]


def _runner_argv(runner, setup, out):  # noqa: F811
    data = {run_classifier: ["--task_name", "rte", "--data_dir", setup["glue"]],
            run_ner: ["--data_dir", setup["task_data"].split("conll=")[1].split(",")[0]],
            run_swag: ["--data_dir", setup["task_data"].split("swag=")[1].split(",")[0]],
            run_squad: ["--version_2_with_negative", "--max_query_length", "16", "--doc_stride", "16",
                        "--train_file", os.path.join(setup["task_data"].split("squad2=")[1].split(",")[0],
                                                     "train-v2.0.json")]}[runner]
    return [*data, "--bert_model", setup["model"], "--output_dir", str(out), "--do_train",
            "--max_seq_length", "48", "--train_batch_size", "4", "--num_train_epochs", "1", "--learning_rate", "1e-2",
            "--warmup_proportion", "0",
            "--cache_dir", "none"]


@pytest.mark.parametrize("runner", [run_classifier, run_ner, run_squad, run_swag], ids=lambda r: r.__name__)
def test_every_runner_trains_and_reloads_lora_and_ia3(setup, runner, tmp_path):  # noqa: F811
    for name in sorted(METHODS):
        out = tmp_path / name
        runner.main([*_runner_argv(runner, setup, out), "--config", _config(setup, name)])
        state = load_file(str(out / "model.safetensors"))
        keys = _adapter_keys(state)
        assert keys and all(("lora_" in k) == (name == "lora") for k in keys)
        assert any(state[k].any() if "lora_B" in k else (state[k] != 1).any()
                   for k in keys if "lora_B" in k or "ia3_l" in k)  # trained: left the identity init
        model = modeling.BertForMultiTask.from_pretrained(str(out))
        assert getattr(model.config, name)
