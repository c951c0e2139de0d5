"""run_classifier.py end to end on GLUE files in the official layout.

MiniLM (real weights) learns an easy SST-2-style fixture (the loss falls, dev accuracy is high),
the saved folder reloads and re-evaluates to the same numbers, and --do_predict writes the
submission file. Tiny random BERTs with the real uncased vocab cover the other tasks' metric
keys, MNLI matched + mismatched + AX, bf16 on CPU, a PALs adapter config, the feature cache and
bad input (one line naming file:line, exit code 2)."""
import json
import os
import random

import numpy as np
import pytest
import torch

import run_classifier
from file_utils import run_cli
from glue_fixtures import write_glue_fixture
from test_training_helpers import single_thread, write_tiny_model

pytestmark = pytest.mark.usefixtures(single_thread.__name__)  # small models: one thread

POS = ["great", "good", "wonderful", "excellent", "lovely", "brilliant"]
NEG = ["bad", "awful", "terrible", "boring", "horrible", "dreadful"]
NOUNS = ["movie", "film", "story", "plot", "acting", "show"]


def write_easy_sst2(root, n_train=32, n_dev=16, n_test=10, seed=0):
    """SST-2 layout (train/dev: `sentence<TAB>label` with header; test: `index<TAB>sentence`)."""
    rng = random.Random(seed)
    folder = os.path.join(root, "SST-2")
    os.makedirs(folder, exist_ok=True)

    def sentence(label):
        return f"the {rng.choice(NOUNS)} was {rng.choice(POS if label else NEG)}"

    for split, n in (("train", n_train), ("dev", n_dev)):
        with open(os.path.join(folder, f"{split}.tsv"), "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            for i in range(n):
                f.write(f"{sentence(i % 2)}\t{i % 2}\n")
    with open(os.path.join(folder, "test.tsv"), "w", encoding="utf-8") as f:
        f.write("index\tsentence\n")
        for i in range(n_test):
            f.write(f"{i}\t{sentence(i % 2)}\n")
    return folder


def read_results(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    keys = [line.split(" = ")[0] for line in lines]
    assert keys == sorted(keys)
    return {line.split(" = ")[0]: float(line.split(" = ")[1]) for line in lines}


@pytest.fixture(scope="module")
def tiny_real_vocab(tmp_path_factory, vocab_file):
    return write_tiny_model(str(tmp_path_factory.mktemp("tinyvocab") / "model"), vocab_file=vocab_file,
                            max_position_embeddings=128)


def test_minilm_sst2_train_eval_predict_and_reload(tmp_path):
    data = tmp_path / "glue"
    write_easy_sst2(str(data))
    out = tmp_path / "out"
    common = ["--task_name", "SST-2", "--data_dir", str(data), "--max_seq_length", "32"]
    run_classifier.main(common + ["--do_train", "--do_eval", "--do_predict", "--output_dir", str(out),
                                  "--train_batch_size", "8", "--learning_rate", "3e-4", "--num_train_epochs", "2",
                                  "--logging_steps", "1", "--seed", "1"])
    results = read_results(out / "eval_results.txt")
    assert set(results) == {"acc", "eval_loss", "global_step", "loss", "train_runtime", "train_samples_per_second",
                            "train_steps_per_second"}
    # 8 steps of 8 examples: samples/s and steps/s describe the same run
    assert results["train_samples_per_second"] == pytest.approx(8 * results["train_steps_per_second"], rel=1e-6)
    assert results["global_step"] == 8 and results["acc"] >= 0.75
    # the training loss falls (TensorBoard scalars, one per step)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 8 and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    # the dev loss is logged apart from the training loss (the 2019 script mixed them up under eval/loss)
    assert {"eval/sst-2/acc", "eval/sst-2/loss"} <= set(events.Tags()["scalars"])
    assert events.Scalars("eval/sst-2/loss")[0].value == pytest.approx(results["eval_loss"], rel=1e-5)
    # results.json: the GLUE results format shared with run_multi_task.py
    assert json.loads((out / "results.json").read_text())["results"]["sst-2"]["acc"] == results["acc"]
    # submission file: header + one line per test row, labels from the task's label set
    lines = (out / "SST-2.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 11
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(10)]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}
    for name in ("config.json", "model.safetensors", "vocab.txt", "run_config.json"):
        assert (out / name).is_file()
    # --do_eval alone on the saved folder reproduces the numbers (the head was saved and reloaded)
    again = tmp_path / "again"
    run_classifier.main(common + ["--do_eval", "--bert_model", str(out), "--output_dir", str(again)])
    reloaded = read_results(again / "eval_results.txt")
    assert reloaded["acc"] == results["acc"]
    assert reloaded["eval_loss"] == pytest.approx(results["eval_loss"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("task,keys", [
    ("cola", {"mcc"}),
    ("mrpc", {"acc", "f1", "acc_and_f1"}),
    ("sts-b", {"pearson", "spearmanr", "corr"}),
])
def test_metric_keys_per_task(tmp_path, tiny_real_vocab, task, keys):
    data = tmp_path / "glue"
    write_glue_fixture(str(data), tasks=[task], n=12)
    out = tmp_path / "out"
    run_classifier.main(["--task_name", task.upper(), "--data_dir", str(data), "--bert_model", tiny_real_vocab,
                         "--do_train", "--do_eval", "--output_dir", str(out), "--max_seq_length", "48",
                         "--train_batch_size", "4", "--num_train_epochs", "1"])
    results = read_results(out / "eval_results.txt")
    assert set(results) == keys | {"eval_loss", "global_step", "loss", "train_runtime", "train_samples_per_second",
                                   "train_steps_per_second"}
    assert results["global_step"] == 3


def test_mnli_matched_mismatched_and_ax_submissions_in_bf16(tmp_path, tiny_real_vocab):
    data = tmp_path / "glue"
    write_glue_fixture(str(data), tasks=["mnli", "ax"], n=9)
    out = tmp_path / "out"
    run_classifier.main(["--task_name", "mnli", "--data_dir", str(data), "--bert_model", tiny_real_vocab,
                         "--do_train", "--do_eval", "--do_predict", "--bf16", "--output_dir", str(out),
                         "--max_seq_length", "64", "--train_batch_size", "3", "--num_train_epochs", "1"])
    results = read_results(out / "eval_results.txt")
    assert {"acc", "eval_loss", "mm_acc", "mm_eval_loss", "global_step", "loss", "train_runtime",
            "train_samples_per_second", "train_steps_per_second"} == set(results)
    assert np.isfinite(results["loss"])
    for name in ("MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"):
        lines = (out / name).read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) == 10, name
        assert {line.split("\t")[1] for line in lines[1:]} <= {"contradiction", "entailment", "neutral"}


def test_pals_adapter_config_trains_and_reloads(tmp_path):
    data = tmp_path / "glue"
    write_easy_sst2(str(data), n_train=8, n_dev=4, n_test=2)
    out = tmp_path / "out"
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs", "minilm_pals_config.json")
    run_classifier.main(["--task_name", "sst-2", "--data_dir", str(data), "--config", config, "--do_train",
                         "--do_eval", "--output_dir", str(out), "--max_seq_length", "16",
                         "--train_batch_size", "8", "--num_train_epochs", "1"])
    import modeling
    model = modeling.BertForMultiTask.from_pretrained(str(out))
    assert model.config.pals and model.config.task_names == ["sst-2"]
    assert any("aug" in n or "pal" in n.lower() for n, _ in model.named_parameters())


def test_feature_cache_is_reused(tmp_path, tiny_real_vocab, caplog, monkeypatch):
    data = tmp_path / "glue"
    write_glue_fixture(str(data), tasks=["rte"], n=6)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))  # the default: the user's cache folder
    args = ["--task_name", "rte", "--data_dir", str(data), "--bert_model", tiny_real_vocab, "--do_train",
            "--output_dir", str(tmp_path / "out"), "--max_seq_length", "48", "--num_train_epochs", "1",
            "--overwrite_output_dir"]
    run_classifier.main(args)
    cache = tmp_path / "user-cache" / "bert-pals" / "features"
    assert len(os.listdir(cache)) == 1 and not (tmp_path / ".feature_cache").exists()
    caplog.clear()
    with caplog.at_level("INFO", logger="training"):
        run_classifier.main(args)
    assert any("loaded 6 cached features" in r.getMessage() for r in caplog.records)


