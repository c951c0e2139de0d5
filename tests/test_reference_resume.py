"""The 2019 protocol's parts across a resume and in gradient accumulation (issue 19, items 5, 7, 8, 14):
a run stopped at a checkpoint and resumed ends bit-identical to the uninterrupted run under
--dropout_off_after_eval, --zero_grad_in_place and --reference_protocol; every sub-flag is part of the
resume fingerprint; --reference_accumulation trains as the 2019 loop (checked against that loop
written out by hand); the logged learning rate is the applied one; a damaged trainer_state.json is
one line naming it."""
import itertools
import json
import os

import pytest
import torch

import multitask as mt
import optimization
import training
from file_utils import ConfigError, DataError
from test_training_helpers import engine_options, single_thread, synthetic_features, write_tiny_model

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
TOTAL = 12  # two tasks in turn (rr), 4 steps per epoch, an evaluation after each epoch


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), dropout=0.1)


def _run(model_dir, out, steps, *flags):
    """Two tasks trained in turn, dropout 0.1, a dev prediction at every epoch end (the 2019 evaluation)."""
    opts = engine_options(model_dir, str(out), "--train_batch_size", 4, "--learning_rate", 1e-3, "--save_steps", 3,
                          "--logging_steps", 1000, *flags)
    env = training.setup_env(opts)
    training.prepare_output_dir(opts, env)
    model = training.load_model(opts, [2, 2])
    streams = [training.make_stream(opts, env, synthetic_features(12, seed=s), task_id=t)
               for t, s in enumerate((1, 2))]
    stream = mt.MultiTaskStream(streams, mt.TaskSampler([12, 12], "rr", 3, 42), steps_per_epoch=4)
    trainer = training.Trainer(opts, env, model, TOTAL)
    trainer.train(stream, steps, on_epoch_end=lambda e, t: t.predict(synthetic_features(4, seed=9), 0) is None)
    trainer.close()
    return model, trainer


@pytest.mark.parametrize("flags", [("--dropout_off_after_eval",), ("--zero_grad_in_place", "--optimizer", "bertadam"),
                                   ("--reference_protocol",)], ids=["dropout_off", "zero_grad", "reference"])
def test_stop_at_a_checkpoint_and_resume_is_bit_identical(tiny_dir, tmp_path, flags):
    """Stopped at step 7: after the first evaluation (dropout off) and with task 0's gradients zeroed, not
    freed, so that step 8 (task 1) moves task 0's head by its stale optimizer state."""
    full, _ = _run(tiny_dir, tmp_path / "full", TOTAL, *flags)
    _run(tiny_dir, tmp_path / "part", 7, *flags)
    torch.manual_seed(1234)  # another RNG state before resuming
    resumed, trainer = _run(tiny_dir, tmp_path / "part", TOTAL, *flags, "--resume")
    assert trainer.global_step == TOTAL
    for name, tensor in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


@pytest.mark.parametrize("flag", ["--dropout_off_after_eval", "--zero_grad_in_place", "--replay_batch_cycle",
                                  "--reference_accumulation"])
def test_every_2019_sub_flag_is_part_of_the_resume_fingerprint(tiny_dir, tmp_path, flag):
    accumulate = ("--gradient_accumulation_steps", 2)
    _run(tiny_dir, tmp_path, 2, *accumulate)
    with pytest.raises(ConfigError, match=flag.lstrip("-")):
        _run(tiny_dir, tmp_path, 4, *accumulate, flag, "--resume")


def test_reference_accumulation_is_the_2019_loop(tmp_path):
    """10 examples, batch 8 in 2 micro-batches of 4: one pass is 4 + 4 + 2 examples, so step 2 is the short
    micro-batch plus the first of the next pass. The 2019 loop, by hand: next() on a cycled DataLoader of
    the first pass's batches, each loss / 2 whatever its size, BertAdam with its own schedule."""
    model_dir = write_tiny_model(str(tmp_path / "model"), dropout=0.0)
    feats = synthetic_features(10, seed=5)
    steps = 6
    opts = engine_options(model_dir, str(tmp_path / "out"), "--reference_protocol", "--train_batch_size", 8,
                          "--gradient_accumulation_steps", 2, "--learning_rate", 1e-3)
    assert opts.reference_accumulation
    env = training.setup_env(opts)
    model = training.load_model(opts, [2])
    reference = training.load_model(opts, [2])
    reference.load_state_dict(model.state_dict())
    trainer = training.Trainer(opts, env, model, steps)
    trainer.train(training.make_stream(opts, env, feats), steps)
    trainer.close()

    optimizer = optimization.build_optimizer("bertadam", optimization.param_groups(reference, 0.01, 1e-3), 1e-3,
                                             max_grad_norm=1.0, weight_decay=0.01, warmup=0.1, t_total=steps,
                                             schedule="warmup_linear_legacy")
    first_pass = training.make_batches([len(f["input_ids"]) for f in feats], 4, 42, 0, shuffle=True,
                                       group_by_length=False)
    assert [len(b) for b in first_pass] == [4, 4, 2]
    batches = itertools.cycle(first_pass)
    reference.train()
    for _ in range(steps):
        for _ in range(2):
            loss = reference(**training.collate([feats[i] for i in next(batches)]), task_id=0)["loss"]
            (loss / 2).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    for name, tensor in reference.state_dict().items():
        assert torch.allclose(model.state_dict()[name], tensor, rtol=0, atol=1e-6), name


