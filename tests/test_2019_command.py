"""The 2019 command line as a user runs it (issue 19, items 3, 4, 6, 13, 17): explicit flags win over
--reference_protocol and are logged; --config against another --bert_config_file is refused; one line
names the protocol in use; a run started with the 2019 file flags resumes bit-identically and leaves no
per-run folder when killed; bad --h_aug configs, empty training sets and size mismatches are one line,
and a failed run leaves nothing that refuses its corrected rerun."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import file_utils
import modeling
import run_classifier
import run_multi_task
import run_ner
import run_squad
import run_swag
import training
from file_utils import ConfigError, run_cli
from glue_fixtures import write_glue_fixture
from test_reference_protocol import folder_2019, readme_command  # noqa: F401 - a fixture, used by name
from test_training_helpers import ROOT, single_thread, synthetic_features, write_tiny_model

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
SHORT = ["--num_train_epochs", "2", "--steps_per_epoch", "3", "--max_seq_length", "32", "--save_steps", "2"]


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """The 2019 model folders go to the user's cache: here a fresh one per test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


# -- item 3: explicit flags ------------------------------------------------------------------------

@pytest.mark.parametrize("runner", [run_classifier, run_multi_task, run_squad, run_ner, run_swag])
def test_every_runners_parser_knows_the_explicit_flags(runner):
    argv = ["--output_dir", "x", "--optimizer", "adamw", "--reference_protocol", "--seed=42", "--no_lower_case",
            "--data_dir", "d"] + (["--task_name", "rte"] if runner is run_classifier else [])
    args, _ = runner.build_parser().parse_known_args(argv)  # run_squad has no --data_dir
    # adamw and 42 are the defaults: given all the same
    assert {"optimizer", "reference_protocol", "seed", "do_lower_case", "output_dir"} <= set(args.explicit)
    assert "schedule" not in args.explicit and "learning_rate" not in args.explicit


@pytest.mark.parametrize("flags,optimizer,schedule,note", [
    ([], "bertadam", "warmup_linear_legacy", None),
    (["--optimizer", "adamw"], "adamw", "warmup_linear_legacy", "--optimizer adamw"),
    (["--schedule", "warmup_cosine"], "bertadam", "warmup_cosine", "--schedule warmup_cosine")])
def test_explicit_optimizer_and_schedule_win_over_the_reference_protocol(tmp_path, caplog, flags, optimizer, schedule,
                                                                         note):
    model_dir = write_tiny_model(str(tmp_path / "model"))
    parser = file_utils.make_parser("t")
    training.add_engine_args(parser)
    args = parser.parse_args(["--bert_model", model_dir, "--output_dir", str(tmp_path / "out"), "--no_cuda",
                              "--cache_dir", "none", "--max_seq_length", "32", "--reference_protocol", *flags])
    opts = training.EngineOptions.from_args(args)
    assert (opts.optimizer, opts.schedule) == (optimizer, schedule)
    assert opts.per_parameter_schedule is (optimizer == "bertadam")  # BertAdam's own schedule needs BertAdam
    assert opts.zero_grad_in_place and opts.dropout_off_after_eval and opts.replay_batch_cycle
    env = training.setup_env(opts)
    trainer = training.Trainer(opts, env, training.load_model(opts, [2]), 2)
    caplog.set_level(logging.INFO)
    trainer.train(training.make_stream(opts, env, synthetic_features(8)), 2)
    trainer.close()
    if note is None:
        assert "wins over" not in caplog.text
    else:
        assert f"the explicit {note} wins over the 2019 protocol's" in caplog.text
    assert isinstance(trainer.optimizer, torch.optim.AdamW) is (optimizer == "adamw")


def test_config_against_another_bert_config_file_is_refused_naming_both(folder_2019, tmp_path):  # noqa: F811
    base = folder_2019["base"]
    argv = readme_command(folder_2019, tmp_path / "out") + ["--dry_run"]
    other = tmp_path / "low_rank.json"
    other.write_text(json.dumps(dict(json.loads((base / "pals_config.json").read_text()), pals=False, mult=False,
                                     bert_lay_top=False, extra_dim=6)))
    with pytest.raises(ConfigError) as err:
        run_multi_task.main(argv + ["--config", str(other)])
    assert f"--config {other}" in str(err.value) and str(base / "pals_config.json") in str(err.value)
    # the same config, named either way, is fine
    assert run_multi_task.main(argv + ["--config", str(base / "pals_config.json")]) == 0


