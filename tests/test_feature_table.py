"""training.features.FeatureTable: features held as array columns (what the feature cache gives) must
be the families' own feature dicts, and its batches the dict path's `collate` batches, exactly."""
import os

import numpy as np
import pytest
import torch

import tasks
import training
from training.data import collate
from training.features import FeatureTable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok(vocab_file):
    from fixtures_qa import make_tokenizer
    return make_tokenizer(vocab_file)


def _assert_batches_equal(got, expected):
    assert list(got) == list(expected)  # same keys, same order
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key


def test_hand_built_batch_pads_each_kind():
    """Hand-computed: ragged ids padded with 0 and the mask built; per-token labels padded with the
    declared -100; multiple choice [B, K, S] with a shorter row of choices; float scalars as float32;
    metadata (strings) left out; pad_to widens."""
    features = [{"input_ids": [5, 6, 7], "labels": [1, -100, 2], "score": 0.5, "id": "a"},
                {"input_ids": [8], "labels": [3], "score": 2.25, "id": "b"}]
    table = FeatureTable.from_features(features)
    batch = table.collate([1, 0], pad_to=4, padding={"input_ids": 0, "labels": -100})
    assert batch["input_ids"].tolist() == [[8, 0, 0, 0], [5, 6, 7, 0]]
    assert batch["labels"].tolist() == [[3, -100, -100, -100], [1, -100, 2, -100]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]
    assert batch["score"].dtype == torch.float32 and batch["score"].tolist() == [2.25, 0.5]
    assert "id" not in batch
    choices = FeatureTable.from_features([{"input_ids": [[1, 2], [3]], "label": 1},
                                          {"input_ids": [[4], [5, 6, 7], [8]], "label": 0}])
    batch = choices.collate([0, 1])
    assert batch["input_ids"].tolist() == [[[1, 2, 0], [3, 0, 0], [0, 0, 0]], [[4, 0, 0], [5, 6, 7], [8, 0, 0]]]
    assert batch["attention_mask"].tolist() == [[[1, 1, 0], [1, 0, 0], [0, 0, 0]], [[1, 0, 0], [1, 1, 1], [1, 0, 0]]]
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [1, 0]
    assert choices.lengths.tolist() == [2, 3]


def test_pop_column_takes_metadata_out(tmp_path):
    """What SQuAD and CoNLL do with their window metadata, on a cached table (the round trip of every
    value kind is tests/test_training.py's)."""
    features = [{"input_ids": [1, 2], "meta": {"k": [1, None]}}, {"input_ids": [3], "meta": {"k": []}}]
    table = training.cached_features(str(tmp_path), {"task": "t"}, lambda: [dict(f) for f in features])
    assert isinstance(table, FeatureTable)
    assert tasks.base.pop_column(table, "meta") == [f["meta"] for f in features]
    assert list(table) == [{"input_ids": [1, 2]}, {"input_ids": [3]}]


def test_a_mixed_numeric_column_batches_through_collate():
    """A column that fits no array kind (ints with a None) is kept as values; a batch that needs it
    goes through collate on the dicts, so it fails or succeeds exactly as the dict path does."""
    features = [{"input_ids": [1, 2], "label": 1}, {"input_ids": [3], "label": 2.5}]
    _assert_batches_equal(FeatureTable.from_features(features).collate([0, 1]), collate(features))


FAMILY_TASKS = ("sst-2", "sts-b", "squad2", "conll", "swag", "pos")


def _family_features(task):
    """Every split's features of a prepared task, by name."""
    found = {"train": task.train_features}
    for name in ("dev_features",):
        if getattr(task, name, None) is not None:
            found[name] = getattr(task, name)
    for split, features in (getattr(task, "features", None) or {}).items():
        found[split] = features
    for eval_name, _, _, features in getattr(task, "dev_sets", []):
        found[eval_name] = features
    return found


@pytest.mark.parametrize("name", FAMILY_TASKS)
def test_each_family_table_equals_its_feature_dicts(name, tok, tmp_path):
    """Each family on its bundled sample data: the cached (table) features equal the uncached (dict)
    ones row by row, their metadata too, and every length-grouped batch of an epoch is collate's batch."""
    data_dir = tasks.sample_data_dirs().get(name, os.path.join(ROOT, "data", "glue_sample"))
    length = 64

    def prepared(cache):
        task = tasks.build_task(name, tok, data_dir, length, cache=cache, max_eval_examples=40)
        task.prepare(train=True, dev=True)
        return task

    plain = prepared(None)
    cached = prepared(lambda key, build: training.cached_features(str(tmp_path), key, build))
    for split, features in _family_features(plain).items():
        table = _family_features(cached)[split]
        assert isinstance(table, FeatureTable) and not isinstance(features, FeatureTable), split
        assert list(table) == list(features), split
        np.testing.assert_array_equal(table.lengths, [training.feature_length(f) for f in features])
        for batch in training.make_batches(table.lengths, 7, seed=3, epoch=0):
            for pad_to in (None, length):
                _assert_batches_equal(table.collate(batch, pad_to, plain.padding),
                                      collate([features[i] for i in batch], pad_to, plain.padding))
    for metas in ("dev_metas", "metas"):
        assert getattr(cached, metas, None) == getattr(plain, metas, None)
