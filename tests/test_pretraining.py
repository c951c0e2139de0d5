"""tasks/pretraining.py: corpus reading, masking statistics, random-next sampling, instance layout,
pregenerated epochs in RAM vs memmap, the simple-LM quick path, and clear data errors.

Expectations are hand-derived from the BERT recipe (num_to_mask formula, 80/10/10 split, sentence-
weighted sampling probabilities len_j / (total - len_i)) and checked with SciPy's chi-square test.
"""
import json
import os
import random
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from file_utils import DataError
from tasks import pretraining as P
from tokenization import BertTokenizer


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return BertTokenizer(vocab_file, do_lower_case=True)


@pytest.fixture(scope="module")
def vocab_list(tokenizer):
    return list(tokenizer.vocab)


def _single_piece_words(tokenizer, n, start=2000):
    """`n` lower-case words that the tokenizer keeps as one word piece each."""
    words = []
    for token, _ in sorted(tokenizer.vocab.items(), key=lambda kv: kv[1]):
        if _ < start or not token.isalpha() or not token.isascii() or len(token) < 4:
            continue
        if tokenizer.tokenize(token) == [token]:
            words.append(token)
            if len(words) == n:
                return words
    raise AssertionError("vocab too small")


def write_corpus(path, docs):
    """docs: list of documents, each a list of sentence strings."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(doc) for doc in docs) + "\n")


def disjoint_corpus(tokenizer, num_docs=12, seed=0):
    """Documents whose words never occur in another document, so a token tells its document."""
    rng = random.Random(seed)
    words = _single_piece_words(tokenizer, num_docs * 15)
    docs, owner = [], {}
    for d in range(num_docs):
        own = words[d * 15:(d + 1) * 15]
        owner.update({w: d for w in own})
        docs.append([" ".join(rng.choice(own) for _ in range(rng.randint(4, 14)))
                     for _ in range(rng.randint(1, 9))])
    return docs, owner


def _sequence(rng, n_words, vocab_words):
    body = [rng.choice(vocab_words) for _ in range(n_words)]
    cut = rng.randint(1, n_words - 1)
    return ["[CLS]"] + body[:cut] + ["[SEP]"] + body[cut:] + ["[SEP]"]


# ----------------------------------------------------------------------------------------------
# masking


def test_num_to_mask_positions_labels_and_specials(vocab_list):
    rng = random.Random(1)
    words = vocab_list[2000:3000]
    for _ in range(400):
        tokens = _sequence(rng, rng.randint(2, 200), words)
        original = list(tokens)
        out, positions, labels = P.create_masked_lm_predictions(
            list(tokens), 0.15, 20, False, vocab_list, rng)
        expected = min(20, max(1, int(round(len(original) * 0.15))))
        assert len(positions) == min(expected, len(original) - 3)
        assert positions == sorted(set(positions))
        assert all(original[p] not in ("[CLS]", "[SEP]") for p in positions)
        assert labels == [original[p] for p in positions]
        unmasked = [t for i, t in enumerate(out) if i not in set(positions)]
        assert unmasked == [t for i, t in enumerate(original) if i not in set(positions)]
        # [CLS]/[SEP] keep their places
        assert [i for i, t in enumerate(out) if t in ("[CLS]", "[SEP]")] == \
            [i for i, t in enumerate(original) if t in ("[CLS]", "[SEP]")]


def test_num_to_mask_rounds_like_python_round(vocab_list):
    # len 30 * 0.15 = 4.5 -> round() gives 4 (banker's rounding), 50 * 0.15 = 7.5 -> 8; 10 * 0.15 -> 2
    rng = random.Random(0)
    for n_tokens, expected in ((30, 4), (50, 8), (10, 2), (5, 1), (300, 20)):
        tokens = _sequence(rng, n_tokens - 3, vocab_list[2000:3000])
        assert len(tokens) == n_tokens
        _, positions, _ = P.create_masked_lm_predictions(tokens, 0.15, 20, False, vocab_list, rng)
        assert len(positions) == expected, n_tokens


def test_mask_replacement_split_80_10_10(vocab_list):
    rng = random.Random(2)
    words = vocab_list[2000:3000]
    kinds = Counter()
    random_ids = []
    index = {t: i for i, t in enumerate(vocab_list)}
    for _ in range(3000):
        tokens = _sequence(rng, 120, words)
        out, positions, labels = P.create_masked_lm_predictions(list(tokens), 0.15, 20, False, vocab_list, rng)
        for p, label in zip(positions, labels):
            if out[p] == "[MASK]":
                kinds["mask"] += 1
            elif out[p] == label:
                kinds["keep"] += 1
            else:
                kinds["random"] += 1
                random_ids.append(index[out[p]])
    total = sum(kinds.values())
    assert total == 3000 * 18  # round(123 * 0.15) = 18 each
    assert abs(kinds["mask"] / total - 0.8) < 0.01
    assert abs(kinds["keep"] / total - 0.1) < 0.008
    assert abs(kinds["random"] / total - 0.1) < 0.008
    # random replacements are uniform over the WHOLE vocab (specials and [unused] included)
    counts = np.bincount(np.array(random_ids) * 10 // len(vocab_list), minlength=10)
    assert chisquare(counts).pvalue > 1e-4
    assert min(random_ids) < 1000  # the [unused*] block at the start of the vocab is reachable


def test_whole_word_groups_are_masked_together(vocab_list):
    rng = random.Random(3)
    heads = [t for t in vocab_list[2000:4000] if t.isalpha()]
    pieces = [t for t in vocab_list if t.startswith("##") and t[2:].isalpha()][:300]
    partial_without_wwm = 0
    for trial in range(600):
        words = []
        for _ in range(rng.randint(5, 40)):
            words.append([rng.choice(heads)] + [rng.choice(pieces) for _ in range(rng.choice((0, 0, 1, 2, 3)))])
        cut = rng.randint(1, len(words) - 1)
        tokens = ["[CLS]"] + sum(words[:cut], []) + ["[SEP]"] + sum(words[cut:], []) + ["[SEP]"]
        groups, pos = [], 1
        for k, w in enumerate(words):
            if k == cut:
                pos += 1  # the middle [SEP]
            groups.append(set(range(pos, pos + len(w))))
            pos += len(w)
        wwm = trial % 2 == 0
        _, positions, labels = P.create_masked_lm_predictions(list(tokens), 0.15, 20, wwm, vocab_list, rng)
        chosen = set(positions)
        assert len(chosen) <= min(20, max(1, round(len(tokens) * 0.15)))
        partial = [g for g in groups if g & chosen and not g <= chosen]
        if wwm:
            assert not partial, (tokens, positions)
            assert labels == [tokens[p] for p in positions]
        else:
            partial_without_wwm += bool(partial)
    assert partial_without_wwm > 20  # the check above can fail: per-piece masking does split words


def test_truncate_seq_pair_takes_from_longer_side_both_ends():
    rng = random.Random(0)
    fronts = backs = 0
    for _ in range(200):
        a, b = list(range(30)), list(range(100, 110))
        P.truncate_seq_pair(a, b, 25, rng)
        assert len(a) + len(b) == 25 and len(b) == 10  # only the longer side shrinks here
        assert a == list(range(a[0], a[0] + len(a)))  # a contiguous slice of the original
        fronts += a[0] > 0
        backs += a[-1] < 29
    assert fronts > 50 and backs > 50


# ----------------------------------------------------------------------------------------------
# documents and random-next sampling


def test_document_database_sampling_is_sentence_weighted_and_never_current(tokenizer, tmp_path):
    lengths = [1, 3, 2, 5, 4]
    docs = [[f"sentence {d} {s}" for s in range(n)] for d, n in enumerate(lengths)]
    write_corpus(tmp_path / "c.txt", docs)
    for reduce_memory in (False, True):
        db = P.read_corpus(str(tmp_path / "c.txt"), tokenizer, reduce_memory=reduce_memory, workdir=str(tmp_path))
        with db:
            assert len(db) == 5 and db.num_sentences == 15
            assert list(db.doc_lengths) == lengths
            assert db[3] == [tokenizer.tokenize(s) for s in docs[3]]
            rng = random.Random(4)
            for current in range(5):
                draws = Counter(db.sample_doc_index(current, rng) for _ in range(6000))
                assert current not in draws
                others = [j for j in range(5) if j != current]
                expected = [6000 * lengths[j] / (15 - lengths[current]) for j in others]
                assert chisquare([draws[j] for j in others], expected).pvalue > 1e-4
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".documents_")]  # temp folder removed


def test_reduce_memory_database_keeps_tokens_in_a_file(tokenizer, tmp_path):
    docs, _ = disjoint_corpus(tokenizer, 6)
    write_corpus(tmp_path / "c.txt", docs)
    ram = P.read_corpus(str(tmp_path / "c.txt"), tokenizer)
    disk = P.read_corpus(str(tmp_path / "c.txt"), tokenizer, reduce_memory=True, workdir=str(tmp_path))
    with ram, disk:
        token_file = os.path.join(disk._tmpdir.name, "tokens.bin")
        assert os.path.getsize(token_file) == 4 * disk.num_tokens
        assert not hasattr(disk, "_ids")
        for d in range(len(ram)):
            assert ram[d] == disk[d] == [tokenizer.tokenize(s) for s in docs[d]]


@pytest.mark.parametrize("text, message", [
    ("", "holds no text"),
    ("\n\n   \n", "holds no text"),
    ("one sentence.\nanother sentence.\nthird one.\n", "found 1 document"),
    ("\nonly document here.\nsecond line.\n\n\n", "found 1 document"),
])
def test_corpus_errors(tokenizer, tmp_path, text, message):
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        P.read_corpus(str(path), tokenizer)
    with pytest.raises(DataError, match=message):
        P.read_corpus(str(path), tokenizer, reduce_memory=True, workdir=str(tmp_path))


def test_corpus_bad_utf8_names_the_line(tokenizer, tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"fine line\n\nalso fine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"c\.txt:4: not valid UTF-8"):
        P.read_corpus(str(path), tokenizer)


# ----------------------------------------------------------------------------------------------
# instances


def _unmask(inst):
    tokens = list(inst["tokens"])
    for p, label in zip(inst["masked_lm_positions"], inst["masked_lm_labels"]):
        tokens[p] = label
    return tokens


@pytest.mark.parametrize("reduce_memory", [False, True])
def test_instances_layout_and_random_next_document(tokenizer, vocab_list, tmp_path, reduce_memory):
    docs, owner = disjoint_corpus(tokenizer, 12)
    write_corpus(tmp_path / "c.txt", docs)
    db = P.read_corpus(str(tmp_path / "c.txt"), tokenizer, reduce_memory=reduce_memory, workdir=str(tmp_path))
    rng = random.Random(5)
    n_random = n_total = 0
    with db:
        for epoch in range(6):
            for d in range(len(db)):
                for inst in P.create_instances_from_document(db, d, 40, 0.1, 0.15, 20, False, vocab_list, rng):
                    tokens = _unmask(inst)
                    assert len(tokens) <= 40 and len(inst["segment_ids"]) == len(tokens)
                    sep1 = tokens.index("[SEP]")
                    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
                    assert inst["segment_ids"] == [0] * (sep1 + 1) + [1] * (len(tokens) - sep1 - 1)
                    a, b = tokens[1:sep1], tokens[sep1 + 1:-1]
                    assert a and b
                    assert {owner[t] for t in a} == {d}
                    b_docs = {owner[t] for t in b}
                    assert len(b_docs) == 1
                    if inst["is_random_next"]:
                        assert b_docs != {d}
                        n_random += 1
                    else:
                        assert b_docs == {d}
                    n_total += 1
                    json.dumps(inst)  # serializable as written
    # one-sentence chunks are always random-next, others half of the time
    assert 0.45 < n_random / n_total < 0.8


def test_instances_cover_document_in_order_when_not_random(tokenizer, vocab_list, tmp_path):
    # Long target, short sentences: an actual-next instance is a contiguous run of the document.
    docs = [[f"w{d}a w{d}b w{d}c number {s}" for s in range(8)] for d in range(4)]
    write_corpus(tmp_path / "c.txt", docs)
    with P.read_corpus(str(tmp_path / "c.txt"), tokenizer) as db:
        rng = random.Random(6)
        seen = 0
        for d in range(len(db)):
            flat = sum(db[d], [])
            for inst in P.create_instances_from_document(db, d, 128, 0.0, 0.15, 20, True, vocab_list, rng):
                if not inst["is_random_next"]:
                    tokens = _unmask(inst)
                    body = [t for t in tokens if t not in ("[CLS]", "[SEP]")]
                    assert any(flat[i:i + len(body)] == body for i in range(len(flat) - len(body) + 1))
                    seen += 1
        assert seen >= 1


def test_write_epoch_metrics_and_reproducibility(tokenizer, vocab_list, tmp_path):
    docs, _ = disjoint_corpus(tokenizer, 10)
    write_corpus(tmp_path / "c.txt", docs)
    with P.read_corpus(str(tmp_path / "c.txt"), tokenizer) as db:
        out = tmp_path / "out"
        n0 = P.write_epoch(db, str(out), 0, max_seq_len=32, vocab_list=vocab_list, seed=7)
        n1 = P.write_epoch(db, str(out), 1, max_seq_len=32, vocab_list=vocab_list, seed=7)
        first = (out / "epoch_0.json").read_bytes()
        P.write_epoch(db, str(out), 0, max_seq_len=32, vocab_list=vocab_list, seed=7)
        assert (out / "epoch_0.json").read_bytes() == first  # same seed + epoch -> same data
    for epoch, n in ((0, n0), (1, n1)):
        lines = (out / f"epoch_{epoch}.json").read_text().splitlines()
        assert len(lines) == n > 0
        assert json.loads((out / f"epoch_{epoch}_metrics.json").read_text()) == \
            {"num_training_examples": n, "max_seq_len": 32}
    assert (out / "epoch_0.json").read_bytes() != (out / "epoch_1.json").read_bytes()


# ----------------------------------------------------------------------------------------------
# pregenerated epochs -> arrays


@pytest.fixture()
def pregenerated(tokenizer, vocab_list, tmp_path):
    docs, _ = disjoint_corpus(tokenizer, 10)
    write_corpus(tmp_path / "c.txt", docs)
    with P.read_corpus(str(tmp_path / "c.txt"), tokenizer) as db:
        n = P.write_epoch(db, str(tmp_path / "data"), 0, max_seq_len=48, vocab_list=vocab_list, seed=1,
                          whole_word_mask=True)
    # As pregenerate_training_data.py does after the last epoch: marks the folder complete.
    (tmp_path / "data" / P.CONFIG_FILE).write_text('{"epochs_to_generate": 1, "max_seq_len": 48}')
    return tmp_path / "data", n


def test_pregenerated_epoch_matches_json_and_memmap_equals_ram(tokenizer, pregenerated, tmp_path):
    folder, n = pregenerated
    [(path, num, max_len)] = P.find_pregenerated_epochs(str(folder))
    assert (num, max_len) == (n, 48)
    ram = P.PregeneratedEpoch(path, num, max_len, tokenizer.vocab)
    mm = P.PregeneratedEpoch(path, num, max_len, tokenizer.vocab, memmap_dir=str(tmp_path / "mm"), chunk_rows=5)
    files = sorted(os.listdir(tmp_path / "mm"))
    assert files == sorted(f"epoch_0.{k}.memmap" for k, _, _ in P.PregeneratedEpoch.ARRAYS)
    assert os.path.getsize(tmp_path / "mm" / "epoch_0.input_ids.memmap") == 4 * n * 48
    assert ram.nbytes == mm.nbytes == n * 48 * (4 + 1 + 1 + 4) + n * (1 + 4)
    instances = [json.loads(line) for line in open(path)]
    rng = np.random.default_rng(0)
    for _ in range(10):
        idx = rng.choice(n, size=min(7, n), replace=False)
        a, b = ram.batch(idx), mm.batch(idx)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == torch.int64 and torch.equal(a[k], b[k]), k
        width = max(len(instances[i]["tokens"]) for i in idx)
        assert a["input_ids"].shape == (len(idx), width)
        for r, i in enumerate(idx):
            inst = instances[i]
            L = len(inst["tokens"])
            assert tokenizer.convert_ids_to_tokens(a["input_ids"][r, :L].tolist()) == inst["tokens"]
            assert a["attention_mask"][r].tolist() == [1] * L + [0] * (width - L)
            assert a["token_type_ids"][r, :L].tolist() == inst["segment_ids"]
            labels = a["masked_lm_labels"][r]
            assert torch.nonzero(labels != -100).flatten().tolist() == inst["masked_lm_positions"]
            assert tokenizer.convert_ids_to_tokens(labels[labels != -100].tolist()) == inst["masked_lm_labels"]
            assert a["next_sentence_label"][r].item() == int(inst["is_random_next"])
    # The memmap variant keeps no array in the process and no mapping alive between batches, so
    # its pages cannot pile up in the resident set while an epoch is read.
    assert mm._arrays == {} and mm.lengths.nbytes == 4 * n
    if os.path.exists("/proc/self/maps"):
        assert ".memmap" not in open("/proc/self/maps").read()
    mm.close()
    assert os.listdir(tmp_path / "mm") == []


def test_pregenerated_epoch_count_mismatch_and_foreign_vocab(tokenizer, pregenerated, tmp_path):
    folder, n = pregenerated
    path = str(folder / "epoch_0.json")
    with pytest.raises(DataError, match=f"holds {n} instances but its metrics file announces {n + 1}"):
        P.PregeneratedEpoch(path, n + 1, 48, tokenizer.vocab)
    with pytest.raises(DataError, match="more instances than"):
        P.PregeneratedEpoch(path, n - 1, 48, tokenizer.vocab)
    vocab = dict(tokenizer.vocab)
    first = json.loads(open(path).readline())["tokens"][1]
    del vocab[first]
    with pytest.raises(DataError, match=r"epoch_0\.json:1: token .* is not in the vocabulary"):
        P.PregeneratedEpoch(path, n, 48, vocab)
    with pytest.raises(DataError, match="inconsistent instance"):
        P.PregeneratedEpoch(path, n, 10, tokenizer.vocab)


def test_find_pregenerated_epochs_checks_line_counts(pregenerated):
    folder, n = pregenerated
    path = folder / "epoch_0.json"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # a truncated file
    with pytest.raises(DataError, match=f"holds {n - 1} lines but its metrics file announces {n}"):
        P.find_pregenerated_epochs(str(folder))
    path.write_text("".join(lines).rstrip("\n"))  # no final newline: still n lines
    assert P.find_pregenerated_epochs(str(folder))[0][1] == n


def test_find_pregenerated_epochs_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        P.find_pregenerated_epochs(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="holds no pregenerated data"):
        P.find_pregenerated_epochs(str(tmp_path))
    (tmp_path / "epoch_0.json").write_text("{}\n")
    (tmp_path / "epoch_0_metrics.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a metrics file"):
        P.find_pregenerated_epochs(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# simple LM quick path


def test_simple_lm_features(tokenizer, tmp_path):
    docs, owner = disjoint_corpus(tokenizer, 12, seed=3)
    docs.append(["a single sentence document gives no pair"])
    write_corpus(tmp_path / "c.txt", docs)
    special = {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id, "mask": tokenizer.mask_token_id}
    with P.read_corpus(str(tmp_path / "c.txt"), tokenizer) as db:
        expected_pairs = sum(len(d) - 1 for d in docs)
        assert P.num_sentence_pairs(db) == expected_pairs
        feats = []
        rng = random.Random(8)
        for _ in range(20):
            feats.extend(P.simple_lm_features(db, 24, special, len(tokenizer.vocab), rng))
    assert len(feats) == 20 * expected_pairs
    id_owner = {tokenizer.vocab[w]: d for w, d in owner.items()}
    random_next = 0
    for f in feats:
        ids, labels = f["input_ids"], f["masked_lm_labels"]
        assert len(ids) <= 24 and len(labels) == len(ids) == len(f["token_type_ids"])
        assert ids[0] == special["cls"] and ids[-1] == special["sep"]
        originals = [lab if lab != -100 else t for t, lab in zip(ids, labels)]
        sep1 = originals.index(special["sep"])
        assert all(labels[i] == -100 for i in (0, sep1, len(ids) - 1))
        assert any(lab != -100 for lab in labels)
        a_docs = {id_owner.get(t, 12) for t in originals[1:sep1]}  # 12: the one-sentence document
        b_docs = {id_owner.get(t, 12) for t in originals[sep1 + 1:-1]}
        assert len(a_docs) == 1 and len(b_docs) == 1
        assert (a_docs != b_docs) == bool(f["next_sentence_label"])
        random_next += f["next_sentence_label"]
    assert abs(random_next / len(feats) - 0.5) < 0.05


def test_simple_lm_per_token_masking_statistics():
    rng = random.Random(9)
    ids = list(range(1000, 1100)) * 400
    out, labels = P.random_word_ids(ids, 30522, 103, rng)
    chosen = [i for i, lab in enumerate(labels) if lab != -100]
    assert abs(len(chosen) / len(ids) - 0.15) < 0.005
    assert all(labels[i] == ids[i] for i in chosen)
    assert all(out[i] == ids[i] for i in range(len(ids)) if labels[i] == -100)
    mask = sum(out[i] == 103 for i in chosen) / len(chosen)
    keep = sum(out[i] == ids[i] for i in chosen) / len(chosen)
    assert abs(mask - 0.8) < 0.015 and abs(keep - 0.1) < 0.012 and abs(1 - mask - keep - 0.1) < 0.012