# -- items 4 and 6: the README command, its protocol line and its resume -----------------------------

def _weights(out):
    return load_file(str(out / training.CHECKPOINT_DIR / training.CHECKPOINT_MODEL))


@pytest.mark.parametrize("reference", [False, True], ids=["today", "reference_protocol"])
def test_readme_command_says_its_protocol_and_resumes_bit_identically(folder_2019, tmp_path, caplog,  # noqa: F811
                                                                      reference, user_cache):
    extra = SHORT + ["--h_aug", "12"] + (["--reference_protocol"] if reference else [])
    caplog.set_level(logging.INFO)
    assert run_multi_task.main(readme_command(folder_2019, tmp_path / "full") + extra) == 0
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training protocol:")]
    assert len(line) == 1
    if reference:
        assert "the 2019 code's" in line[0] and "leave --reference_protocol out" in line[0]
    else:
        assert "today's" in line[0] and "--reference_protocol trains as the 2019 code did" in line[0]
    part = tmp_path / "part"
    assert run_multi_task.main(readme_command(folder_2019, part) + extra + ["--stop_after_steps", "4"]) == 0
    torch.manual_seed(99)
    assert run_multi_task.main(readme_command(folder_2019, part) + extra + ["--resume"]) == 0
    full, resumed = _weights(tmp_path / "full"), _weights(part)
    for name, tensor in full.items():
        assert torch.equal(resumed[name], tensor), name
    # the linked model folder and the --h_aug config live in the user's cache, one of each per input set
    assert len(os.listdir(user_cache / "bert-pals" / "2019-models")) == 2


