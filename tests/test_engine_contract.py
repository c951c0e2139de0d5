"""The engine knows no task family: how features pad and which output files a run's families write
come from the families (tasks.base.Task.padding / output_names) through the runner."""
import ast
import os
import types

import pytest

import training
from tasks import conll, glue, squad, swag
from tasks.base import Task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_collate_pads_each_key_with_the_declared_value():
    feats = [{"input_ids": [2, 7, 3], "tags": [5, 6, 7], "labels": 1},
             {"input_ids": [2, 3], "tags": [8, 9], "labels": 0}]
    batch = training.collate(feats, padding={"input_ids": 1, "tags": -7})
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 1]]
    assert batch["tags"].tolist() == [[5, 6, 7], [8, 9, -7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]  # built by collate: 0 past the end
    assert batch["labels"].tolist() == [1, 0]  # scalars need no pad value
    with pytest.raises(ValueError, match="'tags'.*no pad value"):
        training.collate(feats, padding={"input_ids": 0})


def test_streams_and_prediction_features_use_the_declared_padding():
    feats = [{"input_ids": [2, 5, 6, 3], "labels": [4, 4, 4, 4]}, {"input_ids": [2, 3], "labels": [4, 4]}]
    stream = training.EpochStream(feats, batch_size=2, seed=0, padding={"input_ids": 0, "labels": -5},
                                  shuffle=False)
    (_, batch), = stream.next_step()
    assert sorted(batch["labels"].tolist()) == [[4, 4, -5, -5], [4, 4, 4, 4]]
    opts = types.SimpleNamespace(train_batch_size=2, gradient_accumulation_steps=1, seed=0, group_by_length=False,
                                 pad_to=None, replay_batch_cycle=False, pad_multiple=1, reference_accumulation=False)
    env = types.SimpleNamespace(rank=0, world_size=1)
    (_, batch), = training.make_stream(opts, env, feats, padding={"input_ids": 9, "labels": -5}).next_step()
    assert sorted(batch["input_ids"].tolist()) == [[2, 3, 9, 9], [2, 5, 6, 3]]


def test_overwrite_removes_the_engine_outputs_and_the_declared_ones_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("checkpoint", "runs"):
        (out / name).mkdir()
    for name in ("model.safetensors", "run_config.json", "family_output.txt", "mine.txt", "results.json"):
        (out / name).write_text("x")
    opts = types.SimpleNamespace(output_dir=str(out), resume=False, overwrite_output_dir=True, model_dir=str(tmp_path))
    env = types.SimpleNamespace(is_main=True, barrier=lambda: None)
    training.prepare_output_dir(opts, env, output_names=["family_output.txt"])
    assert sorted(os.listdir(out)) == ["mine.txt", "results.json"]  # not the engine's, not declared: kept


def test_the_families_declare_padding_and_outputs_and_the_engine_imports_no_task_module():
    for family in (glue.Glue, squad.Squad, conll.Conll, swag.Swag):
        assert issubclass(family, Task)
        declared = family.declaration  # tasks.base.Family, registered by the family's module
        assert declared.padding["input_ids"] == 0 and declared.output_names
    # per-piece labels pad with the loss's ignore index; sequence-level labels are never padded
    assert conll.Conll.declaration.padding["labels"] == -100 and "labels" not in glue.Glue.declaration.padding
    assert "test_predictions.txt" in conll.Conll.declaration.output_names
    assert "predictions.json" in squad.Squad.declaration.output_names
    assert "test_predictions.txt" not in training.OUTPUT_NAMES and training.EVAL_HISTORY in training.OUTPUT_NAMES
    for name in sorted(os.listdir(os.path.join(ROOT, "training"))):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(ROOT, "training", name), encoding="utf-8").read())
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            assert not {m for m in imported if m == "tasks" or m.startswith("tasks.")}, name
