"""tasks/swag.py: SWAG CSV reading, four-choice features, accuracy (vs scikit-learn), prediction file."""
import csv

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from file_utils import DataError
from fixtures_qa import SWAG_HEADER, make_tokenizer, swag_rows, write_swag, write_swag_dir
from tasks import swag


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return make_tokenizer(vocab_file)


def test_read_train_and_test_files(tmp_path):
    folder = write_swag_dir(tmp_path / "swag")
    train = swag.read_swag_examples(str(folder / "train.csv"))
    rows = swag_rows()
    assert len(train) == len(rows)
    ex = train[1]
    assert (ex.row_id, ex.video_id, ex.fold_ind) == ("1", "lsmdc3001_21_JUMP_STREET-422", "9")
    assert ex.context == "Someone lifts his fork to his mouth." and ex.start_ending == "Someone"
    assert ex.endings[1] == "picks up his sausage then takes a bite." and ex.label == 1
    assert ex.line == 3
    test = swag.read_swag_examples(str(folder / "test.csv"), require_label=False)
    assert [e.label for e in test] == [None] * 3
    with pytest.raises(DataError, match="no 'label' column"):
        swag.read_swag_examples(str(folder / "test.csv"), require_label=True)


@pytest.mark.parametrize("field,value,needle", [
    ("label", "4", "label must be 0..3"),
    ("label", "x", "label must be 0..3"),
    ("ending2", "", "empty sent1 or ending"),
])
def test_bad_row_names_file_and_line(tmp_path, field, value, needle):
    rows = swag_rows()
    rows[2][field] = value
    path = write_swag(tmp_path / "val.csv", rows)
    with pytest.raises(DataError) as err:
        swag.read_swag_examples(str(path))
    assert err.value.line == 4 and needle in str(err.value) and str(path) in str(err.value)


def test_bad_header_and_column_count(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match="not a SWAG header"):
        swag.read_swag_examples(str(path))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SWAG_HEADER)
        w.writerow(["0", "v", "1", "s", "c", "d", "gold", "e0", "e1", "e2"])   # 10 columns
    with pytest.raises(DataError, match="expected 12 columns") as err:
        swag.read_swag_examples(str(path))
    assert err.value.line == 2


def test_features_layout(tmp_path, tokenizer):
    examples = swag.read_swag_examples(str(write_swag_dir(tmp_path / "s") / "train.csv"))
    feats, n_trunc = swag.convert_examples_to_features(examples, tokenizer, 64)
    assert n_trunc == 0 and len(feats) == len(examples)
    ex, f = examples[1], feats[1]
    assert f["labels"] == 1 and len(f["input_ids"]) == 4
    for i, ending in enumerate(ex.endings):
        a = tokenizer.tokenize(ex.context)
        b = tokenizer.tokenize(ex.start_ending) + tokenizer.tokenize(ending)
        tokens = ["[CLS]"] + a + ["[SEP]"] + b + ["[SEP]"]
        assert f["input_ids"][i] == tokenizer.convert_tokens_to_ids(tokens)
        assert f["token_type_ids"][i] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert f["attention_mask"][i] == [1] * len(tokens)


def test_truncation_longest_first_hand_worked():
    a, b = list("abcdefg"), list("xyz")
    swag.truncate_seq_pair(a, b, 6)      # 10 -> 6: pop from a (7>3) 4 times: a=abc, b=xyz
    assert (a, b) == (list("abc"), list("xyz"))
    a, b = list("ab"), list("wxyz")
    swag.truncate_seq_pair(a, b, 3)      # b 4>2 -> wxy; b 3>2 -> wx; a 2 = b 2 -> b pops: w
    assert (a, b) == (list("ab"), list("w"))


def test_truncated_features_fit(tmp_path, tokenizer):
    examples = swag.read_swag_examples(str(write_swag_dir(tmp_path / "s") / "train.csv"))
    feats, n_trunc = swag.convert_examples_to_features(examples, tokenizer, 12)
    assert n_trunc == len(examples)
    assert all(len(ids) <= 12 for f in feats for ids in f["input_ids"])


def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4))
    labels = rng.integers(0, 4, size=50)
    assert swag.accuracy(logits.tolist(), labels.tolist()) == pytest.approx(
        accuracy_score(labels, logits.argmax(1)))


def test_write_predictions(tmp_path):
    examples = swag.read_swag_examples(str(write_swag_dir(tmp_path / "s") / "test.csv"), require_label=False)
    out = tmp_path / "test_predictions.csv"
    swag.write_predictions(str(out), examples, [[0, 1, 0, 0], [0, 0, 0, 2], [3, 0, 0, 0]])
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["id", "video-id", "fold-ind", "label"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"] and [r[3] for r in rows[1:]] == ["1", "3", "0"]
