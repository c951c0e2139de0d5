"""LoRA, (IA)^3, prefix-tuning and parallel-adapter configs in the runners: every single-task
runner trains and reloads one, and a mixed-family run_multi_task.py run (GLUE, SQuAD v2.0, CoNLL,
SWAG) trains one with --freeze and --task_lr, resumes bit-identically, leaves the encoder as it was
and moves every task's modules. --add_tasks onto a LoRA model and our adapter files of a LoRA task
work too. Tiny random BERT (tests/test_run_multi_task_mixed.py's fixture)."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import modeling
import run_classifier
import run_multi_task
import run_ner
import run_squad
import run_swag
from test_run_multi_task_mixed import _argv, _free_port, setup  # noqa: F401 (the module fixture)
from test_training_helpers import ROOT

METHODS = {"lora": dict(lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.1),
           "ia3": dict(ia3=True),
           "parallel_adapter": dict(parallel_adapter=True, parallel_adapter_size=6),
           "prefix_tuning": dict(prefix_tuning=True, prefix_length=3, prefix_hidden=8)}
# a parameter with a known init: LoRA's B 0, (IA)^3's l 1, the parallel adapter's up 0, the bias of
# the prefix MLP's output 0 (BERT init)
IDENTITY = {"lora_B.weight": 0.0, "ia3_l": 1.0, "up.weight": 0.0, "mlp.2.bias": 0.0}
TASK_INDEX = re.compile(r"(?:adapters|prefix_encoders)\.(\d+)\.")


def _config(setup, name):  # noqa: F811
    path = setup["base"] / f"{name}.json"
    path.write_text(json.dumps(dict(METHODS[name], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    return str(path)


def _adapter_keys(state):
    return [k for k in state if TASK_INDEX.search(k)]


def _moved(state, key):
    """Whether `key` is a parameter with an identity init that has left it."""
    init = next((v for suffix, v in IDENTITY.items() if key.endswith(suffix)), None)
    return init is not None and bool((state[key] != init).any())


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
    shared = [k for k in trained if k.startswith("bert.") and k not in _adapter_keys(trained)]
    assert shared and all(torch.equal(trained[k], base[k.replace("bert.", "", 1)]) for k in shared)
    moved = {int(TASK_INDEX.search(k).group(1)) for k in _adapter_keys(trained) if _moved(trained, k)}
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
def test_every_runner_trains_and_reloads_each_method(setup, runner, tmp_path):  # noqa: F811
    for name in sorted(METHODS):
        out = tmp_path / name
        runner.main([*_runner_argv(runner, setup, out), "--config", _config(setup, name)])
        state = load_file(str(out / "model.safetensors"))
        keys = _adapter_keys(state)
        assert keys and all(("lora_" in k) == (name == "lora") and ("ia3_" in k) == (name == "ia3") for k in keys)
        assert any(_moved(state, k) for k in keys)  # trained: left the identity init
        model = modeling.BertForMultiTask.from_pretrained(str(out))
        assert getattr(model.config, name)


def test_add_tasks_and_adapter_files_with_lora(setup):  # noqa: F811
    """--add_tasks onto a LoRA model leaves the old tasks bit-identical and trains the new task's LoRA;
    that task exports and imports (our format) onto the old model."""
    import multitask as mt

    def argv(out, tasks, data_tasks, *extra):
        args = _argv(setup, out, *extra)
        args[args.index("--tasks") + 1] = tasks
        i = args.index("--task_data")  # only the families these runs train
        args[i + 1] = ",".join(e for e in args[i + 1].split(",") if e.split("=")[0] in data_tasks)
        i = args.index("--task_max_seq_length")
        return args[:i] + args[i + 2:]
    old, new = setup["base"] / "lora-old", setup["base"] / "lora-new"
    assert run_multi_task.main(argv(old, "rte,swag", ("swag",), "--config", _config(setup, "lora"),
                                    "--num_train_epochs", 1, "--steps_per_epoch", 2, "--warmup_proportion", 0)) == 0
    args = argv(new, "rte,swag", ("conll",), "--config", "none", "--num_train_epochs", 1, "--steps_per_epoch", 2,
                "--warmup_proportion", 0, "--add_tasks", "conll")
    args[args.index("--bert_model") + 1] = str(old / "best")
    args.remove("--tasks"), args.remove("rte,swag")
    assert run_multi_task.main(args) == 0
    before, after = (load_file(str(d / "best" / "model.safetensors")) for d in (old, new))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(_moved(after, k) for k in after if "_adapters.2." in k)
    exported = setup["base"] / "lora-conll"
    mt.export_task_adapter(str(new / "best"), "conll", str(exported))
    model, info = mt.import_task_adapter(str(old / "best"), str(exported))
    assert model.config.task_names == ["rte", "swag", "conll"] and model.config.lora
    theirs = dict(modeling.task_parameter_pairs(modeling.BertForMultiTask.from_pretrained(str(new / "best")), 2))
    ours = dict(modeling.task_parameter_pairs(model, 2))
    state = model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(state[ours[k]], after[theirs[k]]) for k in ours)


@pytest.mark.parametrize("name", ["lora", "prefix_tuning"])
def test_ddp_two_processes_match_one_process(setup, name):  # noqa: F811
    """torchrun, 2 CPU processes (gloo), the mixed families: LoRA's wrapped projections and prefix tuning's
    extended attention mask train as in one process with the same global batch (dropout 0)."""
    config = setup["base"] / f"{name}-nodrop.json"  # LoRA's own dropout off too: ranks draw other masks
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **({"lora_dropout": 0.0}
                                                                                   if name == "lora" else {}))
    config.write_text(json.dumps(dict(METHODS[name], **no_dropout)))
    common = ("--config", str(config), "--num_train_epochs", 1, "--steps_per_epoch", 4, "--sample", "rr",
              "--no_plots")
    single, multi = setup["base"] / f"{name}-ddp1", setup["base"] / f"{name}-ddp2"
    assert run_multi_task.main(_argv(setup, single, *common)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           os.path.join(ROOT, "run_multi_task.py"), *_argv(setup, multi, *common)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wa, wb = load_file(str(single / "best" / "model.safetensors")), load_file(str(multi / "best" / "model.safetensors"))
    adapters = _adapter_keys(wa)
    assert adapters and any(_moved(wa, k) for k in adapters)  # the method's own weights trained
    assert wa.keys() == wb.keys() and max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
