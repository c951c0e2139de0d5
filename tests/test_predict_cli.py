"""run_multi_task.py --predict TASK=FILE on the bundled sample data (data/), every task family.

A tiny PALs model with six tasks (rte, sts-b, sst-2, conll, squad2, swag; heads scaled up so that
predictions vary) predicts each family's official sample files and stdin lines into
predictions_TASK.tsv. The GLUE rows are checked against a direct forward pass of the model
(tokenizer + torch.softmax), the other families' rows against their inputs (one row per word /
question / example, labels from the right sets, probabilities in range). Bad specs and bad stdin
lines are one-line errors before anything is written.
"""
import csv
import io
import os
import sys

import numpy as np
import pytest
import torch

import modeling
import multitask as mt
import run_multi_task
import tokenization
import training
from file_utils import run_cli
from tasks import conll, glue, squad, swag
from test_training_helpers import single_thread

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
NAMES = ["rte", "sts-b", "sst-2", "conll", "squad2", "swag"]


@pytest.fixture(scope="module")
def model_dir(tiny_mt, tmp_path_factory):
    tags = conll.labels_from_sentences(conll.read_conll(os.path.join(DATA, "conll_sample", "train.txt")))
    torch.manual_seed(3)
    model = modeling.BertForMultiTask.from_pretrained(
        tiny_mt["model"], config=tiny_mt["pals_nodrop"], task_num_labels=[2, 1, 2, len(tags), 2, 1],
        task_types=["classification", "regression", "classification", "token", "span", "choice"], task_names=NAMES)
    tokenizer = tokenization.BertTokenizer.from_pretrained(tiny_mt["model"], do_lower_case=True)
    with torch.no_grad():
        for head in model.heads:
            for p in head.parameters():
                p.mul_(40.0)
        # a random encoder's pooled outputs differ little: centre rte's margin so both labels occur
        examples = glue.read_examples("rte", None, "dev", path=os.path.join(DATA, "glue_sample", "RTE", "dev.tsv"))
        logits = training.predict(model, glue.convert_examples_to_features(examples, "rte", tokenizer, 64), 0,
                                  16)["logits"]
        model.heads[0].classifier.bias[1] -= float(np.median(logits[:, 1] - logits[:, 0]))
    folder = str(tmp_path_factory.mktemp("predict") / "model")
    mt.save_with_task_labels(model, folder, tokenizer, [], {"rte": ["entailment", "not_entailment"],
                                                           "sst-2": ["0", "1"], "conll": tags})
    return folder


