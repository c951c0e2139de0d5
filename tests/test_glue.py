"""Tests for tasks/glue.py: official file layouts, errors naming file and line, features
against the Hugging Face tokenizer, metrics against scikit-learn/SciPy and hand-computed
values, the GLUE average against published leaderboard numbers, and submission files."""
import logging
import math
import os

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

import tasks
from file_utils import ConfigError, DataError
from glue_fixtures import sentence, write_glue_fixture
from tasks import glue


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    write_glue_fixture(root, n=12)
    return str(root)


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    from tokenization import BertTokenizer
    return BertTokenizer(vocab_file, do_lower_case=True)


# ----------------------------------------------------------------------------- registry

def test_registry_names_dirs_labels_and_submission_files():
    assert glue.PAPER_TASKS == ["cola", "mrpc", "mnli", "rte", "sts-b", "sst-2", "qqp", "qnli"]
    dirs = {n: glue.TASKS[n].directory for n in glue.TASKS}
    assert dirs == {"cola": "CoLA", "sst-2": "SST-2", "mrpc": "MRPC", "sts-b": "STS-B", "qqp": "QQP",
                    "mnli": "MNLI", "mnli-mm": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
                    "ax": "diagnostic"}
    subs = {n: glue.TASKS[n].submission_file("test") for n in glue.TASKS}
    assert subs == {"cola": "CoLA.tsv", "sst-2": "SST-2.tsv", "mrpc": "MRPC.tsv", "sts-b": "STS-B.tsv",
                    "qqp": "QQP.tsv", "mnli": "MNLI-m.tsv", "mnli-mm": "MNLI-mm.tsv", "qnli": "QNLI.tsv",
                    "rte": "RTE.tsv", "wnli": "WNLI.tsv", "ax": "AX.tsv"}
    assert glue.TASKS["mnli"].submission_file("test_mismatched") == "MNLI-mm.tsv"
    assert glue.TASKS["sts-b"].labels is None and glue.TASKS["sts-b"].num_labels == 1
    assert glue.TASKS["sts-b"].head_type == "regression"
    assert glue.TASKS["mnli"].labels == ("contradiction", "entailment", "neutral")
    assert glue.TASKS["qnli"].labels == ("entailment", "not_entailment")
    assert all(glue.TASKS[n].head_type == "classification" for n in glue.TASKS if n != "sts-b")
    assert glue.TASKS["ax"].head_task == "mnli" and glue.TASKS["ax"].splits == ("test",)
    assert glue.TASKS["mnli"].files["dev_mismatched"] == ("dev_mismatched.tsv",)
    assert glue.TASKS["ax"].files["test"][0] == "diagnostic.tsv"


@pytest.mark.parametrize("alias,name", [
    ("CoLA", "cola"), ("STS", "sts-b"), ("sts-b", "sts-b"), ("STSB", "sts-b"), ("sst", "sst-2"),
    ("SST-2", "sst-2"), ("sst2", "sst-2"), ("MNLI", "mnli"), ("mnli-m", "mnli"), ("MNLI-MM", "mnli-mm"),
    ("mnli_mm", "mnli-mm"), ("ax", "ax"), ("diagnostic", "ax"), (" qqp ", "qqp")])
def test_task_names_case_insensitive_with_aliases(alias, name):
    assert glue.get_task(alias).name == name


def test_unknown_task_and_task_lists():
    with pytest.raises(ConfigError, match="unknown GLUE task 'squad'"):
        glue.get_task("squad")
    # the run's task-list parser (tasks.parse_task_names) reads GLUE sets and aliases
    assert tasks.parse_task_names("all") == glue.PAPER_TASKS
    assert tasks.parse_task_names("sst,STS,QNLI") == ["sst-2", "sts-b", "qnli"]
    assert tasks.parse_task_names("glue")[-1] == "wnli" and len(tasks.parse_task_names("glue")) == 9
    with pytest.raises(ConfigError):
        tasks.parse_task_names(" , ")


# ----------------------------------------------------------------------------- readers

