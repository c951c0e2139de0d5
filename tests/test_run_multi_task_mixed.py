"""run_multi_task.py across task families: a GLUE task, SQuAD v2.0, CoNLL NER and SWAG in one run
on a tiny random BERT (official-format fixtures). Covers the per-epoch table and selection on the
mean of the tasks' main scores, per-task lengths (GLUE batches are not padded to SQuAD's length),
every family's prediction files, the saved tag list, --per_task_best, a bit-identical resume,
2-process DDP == 1 process, and the dry run's sizes."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import modeling
import run_multi_task
import training
from fixtures_qa import write_conll_dir, write_squad_dir, write_swag_dir
from glue_fixtures import write_glue_fixture
from test_training_helpers import single_thread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures(single_thread.__name__)
TASKS = "rte,squad2,conll,swag"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, vocab_file):
    base = tmp_path_factory.mktemp("mixed")
    keys = dict(vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                max_position_embeddings=64, type_vocab_size=2)
    torch.manual_seed(0)
    model_dir = str(base / "tiny")
    modeling.BertModel(modeling.BertConfig(**keys)).save_pretrained(model_dir, vocab_file=vocab_file)
    pals = str(base / "pals.json")
    with open(pals, "w") as f:
        json.dump(dict(keys, hidden_size_aug=12, mult=True, pals=True, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0), f)
    write_glue_fixture(str(base / "glue"), tasks=["rte"], n=12)
    task_data = (f"squad2={write_squad_dir(str(base / 'squad2'))},conll={write_conll_dir(str(base / 'conll'))},"
                 f"swag={write_swag_dir(str(base / 'swag'))}")
    return {"base": base, "model": model_dir, "pals": pals, "glue": str(base / "glue"), "task_data": task_data}


def _argv(setup, out, *extra):
    return ["--tasks", TASKS, "--data_dir", setup["glue"], "--task_data", setup["task_data"],
            "--bert_model", setup["model"], "--config", setup["pals"], "--output_dir", str(out),
            "--max_seq_length", "32", "--task_max_seq_length", "squad2=64", "--max_query_length", "16",
            "--doc_stride", "16", "--train_batch_size", "4", "--eval_batch_size", "8", "--learning_rate", "1e-3",
            "--logging_steps", "1000", "--cache_dir", str(setup["base"] / "cache"), *map(str, extra)]


def test_mixed_run_end_to_end(setup, capsys, monkeypatch):
    shapes = []
    collate_at = training.data.collate_at

    def recording(features, indices, pad_to=None, padding=None):  # every training batch (FeatureList.batch)
        batch = collate_at(features, indices, pad_to, padding)
        shapes.append((None, tuple(batch["input_ids"].shape), set(batch)))
        return batch
    monkeypatch.setattr(training.data, "collate_at", recording)
    out = setup["base"] / "e2e"
    assert run_multi_task.main(_argv(setup, out, "--num_train_epochs", 2, "--steps_per_epoch", 8, "--per_task_best",
                                     "--do_predict", "--sample", "rr")) == 0
    text = capsys.readouterr().out
    assert text.count("Dev results after epoch") == 2
    for task in ("rte", "squad2", "conll", "swag"):
        assert any(line.startswith(task + " ") for line in text.splitlines()), task
    assert "average" in text and "best average of the tasks' main scores" in text
    res = json.loads((out / "results.json").read_text())
    assert res["tasks"] == TASKS.split(",") and "best_glue_average" not in res
    for entry in res["history"]:
        r = entry["results"]
        assert set(r) == {"rte", "squad2", "conll", "swag"}
        assert {"exact", "f1", "HasAns_f1", "NoAns_f1"} <= set(r["squad2"]) and set(r["conll"]) >= {"precision", "f1"}
        mains = [r["rte"]["acc"], r["squad2"]["f1"], r["conll"]["f1"], r["swag"]["acc"]]
        assert entry["average"] == pytest.approx(np.mean(mains))  # the selection score
        assert all(0.0 <= v <= 1.0 for v in mains)
    assert res["best_epoch"] == max(res["history"], key=lambda h: h["average"])["epoch"]
    # per-task lengths: SQuAD windows use up to 64 pieces, GLUE / NER / SWAG batches stay within 32
    train_shapes = [s for s in shapes if "start_positions" in s[2] or "labels" in s[2]]
    squad = [s[1] for s in train_shapes if "start_positions" in s[2]]
    others = [s[1] for s in train_shapes if "start_positions" not in s[2]]
    assert squad and max(s[-1] for s in squad) > 32 and max(s[-1] for s in squad) <= 64
    assert others and max(s[-1] for s in others) <= 32
    # every family's official prediction files, from the selected model
    pred = out / "predictions"
    assert (pred / "RTE.tsv").is_file()
    assert set(json.loads((pred / "squad2" / "predictions.json").read_text())) == set(
        json.loads((pred / "squad2" / "null_odds.json").read_text()))
    assert (pred / "conll" / "test_predictions.txt").is_file() and (pred / "swag" / "test_predictions.csv").is_file()
    # the NER tag list travels with the model: a later run reads it back
    labels = json.loads((out / "best" / "task_labels.json").read_text())
    assert labels["conll"][0] == "O" and "B-PER" in labels["conll"] and set(labels) == {"rte", "conll"}
    assert (out / "per_task_best" / "swag" / "task_parameters.safetensors").is_file()
    # evaluating the saved model without training gives the recorded dev numbers of the best epoch
    again = setup["base"] / "e2e-again"
    assert run_multi_task.main(_argv(setup, again, "--bert_model", out / "best", "--config", "none", "--no_train")) == 0
    best = next(h for h in res["history"] if h["epoch"] == res["best_epoch"])["results"]
    redo = json.loads((again / "results.json").read_text())["history"][0]["results"]
    for task in best:
        for key, value in best[task].items():
            assert redo[task][key] == pytest.approx(value, abs=1e-6), (task, key)


def test_mixed_resume_is_bit_identical(setup):
    common = ("--num_train_epochs", 2, "--steps_per_epoch", 5, "--sample", "sqrt")
    full, split = setup["base"] / "full", setup["base"] / "split"
    assert run_multi_task.main(_argv(setup, full, *common)) == 0
    assert run_multi_task.main(_argv(setup, split, *common, "--stop_after_steps", 7)) == 0
    assert run_multi_task.main(_argv(setup, split, *common, "--resume")) == 0
    a, b = json.loads((full / "results.json").read_text()), json.loads((split / "results.json").read_text())
    assert a["history"] == b["history"] and a["realized_frequencies"] == b["realized_frequencies"]
    wa, wb = load_file(str(full / "best" / "model.safetensors")), load_file(str(split / "best" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mixed_ddp_two_processes_match_one_process(setup):
    common = ("--num_train_epochs", 1, "--steps_per_epoch", 6, "--sample", "rr")
    single = setup["base"] / "ddp1"
    assert run_multi_task.main(_argv(setup, single, *common)) == 0
    multi = setup["base"] / "ddp2"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           os.path.join(ROOT, "run_multi_task.py"), *_argv(setup, multi, *common)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = json.loads((single / "results.json").read_text()), json.loads((multi / "results.json").read_text())
    assert a["realized_frequencies"] == b["realized_frequencies"]
    wa, wb = load_file(str(single / "best" / "model.safetensors")), load_file(str(multi / "best" / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
    for task, metrics in a["history"][0]["results"].items():
        for key, value in metrics.items():
            assert b["history"][0]["results"][task][key] == pytest.approx(value, abs=2e-3), (task, key)


def test_mixed_dry_run_sizes_are_training_examples(setup, capsys):
    assert run_multi_task.main(_argv(setup, setup["base"] / "dry", "--dry_run", "--sample", "prop")) == 0
    out = capsys.readouterr().out
    section = out.split("Expected training per task:")[1].split("Parameters:")[0].splitlines()[2:]
    sizes = {line.split()[0]: int(line.split()[1]) for line in section if line.strip()}
    assert sizes == {"rte": 12, "squad2": 14, "conll": 6, "swag": 4}  # examples, questions, sentences, rows
    assert not (setup["base"] / "dry").exists()


def test_squad_keeps_its_384_default_in_mixed_runs():
    """SQuAD's windows are 384 tokens unless its own length is given (BERT's run_squad.py default);
    the other tasks take --max_seq_length (default 128, the paper's)."""
    plan = run_multi_task.Plan.from_args(run_multi_task.parse_args(["--tasks", "rte,squad2,conll"]))
    assert plan.max_lengths == [128, 384, 128]
    args = run_multi_task.parse_args(["--tasks", "squad1,rte", "--max_seq_length", "64",
                                      "--task_max_seq_length", "rte=32"])
    plan = run_multi_task.Plan.from_args(args)
    assert plan.max_lengths == [384, 32] and plan.run_flags(args)["max_lengths"] == [384, 32]