def test_a_killed_2019_run_leaves_no_folder_and_resumes(folder_2019, tmp_path, user_cache):  # noqa: F811
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TMPDIR=str(tmp),
               XDG_CACHE_HOME=str(user_cache))
    out = tmp_path / "killed"
    argv = readme_command(folder_2019, out) + ["--num_train_epochs", "1", "--steps_per_epoch", "20",
                                               "--max_seq_length", "32", "--save_steps", "1", "--h_aug", "12",
                                               "--reference_protocol"]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_multi_task.py"), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = out / training.CHECKPOINT_DIR / training.CHECKPOINT_META
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not meta.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and meta.exists()
    assert not [n for n in os.listdir(tmp) if n.startswith("bert-pals")]
    models = user_cache / "bert-pals" / "2019-models"
    assert len(os.listdir(models)) == 2 and not [n for n in os.listdir(models) if ".tmp-" in n]
    # the identical command resumes (the fingerprint is the inputs', not a per-run folder's)
    step = json.loads(meta.read_text())["global_step"]
    done = subprocess.run([sys.executable, os.path.join(ROOT, "run_multi_task.py"), *argv, "--resume"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {out / training.CHECKPOINT_DIR} at step {step}" in done.stderr
    assert json.loads(meta.read_text())["global_step"] == 20
    assert len(os.listdir(models)) == 2 and not [n for n in os.listdir(tmp) if n.startswith("bert-pals")]


# -- item 13: --h_aug with a bad config ------------------------------------------------------------

@pytest.mark.parametrize("text,says", [("{bad", ":1: not valid JSON"), ("[1, 2]", ": a config must be a JSON object"),
                                       ('{"hidden_size": "x"}', ": with --h_aug 8: config key 'hidden_size'")])
def test_h_aug_with_a_bad_config_is_one_line(folder_2019, tmp_path, capsys, text, says):  # noqa: F811
    bad = tmp_path / "adapter.json"
    bad.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        run_cli(run_multi_task.main, ["--bert_model", str(folder_2019["base"]), "--config", str(bad), "--h_aug", "8",
                                      "--data_dir", str(folder_2019["glue"]), "--tasks", "rte", "--dry_run"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}{says}")


# -- item 17: failed runs leave nothing behind; hints name real files --------------------------------

def test_empty_training_set_names_the_file_and_the_rerun_is_not_refused(tmp_path, capsys):
    """A SQuAD train file without questions got as far as the training stream ("no training features",
    no file named) and left run_config.json, so the corrected rerun was refused as "not empty"."""
    model_dir = write_tiny_model(str(tmp_path / "model"), max_position_embeddings=128)
    data = tmp_path / "squad"
    data.mkdir()
    sample = os.path.join(ROOT, "data", "squad_sample")
    shutil.copy(os.path.join(sample, "dev-v2.0.json"), data)
    train = data / "train-v2.0.json"
    train.write_text(json.dumps({"version": "v2.0", "data": []}))
    out = tmp_path / "out"
    argv = ["--bert_model", model_dir, "--task_data", f"squad2={data}", "--tasks", "squad2", "--output_dir", str(out),
            "--num_train_epochs", "1", "--steps_per_epoch", "1", "--task_max_seq_length", "squad2=64",
            "--doc_stride", "32", "--max_query_length", "16", "--cache_dir", "none", "--no_plots", "--config", "none",
            "--max_eval_examples", "4"]
    with pytest.raises(SystemExit) as exit_:
        run_cli(run_multi_task.main, argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {train}: no training examples (an empty " \
                                                                 "file, or only a header?)"
    assert not out.exists()
    shutil.copy(os.path.join(sample, "train-v2.0.json"), train)
    with pytest.raises(SystemExit) as exit_:
        run_cli(run_multi_task.main, argv)
    assert exit_.value.code == 0


def test_a_run_failing_during_training_removes_its_new_output_folder(tmp_path, monkeypatch, capsys):
    """A bad line found only while training (here: a stream that fails on step 2) leaves no run_config.json."""
    model_dir = write_tiny_model(str(tmp_path / "model"))
    data = tmp_path / "glue"
    write_glue_fixture(str(data), n=8)
    out = tmp_path / "out"
    argv = ["--bert_model", model_dir, "--data_dir", str(data), "--tasks", "rte", "--output_dir", str(out),
            "--num_train_epochs", "1", "--steps_per_epoch", "3", "--max_seq_length", "32", "--cache_dir", "none",
            "--no_plots", "--config", "none"]
    real = training.EpochStream.next_step
    calls = []

    def failing(self):
        calls.append(1)
        if len(calls) == 2:
            raise file_utils.DataError("epoch_1.json", 7, "not valid JSON")
        return real(self)

    monkeypatch.setattr(training.EpochStream, "next_step", failing)
    with pytest.raises(SystemExit) as exit_:
        run_cli(run_multi_task.main, argv)
    assert exit_.value.code == 2 and not out.exists()
    # a run that wrote a checkpoint before failing keeps its folder (resumable)
    calls.clear()
    with pytest.raises(SystemExit):
        run_cli(run_multi_task.main, argv + ["--save_steps", "1"])
    assert (out / training.CHECKPOINT_DIR).is_dir()


@pytest.mark.parametrize("name,hint", [
    ("pals_config.json", os.path.join(modeling.CONFIGS_DIR, "minilm_pals_config.json")), ("my_pals.json", None)])
def test_size_mismatch_hint_names_a_file_that_exists(tmp_path, name, hint):
    model_dir = write_tiny_model(str(tmp_path / "model"), hidden_size=384, num_attention_heads=12,
                                 intermediate_size=64)
    config = tmp_path / name
    shutil.copy(os.path.join(modeling.CONFIGS_DIR, "pals_config.json"), config)  # written for hidden size 768
    with pytest.raises(ConfigError) as err:
        modeling.read_pretrained(model_dir, str(config))
    message = str(err.value)
    assert message.startswith(f"{config}: '") and "but the checkpoint has" in message  # a BERT key of bert-base
    named = [w.rstrip(";,()") for w in message.split() if w.rstrip(";,()").endswith(".json")]
    assert all(os.path.isfile(p) for p in named), named
    if hint is not None:
        assert f"use {hint} (or --config pals)" in message
