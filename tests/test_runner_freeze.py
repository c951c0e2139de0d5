"""--freeze in the single-task runners (run_classifier, run_ner, run_squad, run_swag): after a few
steps the shared encoder (embeddings, layers, LayerNorms, pooler) is bit-identical to the loaded one,
and the task modules and the head moved. Without task modules (no --config) only the
head trains. Tiny random BERT of tests/test_run_multi_task_mixed.py."""
import pytest
import torch
from safetensors.torch import load_file

import run_classifier
import run_ner
import run_squad
import run_swag
import training.single_task
from test_method_runs import _adapter_keys, _config, _runner_argv
from test_run_multi_task_mixed import setup  # noqa: F401 (the module fixture)

# one method per runner, so each method is frozen around once
RUNNERS = [(run_classifier, "lora"), (run_ner, "ia3"), (run_squad, "prefix_tuning"), (run_swag, "parallel_adapter")]


def _train(monkeypatch, argv, runner):
    """Run `runner` and return (weights when training started, weights saved, shared names, head names)."""
    seen = {}

    class Recording(training.single_task.Trainer):
        def __init__(self, opts, env, model, *args, **kwargs):
            seen["start"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            seen["shared"] = {id(p) for p in model.shared_parameters()}
            seen["names"] = {n for n, p in model.named_parameters() if id(p) in seen["shared"]}
            super().__init__(opts, env, model, *args, **kwargs)
    monkeypatch.setattr(training.single_task, "Trainer", Recording)
    assert runner.main(argv) == 0
    return seen["start"], seen["names"]


def _saved(out):
    """The saved model's weights under our names (a one-task plain model is saved in the HF layout)."""
    import modeling
    return modeling.BertForMultiTask.from_pretrained(str(out)).state_dict()


@pytest.mark.parametrize("runner,method", RUNNERS, ids=[r.__name__ for r, _ in RUNNERS])
def test_freeze_trains_only_task_modules_and_head(setup, monkeypatch, tmp_path, runner, method):  # noqa: F811
    out = tmp_path / method
    start, shared = _train(monkeypatch, [*_runner_argv(runner, setup, out), "--config", _config(setup, method),
                                         "--freeze"], runner)
    end = load_file(str(out / "model.safetensors"))
    assert shared and all(torch.equal(start[k], end[k]) for k in shared)
    assert not any(k.startswith("heads.") for k in shared)
    modules = _adapter_keys(end)
    heads = [k for k in end if k.startswith("heads.")]
    assert modules and heads and set(shared).isdisjoint(modules)
    assert all(not torch.equal(start[k], end[k]) for k in heads)
    # the modules moved (not necessarily every tensor: behind the parallel adapter's zero-init up
    # projection its down bias gets no gradient on the first step)
    assert any(not torch.equal(start[k], end[k]) for k in modules)


def test_freeze_without_task_modules_trains_the_head_only(setup, monkeypatch, tmp_path):  # noqa: F811
    out = tmp_path / "probe"
    start, shared = _train(monkeypatch, [*_runner_argv(run_classifier, setup, out), "--freeze"], run_classifier)
    end = _saved(out)
    assert set(end) == set(start) and shared and not _adapter_keys(end)
    assert all(torch.equal(start[k], end[k]) for k in shared)
    heads = [k for k in end if k.startswith("heads.")]
    assert heads and all(not torch.equal(start[k], end[k]) for k in heads)
