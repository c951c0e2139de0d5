"""Which way a --predict file is read (docs/multitask.md#predicting-a-users-file): the family's own
format when the file looks like it (then a bad row is an error naming file:line, never a re-read as
one example per line), one example per line only for files plainly not in the format or with
`lines:`; stdin must be UTF-8. Expectations come from csv / plain reading of the fixture files."""
import csv
import io
import os
import shutil

import pytest

from file_utils import DataError
from tasks import conll, glue
from tasks.base import read_stdin_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "glue_sample")


def _tsv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _task(name):
    return glue.Glue(name, None, None, 32)


@pytest.mark.parametrize("name, folder, column", [("sst-2", "SST-2", 0), ("qqp", "QQP", 3), ("rte", "RTE", 1)])
def test_glue_dev_files_give_their_texts(name, folder, column):
    """Dev files (labelled) are read in their dev layout: SST-2's has as many columns as its test.tsv,
    QQP's starts with `id` like its test.tsv."""
    path = os.path.join(SAMPLE, folder, "dev.tsv")
    examples = _task(name).read_inputs(path)
    assert [e.text_a for e in examples] == [row[column] for row in _tsv(path)[1:]]


def test_glue_test_file_gives_ids_and_texts():
    path = os.path.join(SAMPLE, "SST-2", "test.tsv")
    examples = _task("sst-2").read_inputs(path)
    assert [(e.index, e.text_a) for e in examples] == [(row[0], row[1]) for row in _tsv(path)[1:]]


def test_glue_file_with_one_bad_row_is_an_error(tmp_path):
    path = tmp_path / "test.tsv"
    lines = open(os.path.join(SAMPLE, "SST-2", "test.tsv"), encoding="utf-8").read().splitlines()
    lines[3] += "\textra"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        _task("sst-2").read_inputs(str(path))
    assert (exc.value.path, exc.value.line) == (str(path), 4)


def test_plain_lines_only_when_plainly_not_glue_or_asked(tmp_path):
    plain = tmp_path / "mine.txt"
    plain.write_text("a great film\n\nboring\n", encoding="utf-8")
    assert [e.text_a for e in _task("sst-2").read_inputs(str(plain))] == ["a great film", "boring"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("A man sleeps.\tA man rests.\n", encoding="utf-8")
    (example,) = _task("rte").read_inputs(str(pairs))
    assert (example.text_a, example.text_b) == ("A man sleeps.", "A man rests.")
    test = os.path.join(SAMPLE, "SST-2", "test.tsv")
    asked = _task("sst-2").read_inputs(test, plain=True)
    assert [e.text_a for e in asked] == open(test, encoding="utf-8").read().splitlines()
    with pytest.raises(DataError, match="lines:-"):  # stdin that looks like a GLUE file
        _task("sst-2").read_inputs(None, ["index\tsentence", "0\ta film"])


def test_conll_file_with_one_bad_tag_is_an_error(tmp_path):
    source = os.path.join(ROOT, "data", "conll_sample", "test.txt")
    lines = open(source, encoding="utf-8").read().splitlines()
    bad = next(i for i, line in enumerate(lines) if line.endswith(" O") and i > 5)
    lines[bad] = lines[bad][:-2] + " X-BAD"
    path = tmp_path / "test.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = conll.Conll(None, None, 32, labels=["O", "B-PER"])
    with pytest.raises(DataError) as exc:
        task.read_inputs(str(path))
    assert (exc.value.path, exc.value.line) == (str(path), bad + 1) and "lines:" in str(exc.value)
    shutil.copy(source, path)
    words = [line.split()[0] for line in lines if line.strip() and not line.startswith("-DOCSTART-")]
    assert [w for s in task.read_inputs(str(path)) for w in s.words] == words


def test_conll_plain_sentences(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("Jack met Rossi in Paris\nRome is big\n", encoding="utf-8")
    task = conll.Conll(None, None, 32, labels=["O"])
    assert [s.words for s in task.read_inputs(str(path))] == [["Jack", "met", "Rossi", "in", "Paris"],
                                                              ["Rome", "is", "big"]]
    # a line ending in an IOB tag, a blank line between lines, -DOCSTART-: CoNLL, so bad rows are errors
    for text in ("Jack NNP I-PER\nmet VBD\n", "Jack met\n\nRossi met\n", "-DOCSTART- -X- O\n\nJack met\n"):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataError):
            task.read_inputs(str(path))
    path.write_text("Jack NNP I-PER\n\nRossi ran\n", encoding="utf-8")
    assert [s.words for s in task.read_inputs(str(path), plain=True)] == [["Jack", "NNP", "I-PER"],
                                                                           ["Rossi", "ran"]]


def test_stdin_must_be_utf8():
    stream = io.TextIOWrapper(io.BytesIO(b"good\n\xff bad\n"), encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_stdin_lines(stream)
    assert (exc.value.path, exc.value.line) == ("<stdin>", 2)
    assert read_stdin_lines(io.TextIOWrapper(io.BytesIO("caf\u00e9\nok\n".encode()), encoding="utf-8")) == \
        ["caf\u00e9", "ok"]
    with pytest.raises(DataError) as exc:
        read_stdin_lines(io.StringIO("ok\nstill ok\nbad \udcff\n"))
    assert exc.value.line == 3
