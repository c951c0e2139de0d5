"""The trust guarantees, through the runners as a user calls them (README "Guarantees").

- Nothing we read runs code: pickles planted where a checkpoint's trainer state, the feature cache
  (old and new location) and the model's weights are read never execute (each payload is first
  shown to execute when unpickled, so the tests can fail).
- No silently wrong model: weights whose keys all miss, a vocab longer than the model's
  vocab_size and out-of-range flags are one-line errors (exit 2) before training, and leave no
  output folder.
- No stale or foreign run state: --overwrite_output_dir removes the previous run's outputs; a
  --resume with changed flags is refused naming them; killed saves' temporaries are removed; a
  corrupt checkpoint, an output_dir that is a file, a full disk, an LM folder given to
  run_classifier --do_eval are one line each; SIGTERM stops with a checkpoint (exit 143) and the
  resumed run ends bit-identical to an uninterrupted one.
- --max_steps, --eval_steps (best/ = the best evaluated step), --discard_checkpoint.
- No product file calls a reader that unpickles (a scan of the code: pickle, torch.load without
  weights_only=True, np.load with allow_pickle=True, torch.distributed's *_object collectives).
"""
import ast
import errno
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import model_io
import modeling
import run_classifier
import run_multi_task
import training
from file_utils import run_cli
from glue_fixtures import write_glue_fixture
from test_run_classifier import write_easy_sst2
from test_training_helpers import single_thread, write_tiny_model

pytestmark = pytest.mark.usefixtures(single_thread.__name__)  # tiny models: one thread


class Payload:
    """Unpickling this creates the folder `marker`: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def payload_bytes(marker):
    blob = pickle.dumps(Payload(marker))
    pickle.loads(blob)  # the payload really executes when unpickled ...
    assert os.path.isdir(marker)
    os.rmdir(marker)  # ... so its absence below means nothing unpickled it
    return blob


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, vocab_file):
    return write_tiny_model(str(tmp_path_factory.mktemp("trust") / "tiny"), vocab_file=vocab_file,
                            max_position_embeddings=128)


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    data = tmp_path_factory.mktemp("glue")
    write_easy_sst2(str(data), n_train=24, n_dev=8, n_test=4)
    return str(data)


def classifier_argv(model, data, out, *extra):
    return ["--task_name", "sst-2", "--data_dir", data, "--bert_model", model, "--output_dir", str(out),
            "--max_seq_length", "32", "--train_batch_size", "4", "--learning_rate", "1e-3", "--cache_dir", "none",
            "--logging_steps", "1000", *map(str, extra)]


def fails(capsys, main, argv):
    """Run a runner as the CLI does; it must exit 2 with exactly one `error:` line and no traceback.
    Returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------- no code runs

# Calls that unpickle what they read (torch.distributed's *_object collectives unpickle what peers send).
UNPICKLING = {"load", "loads", "Unpickler", "all_gather_object", "gather_object", "broadcast_object_list",
              "scatter_object_list", "recv_object_list"}