def _predict(model_dir, out, *specs, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    argv = ["--no_train", "--bert_model", model_dir, "--output_dir", str(out), "--max_seq_length", "64",
            "--max_query_length", "16", "--doc_stride", "16", "--eval_batch_size", "7"]
    for spec in specs:
        argv += ["--predict", spec]
    return run_multi_task.main(argv)


def _rows(path):
    """Rows of a predictions file; blank lines kept as None."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == "text\tlabel\tscore"
    return [None if not line else line.split("\t") for line in lines[1:]]


def _direct(model_dir, task_id, pairs):
    """Softmax (or regression value) of a plain forward pass, one example at a time."""
    model = modeling.BertForMultiTask.from_pretrained(model_dir).eval()
    tok = tokenization.BertTokenizer.from_pretrained(model_dir, do_lower_case=True)
    out = []
    for a, b in pairs:
        tokens = ["[CLS]"] + tok.tokenize(a) + ["[SEP]"]
        types = [0] * len(tokens)
        if b is not None:
            tokens += tok.tokenize(b) + ["[SEP]"]
            types += [1] * (len(tokens) - len(types))
        ids = torch.tensor([tok.convert_tokens_to_ids(tokens)])
        with torch.no_grad():
            logits = model(ids, torch.tensor([types]), torch.ones_like(ids), task_id=task_id)["logits"][0]
        out.append(torch.softmax(logits.double(), -1) if logits.dim() else logits.double())
    return out


def test_glue_official_files_and_stdin(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    rte_dev, sts_test = os.path.join(DATA, "glue_sample", "RTE", "dev.tsv"), os.path.join(DATA, "glue_sample",
                                                                                          "STS-B", "test.tsv")
    assert _predict(model_dir, out, f"rte={rte_dev}", f"sts-b={sts_test}", "sst-2=-",
                    stdin="A great movie\n\nterrible, boring\tfilm\n", monkeypatch=monkeypatch) == 0
    examples = glue.read_examples("rte", None, "dev", path=rte_dev)
    rows = _rows(out / "predictions_rte.tsv")
    assert len(rows) == len(examples)
    direct = _direct(model_dir, 0, [(e.text_a, e.text_b) for e in examples[:6]])
    for example, row, probs in zip(examples, rows, direct):
        assert row[0] == " ".join(f"{example.text_a} ||| {example.text_b}".split())
        assert row[1] == ["entailment", "not_entailment"][int(probs.argmax())]
        assert float(row[2]) == pytest.approx(float(probs.max()), abs=6e-5)
    assert {r[1] for r in rows} == {"entailment", "not_entailment"}  # the scaled heads do vary
    examples = glue.read_examples("sts-b", None, "test", path=sts_test)
    rows = _rows(out / "predictions_sts-b.tsv")
    direct = _direct(model_dir, 1, [(e.text_a, e.text_b) for e in examples[:4]])
    assert len(rows) == len(examples)
    for row, value in zip(rows, direct):
        assert float(row[2]) == pytest.approx(float(value) * 5, abs=1e-4)  # trained on score/5
        assert float(row[1]) == pytest.approx(float(row[2]), abs=6e-4)  # the label is the value, 3 decimals
    rows = _rows(out / "predictions_sst-2.tsv")
    direct = _direct(model_dir, 2, [("A great movie", None), ("terrible, boring\tfilm", None)])
    assert [r[0] for r in rows] == ["A great movie", "terrible, boring film"]
    assert [r[1] for r in rows] == [str(int(p.argmax())) for p in direct]


def test_other_families_sample_files(model_dir, tmp_path):
    out = tmp_path / "out"
    files = {"conll": os.path.join(DATA, "conll_sample", "test.txt"),
             "squad2": os.path.join(DATA, "squad_sample", "dev-v2.0.json"),
             "swag": os.path.join(DATA, "swag_sample", "val.csv")}
    assert _predict(model_dir, out, *(f"{t}={p}" for t, p in files.items())) == 0
    sentences = conll.read_conll(files["conll"])
    tags = set(conll.labels_from_sentences(conll.read_conll(os.path.join(DATA, "conll_sample", "train.txt"))))
    rows = _rows(out / "predictions_conll.tsv")
    assert rows.count(None) == len(sentences)
    words = [r for r in rows if r is not None]
    assert [r[0] for r in words] == [w for s in sentences for w in s.words]
    assert {r[1] for r in words} <= tags and all(1 / len(tags) <= float(r[2]) <= 1 for r in words)
    examples, _ = squad.read_squad_examples(files["squad2"], False, True)
    rows = _rows(out / "predictions_squad2.tsv")
    assert [r[0] for r in rows] == [" ".join(e.question_text.split()) for e in examples]
    for example, row in zip(examples, rows):
        assert row[1] == "(no answer)" or row[1] in " ".join(example.doc_tokens)
        assert 0 < float(row[2]) <= 1
    examples = swag.read_swag_examples(files["swag"])
    rows = _rows(out / "predictions_swag.tsv")
    assert len(rows) == len(examples)
    for example, row in zip(examples, rows):
        index, ending = row[1].split(": ", 1)
        assert ending == f"{example.start_ending} {example.endings[int(index)]}" and float(row[2]) >= 0.25


def test_stdin_for_squad_swag_conll(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "squad"
    assert _predict(model_dir, out, "squad2=-", stdin="Who met Rossi?\tJack met Rossi in Rome.\n",
                    monkeypatch=monkeypatch) == 0
    (row,) = _rows(out / "predictions_squad2.tsv")
    assert row[0] == "Who met Rossi?" and (row[1] == "(no answer)" or row[1] in "Jack met Rossi in Rome.")
    out = tmp_path / "conll"
    assert _predict(model_dir, out, "conll=-", stdin="Jack met Rossi\nRome\n", monkeypatch=monkeypatch) == 0
    rows = _rows(out / "predictions_conll.tsv")
    assert [r[0] if r else None for r in rows] == ["Jack", "met", "Rossi", None, "Rome", None]
    out = tmp_path / "swag"
    assert _predict(model_dir, out, "swag=-", stdin="He picks up the ball.\tHe\tkicks it.\tsings.\tsleeps.\teats.\n",
                    monkeypatch=monkeypatch) == 0
    (row,) = _rows(out / "predictions_swag.tsv")
    assert row[1].split(": ")[1] in {"He kicks it.", "He sings.", "He sleeps.", "He eats."}


@pytest.mark.parametrize("specs, stdin, message", [
    (["cola=-"], None, "no task 'cola'"),
    (["rte"], None, "not TASK=FILE"),
    (["rte=/nonexistent/file.tsv"], None, "does not exist"),
    (["rte=-", "sst-2=-"], None, "only one input can be stdin"),
    (["rte=-"], "a premise\ta hypothesis\nonly one text\n", "<stdin>:2: expected two tab-separated texts"),
    (["squad2=-"], "no context here\n", "<stdin>:1: expected a question and its context"),
    # stdin decoded with surrogateescape (a C locale): bad bytes are named, not a UnicodeEncodeError later
    (["sst-2=-"], "a good film\nbad \udcff byte\n", "<stdin>:2: not valid UTF-8"),
    (["sst-2=-"], "index\tsentence\n0\ta film\n", "<stdin>:1: 2 tab-separated fields"),
    (["sst-2=lines:"], None, "no file after 'lines:'"),
])
def test_bad_predict_inputs_one_line_nothing_written(model_dir, tmp_path, capsys, monkeypatch, specs, stdin, message):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
    argv = ["--no_train", "--bert_model", model_dir, "--output_dir", str(tmp_path / "out"), "--max_seq_length", "64"]
    for spec in specs:
        argv += ["--predict", spec]
    with pytest.raises(SystemExit) as exc:
        run_cli(run_multi_task.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "out")


def test_dev_file_texts_and_the_lines_prefix(model_dir, tmp_path):
    """SST-2's dev.tsv (sentence, label: as many columns as test.tsv) is read in its dev layout, so
    its sentences are predicted, not its labels; `lines:FILE` reads every line as one text."""
    dev = os.path.join(DATA, "glue_sample", "SST-2", "dev.tsv")
    with open(dev, encoding="utf-8") as f:
        sentences = [row[0] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
    assert _predict(model_dir, tmp_path / "dev", f"sst-2={dev}") == 0
    assert [row[0] for row in _rows(tmp_path / "dev" / "predictions_sst-2.tsv")] == [" ".join(s.split())
                                                                                     for s in sentences]
    assert _predict(model_dir, tmp_path / "lines", f"sst-2=lines:{dev}") == 0
    rows = _rows(tmp_path / "lines" / "predictions_sst-2.tsv")
    assert [row[0] for row in rows] == ["sentence label"] + [" ".join(s.split()) + f" {s_label}" for s, s_label in
                                                             zip(sentences, _labels(dev))]


def _labels(path):
    with open(path, encoding="utf-8") as f:
        return [row[1] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]


def test_readable_writer_keeps_rows_on_one_line(tmp_path):
    from tasks.base import write_readable_predictions
    path = tmp_path / "p.tsv"
    assert write_readable_predictions(str(path), [("a\tb\nc", "x", 0.123456), None, ("d", "y", 1.0)]) == 2
    with open(path, newline="", encoding="utf-8") as f:
        assert list(csv.reader(f, delimiter="\t")) == [["text", "label", "score"], ["a b c", "x", "0.1235"], [],
                                                       ["d", "y", "1.0000"]]