def test_bad_tsv_row_is_one_line_and_exit_code_2(tmp_path, tiny_real_vocab, capsys):
    data = tmp_path / "glue"
    folder = write_easy_sst2(str(data), n_train=4)
    with open(os.path.join(folder, "train.tsv"), "a", encoding="utf-8") as f:
        f.write("a row without its label\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run_classifier.main, ["--task_name", "sst-2", "--data_dir", str(data), "--bert_model",
                                      tiny_real_vocab, "--do_train", "--output_dir", str(out)])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"{os.path.join(folder, 'train.tsv')}:6:" in err[0]
    assert not (out / "config.json").exists() and not (out / "eval_results.txt").exists()


def test_flag_errors(tmp_path, tiny_real_vocab, capsys):
    for argv, message in [
        (["--task_name", "sst-2", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")], "nothing to do"),
        (["--task_name", "ax", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--do_eval"],
         "unknown --task_name"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(run_classifier.main, argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    # evaluating an MNLI (3-way) model on SST-2 (2-way) is refused, not silently wrong
    data = tmp_path / "glue"
    write_glue_fixture(str(data), tasks=["mnli", "sst-2"], n=6)
    mnli = tmp_path / "mnli"
    run_classifier.main(["--task_name", "mnli", "--data_dir", str(data), "--bert_model", tiny_real_vocab,
                         "--do_train", "--output_dir", str(mnli), "--max_seq_length", "64", "--num_train_epochs", "1"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run_classifier.main, ["--task_name", "sst-2", "--data_dir", str(data), "--bert_model", str(mnli),
                                      "--do_eval", "--output_dir", str(tmp_path / "e")])
    assert exit_info.value.code == 2 and "(fine-tuned for mnli) has 3 outputs, SST-2 needs 2" in capsys.readouterr().err
    assert torch.get_num_threads() == 1
