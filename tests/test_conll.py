"""tasks/conll.py: CoNLL reading, first-piece label alignment, window splitting, entity metric vs seqeval."""
import random

import pytest
import seqeval.metrics as sm

from file_utils import DataError
from fixtures_qa import conll_sentences, make_tokenizer, write_conll, write_conll_dir
from tasks import conll


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return make_tokenizer(vocab_file)   # the bundled vocab is uncased


# ---------------------------------------------------------------------------------------------
# metric


def _random_tags(rng, n, scheme):
    types = ["PER", "LOC", "ORG", "MISC-X"]   # a type with a dash is split like seqeval does
    prefixes = ["B", "I"] if scheme in ("IOB1", "IOB2") else ["B", "I", "E", "S"]
    tags = []
    for _ in range(n):
        if rng.random() < 0.4:
            tags.append("O")
        else:
            tags.append(f"{rng.choice(prefixes)}-{rng.choice(types)}")
    return tags


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # seqeval averages empty arrays
@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOBES"])
def test_entity_scores_match_seqeval_on_random_sequences(scheme):
    rng = random.Random(1234 + len(scheme))
    for trial in range(300):
        n_sent = rng.randint(1, 4)
        y_true = [_random_tags(rng, rng.randint(1, 9), scheme) for _ in range(n_sent)]
        # predictions: a noisy copy, so that scores spread over [0, 1]
        y_pred = [[t if rng.random() < 0.6 else _random_tags(rng, 1, scheme)[0] for t in s] for s in y_true]
        ours = conll.entity_scores(y_true, y_pred)
        assert ours["precision"] == pytest.approx(sm.precision_score(y_true, y_pred, zero_division=0))
        assert ours["recall"] == pytest.approx(sm.recall_score(y_true, y_pred, zero_division=0))
        assert ours["f1"] == pytest.approx(sm.f1_score(y_true, y_pred, zero_division=0))
        assert conll.get_entities(y_true) == sm.sequence_labeling.get_entities(y_true)
        ref = sm.classification_report(y_true, y_pred, output_dict=True, zero_division=0)
        for etype, row in ours["per_type"].items():
            assert row["f1"] == pytest.approx(ref[etype]["f1-score"])
            assert row["support"] == ref[etype]["support"]


def test_entity_scores_hand_worked():
    y_true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG"]]
    y_pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    # true: PER(0,1) LOC(3,3) ORG(5,6); pred: PER(0,1) ORG(3,3) ORG(5,5) -> 1 correct of 3 and 3
    s = conll.entity_scores(y_true, y_pred)
    assert (s["precision"], s["recall"], s["f1"], s["support"]) == (
        pytest.approx(1 / 3), pytest.approx(1 / 3), pytest.approx(1 / 3), 3)
    assert s["per_type"]["PER"]["f1"] == 1.0 and s["per_type"]["LOC"]["recall"] == 0.0
    # IOB1: "I-PER I-PER" is one entity; "B-PER" after I-PER starts a second
    assert conll.get_entities(["I-PER", "I-PER", "B-PER", "O"]) == [("PER", 0, 1), ("PER", 2, 2)]
    report = conll.format_report(s)
    assert "micro avg" in report and "PER" in report


# ---------------------------------------------------------------------------------------------
# reading


def test_read_conll_skips_docstart_and_keeps_sentences(tmp_path):
    folder = write_conll_dir(tmp_path / "data")
    sents = conll.read_conll(str(folder / "train.txt"))
    expected = conll_sentences()
    assert [s.words for s in sents] == [[c[0] for c in s] for s in expected]
    assert [s.tags for s in sents] == [[c[3] for c in s] for s in expected]
    assert sents[0].line == 3          # -DOCSTART- line, blank line, then the first token
    assert conll.find_dev_file(str(folder)).endswith("valid.txt")
    write_conll_dir(tmp_path / "data2", dev_name="dev.txt")
    assert conll.find_dev_file(str(tmp_path / "data2")).endswith("dev.txt")


def test_labels_from_data_and_file(tmp_path):
    sents = conll.read_conll(str(write_conll(tmp_path / "t.txt", conll_sentences())))
    assert conll.labels_from_sentences(sents) == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-ORG", "I-PER"]
    lf = tmp_path / "labels.txt"
    lf.write_text("B-PER\nI-PER\n\nB-LOC\n")
    assert conll.read_labels_file(str(lf)) == ["O", "B-PER", "I-PER", "B-LOC"]
    with pytest.raises(DataError) as err:
        conll.check_labels(sents, conll.read_labels_file(str(lf)), "t.txt")
    assert "B-ORG" in str(err.value) and err.value.line == 3