def test_every_split_of_every_task_reads_from_official_layout(fixture_root):
    for name, task in glue.TASKS.items():
        for split in task.splits:
            examples = glue.read_examples(task, fixture_root, split)
            assert len(examples) == 12, (name, split)
            kind = task.split_kind(split)
            for e in examples:
                assert e.text_a and (e.text_b is None) == (task.layouts[kind].text_b is None)
                if kind == "test":
                    assert e.label is None and e.index is not None
                else:
                    assert e.label is not None


def test_reader_keeps_quotes_apostrophes_unicode_and_columns(fixture_root):
    # The fixture writes sentence(i, salt) into known columns: read them back verbatim.
    cola = glue.read_examples("cola", fixture_root, "train")
    assert [e.text_a for e in cola] == [sentence(i, 0) for i in range(12)]
    assert [e.label for e in cola] == [str(i % 2) for i in range(12)]
    assert cola[0].line == 1 and cola[5].line == 6  # no header in CoLA train
    assert any('"' in e.text_a for e in cola) and any("'" in e.text_a for e in cola)
    assert any(not e.text_a.isascii() for e in cola)
    mrpc = glue.read_examples("mrpc", fixture_root, "dev")   # header starts with a BOM
    assert (mrpc[3].text_a, mrpc[3].text_b, mrpc[3].label) == (sentence(3, 1), sentence(3, 4), "1")
    assert mrpc[0].line == 2
    mnli_mm = glue.read_examples("mnli", fixture_root, "dev_mismatched")
    assert (mnli_mm[4].text_a, mnli_mm[4].text_b, mnli_mm[4].label) == (sentence(4, 2), sentence(4, 7), "entailment")
    assert [e.text_a for e in glue.read_examples("mnli-mm", fixture_root, "dev")] == [e.text_a for e in mnli_mm]
    stsb = glue.read_examples("sts-b", fixture_root, "train")
    assert stsb[7].label == pytest.approx(float(f"{(7 * 1.37) % 5:.3f}"))
    qqp_test = glue.read_examples("qqp", fixture_root, "test")
    assert [e.index for e in qqp_test] == [str(i) for i in range(12)]
    assert qqp_test[2].text_b == sentence(2, 4).rstrip(".") + "?"
    qnli_test = glue.read_examples("qnli", fixture_root, "test")
    assert (qnli_test[1].text_a, qnli_test[1].text_b) == (sentence(1, 2), sentence(1, 6))


def test_real_glue_rows_verbatim(tmp_path):
    # Rows copied in the shape of the official release (hand-written, independent of the fixture writer).
    d = str(tmp_path)
    _write(f"{d}/CoLA/train.tsv",
           "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
           "gj04\t0\t*\tThey drank the pub.\n")
    _write(f"{d}/CoLA/test.tsv", "index\tsentence\n0\tBill whistled past the house.\n")
    _write(f"{d}/STS-B/dev.tsv",
           "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
           "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\t"
           "A man wearing a hard hat is dancing.\t5.000\n")
    _write(f"{d}/SST-2/train.tsv", 'sentence\tlabel\nhide new secretions from the parental units \t0\n'
                                   '"the film\'s " sweet " \t1\n')
    cola = glue.read_examples("cola", d, "train")
    assert cola[0].text_a == "Our friends won't buy this analysis, let alone the next one we propose."
    assert [e.label for e in cola] == ["1", "0"]
    assert glue.read_examples("cola", d, "test")[0].index == "0"
    stsb = glue.read_examples("sts-b", d, "dev")[0]
    assert (stsb.text_b, stsb.label) == ("A man wearing a hard hat is dancing.", 5.0)
    sst = glue.read_examples("sst-2", d, "train")
    assert sst[1].text_a == '"the film\'s " sweet " ' and sst[1].label == "1"
    # data_dir may also be the task folder itself (run_classifier's reference usage)
    assert len(glue.read_examples("sst-2", f"{d}/SST-2", "train")) == 2


