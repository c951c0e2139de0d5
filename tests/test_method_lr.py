"""The documented default rate of each method's task modules and heads (the table in docs/model.md,
read here as the independent expectation) is the optimizer's rate for them in a single-task runner
and in run_multi_task.py when neither --learning_rate nor --task_lr is given; an explicit flag always
wins. The optimizer's groups are read from the Trainer the runner builds (the run stops there)."""
import os
import re

import pytest

import run_classifier
import run_multi_task
import task_adapters
import training
import training.single_task
from test_method_runs import _config, _runner_argv
from test_run_multi_task_mixed import _argv, setup  # noqa: F401 (the module fixture)
from test_training_helpers import ROOT

METHODS = ["prefix_tuning", "parallel_adapter", "lora", "ia3"]
TRAINER = training.Trainer


def _documented():
    text = open(os.path.join(ROOT, "docs", "model.md"), encoding="utf-8").read().split("**Learning rates.**")[1]
    return {m: float(r) for m, r in re.findall(r"^\| `(\w+)` \| ([0-9.e-]+) \| ", text, re.M)}


class _Stop(Exception):
    pass


def _rates(monkeypatch, module, main, argv):
    """{group name: initial rate} of the optimizer the run builds."""
    seen = {}

    class Recording(TRAINER):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.update({g["name"]: g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups})
            raise _Stop
    monkeypatch.setattr(module, "Trainer", Recording)
    with pytest.raises(_Stop):
        main(argv)
    return seen


def _without(argv, flag):
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


def test_the_docs_table_is_the_registry():
    assert _documented() == {m.key: m.task_lr for m in task_adapters.METHODS if m.task_lr is not None}


@pytest.mark.parametrize("method", METHODS)
def test_single_task_runner_default_and_explicit_rates(setup, monkeypatch, tmp_path, method):  # noqa: F811
    want = _documented()[method]
    argv = _without([*_runner_argv(run_classifier, setup, tmp_path / "a"), "--config", _config(setup, method)],
                    "--learning_rate")
    rates = _rates(monkeypatch, training.single_task, run_classifier.main, argv)
    assert {rates["task_decay"], rates["task_no_decay"]} == {want}
    assert {rates["shared_decay"], rates["shared_no_decay"]} == {5e-5}  # run_classifier's default
    argv = [*_runner_argv(run_classifier, setup, tmp_path / "b"), "--config", _config(setup, method), "--freeze"]
    rates = _rates(monkeypatch, training.single_task, run_classifier.main, argv)  # explicit --learning_rate 1e-2
    assert set(rates.values()) == {1e-2} and not any(k.startswith("task") for k in rates)


@pytest.mark.parametrize("method", METHODS[:2])
def test_multi_task_default_and_explicit_rates(setup, monkeypatch, tmp_path, method):  # noqa: F811
    want = _documented()[method]
    common = _without(_argv(setup, tmp_path / "a", "--config", _config(setup, method), "--num_train_epochs", 1,
                            "--steps_per_epoch", 2), "--learning_rate")
    rates = _rates(monkeypatch, training, run_multi_task.main, common)
    assert {rates["task_decay"], rates["task_no_decay"]} == {want}
    assert {rates["shared_decay"], rates["shared_no_decay"]} == {2e-5}  # run_multi_task's default
    given = _argv(setup, tmp_path / "b", "--config", _config(setup, method), "--task_lr", "7e-4")
    rates = _rates(monkeypatch, training, run_multi_task.main, given)
    assert rates["task_decay"] == 7e-4 and rates["shared_decay"] == 1e-3
    given = _without(_argv(setup, tmp_path / "c", "--config", _config(setup, method)), "--learning_rate")
    rates = _rates(monkeypatch, training, run_multi_task.main, [*given, "--learning_rate", "3e-4"])  # alone
    assert set(rates.values()) == {3e-4}


def test_mixed_methods_train_at_the_learning_rate():
    assert task_adapters.method_task_lr({"lora": True})[0] == 5e-4
    rate, note = task_adapters.method_task_lr({"pals": True, "mult": True, "lora": True})
    assert rate is None and "--task_lr" in note
    assert task_adapters.method_task_lr({"lora": True, "ia3": True})[0] is None
    assert task_adapters.method_task_lr({"pals": True, "mult": True}) == (None, "")