def _unpickling_calls(tree):
    """(line, call) of each call in `tree` that can unpickle: pickle.*, torch.load without
    weights_only=True, np.load with allow_pickle=True, an *_object collective."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in UNPICKLING):
            continue
        owner = ast.unparse(node.func.value)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if owner in ("pickle", "cPickle", "dill") or node.func.attr.endswith(("_object", "_object_list")):
            found.append((node.lineno, ast.unparse(node.func)))
        elif owner == "torch" and node.func.attr == "load" and keywords.get("weights_only") != "True":
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif owner in ("np", "numpy") and node.func.attr == "load" and keywords.get("allow_pickle", "False") != "False":
            found.append((node.lineno, "np.load with allow_pickle"))
    return found


def test_no_product_code_calls_an_unpickling_reader():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.split()
    product = [f for f in files if not f.startswith("tests/")]
    assert len(product) > 40, "the scan found too few files to mean anything"
    planted = ast.parse("import pickle, torch, numpy as np\npickle.loads(b)\ntorch.load(p)\n"
                        "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=True)\nnp.load(p)\n"
                        "dist.all_gather_object(out, x)\n")
    assert [line for line, _ in _unpickling_calls(planted)] == [2, 3, 5, 7]  # the scan sees each kind
    bad = [f"{name}:{line}: {call}" for name in product
           for line, call in _unpickling_calls(ast.parse(open(os.path.join(root, name), encoding="utf-8").read()))]
    assert not bad, bad


def test_trainer_state_pickle_beside_a_checkpoint_is_never_loaded(tiny, glue, tmp_path):
    out = tmp_path / "out"
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2)) == 0
    marker = tmp_path / "ran"
    (out / "checkpoint" / "trainer_state.pt").write_bytes(payload_bytes(marker))  # the old format's file name
    (out / "checkpoint" / "optimizer.pt").write_bytes(payload_bytes(marker))
    # the finished run resumes (its checkpoint is read) and has nothing left to do
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2, "--resume")) == 0
    assert not marker.exists()
    assert json.load(open(out / "checkpoint" / "checkpoint.json"))["global_step"] == 2


def test_checkpoint_of_the_old_pickle_format_is_a_one_line_error(tiny, glue, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2)) == 0
    marker = tmp_path / "ran"
    ckpt = out / "checkpoint"
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        os.remove(ckpt / name)
    (ckpt / "trainer_state.pt").write_bytes(payload_bytes(marker))
    meta = json.load(open(ckpt / "checkpoint.json"))
    json.dump(dict(meta, format=1), open(ckpt / "checkpoint.json", "w"))
    line = fails(capsys, run_classifier.main, classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2,
                                                              "--resume"))
    assert "not a usable checkpoint" in line and str(ckpt) in line
    assert not marker.exists()


def test_pickled_weights_file_is_refused_without_running(tmp_path, glue, capsys):
    model = tmp_path / "model"
    write_tiny_model(str(model))
    os.remove(model / "model.safetensors")
    marker = tmp_path / "ran"
    (model / "pytorch_model.bin").write_bytes(payload_bytes(marker))
    line = fails(capsys, run_classifier.main, classifier_argv(str(model), glue, tmp_path / "out", "--do_train"))
    assert "pytorch_model.bin" in line and "weights_only" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_feature_caches_with_pickles_are_rebuilt_not_run(tiny, glue, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BERT_PALS_CACHE", str(cache))
    argv = ["--task_name", "sst-2", "--data_dir", glue, "--bert_model", tiny, "--max_seq_length", "32",
            "--do_train", "--max_steps", "1", "--do_eval", "--logging_steps", "1000"]
    assert run_classifier.main([*argv, "--output_dir", str(tmp_path / "a")]) == 0
    paths = [cache / name for name in os.listdir(cache)]
    assert len(paths) == 2  # train and dev features
    marker = tmp_path / "ran"
    payload_bytes(marker)
    for path in paths:  # each cache file now holds an object array (np.load unpickles it with allow_pickle=True)
        with open(path, "wb") as f:
            np.savez(f, meta=np.array([Payload(marker)], dtype=object))
    # and the 2019 location (<output_dir>/../.feature_cache) holds a pickle under every plausible name
    old = tmp_path / ".feature_cache"
    old.mkdir()
    for name in ("dev_sst-2_32", "cached_dev_sst-2_32.pkl", "features.pkl"):
        (old / name).write_bytes(payload_bytes(marker))
    with caplog.at_level("WARNING", logger="training"):
        assert run_classifier.main([*argv, "--output_dir", str(tmp_path / "b")]) == 0
    assert not marker.exists()
    assert any("ignoring unreadable feature cache" in r.getMessage() for r in caplog.records)
    assert json.load(open(tmp_path / "a" / "results.json"))["results"] == \
        json.load(open(tmp_path / "b" / "results.json"))["results"]


# ---------------------------------------------------------------------------------------------- no wrong model

def test_weights_whose_keys_all_miss_need_allow_random_init(tmp_path, glue, capsys):
    model = tmp_path / "model"
    write_tiny_model(str(model))
    state = load_file(str(model / "model.safetensors"))
    save_file({"encoder_v2." + k: v.contiguous() for k, v in state.items()}, str(model / "model.safetensors"))
    out = tmp_path / "out"
    line = fails(capsys, run_classifier.main, classifier_argv(str(model), glue, out, "--do_train"))
    assert "encoder weights are not in the checkpoint" in line and "--allow_random_init" in line
    assert not out.exists()
    assert run_classifier.main(classifier_argv(str(model), glue, out, "--do_train", "--max_steps", 1,
                                               "--allow_random_init")) == 0


def test_vocab_longer_than_the_embedding_table(tmp_path, glue, vocab_file, capsys):
    model = write_tiny_model(str(tmp_path / "model"), vocab_file=vocab_file, vocab_size=1000,
                             max_position_embeddings=128)
    line = fails(capsys, run_classifier.main, classifier_argv(model, glue, tmp_path / "out", "--do_train"))
    assert "30522 tokens but the model's vocab_size is 1000" in line and "vocab.txt" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, needle", [
    (("--num_train_epochs", 0), "--num_train_epochs"),
    (("--num_train_epochs", -1), "--num_train_epochs"),
    (("--warmup_proportion", 1.0), "--warmup_proportion"),
    (("--warmup_proportion", -0.1), "--warmup_proportion"),
    (("--seed", -1), "--seed"),
    (("--seed", 2 ** 32), "--seed"),
    (("--learning_rate=-1e-5",), "--learning_rate"),
    (("--learning_rate", "nan"), "--learning_rate"),
    (("--max_steps", -1), "--max_steps"),
    (("--save_steps", -1), "--save_steps"),
    (("--train_batch_size", 0), "batch"),
    (("--gradient_accumulation_steps", 0), "--gradient_accumulation_steps"),
])
def test_out_of_range_engine_flags(tiny, glue, tmp_path, capsys, flags, needle):
    out = tmp_path / "out"
    assert needle in fails(capsys, run_classifier.main, classifier_argv(tiny, glue, out, "--do_train", *flags))
    assert not out.exists()


@pytest.mark.parametrize("key, value", [("initializer_range", float("nan")), ("initializer_range", -0.02),
                                        ("layer_norm_eps", 0.0)])
def test_out_of_range_model_config(tiny, glue, tmp_path, capsys, key, value):
    config = dict(json.load(open(os.path.join(tiny, "config.json"))), **{key: value})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))  # NaN is written as the JSON extension Python reads back
    line = fails(capsys, run_classifier.main, classifier_argv(tiny, glue, tmp_path / "out", "--do_train",
                                                              "--config", path))
    assert key in line
    assert not (tmp_path / "out").exists()


def test_config_that_is_not_utf8_names_its_line(tiny, glue, tmp_path, capsys):
    text = open(os.path.join(tiny, "config.json"), encoding="utf-8").read().replace("\n", "\n  ", 3)
    path = tmp_path / "config.json"
    path.write_bytes(text.encode("utf-8").replace(b"{", b'{"note": "caf\xe9",', 1))
    line = fails(capsys, run_classifier.main, classifier_argv(tiny, glue, tmp_path / "out", "--do_train",
                                                              "--config", path))
    assert f"{path}:1: not valid UTF-8" in line


@pytest.fixture(scope="module")
def multi_data(tmp_path_factory, tiny):
    data = tmp_path_factory.mktemp("mt_glue")
    write_glue_fixture(str(data), tasks=["rte", "mrpc"], n=8)
    pals = dict(json.load(open(os.path.join(tiny, "config.json"))), hidden_size_aug=12, mult=True, pals=True)
    with open(data / "pals.json", "w") as f:
        json.dump(pals, f)
    return str(data)


def multi_argv(model, data, out, *extra):
    return ["--tasks", "rte,mrpc", "--data_dir", data, "--bert_model", model, "--config",
            os.path.join(data, "pals.json"), "--output_dir", str(out), "--cache_dir", "none", *map(str, extra)]


@pytest.mark.parametrize("flags, needle", [
    (("--batch_size_rte", 0), "--batch_size_rte"),
    (("--steps_per_epoch", 0), "--steps_per_epoch"),
    (("--vaccine_beta", 0), "--vaccine_beta"),
    (("--vaccine_beta", 1.5), "--vaccine_beta"),
    (("--max_eval_examples", 0), "--max_eval_examples"),
    (("--num_train_epochs", 0), "--num_train_epochs"),
])
def test_out_of_range_multi_task_flags(tiny, multi_data, tmp_path, capsys, flags, needle):
    out = tmp_path / "out"
    assert needle in fails(capsys, run_multi_task.main, multi_argv(tiny, multi_data, out, *flags))
    assert not out.exists()


def test_bad_dev_row_fails_before_training_and_leaves_no_folder(tiny, tmp_path, capsys):
    data = tmp_path / "glue"
    folder = write_easy_sst2(str(data), n_train=8, n_dev=4)
    with open(os.path.join(folder, "dev.tsv"), "a", encoding="utf-8") as f:
        f.write("the film was fine\tmaybe\n")
    out = tmp_path / "out"
    line = fails(capsys, run_classifier.main, classifier_argv(tiny, str(data), out, "--do_train", "--do_eval"))
    assert f"{os.path.join(folder, 'dev.tsv')}:6:" in line
    assert not out.exists()


def test_multi_task_bad_row_leaves_no_folder(tiny, multi_data, tmp_path, capsys):
    data = tmp_path / "glue"
    shutil.copytree(multi_data, data)
    with open(data / "MRPC" / "dev.tsv", "a", encoding="utf-8") as f:
        f.write("not\tenough\tfields\n")
    out = tmp_path / "out"
    line = fails(capsys, run_multi_task.main, multi_argv(tiny, str(data), out, "--config", data / "pals.json"))
    assert str(data / "MRPC" / "dev.tsv") in line
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- no stale state

def test_overwrite_removes_the_previous_runs_outputs(tiny, glue, tmp_path):
    out = tmp_path / "out"
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--do_eval", "--max_steps", 2)) == 0
    assert (out / "checkpoint").is_dir() and (out / "eval_results.txt").exists()
    (out / "notes.txt").write_text("the user's own file")
    (out / ".model.safetensors.1234.tmp").write_bytes(b"half a write")
    # the new run neither evaluates nor keeps a checkpoint: nothing of the old run may remain
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 1,
                                               "--overwrite_output_dir", "--discard_checkpoint")) == 0
    left = sorted(os.listdir(out))
    assert "eval_results.txt" not in left and "results.json" not in left and "checkpoint" not in left
    assert ".model.safetensors.1234.tmp" not in left
    assert "notes.txt" in left and "model.safetensors" in left
    assert json.load(open(out / "run_config.json"))["flags"]["max_steps"] == 1


def test_overwrite_that_would_delete_the_model_is_refused(tiny, glue, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 1)) == 0
    line = fails(capsys, run_classifier.main, classifier_argv(str(out), glue, out, "--do_train",
                                                              "--overwrite_output_dir"))
    assert "would delete the model being loaded" in line
    assert (out / "model.safetensors").exists()


def test_resume_with_changed_flags_is_refused_naming_them(tiny, glue, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2)) == 0
    before = (out / "model.safetensors").read_bytes()
    argv = classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2, "--resume")
    argv[argv.index("--learning_rate") + 1] = "5e-4"
    line = fails(capsys, run_classifier.main, argv + ["--weight_decay", "0.1"])
    assert "learning_rate 0.001 -> 0.0005" in line and "weight_decay 0.01 -> 0.1" in line
    assert (out / "model.safetensors").read_bytes() == before


def test_resume_removes_what_killed_saves_left(tiny, glue, tmp_path):
    out = tmp_path / "out"
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2)) == 0
    stale = [out / ".checkpoint.tmp-4242", out / ".model.safetensors.77.tmp",
             out / "checkpoint" / ".trainer_state.json.5.tmp"]
    stale[0].mkdir()
    (stale[0] / "model.safetensors").write_bytes(b"\0" * 1000)
    for path in stale[1:]:
        path.write_bytes(b"partial")
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2, "--resume")) == 0
    assert not any(path.exists() for path in stale)
    assert json.load(open(out / "checkpoint" / "checkpoint.json"))["global_step"] == 2


def test_corrupt_checkpoint_is_one_line(tiny, glue, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2)) == 0
    weights = out / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = fails(capsys, run_classifier.main, classifier_argv(tiny, glue, out, "--do_train", "--max_steps", 2,
                                                              "--resume"))
    assert "not a usable checkpoint" in line


def test_output_dir_that_is_a_file(tiny, glue, tmp_path, capsys):
    path = tmp_path / "out"
    path.write_text("a file")
    assert "is a file, not a folder" in fails(capsys, run_classifier.main,
                                              classifier_argv(tiny, glue, path, "--do_train"))
    assert path.read_text() == "a file"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_output_dir_that_is_not_writable(tiny, glue, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert "is not writable" in fails(capsys, run_classifier.main,
                                          classifier_argv(tiny, glue, parent / "out", "--do_train"))
    finally:
        parent.chmod(0o700)


def test_full_disk_is_one_line(tiny, glue, tmp_path, capsys, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "model.safetensors"))
    monkeypatch.setattr(model_io, "write_pretrained", no_space)
    line = fails(capsys, run_classifier.main, classifier_argv(tiny, glue, tmp_path / "out", "--do_train",
                                                              "--max_steps", 1))
    assert line == f"error: {tmp_path / 'out' / 'model.safetensors'}: {os.strerror(errno.ENOSPC)}"


def test_eval_on_a_language_model_folder_says_what_is_missing(tiny, glue, tmp_path, capsys):
    lm = tmp_path / "lm"
    config = modeling.BertConfig.from_json_file(os.path.join(tiny, "config.json"))
    modeling.BertForMultiTask(config, [2], task_types=["pretraining"], task_names=["lm"]).save_pretrained(
        str(lm), vocab_file=os.path.join(tiny, "vocab.txt"))
    line = fails(capsys, run_classifier.main, classifier_argv(str(lm), glue, tmp_path / "out", "--do_eval"))
    assert "no classifier head" in line and "--do_train" in line


SIGTERM_WORKER = r'''
import sys, time
import file_utils, run_classifier, training
import torch
torch.set_num_threads(1)
next_step = training.EpochStream.next_step
def slow(self):  # a real model's step takes this long: the signal lands mid-run
    time.sleep(0.05)
    return next_step(self)
training.EpochStream.next_step = slow
print("started", flush=True)
file_utils.run_cli(run_classifier.main, sys.argv[1:])
'''


def test_sigterm_checkpoints_exits_143_and_the_resumed_run_is_exact(tiny, glue, tmp_path):
    steps = 24  # 4 epochs of 6 steps; dropout is 0 in the tiny model but the data order is seeded
    flags = ("--do_train", "--num_train_epochs", 4, "--logging_steps", 1)
    reference = tmp_path / "reference"
    assert run_classifier.main(classifier_argv(tiny, glue, reference, *flags)) == 0
    out = tmp_path / "out"
    script = tmp_path / "worker.py"
    script.write_text(SIGTERM_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([sys.executable, str(script), *classifier_argv(tiny, glue, out, *flags)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err = []
    for line in proc.stderr:  # the engine logs "step k/N" on stderr when it is not a terminal
        err.append(line)
        if f"step 3/{steps}" in line:
            proc.send_signal(signal.SIGTERM)
            break
    err += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, "".join(err)
    text = "".join(err)
    assert "SIGTERM: stopping after this step with a checkpoint" in text, text
    assert "interrupted: stopped at step" in text
    meta = json.load(open(out / "checkpoint" / "checkpoint.json"))
    assert 3 <= meta["global_step"] < steps
    assert not (out / "model.safetensors").exists()  # a stopped run does not look finished
    assert run_classifier.main(classifier_argv(tiny, glue, out, *flags, "--resume")) == 0
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- steps, best, size

def test_max_steps_eval_steps_best_model_and_discard_checkpoint(tiny, glue, tmp_path):
    out = tmp_path / "out"
    assert run_classifier.main(classifier_argv(tiny, glue, out, "--do_train", "--do_eval", "--max_steps", 8,
                                               "--eval_steps", 2, "--discard_checkpoint")) == 0
    results = json.load(open(out / "results.json"))
    history = json.load(open(out / "eval_history.json"))
    assert results["global_step"] == 8 and [h["step"] for h in history] == [2, 4, 6, 8]
    scores = [h["score"] for h in history]
    best = history[scores.index(max(scores))]  # the first of equal scores: a later tie is not "better"
    assert results["train"]["best_step"] == best["step"] and results["train"]["best_score"] == best["score"]
    # the final evaluation is the best model's, and best/ holds that model
    assert results["results"] == best["results"]
    again = tmp_path / "again"
    assert run_classifier.main(classifier_argv(str(out / "best"), glue, again, "--do_eval")) == 0
    assert json.load(open(again / "results.json"))["results"] == results["results"]
    assert not (out / "checkpoint").exists()
    train = results["train"]
    assert train["train_runtime"] > 0 and train["train_steps_per_second"] > 0
    assert math.isclose(train["train_samples_per_second"], train["train_steps_per_second"] * 4, rel_tol=1e-6)
    assert training.EVAL_HISTORY in training.OUTPUT_NAMES  # --overwrite_output_dir removes it
    # TensorBoard: the training loss and the dev losses under their own names
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "eval/sst-2/acc", "eval/sst-2/loss", "eval/main"} <= tags
    assert "eval/loss" not in tags
    assert [e.step for e in events.Scalars("eval/sst-2/acc")] == [2, 4, 6, 8]
    assert [e.value for e in events.Scalars("eval/sst-2/loss")] == pytest.approx(
        [h["results"]["sst-2"]["loss"] for h in history])