def test_ax_accepts_newer_file_name(tmp_path):
    _write(f"{tmp_path}/diagnostic/AX.tsv", "index\tsentence1\tsentence2\n0\tThe cat sat.\tA cat sat.\n")
    assert glue.read_examples("ax", str(tmp_path), "test")[0].text_b == "A cat sat."


@pytest.mark.parametrize("task,split,content,line,message", [
    ("rte", "train", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n", 3,
     "expected 4 tab-separated fields, found 3"),
    ("rte", "dev", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailed\n", 2, "unknown label 'entailed'"),
    ("cola", "train", "s\t1\t\tfine\ns\t2\t\tbad label\n", 2, "unknown label '2'"),
    ("cola", "train", "s\t1\t\tfine\ns\t1\tonly three\n", 2, "expected 4 tab-separated fields, found 3"),
    ("sts-b", "train", "i\tg\tf\ty\to\ts1\ts2\tsentence1\tsentence2\tscore\n"
                       "0\tg\tf\ty\to\tn\tn\ta\tb\tfive\n", 2, "bad score 'five'"),
    ("sts-b", "train", "i\tg\tf\ty\to\ts1\ts2\tsentence1\tsentence2\tscore\n"
                       "0\tg\tf\ty\to\tn\tn\ta\tb\t5.5\n", 2, "outside 0..5"),
    ("mrpc", "train", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA sentence.\t  \n", 2,
     "empty second sentence"),
    ("sst-2", "dev", "sentence\tlabel\n\t1\n", 2, "empty text"),
    ("qnli", "test", "index\tquestion\n0\tq\n", 1, "header has 2 columns"),
    ("mnli", "train", "index\tpromptID\tpairID\tgenre\tb1\tb2\tp1\tp2\tsentence1\tsentence2\tlabel1\tgold_label\n"
                      "0\t1\t1e\tfiction\t(\t(\t(\t(\tA.\tB.\tneutral\tneutral\n"
                      "1\t1\t1e\tfiction\t(\t(\t(\t(\tA.\tB.\t-\t-\n", 3, "unknown label '-'"),
])
def test_malformed_rows_raise_data_error_with_file_and_line(tmp_path, task, split, content, line, message):
    t = glue.get_task(task)
    path = _write(os.path.join(tmp_path, t.directory, t.files[split][0]), content)
    with pytest.raises(DataError) as info:
        glue.read_examples(task, str(tmp_path), split)
    assert info.value.path == path and info.value.line == line
    assert message in str(info.value) and str(info.value).startswith(f"{path}:{line}: ")


def test_missing_file_empty_file_and_bad_encoding(tmp_path):
    with pytest.raises(DataError) as info:
        glue.read_examples("mnli", str(tmp_path), "dev_mismatched")
    assert info.value.path == os.path.join(str(tmp_path), "MNLI", "dev_mismatched.tsv")
    assert "missing MNLI-m dev_mismatched file" in str(info.value)
    _write(f"{tmp_path}/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(DataError, match="no RTE examples"):
        glue.read_examples("rte", str(tmp_path), "dev")
    os.makedirs(f"{tmp_path}/WNLI")
    with open(f"{tmp_path}/WNLI/train.tsv", "wb") as f:
        f.write(b"index\tsentence1\tsentence2\tlabel\n0\tcaf\xe9\tb\t1\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        glue.read_examples("wnli", str(tmp_path), "train")
    with pytest.raises(ConfigError, match="no split 'dev_matched'"):
        glue.read_examples("rte", str(tmp_path), "dev_matched")


def test_qqp_skips_rows_with_wrong_field_count_and_logs_count(tmp_path, caplog):
    rows = ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
            "0\t1\t2\tWhat is \"x\"?\tWhat's x?\t1\n"
            "1\t3\t4\tbroken row without label\n"
            "2\t5\t6\tHow?\tWhy?\t0\textra\n"
            "3\t7\t8\tWho?\t\t0\n")
    _write(f"{tmp_path}/QQP/train.tsv", rows)
    with caplog.at_level(logging.WARNING, logger="tasks.glue"):
        examples = glue.read_examples("qqp", str(tmp_path), "train")
    assert [e.index for e in examples] == ["0", "3"]
    assert examples[1].text_b == ""  # kept, like the reference
    assert "skipped 2 rows" in caplog.text and "1 rows have an empty text" in caplog.text
    # test files are never skipped: every index needs a prediction
    _write(f"{tmp_path}/QQP/test.tsv", "id\tquestion1\tquestion2\n0\tWhat?\n")
    with pytest.raises(DataError, match="found 2"):
        glue.read_examples("qqp", str(tmp_path), "test")


def test_blank_trailing_lines_are_not_records(tmp_path):
    _write(f"{tmp_path}/SST-2/dev.tsv", "sentence\tlabel\ngood\t1\n\nbad\t0\n\n")
    assert [e.line for e in glue.read_examples("sst-2", str(tmp_path), "dev")] == [2, 4]


# ----------------------------------------------------------------------------- features

def test_features_match_hugging_face_tokenizer(fixture_root, tokenizer, vocab_file):
    from transformers import BertTokenizerLegacy
    hf = BertTokenizerLegacy(vocab_file, do_lower_case=True)
    for name, max_len in [("mrpc", 12), ("mrpc", 128), ("cola", 7), ("sst-2", 128), ("mnli", 10), ("ax", 9)]:
        split = "test" if name == "ax" else "train"
        examples = glue.read_examples(name, fixture_root, split)
        features = glue.convert_examples_to_features(examples, name, tokenizer, max_len)
        for e, f in zip(examples, features):
            ref = hf(e.text_a, e.text_b, truncation="longest_first" if e.text_b else True,
                     max_length=max_len, return_token_type_ids=True)
            assert f["input_ids"] == ref["input_ids"], (name, e.text_a, e.text_b)
            assert f["token_type_ids"] == ref["token_type_ids"]
            assert "attention_mask" not in f and len(f["input_ids"]) <= max_len
    assert any(len(f["input_ids"]) == 12 for f in glue.convert_examples_to_features(
        glue.read_examples("mrpc", fixture_root, "train"), "mrpc", tokenizer, 12))


def test_feature_labels_and_stsb_label_scale(fixture_root, tokenizer):
    mnli = glue.read_examples("mnli", fixture_root, "train")
    feats = glue.convert_examples_to_features(mnli, "mnli", tokenizer, 32)
    assert [f["labels"] for f in feats] == [["contradiction", "entailment", "neutral"].index(e.label) for e in mnli]
    stsb = glue.read_examples("sts-b", fixture_root, "dev")
    scaled = glue.convert_examples_to_features(stsb, "sts-b", tokenizer, 32, label_scale=0.2)
    plain = glue.convert_examples_to_features(stsb, "sts-b", tokenizer, 32)
    assert [f["labels"] for f in plain] == [e.label for e in stsb]
    assert [f["labels"] for f in scaled] == pytest.approx([e.label / 5 for e in stsb])
    assert isinstance(scaled[0]["labels"], float) and isinstance(feats[0]["labels"], int)
    assert "labels" not in glue.convert_examples_to_features(
        glue.read_examples("sts-b", fixture_root, "test"), "sts-b", tokenizer, 32)[0]
    assert glue.gold_labels("mnli", mnli).tolist() == [f["labels"] for f in feats]
    with pytest.raises(ConfigError):
        glue.convert_examples_to_features(mnli, "mnli", tokenizer, 2)


# ----------------------------------------------------------------------------- metrics

def test_metrics_hand_computed():
    # TP=1 FP=1 FN=0 TN=2: acc 3/4, F1 = 2/(2+1) , MCC = (1*2-1*0)/sqrt(2*1*2*3)
    preds, labels = [1, 1, 0, 0], [1, 0, 0, 0]
    m = glue.compute_metrics("mrpc", preds, labels)
    assert m["acc"] == 0.75 and m["f1"] == pytest.approx(2 / 3)
    assert m["acc_and_f1"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert glue.compute_metrics("cola", preds, labels)["mcc"] == pytest.approx(2 / math.sqrt(12))
    assert glue.compute_metrics("rte", [0, 1, 1], [0, 1, 0]) == {"acc": pytest.approx(2 / 3)}
    # Pearson of (1,2,3) and (1,2,4): sum dx*dy = 3, sum dx^2 = 2, sum dy^2 = 14/3; Spearman 1 (same order)
    s = glue.compute_metrics("sts-b", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert s["pearson"] == pytest.approx(3 / math.sqrt(2 * 14 / 3))
    assert s["spearmanr"] == pytest.approx(1.0) and s["corr"] == pytest.approx((s["pearson"] + 1) / 2)
    # constant predictions: 0, not NaN (keeps summed model selection finite)
    c = glue.compute_metrics("sts-b", [2.0, 2.0, 2.0], [1.0, 2.0, 4.0])
    assert c == {"pearson": 0.0, "spearmanr": 0.0, "corr": 0.0}
    with pytest.raises(ValueError):
        glue.compute_metrics("rte", [1, 0], [1])


def test_metrics_match_sklearn_and_scipy_on_random_vectors():
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels, preds = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
        m = glue.compute_metrics("qqp", preds, labels)
        assert m["acc"] == pytest.approx(accuracy_score(labels, preds))
        assert m["f1"] == pytest.approx(f1_score(labels, preds))
        assert glue.compute_metrics("cola", preds, labels)["mcc"] == pytest.approx(matthews_corrcoef(labels, preds))
        labels3, preds3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
        assert glue.compute_metrics("mnli", preds3, labels3)["acc"] == pytest.approx(np.mean(preds3 == labels3))
        assert glue.compute_metrics("ax", preds3, labels3)["mcc"] == pytest.approx(matthews_corrcoef(labels3, preds3))
        gold, pred = rng.uniform(0, 5, 400), rng.uniform(0, 5, 400)
        s = glue.compute_metrics("sts-b", pred, gold)
        assert s["pearson"] == pytest.approx(pearsonr(pred, gold)[0])
        assert s["spearmanr"] == pytest.approx(spearmanr(pred, gold)[0])


def test_glue_score_reproduces_published_leaderboard_average():
    # BERT-base on the GLUE leaderboard (BERT paper, Table 1 + leaderboard): score 78.3.
    r = {
        "cola": {"mcc": 52.1}, "sst-2": {"acc": 93.5}, "mrpc": {"f1": 88.9, "acc": 84.8},
        "sts-b": {"pearson": 87.1, "spearmanr": 85.8}, "qqp": {"f1": 71.2, "acc": 89.2},
        "mnli": {"acc": 84.6}, "mnli-mm": {"acc": 83.4}, "qnli": {"acc": 90.5}, "rte": {"acc": 66.4},
        "wnli": {"acc": 65.1}, "ax": {"mcc": 34.2},
    }
    assert round(glue.glue_score(r), 1) == 78.3
    assert glue.main_score("mrpc", r["mrpc"]) == pytest.approx((88.9 + 84.8) / 2)
    assert glue.main_score("sts-b", {"corr": 0.5}) == 0.5
    assert glue.glue_score({"rte": {"acc": 0.5}, "mnli": {"acc": 0.8}}) == pytest.approx(0.65)


# ----------------------------------------------------------------------------- predictions

def test_logits_to_predictions():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert glue.logits_to_predictions("mnli", logits).tolist() == [1, 0]
    assert glue.logits_to_predictions("sts-b", np.array([[0.2], [1.1]]), label_scale=0.2) == pytest.approx([1.0, 5.5])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        glue.logits_to_predictions("rte", logits)


def test_write_predictions_submission_format(tmp_path):
    out = str(tmp_path)
    p = glue.write_predictions("mnli", out, ["0", "1", "2"], [0, 2, "entailment"], split="test_mismatched")
    assert p == os.path.join(out, "MNLI-mm.tsv")
    assert open(p, encoding="utf-8").read() == "index\tprediction\n0\tcontradiction\n1\tneutral\n2\tentailment\n"
    p = glue.write_predictions("sts-b", out, [10, 11, 12], [-0.3, 2.71828, 7.0])
    assert open(p).read() == "index\tprediction\n10\t0.000\n11\t2.718\n12\t5.000\n"
    p = glue.write_predictions("ax", out, [0, 1], [1, 1])
    assert os.path.basename(p) == "AX.tsv" and open(p).read().splitlines()[1] == "0\tentailment"
    p = glue.write_predictions("qnli", os.path.join(out, "sub", "q.tsv"), [0], [1])
    assert open(p).read() == "index\tprediction\n0\tnot_entailment\n"
    assert sorted(os.listdir(out)) == ["AX.tsv", "MNLI-mm.tsv", "STS-B.tsv", "sub"]  # no temp files left
    with pytest.raises(ValueError):
        glue.write_predictions("rte", out, [0, 1], [1])
    with pytest.raises(ValueError, match="out of range"):
        glue.write_predictions("rte", out, [0], [2])
    with pytest.raises(ValueError, match="not a finite"):
        glue.write_predictions("sts-b", out, [0], [float("nan")])


def test_round_trip_test_file_to_submission(fixture_root, tmp_path):
    examples = glue.read_examples("mrpc", fixture_root, "test")
    logits = np.tile([[0.0, 1.0]], (len(examples), 1))
    preds = glue.logits_to_predictions("mrpc", logits)
    path = glue.write_predictions("mrpc", str(tmp_path), [e.index for e in examples], preds)
    lines = open(path).read().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == len(examples) + 1
    assert lines[1:] == [f"{e.index}\t1" for e in examples]


# ----------------------------------------------------------------------------- bundled sample data

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "glue_sample")


@pytest.fixture(scope="module")
def make_sample():
    import importlib.util
    path = os.path.join(os.path.dirname(SAMPLE_DIR), "..", "scripts", "make_sample_data.py")
    spec = importlib.util.spec_from_file_location("make_sample_data", os.path.normpath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_generator_is_deterministic_and_matches_committed_files(make_sample, tmp_path):
    files = make_sample.build()
    assert files == make_sample.build()
    assert make_sample.build(seed=7)["SST-2/train.tsv"] != files["SST-2/train.tsv"]
    committed = {}
    for folder, _, names in os.walk(SAMPLE_DIR):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8", newline="") as f:
                committed[os.path.relpath(path, SAMPLE_DIR).replace(os.sep, "/")] = f.read()
    assert committed == files, "data/glue_sample is stale: run python scripts/make_sample_data.py"
    assert sum(len(t.encode("utf-8")) for t in files.values()) < 2_000_000
    assert "synthetic" in files["README.md"].lower() and "demo" in files["README.md"].lower()
    make_sample.main(["--out", str(tmp_path), "--seed", "3"])
    assert open(tmp_path / "glue_sample" / "MNLI" / "train.tsv", encoding="utf-8").read() == \
        make_sample.build(3)["MNLI/train.tsv"]
    # the other families' samples for the mixed demo: committed = generated
    others = make_sample.build_others()
    assert others == make_sample.build_others() and others != make_sample.build_others(seed=3)
    data_dir = os.path.dirname(SAMPLE_DIR)
    for rel, text in others.items():
        with open(os.path.join(data_dir, rel), encoding="utf-8", newline="") as f:
            assert f.read() == text, f"data/{rel} is stale: run python scripts/make_sample_data.py"
    assert (tmp_path / "swag_sample" / "val.csv").read_text(encoding="utf-8") == \
        make_sample.build_others(3)["swag_sample/val.csv"]


def test_sample_data_parses_with_official_readers_and_sizes(make_sample):
    for name, task in glue.TASKS.items():
        size_key = "mnli" if name == "mnli-mm" else name
        train_n, dev_n, test_n = make_sample.SIZES[size_key]
        for split in task.splits:
            examples = glue.read_examples(task, SAMPLE_DIR, split)
            expected = {"train": train_n, "test": test_n}.get(split.split("_")[0], dev_n)
            assert len(examples) == expected, (name, split)
    train_sizes = {n: make_sample.SIZES[n][0] for n in glue.PAPER_TASKS}
    # roughly the real GLUE order of train sizes
    assert train_sizes["mnli"] > train_sizes["qqp"] > train_sizes["qnli"] > train_sizes["sst-2"] > \
        train_sizes["cola"] > train_sizes["sts-b"] > train_sizes["mrpc"] > train_sizes["rte"]


def test_other_samples_follow_their_rules(make_sample):
    """The mixed demo's samples are learnable: simple rule oracles solve them on the dev files."""
    from tasks import conll, squad, swag
    data = os.path.dirname(SAMPLE_DIR)
    # SQuAD v2.0: a question is unanswerable iff its object noun is not in the context
    examples, _ = squad.read_squad_examples(os.path.join(data, "squad_sample", "dev-v2.0.json"), True, True)
    for e in examples:
        noun = e.question_text.rstrip("?").split()[-1]
        assert (noun not in " ".join(e.doc_tokens)) == e.is_impossible, e.question_text
    assert sum(e.is_impossible for e in examples) == make_sample.OTHER_SIZES["squad"][1]
    # CoNLL: every capitalised word from the entity pools is tagged with its type, nothing else is
    sentences = conll.read_conll(os.path.join(data, "conll_sample", "valid.txt"))
    names = set(make_sample.NAMES) | {"Smith", "Meyer", "Rossi", "Novak"}
    orgs = {w for pair in make_sample.ORGS for w in pair}
    for s in sentences:
        for word, tag in zip(s.words, s.tags):
            expected = ("PER" if word in names else "LOC" if word in make_sample.PLACES else
                        "ORG" if word in orgs else "MISC" if word in make_sample.NATIONALITIES else None)
            assert (tag == "O") == (expected is None) and (expected is None or tag.endswith(expected)), (word, tag)
    # SWAG: the right ending is the one listed for the object the context names
    actions = dict(make_sample.SWAG_THINGS)
    for e in swag.read_swag_examples(os.path.join(data, "swag_sample", "val.csv")):
        thing = next(t for t in actions if f" the {t} " in e.context)
        assert [i for i, ending in enumerate(e.endings) if ending in actions[thing]] == [e.label]


def test_sample_labels_balanced_and_rules_beat_majority_baseline(make_sample):
    for name, task in glue.TASKS.items():
        if task.labels is None or name == "ax":
            continue
        for split in ("train", "dev"):
            gold = glue.gold_labels(task, glue.read_examples(task, SAMPLE_DIR, split))
            majority = np.bincount(gold).max() / len(gold)
            assert majority <= 0.6 + 1e-9, (name, split, majority)  # rules below reach ~1.0
    # Independent rule oracles reach (near) perfect dev scores: the data is learnable.
    pos = set(make_sample.POS)
    sst = glue.read_examples("sst-2", SAMPLE_DIR, "dev")
    oracle = [str(int(any(w in pos for w in e.text_a.split()) != ("not" in e.text_a.split()))) for e in sst]
    assert glue.simple_accuracy(oracle, [e.label for e in sst])["acc"] == 1.0
    mnli = glue.read_examples("mnli", SAMPLE_DIR, "dev_mismatched")
    is_contra = [bool({"not", "never", "nobody"} & set(e.text_b.lower().rstrip(".").split())) for e in mnli]
    assert is_contra == [e.label == "contradiction" for e in mnli]
    stsb = glue.read_examples("sts-b", SAMPLE_DIR, "dev")
    overlap = [len(set(e.text_a.split()) & set(e.text_b.split())) for e in stsb]
    assert glue.compute_metrics("sts-b", overlap, glue.gold_labels("sts-b", stsb))["pearson"] > 0.9
    qnli = glue.read_examples("qnli", SAMPLE_DIR, "dev")
    cues = {"Where": [f" in {p}" for p in make_sample.PLACES], "When": [f" {t}" for t in make_sample.TIMES],
            "Why": [" because "]}
    for e in qnli:  # entailment iff the sentence holds the kind of answer the question asks for
        has_answer = any(c in e.text_b for c in cues[e.text_a.split()[0]])
        assert has_answer == (e.label == "entailment"), e