@pytest.mark.parametrize("bad_line,needle", [
    ("Peter NNP B-NP PERSON", "not an IOB tag"),
    ("Peter", "columns"),
    ("Peter NNP B-PER", "expected 4 columns"),
])
def test_malformed_line_is_error_with_line(tmp_path, bad_line, needle):
    path = tmp_path / "bad.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n" + bad_line + "\n")
    with pytest.raises(DataError) as err:
        conll.read_conll(str(path))
    assert err.value.line == 6 and needle in str(err.value) and str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# features


def test_only_first_piece_carries_the_label(tmp_path, tokenizer):
    sents = [conll.Sentence(["Zwingmann", "said", "EU-wide"], ["B-PER", "O", "B-MISC"], 1)]
    labels = ["O", "B-MISC", "B-PER"]
    feats, metas, stats = conll.convert_sentences_to_features(sents, tokenizer, labels, 32)
    f = feats[0]
    pieces = [tokenizer.tokenize(w) for w in sents[0].words]
    assert len(pieces[0]) > 1 and len(pieces[2]) > 1        # the test needs multi-piece words
    expected = [-100]
    for word_pieces, tag in zip(pieces, sents[0].tags):
        expected += [labels.index(tag)] + [-100] * (len(word_pieces) - 1)
    expected += [-100]
    assert f["labels"] == expected
    assert f["input_ids"] == tokenizer.convert_tokens_to_ids(
        ["[CLS]"] + [p for ps in pieces for p in ps] + ["[SEP]"])
    assert metas[0].first_piece == [1, 1 + len(pieces[0]), 2 + len(pieces[0])]
    assert stats["sentences_split"] == 0


def test_long_sentence_is_split_into_windows_and_every_word_predicted(tmp_path, tokenizer):
    sents = conll.read_conll(str(write_conll(tmp_path / "t.txt", conll_sentences())))
    labels = conll.labels_from_sentences(sents)
    feats, metas, stats = conll.convert_sentences_to_features(sents, tokenizer, labels, 12)
    assert stats["sentences_split"] >= 2
    assert all(len(f["input_ids"]) <= 12 for f in feats)
    # every word appears as a first piece exactly once across windows, in order
    covered = {}
    for m in metas:
        for k in range(len(m.first_piece)):
            covered.setdefault(m.sentence_index, []).append(m.word_start + k)
    assert covered == {i: list(range(len(s.words))) for i, s in enumerate(sents)}
    # decoding one-hot "logits" of the gold labels gives back the gold tags
    logits = []
    for f in feats:
        logits.append([[1.0 if c == lab else 0.0 for c in range(len(labels))] for lab in f["labels"]])
    assert conll.decode_predictions(sents, metas, logits, labels) == [s.tags for s in sents]


def test_write_predictions_keeps_layout(tmp_path):
    src = write_conll(tmp_path / "test.txt", conll_sentences())
    sents = conll.read_conll(str(src))
    preds = [["O"] * len(s.words) for s in sents]
    preds[1][0] = "B-PER"
    out = tmp_path / "test_predictions.txt"
    conll.write_predictions(str(out), str(src), preds)
    src_lines = open(src).read().splitlines()
    out_lines = open(out).read().splitlines()
    assert len(src_lines) == len(out_lines)
    for a, b in zip(src_lines, out_lines):
        if a.startswith("-DOCSTART-") or not a.strip():
            assert a == b
        else:
            assert b.split()[0] == a.split()[0] and len(b.split()) == 2
    assert "Peter B-PER" in out_lines


def test_write_results_format(tmp_path):
    s = conll.entity_scores([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
    conll.write_results(str(tmp_path / "r.txt"), s, {"loss": 0.5})
    lines = open(tmp_path / "r.txt").read().splitlines()
    assert lines == ["LOC_f1 = 0.0", "LOC_precision = 0.0", "LOC_recall = 0.0", "LOC_support = 1",
                     "PER_f1 = 1.0", "PER_precision = 1.0", "PER_recall = 1.0", "PER_support = 1",
                     "f1 = 0.6666666666666666", "loss = 0.5", "precision = 1.0", "recall = 0.5"]
