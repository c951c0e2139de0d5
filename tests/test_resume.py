"""Checkpoints and exact resume: a run that is stopped (or SIGKILLed) and resumed with --resume
ends with the same weights and runner state as an uninterrupted run. Dropout is ON (0.1), so
this also checks that the RNG states are restored; accumulation 2 and epoch callbacks that keep
state in Trainer.extra_state are included."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import training
from test_training_helpers import (
    engine_options,
    single_thread,
    state_dict_max_diff,
    synthetic_features,
    worker_env,
    write_tiny_model,
)

FLAGS = ("--train_batch_size", 8, "--gradient_accumulation_steps", 2, "--learning_rate", 1e-3,
         "--save_steps", 3, "--logging_steps", 1000)
STEPS = 16  # 30 examples, batch 8 -> 4 steps per epoch, 4 epochs

WORKER = r'''
import os, sys, time
import torch
import training
from test_training_helpers import engine_options, synthetic_features
from test_resume import FLAGS, STEPS, on_epoch_end

model_dir, out_dir, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
args = engine_options(model_dir, out_dir, *FLAGS, *extra)
env = training.setup_env(args)
training.prepare_output_dir(args, env)
model = training.load_model(args, [2])
stream = training.make_stream(args, env, synthetic_features(30, seed=3))
delay = float(os.environ.get("STEP_DELAY", "0"))
if delay:
    next_step = stream.next_step
    def slow():
        time.sleep(delay)
        return next_step()
    stream.next_step = slow
trainer = training.Trainer(args, env, model, STEPS)
trainer.train(stream, STEPS, on_epoch_end=on_epoch_end)
torch.save({{"weights": model.state_dict(), "extra": trainer.extra_state}}, os.path.join(out_dir, "final.pt"))
'''

pytestmark = pytest.mark.usefixtures(single_thread.__name__)  # tiny models: one thread


def on_epoch_end(epoch, trainer):
    """Runner-like state: a history and a 'best' value that must survive a resume."""
    value = float(next(trainer.model.parameters()).detach().double().sum())
    history = trainer.extra_state.setdefault("history", [])
    history.append((epoch, trainer.global_step, value))
    trainer.extra_state["best"] = max(v for _, _, v in history)
    return False


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(str(tmp_path_factory.mktemp("resume") / "model"), dropout=0.1)


def _train(model_dir, out, steps, *extra):
    args = engine_options(model_dir, str(out), *FLAGS, *extra)
    env = training.setup_env(args)
    training.prepare_output_dir(args, env)
    model = training.load_model(args, [2])
    stream = training.make_stream(args, env, synthetic_features(30, seed=3))
    trainer = training.Trainer(args, env, model, STEPS)
    trainer.train(stream, steps, on_epoch_end=on_epoch_end)
    trainer.close()
    return model, trainer


def test_stop_and_resume_in_process_is_exact(model_dir, tmp_path):
    full, full_trainer = _train(model_dir, tmp_path / "full", STEPS)
    _train(model_dir, tmp_path / "part", 7)                    # stops after step 7 (checkpoint at 7)
    torch.manual_seed(1234)                                     # a different RNG state before resuming
    resumed, resumed_trainer = _train(model_dir, tmp_path / "part", STEPS, "--resume")
    assert resumed_trainer.global_step == STEPS
    assert state_dict_max_diff(full.state_dict(), resumed.state_dict()) <= 1e-6
    assert resumed_trainer.extra_state == full_trainer.extra_state
    assert [h[0] for h in full_trainer.extra_state["history"]] == [0, 1, 2, 3]


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(model_dir, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format())
    env = worker_env()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(worker), model_dir, str(out)], env=dict(env, STEP_DELAY="0.4"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = out / training.CHECKPOINT_DIR / training.CHECKPOINT_META
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if meta.exists():
            try:
                step = json.loads(meta.read_text())["global_step"]
            except (ValueError, OSError):  # renamed under us: read again
                step = 0
            if step >= 6:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and 6 <= step < STEPS, step
    assert not (out / "final.pt").exists()
    done = subprocess.run([sys.executable, str(worker), model_dir, str(out), "--resume"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    full, full_trainer = _train(model_dir, tmp_path / "full", STEPS)  # one thread, like the worker
    resumed = torch.load(out / "final.pt", weights_only=True)
    assert state_dict_max_diff(full.state_dict(), resumed["weights"]) <= 1e-6
    got, want = resumed["extra"]["history"], full_trainer.extra_state["history"]
    assert [tuple(h[:2]) for h in got] == [tuple(h[:2]) for h in want]  # (epoch, step) exactly
    assert [h[2] for h in got] == pytest.approx([h[2] for h in want], rel=1e-7)


def test_a_failed_checkpoint_write_keeps_the_previous_one(model_dir, tmp_path, monkeypatch):
    _, trainer = _train(model_dir, tmp_path / "out", 3)   # checkpoint at step 3
    good = training.find_checkpoint(str(tmp_path / "out"))
    assert json.loads(open(os.path.join(good, training.CHECKPOINT_META)).read())["global_step"] == 3

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(training.trainer, "write_state", broken_save)
    trainer.global_step = 4
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(stream=None)
    monkeypatch.undo()
    assert [n for n in os.listdir(tmp_path / "out") if "checkpoint" in n] == ["checkpoint"]  # no temp dir left
    state = training.read_checkpoint(good)["state"]
    assert state["global_step"] == 3
    # a kill between the two renames leaves only checkpoint.old: it is found and then repaired
    os.replace(good, str(tmp_path / "out" / "checkpoint.old"))
    assert training.find_checkpoint(str(tmp_path / "out")).endswith("checkpoint.old")
    trainer.save_checkpoint(stream=None)
    assert [n for n in os.listdir(tmp_path / "out") if "checkpoint" in n] == ["checkpoint"]


def test_resume_without_checkpoint_starts_fresh_and_mismatched_data_is_refused(model_dir, tmp_path):
    _, trainer = _train(model_dir, tmp_path / "fresh", 2, "--resume")
    assert trainer.global_step == 2
    args = engine_options(model_dir, str(tmp_path / "fresh"), *FLAGS, "--resume")
    env = training.setup_env(args)
    model = training.load_model(args, [2])
    other = training.Trainer(args, env, model, STEPS)
    with pytest.raises(training.ConfigError, match="does not fit this run"):
        other.train(training.make_stream(args, env, synthetic_features(50, seed=3)), STEPS)
