"""scripts/prepare_glue.py: Hub parquet (nyu-mll/glue layout) -> official GLUE TSV files that
tasks/glue.py reads back with the same texts and labels.

The parquet fixtures are written here with pyarrow in the Hub's layout and schema (dataset card of
nyu-mll/glue: `<config>/<split>-00000-of-00001.parquet`, ClassLabel ids as int64, STS-B scores as
float32, idx as int32). Expected label strings come from the class names on the dataset card,
written out below independently of the script; expected headers come from tests/glue_fixtures.py,
which mirrors the official download.
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from file_utils import ConfigError, DataError
from glue_fixtures import write_glue_fixture
from tasks import glue
from tree_scripts import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "prepare_glue.py")
prepare_glue = load_script("scripts/prepare_glue.py")

# Hub ClassLabel names per config (dataset card `dataset_info.features.label.names`).
HUB_CLASS_NAMES = {
    "cola": ["unacceptable", "acceptable"], "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"], "qqp": ["not_duplicate", "duplicate"],
    "mnli": ["entailment", "neutral", "contradiction"], "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"], "wnli": ["not_entailment", "entailment"],
    "ax": ["entailment", "neutral", "contradiction"],
}
# Official GLUE label string of each Hub class name (the TSV files say 0/1 for the binary tasks).
OFFICIAL_LABEL = {
    "unacceptable": "0", "acceptable": "1", "negative": "0", "positive": "1", "not_equivalent": "0",
    "equivalent": "1", "not_duplicate": "0", "duplicate": "1", "entailment": "entailment",
    "not_entailment": "not_entailment", "neutral": "neutral", "contradiction": "contradiction",
}
WNLI_OFFICIAL = {"not_entailment": "0", "entailment": "1"}  # WNLI's official files use 0/1 too
TEXT_COLUMNS = {
    "cola": ["sentence"], "sst2": ["sentence"], "mrpc": ["sentence1", "sentence2"], "qqp": ["question1", "question2"],
    "stsb": ["sentence1", "sentence2"], "mnli": ["premise", "hypothesis"], "qnli": ["question", "sentence"],
    "rte": ["sentence1", "sentence2"], "wnli": ["sentence1", "sentence2"], "ax": ["premise", "hypothesis"],
}
SPLITS = {c: ["train", "validation", "test"] for c in TEXT_COLUMNS}
SPLITS["mnli"] = ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"]
SPLITS["ax"] = ["test"]
# Hub config/split -> (tasks/glue.py task, split name for read_examples)
READ_AS = {
    "cola": "cola", "sst2": "sst-2", "mrpc": "mrpc", "qqp": "qqp", "stsb": "sts-b", "qnli": "qnli", "rte": "rte",
    "wnli": "wnli", "ax": "ax",
}
GLUE_SPLIT = {"train": "train", "validation": "dev", "test": "test", "validation_matched": "dev_matched",
              "validation_mismatched": "dev_mismatched", "test_matched": "test_matched",
              "test_mismatched": "test_mismatched"}

_WORDS = ['the "big" cat', "Zoë's café", "naïve — yes", "it's 3\" long", "東京", "a plain sentence"]


def _text(config, split, i, col):
    base = f"{_WORDS[(i + col) % len(_WORDS)]} {config} {split} {i}/{col}"
    if i == 1 and col == 0:
        return base + "\twith a tab"
    if i == 2:
        return base + "\nsecond line\r\nthird\rfourth"
    return base


def _rows(config, split, n):
    test = split.startswith("test") or config == "ax"
    rows = {c: [_text(config, split, i, k) for i in range(n)] for k, c in enumerate(TEXT_COLUMNS[config])}
    if config == "stsb":
        labels = [-1.0] * n if test else [round((i * 0.77) % 5.0, 2) for i in range(n)]
    else:
        labels = [-1] * n if test else [i % len(HUB_CLASS_NAMES[config]) for i in range(n)]
    rows["label"] = labels
    # train idx of MRPC on the Hub are positions in the MSR file (gaps). Test idx on the Hub are the
    # official files' index column; here they are neither the row number nor in row order, so that a
    # converter writing the row number instead of `idx` is caught (118, 115, ..., 100 for n = 7).
    rows["idx"] = [100 + 3 * (n - 1 - i) for i in range(n)] if test else [3 * i + 1 for i in range(n)]
    return rows


def _write_parquet(path, rows, config):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    label_type = pa.float32() if config == "stsb" else pa.int64()
    arrays = [pa.array(rows[c], type=pa.string()) for c in TEXT_COLUMNS[config]]
    arrays += [pa.array(rows["label"], type=label_type), pa.array(rows["idx"], type=pa.int32())]
    pq.write_table(pa.table(arrays, names=TEXT_COLUMNS[config] + ["label", "idx"]), path)


def make_hub(root, configs=None, n=7):
    """Hub-layout parquet files; returns {(config, split): rows}."""
    data = {}
    for config in configs or TEXT_COLUMNS:
        for split in SPLITS[config]:
            rows = _rows(config, split, n)
            _write_parquet(os.path.join(root, config, f"{split}-00000-of-00001.parquet"), rows, config)
            data[config, split] = rows
    return data


def _clean(text):
    return text.replace("\r\n", " ").replace("\t", " ").replace("\n", " ").replace("\r", " ")


def _expected_label(config, hub_label):
    if config == "stsb":
        return np.float32(hub_label)
    name = HUB_CLASS_NAMES[config][hub_label]
    return WNLI_OFFICIAL[name] if config == "wnli" else OFFICIAL_LABEL[name]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    data = make_hub(root / "hub")
    result = prepare_glue.prepare(str(root / "hub"), str(root / "out"))
    return data, str(root / "out"), result


def test_every_file_reads_back_through_tasks_glue(converted):
    data, out, _ = converted
    checked = 0
    for (config, split), rows in data.items():
        task = "mnli" if config == "mnli" else READ_AS[config]
        examples = glue.read_examples(task, out, GLUE_SPLIT[split])
        n = len(rows["idx"])
        assert len(examples) == n, (config, split)   # a tab or line break never splits a row
        test = split.startswith("test") or config == "ax"
        cols = TEXT_COLUMNS[config]
        for i, ex in enumerate(examples):
            assert ex.text_a == _clean(rows[cols[0]][i]), (config, split, i)
            if len(cols) > 1:
                assert ex.text_b == _clean(rows[cols[1]][i]), (config, split, i)
            if test:
                assert ex.label is None
                assert ex.index == str(rows["idx"][i])
            elif config == "stsb":
                assert np.float32(ex.label) == _expected_label(config, rows["label"][i])
            else:
                assert ex.label == _expected_label(config, rows["label"][i]), (config, split, i)
            checked += 1
    assert checked == 7 * sum(len(s) for s in SPLITS.values())


def test_test_index_column_is_the_hub_idx(converted):
    """The index column of every test file holds the Hub `idx` values, written out by hand here."""
    _, out, _ = converted
    expected = ["118", "115", "112", "109", "106", "103", "100"]
    for folder, name, column in [("SST-2", "test.tsv", 0), ("MRPC", "test.tsv", 0), ("QQP", "test.tsv", 0),
                                 ("MNLI", "test_matched.tsv", 0), ("MNLI", "test_mismatched.tsv", 0),
                                 ("STS-B", "test.tsv", 0), ("CoLA", "test.tsv", 0), ("RTE", "test.tsv", 0),
                                 ("diagnostic", "diagnostic.tsv", 0)]:
        with open(os.path.join(out, folder, name), encoding="utf-8", newline="") as f:
            lines = f.read().split("\n")[1:-1]  # header, rows, final newline
        assert [line.split("\t")[column] for line in lines] == expected, (folder, name)


def test_texts_with_tabs_and_line_breaks_stay_one_row(converted):
    _, out, _ = converted
    text = open(os.path.join(out, "RTE", "train.tsv"), encoding="utf-8").read()
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == 1 + 7 + 1      # header + 7 rows + final newline
    assert all(line.count("\t") == 3 for line in lines[:-1])
    assert "\r" not in text
    row = glue.read_examples("rte", out, "train")[1]
    assert row.text_a.endswith(" with a tab")


def test_mnli_label_ids_are_mapped_by_name(converted):
    data, out, _ = converted
    examples = glue.read_examples("mnli", out, "train")
    ids = glue.gold_labels("mnli", examples)
    hub = data["mnli", "train"]["label"]
    assert hub[:3] == [0, 1, 2]
    # Hub 0/1/2 = entailment/neutral/contradiction; tasks/glue.py orders contradiction, entailment, neutral
    assert [e.label for e in examples[:3]] == ["entailment", "neutral", "contradiction"]
    assert list(ids[:3]) == [1, 2, 0]
    mm = glue.read_examples("mnli-mm", out, "dev")
    assert mm[0].text_a == _clean(data["mnli", "validation_mismatched"]["premise"][0])


def test_headers_and_column_counts_match_the_official_layout(converted, tmp_path):
    _, out, result = converted
    official = tmp_path / "official"
    write_glue_fixture(official)
    for task, files in result.items():
        directory = prepare_glue.TASKS_BY_NAME[task].directory
        for name in files:
            ours = open(os.path.join(out, directory, name), encoding="utf-8-sig").read().splitlines()
            ref = open(os.path.join(official, directory, name), encoding="utf-8-sig").read().splitlines()
            if task == "cola" and name != "test.tsv":   # headerless: compare field counts
                assert {len(line.split("\t")) for line in ours} == {len(line.split("\t")) for line in ref} == {4}
            else:
                assert ours[0] == ref[0], (task, name)
                assert {len(line.split("\t")) for line in ours} == {len(ref[0].split("\t"))}, (task, name)


def test_sts_b_scores_are_written_as_shortest_float32(converted):
    _, out, _ = converted
    lines = open(os.path.join(out, "STS-B", "train.tsv"), encoding="utf-8").read().splitlines()
    scores = [line.split("\t")[-1] for line in lines[1:]]
    assert scores[:4] == ["0", "0.77", "1.54", "2.31"]


def test_converted_folder_feeds_the_runner_helpers(converted):
    _, out, _ = converted
    for split in ("train", "dev", "test"):
        for task in ("cola", "sst-2", "mrpc", "sts-b", "qqp", "qnli", "rte", "wnli"):
            assert glue.task_file(task, out, split).startswith(out)


def test_missing_task_skipped_with_warning_unless_asked(tmp_path, caplog):
    make_hub(tmp_path / "hub", configs=["rte", "cola"])
    with caplog.at_level(logging.WARNING, logger="prepare_glue"):
        result = prepare_glue.prepare(str(tmp_path / "hub"), str(tmp_path / "out"))
    assert sorted(result) == ["cola", "rte"]
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "skipping MNLI" in warnings and "skipping diagnostic" in warnings
    with pytest.raises(ConfigError) as excinfo:
        prepare_glue.prepare(str(tmp_path / "hub"), str(tmp_path / "out2"), prepare_glue.parse_tasks("rte,mnli"))
    message = str(excinfo.value)
    assert "\n" not in message and "MNLI" in message and "train.tsv" in message
    assert not os.path.exists(tmp_path / "out2")   # nothing written when an asked-for task is missing
    # one split missing makes the task incomplete, reported the same way
    os.remove(tmp_path / "hub" / "rte" / "test-00000-of-00001.parquet")
    with pytest.raises(ConfigError, match="test.tsv"):
        prepare_glue.prepare(str(tmp_path / "hub"), str(tmp_path / "out3"), ["rte"])
    with pytest.raises(ConfigError, match="no GLUE parquet files"):
        prepare_glue.prepare(str(tmp_path / "out"), str(tmp_path / "out4"))


def test_mnli_from_the_matched_and_mismatched_configs_and_converted_branch_layout(tmp_path):
    hub = tmp_path / "hub"
    data = make_hub(hub, configs=["mnli"])
    # keep only mnli/train; dev/test come from mnli_matched / mnli_mismatched in the
    # refs/convert/parquet layout (<config>/<split>/0000.parquet)
    for split, (config, new_split) in {"validation_matched": ("mnli_matched", "validation"),
                                       "test_matched": ("mnli_matched", "test"),
                                       "validation_mismatched": ("mnli_mismatched", "validation"),
                                       "test_mismatched": ("mnli_mismatched", "test")}.items():
        os.remove(hub / "mnli" / f"{split}-00000-of-00001.parquet")
        _write_parquet(str(hub / config / new_split / "0000.parquet"), data["mnli", split], "mnli")
    prepare_glue.prepare(str(hub), str(tmp_path / "out"), ["mnli"])
    for split in ("dev_matched", "dev_mismatched", "test_matched", "test_mismatched"):
        hub_split = {"dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"}.get(split, split)
        examples = glue.read_examples("mnli", str(tmp_path / "out"), split)
        assert [e.text_b for e in examples] == [_clean(t) for t in data["mnli", hub_split]["hypothesis"]]


def test_shards_are_concatenated_in_order(tmp_path):
    hub = tmp_path / "hub"
    make_hub(hub, configs=["sst2"])
    first, second = _rows("sst2", "train", 5), _rows("sst2", "train", 9)
    second = {k: v[5:] for k, v in second.items()}
    os.remove(hub / "sst2" / "train-00000-of-00001.parquet")
    _write_parquet(str(hub / "sst2" / "train-00001-of-00002.parquet"), second, "sst2")
    _write_parquet(str(hub / "sst2" / "train-00000-of-00002.parquet"), first, "sst2")
    counts = prepare_glue.prepare(str(hub), str(tmp_path / "out"), ["sst-2"])
    assert counts["sst-2"]["train.tsv"] == 9
    examples = glue.read_examples("sst-2", str(tmp_path / "out"), "train")
    assert [e.text_a for e in examples] == [_clean(_text("sst2", "train", i, 0)) for i in range(9)]


def test_bad_parquet_content_is_a_data_error(tmp_path):
    hub = tmp_path / "hub"
    data = make_hub(hub, configs=["qnli"])
    rows = dict(data["qnli", "validation"])
    rows["label"] = [0, 1, 2, 0, 1, 0, 1]   # qnli has 2 classes
    bad = hub / "qnli" / "validation-00000-of-00001.parquet"
    _write_parquet(str(bad), rows, "qnli")
    with pytest.raises(DataError) as excinfo:
        prepare_glue.prepare(str(hub), str(tmp_path / "out"), ["qnli"])
    assert str(bad) in str(excinfo.value) and "label 2" in str(excinfo.value)
    # wrong config in the folder: columns are named
    pq.write_table(pa.table([pa.array(["x"]), pa.array([0]), pa.array([0], type=pa.int32())],
                            names=["sentence", "label", "idx"]), str(bad))
    with pytest.raises(DataError, match="missing column.*question"):
        prepare_glue.prepare(str(hub), str(tmp_path / "out"), ["qnli"])
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        prepare_glue.prepare(str(hub), str(tmp_path / "out"), ["qnli"])


def test_task_names(tmp_path):
    assert prepare_glue.parse_tasks("sst2, STS-B,mnli_mismatched,diagnostic,CoLA") == ["sst-2", "sts-b", "mnli", "ax",
                                                                                       "cola"]
    assert len(prepare_glue.parse_tasks("all")) == 10
    with pytest.raises(ConfigError, match="unknown GLUE task 'squad'"):
        prepare_glue.parse_tasks("cola,squad")


def test_missing_pyarrow_is_a_one_line_config_error(tmp_path, monkeypatch):
    make_hub(tmp_path / "hub", configs=["rte"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)        # import pyarrow -> ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match="pip install pyarrow"):
        prepare_glue.prepare(str(tmp_path / "hub"), str(tmp_path / "out"))


def test_cli(tmp_path):
    make_hub(tmp_path / "hub", configs=["wnli", "ax"])
    ok = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "hub"), str(tmp_path / "out"), "--tasks", "wnli,ax"],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "wrote 28 rows for 2 tasks" in ok.stdout
    assert len(glue.read_examples("ax", str(tmp_path / "out"), "test")) == 7
    bad = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "hub"), str(tmp_path / "out"), "--tasks", "rte"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "RTE" in lines[0]


def test_non_numeric_sts_b_score_is_a_data_error(tmp_path):
    hub = tmp_path / "hub"
    make_hub(hub, configs=["stsb"])
    bad = hub / "stsb" / "validation-00000-of-00001.parquet"
    rows = _rows("stsb", "validation", 3)
    pq.write_table(pa.table([pa.array(rows["sentence1"]), pa.array(rows["sentence2"]),
                             pa.array(["3.8", "high", "1"]), pa.array([0, 1, 2], type=pa.int32())],
                            names=["sentence1", "sentence2", "label", "idx"]), str(bad))
    with pytest.raises(DataError) as excinfo:
        prepare_glue.prepare(str(hub), str(tmp_path / "out"), ["sts-b"])
    message = str(excinfo.value)
    assert message.startswith(f"{bad}: row 0 (idx 0): score '3.8'") and "\n" not in message
    assert not os.path.exists(tmp_path / "out" / "STS-B")


def test_a_task_is_written_all_or_none(tmp_path):
    """A failure in the task's last file (test.tsv) leaves the previous train/dev/test files as they
    were, and no temporary file."""
    hub = tmp_path / "hub"
    make_hub(hub, configs=["rte"])
    out = tmp_path / "out"
    prepare_glue.prepare(str(hub), str(out), ["rte"])
    before = {name: (out / "RTE" / name).read_bytes() for name in os.listdir(out / "RTE")}
    assert sorted(before) == ["dev.tsv", "test.tsv", "train.tsv"]
    _write_parquet(str(hub / "rte" / "train-00000-of-00001.parquet"), _rows("rte", "train", 9), "rte")
    rows = _rows("rte", "test", 7)
    rows["sentence2"][4] = None  # a missing text: a DataError in the last file written
    _write_parquet(str(hub / "rte" / "test-00000-of-00001.parquet"), rows, "rte")
    with pytest.raises(DataError, match="row 4: column 'sentence2' is None"):
        prepare_glue.prepare(str(hub), str(out), ["rte"])
    assert {name: (out / "RTE" / name).read_bytes() for name in os.listdir(out / "RTE")} == before