def test_logged_learning_rate_is_bertadams_applied_rate(tmp_path, monkeypatch):
    """--reference_protocol over 10 steps, warmup 0.1: BertAdam applies lr * (1 - x) at its own step
    x = (s - 1) / 10 (warmup_linear_legacy: x = 0 gives 0, past the warmup 1 - x); the engine's LambdaLR
    stays at the base rate."""
    model_dir = write_tiny_model(str(tmp_path / "model"), dropout=0.0)
    opts = engine_options(model_dir, str(tmp_path / "out"), "--reference_protocol", "--train_batch_size", 4,
                          "--learning_rate", 1e-2, "--logging_steps", 1)
    env = training.setup_env(opts)
    trainer = training.Trainer(opts, env, training.load_model(opts, [2]), 10)
    logged = []
    monkeypatch.setattr(trainer, "log_scalars", lambda prefix, values, step=None: logged.append(values))
    trainer.train(training.make_stream(opts, env, synthetic_features(40, seed=1)), 10)
    trainer.close()
    expected = [0.0] + [1e-2 * (1 - s / 10) for s in range(1, 10)]
    assert [v["learning_rate"] for v in logged] == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("field,value,says", [
    ("rng", [], "'rng'"), ("global_step", "7", "'global_step'"), ("epoch", -1, "'epoch'"),
    ("stopped_early", "no", "'stopped_early'"), ("zeroed_grads", ["nope"], "'zeroed_grads'"),
    ("rng.numpy", {"__tuple__": ["MT19937", [1, 2, 3], 0, 0, 0.0]}, "'rng'"),
    ("optimizer", [1], "'optimizer'")])
def test_an_edited_trainer_state_is_one_line_naming_the_file(tiny_dir, tmp_path, field, value, says):
    _run(tiny_dir, tmp_path, 3, "--zero_grad_in_place", "--optimizer", "bertadam")
    path = tmp_path / training.CHECKPOINT_DIR / (training.CHECKPOINT_STATE + ".json")
    state = json.loads(path.read_text())
    if field == "rng.numpy":
        state["rng"][0]["numpy"] = value
    else:
        state[field] = value
    path.write_text(json.dumps(state))
    with pytest.raises(DataError) as err:
        _run(tiny_dir, tmp_path, 6, "--zero_grad_in_place", "--optimizer", "bertadam", "--resume")
    assert str(err.value).startswith(f"{path}: {says}") and "\n" not in str(err.value)
    assert os.path.isfile(path)  # the checkpoint is left as it was


def test_reference_accumulation_over_pregenerated_epochs_uses_every_micro_batch_once():
    """Data epochs of 10 and 10 examples, micro-batches of 4: 3 + 3 micro-batches, so 2 per step gives 3
    full steps (not 2 + 2 with a short step at each epoch end), the second crossing into epoch 1."""
    epochs = [synthetic_features(10, seed=1), synthetic_features(10, seed=2)]
    stream = training.EpochStream(load_epoch=lambda e: epochs[e], epoch_sizes=[10, 10], batch_size=8,
                                  accumulation=2, shuffle=False, group_by_length=False, cross_pass_ends=True)
    assert stream.total_steps == 3
    steps = [stream.next_step() for _ in range(3)]
    assert [[len(b["labels"]) for _, b in step] for step in steps] == [[4, 4], [2, 4], [4, 2]]
    seen = [row for step in steps for _, b in step for row in b["input_ids"].tolist()]
    want = [f["input_ids"] for f in epochs[0] + epochs[1]]
    assert [[t for t in row if t] for row in seen] == want
    with pytest.raises(ConfigError, match="only 3 steps"):
        stream.next_step()
