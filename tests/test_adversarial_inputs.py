"""Adversarial input files for the task readers: each case is a file a user could really have
(a BOM from a Windows editor, Latin-1 bytes, a duplicated question id, an interrupted
pregeneration, ...) that used to give a wrong result or a traceback. Every one must now give
valid examples or a one-line `DataError`/`ConfigError` naming the file (and the line where
there is one) before any training starts. Crashes found by tests/test_reader_fuzz.py are pinned
here as regression tests, one per crash.
"""
import pytest

from file_utils import DataError
from tasks import conll
from tests.fixtures_qa import conll_sentences, write_conll

BOM = "\ufeff".encode("utf-8")


# ---------------------------------------------------------------------------------------------
# CoNLL


def test_conll_bom_is_ignored_docstart_skipped_scores_unchanged(tmp_path):
    plain = write_conll(tmp_path / "plain.txt", conll_sentences())
    with_bom = tmp_path / "bom.txt"
    with_bom.write_bytes(BOM + open(plain, "rb").read())
    assert open(plain, encoding="utf-8").readline() == "-DOCSTART- -X- -X- O\n"
    a, b = conll.read_conll(str(plain)), conll.read_conll(str(with_bom))
    # Without the fix the BOM file had one more sentence: the word "\ufeff-DOCSTART-" tagged O.
    assert [(s.words, s.tags, s.line) for s in b] == [(s.words, s.tags, s.line) for s in a]
    assert not any("DOCSTART" in w for s in b for w in s.words)

    # A stand-in model that tags every word it has not seen in training as B-MISC: on the BOM file
    # it would have predicted an entity for the "-DOCSTART-" word, a false positive.
    known = {w: t for s in a[1:] for w, t in zip(s.words, s.tags)}

    def scores(sentences):
        gold = [s.tags for s in sentences]
        pred = [[known.get(w, "B-MISC") for w in s.words] for s in sentences]
        return conll.entity_scores(gold, pred)

    assert scores(b) == scores(a)
    # Prediction files keep the -DOCSTART- line as it is (no BOM) and are identical.
    preds = [s.tags for s in a]
    conll.write_predictions(str(tmp_path / "p_plain.txt"), str(plain), preds)
    conll.write_predictions(str(tmp_path / "p_bom.txt"), str(with_bom), preds)
    assert (tmp_path / "p_bom.txt").read_bytes() == (tmp_path / "p_plain.txt").read_bytes()


def test_conll_bom_in_labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(BOM + b"O\nB-PER\nI-PER\n")
    assert conll.read_labels_file(str(path)) == ["O", "B-PER", "I-PER"]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_conll_latin1_bytes_name_the_line(tmp_path, newline):
    text = newline.join(["-DOCSTART- -X- -X- O", "", "EU NNP B-NP B-ORG", "rejects VBZ B-VP O", "",
                         "M\xfcller NNP B-NP B-PER", ". . O O", ""])
    path = tmp_path / "latin1.txt"
    path.write_bytes(text.encode("latin-1"))   # "Müller" as one byte 0xfc: not UTF-8
    with pytest.raises(DataError) as err:
        conll.read_conll(str(path))
    assert err.value.line == 6
    assert str(err.value).startswith(f"{path}:6: not valid UTF-8 text (byte 0xfc at byte 2 of the line)")
    with pytest.raises(DataError, match=r":6: not valid UTF-8"):
        conll.write_predictions(str(tmp_path / "out.txt"), str(path), [["O", "O"], ["O", "O"]])
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"O\nB-PER\nB-\xe9\n")
    with pytest.raises(DataError, match=r"labels\.txt:3: not valid UTF-8"):
        conll.read_labels_file(str(labels))


def test_conll_bad_byte_deep_in_a_large_file_names_its_line(tmp_path):
    # Far beyond the text decoder's first block, so the decoder's own offset would be meaningless.
    lines = [f"word{i} NN O O" if i % 10 else "" for i in range(1, 20001)]
    lines[15000 - 1] = "caf\xe9 NN O O"
    path = tmp_path / "big.txt"
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(DataError) as err:
        conll.read_conll(str(path))
    assert err.value.line == 15000


def test_conll_indented_docstart_is_a_document_line(tmp_path):
    """Fuzzer find: a -DOCSTART- line with leading whitespace was read as the word '-DOCSTART-'
    tagged O (one more sentence, trained on and scored)."""
    plain = write_conll(tmp_path / "plain.txt", conll_sentences()[:3])
    text = open(plain, encoding="utf-8").read()
    indented = tmp_path / "indented.txt"
    indented.write_text(text.replace("-DOCSTART-", " \t-DOCSTART-"), encoding="utf-8")
    a, b = conll.read_conll(str(plain)), conll.read_conll(str(indented))
    assert [(s.words, s.tags) for s in b] == [(s.words, s.tags) for s in a]
    assert len(b) == 3
