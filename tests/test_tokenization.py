"""Tests for tokenization.py.

The main check compares our BertTokenizer token-for-token and id-for-id with transformers'
pure-Python `BertTokenizerLegacy` on a large generated corpus of awkward text (accents, CJK,
Hangul, kana, control and zero-width chars, emoji, combining marks, NFC/NFD variants, long
words, special tokens inside words, odd whitespace, URLs), lower-cased and cased. Small
hand-written vocabularies check the 2019 semantics independently of transformers.
"""
import os
import random
import unicodedata

import pytest
import transformers

from file_utils import ConfigError
from tokenization import BasicTokenizer, BertTokenizer, WordpieceTokenizer, truncate_seq_pair

N_LINES = 4000  # per run; two runs (uncased, cased) + smaller option runs


# --------------------------------------------------------------------------- corpus

def _rand_range(rng, lo, hi, n):
    return "".join(chr(rng.randint(lo, hi)) for _ in range(n))


_WHITESPACE = [" ", " ", " ", "  ", "\t", "\r", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u2029",
               "\u1680", "\u2003", "\u200a", "\x0b", "\x0c", "\x1c", "\x85", "\u202f"]
_ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\ufeff", "\u2060", "\u00ad"]
_CONTROL = ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\x9f", "\ufffd", "\ue000", "\U000f0000",
            "\u0378", "\udc80", "\u200e", "\u202e"]
_SPECIAL = ["[SEP]", "[CLS]", "[MASK]", "[UNK]", "[PAD]", "[sep]", "[Mask]", "[SEP", "SEP]", "[[SEP]]",
            "[SEP[MASK]]", "[CLS][SEP]", "[MASK][MASK]", "[ SEP ]", "[UNK]]", "[[PAD]", "[SE\u200bP]",
            "[MA\x00SK]", "[]", "[[]]"]
_PUNCT = ["!", "?", "...", "!!!???", "--", "—", "–", "…", "«", "»", "¿", "¡", "、", "。", "「", "」",
          "‘", "’", "“", "”", "$", "^", "`", "~", "|", "@#%&*", "(", ")", "{}", "<>", "§", "¶", "•",
          "·", "†", "‰", "′", "※", "·.·", "'", '"', "\\", "/", "+", "=", "_", "©", "®", "™", "°", "±"]
_WORDS = ["the", "The", "THE", "running", "Unwanted", "unaffable", "McDonald", "iPhone", "naïve",
          "café", "cafe\u0301", "Ångström", "A\u030angstro\u0308m", "résumé", "über", "Straße", "STRASSE",
          "İstanbul", "ıi", "ﬁnance", "ΣΑΣ", "Ελληνικά", "Москва", "Привет", "日本語", "東京タワー",
          "ひらがな", "カタカナ", "한국어", "\u1112\u1161\u11ab", "中文字符", "\u4e00\u9fff", "\U00020000\U0002a6df",
          "\uf900\ufa0a", "\U0002f800", "עברית", "العربية", "हिन्दी", "ไทย", "Đặng", "Việt", "ǅ", "ǈ",
          "e\u0301\u0302\u0303", "a\u0308\u0301", "\u0301start", "o\u0338", "ℌ", "Ⅻ", "½", "²", "①",
          "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "\u2764\ufe0f", "x\u20dd", "0xDEADBEEF",
          "12,345.67", "3.14159", "1e-6", "2019-06-22", "10:30pm", "$100", "50%", "#hashtag", "@user",
          "https://example.com/a/b?c=d&e=f#g", "www.test.org", "user@mail.co.uk", "C++", "don't",
          "o'clock", "rock'n'roll", "e.g.", "U.S.A.", "co-operate", "state-of-the-art", "snake_case",
          "CamelCaseWord", "ALLCAPS", "x[SEP]y", "ab[MASK]cd", "[UNK]ed", "pre[CLS]", "hello[PAD]"]


def _random_word(rng, vocab_words):
    kind = rng.random()
    if kind < 0.45:
        return rng.choice(vocab_words)
    if kind < 0.65:
        return rng.choice(_WORDS)
    if kind < 0.70:
        return rng.choice(_SPECIAL)
    if kind < 0.76:
        return rng.choice(_PUNCT)
    if kind < 0.80:
        # A word glued to punctuation / zero-width / control chars.
        return (rng.choice(vocab_words) + rng.choice(_PUNCT + _ZERO_WIDTH + _CONTROL)
                + rng.choice(vocab_words))
    if kind < 0.83:
        # Very long words around the 100-char limit, some made of known pieces.
        n = rng.choice([99, 100, 101, 150, 300])
        if rng.random() < 0.5:
            return ("ab" * n)[:n]
        return _rand_range(rng, 0x61, 0x7a, n)
    if kind < 0.93:
        lo, hi = rng.choice([(0x20, 0x7e), (0xa0, 0x24f), (0x300, 0x36f), (0x370, 0x3ff), (0x400, 0x4ff),
                             (0x590, 0x6ff), (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff),
                             (0x1e00, 0x1eff), (0x2000, 0x206f), (0x2100, 0x22ff), (0x3000, 0x30ff),
                             (0x3400, 0x4dbf), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0xf900, 0xfaff),
                             (0xfb00, 0xfb4f), (0xfe00, 0xfe6f), (0xff00, 0xffef), (0x1f300, 0x1faff),
                             (0x20000, 0x2a6df), (0x2f800, 0x2fa1f), (0x0, 0x2ffff)])
        return _rand_range(rng, lo, hi, rng.randint(1, 8))
    if kind < 0.96:
        w = rng.choice(vocab_words)
        return unicodedata.normalize(rng.choice(["NFC", "NFD", "NFKC", "NFKD"]), w.upper() + "é")
    return str(rng.randint(0, 10 ** rng.randint(1, 12)))


def make_corpus(vocab_tokens, n_lines, seed):
    """Deterministic list of awkward lines."""
    rng = random.Random(seed)
    vocab_words = [t for t in vocab_tokens if not t.startswith("[") or t in ("[SEP]", "[MASK]")]
    lines = []
    for i in range(n_lines):
        n_words = rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 40])
        parts = []
        for _ in range(n_words):
            w = _random_word(rng, vocab_words)
            r = rng.random()
            if r < 0.15:
                w = w.capitalize()
            elif r < 0.2:
                w = w.upper()
            parts.append(w)
            parts.append(rng.choice(_WHITESPACE) if rng.random() < 0.85 else rng.choice(
                _ZERO_WIDTH + _CONTROL + [""]))
        line = "".join(parts)
        if rng.random() < 0.1:
            line = rng.choice(_WHITESPACE) + line + rng.choice(_WHITESPACE)
        if rng.random() < 0.1:
            line = unicodedata.normalize(rng.choice(["NFC", "NFD"]), line)
        lines.append(line)
    lines += ["", " ", "\t\n", "\u200b", "[SEP]", "[sep]", "x" * 100, "x" * 101, "\x00", "\ufffd"]
    return lines


# --------------------------------------------------------------------------- comparison with HF

def _legacy(vocab_file, **kwargs):
    return transformers.BertTokenizerLegacy(vocab_file, **kwargs)


def _compare(ours, ref, lines):
    mismatches = []
    for line in lines:
        a, b = ours.tokenize(line), ref.tokenize(line)
        if a != b or ours.convert_tokens_to_ids(a) != ref.convert_tokens_to_ids(b):
            mismatches.append((line, a, b))
    return mismatches


@pytest.fixture(scope="module")
def vocab_tokens(vocab_file):
    with open(vocab_file, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


@pytest.mark.parametrize("do_lower_case,seed", [(True, 1), (False, 2)])
def test_matches_transformers_legacy_on_large_corpus(vocab_file, vocab_tokens, do_lower_case, seed):
    ref = _legacy(vocab_file, do_lower_case=do_lower_case)
    # A small cache forces evictions during the run, so the cached path is checked too.
    ours = BertTokenizer(vocab_file, do_lower_case=do_lower_case, cache_size=500)
    lines = make_corpus(vocab_tokens, N_LINES, seed)
    assert len(lines) > 2000
    # The corpus really contains the awkward cases it claims to.
    joined = "".join(lines)
    for needle in ["\u200b", "\u200d", "\ufeff", "\u3000", "\u00a0", "\r", "[SEP]", "\u0301", "😀",
                   "한국어", "ひらがな"]:
        assert needle in joined, needle
    mismatches = _compare(ours, ref, lines)
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:3]!r}"
    # Second pass runs on warm caches and must give the same answer.
    assert _compare(ours, ref, lines[:300]) == []
    assert len(ours._cache) <= 500


@pytest.mark.parametrize("kwargs", [
    dict(do_lower_case=False, strip_accents=True),
    dict(do_lower_case=True, strip_accents=False),
    dict(do_lower_case=True, tokenize_chinese_chars=False),
    dict(do_lower_case=True, never_split=["hello-world!", "Foo.Bar"]),
])
def test_matches_transformers_legacy_options(vocab_file, vocab_tokens, kwargs):
    ref = _legacy(vocab_file, **kwargs)
    ours = BertTokenizer(vocab_file, **kwargs)
    lines = make_corpus(vocab_tokens, 300, 7)
    lines += ["say hello-world! now", "Foo.Bar and foo.bar", "x hello-world!y"]
    assert _compare(ours, ref, lines) == []


def test_special_token_splitting_matches_transformers_trie(vocab_file):
    # Dense random strings over the letters of the special tokens: overlapping, nested and
    # broken brackets, where our regex split and transformers' trie could disagree.
    ref = _legacy(vocab_file)
    ours = BertTokenizer(vocab_file)
    rng = random.Random(5)
    alphabet = list("[]SEPCLMAKUNDsep x") + ["[SEP]", "[MASK]", "[CLS]", "[UNK]", "[PAD]", "\u200b"]
    lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25))) for _ in range(1500)]
    assert sum("[SEP]" in x for x in lines) > 100
    assert _compare(ours, ref, lines) == []


def test_ids_match_transformers_for_arbitrary_tokens(vocab_file):
    ref = _legacy(vocab_file)
    ours = BertTokenizer(vocab_file)
    tokens = ["hello", "[unk]", "nosuchtoken", "##ing", "[MASK]", "", " ", "Hello", "##"]
    assert ours.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
    ids = [0, 100, 101, 102, 103, 7592, 30521]
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(10 ** 6) == "[UNK]"
    import numpy as np
    import torch
    assert ours.convert_ids_to_tokens(np.int64(7592)) == "hello"
    assert ours.convert_ids_to_tokens(torch.tensor(7592)) == "hello"
    assert ours.convert_ids_to_tokens(torch.tensor([101, 7592])) == ["[CLS]", "hello"]
    assert ours.convert_tokens_to_ids("hello") == 7592


# --------------------------------------------------------------------------- 2019 semantics, tiny vocab

TINY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "want", "##want", "##ed", "wa", "un", "runn",
        "##ing", ",", "low", "lowest", "##est", "é"]


@pytest.fixture()
def tiny_vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TINY) + "\n", encoding="utf-8")
    return str(path)


def test_basic_tokenizer_rules():
    # Examples from the original BERT tests.
    assert BasicTokenizer().tokenize(" \tHeLLo!how  \n Are yoU?  ") == ["hello", "!", "how", "are", "you", "?"]
    assert BasicTokenizer().tokenize("H\u00E9llo") == ["hello"]
    assert BasicTokenizer(do_lower_case=False).tokenize(" \tHeLLo!how  \n Are yoU?  ") == [
        "HeLLo", "!", "how", "Are", "yoU", "?"]
    assert BasicTokenizer(do_lower_case=False).tokenize("H\u00E9llo") == ["H\u00E9llo"]
    assert BasicTokenizer().tokenize("ah\u535A\u63A8zz") == ["ah", "\u535A", "\u63A8", "zz"]
    # Hangul / kana are not split per character; control chars vanish; NBSP splits.
    assert BasicTokenizer(do_lower_case=False).tokenize("한국어 ひら\x00がな a\u00a0b") == [
        "한국어", "ひらがな", "a", "b"]
    # Accent stripping (NFD, drop Mn) decomposes Hangul into jamo and drops the kana voicing mark.
    assert BasicTokenizer().tokenize("한 が") == ["\u1112\u1161\u11ab", "\u304b"]
    assert BasicTokenizer(never_split=["[X]"]).tokenize("[X] [Y]") == ["[X]", "[", "y", "]"]


def test_wordpiece_rules():
    vocab = {t: i for i, t in enumerate(TINY)}
    wp = WordpieceTokenizer(vocab, unk_token="[UNK]")
    assert wp.tokenize("") == []
    assert wp.tokenize("unwanted running") == ["un", "##want", "##ed", "runn", "##ing"]
    assert wp.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]
    assert wp.tokenize("lowest") == ["lowest"]  # longest match first, not low + ##est
    assert wp.tokenize("w" * 101) == ["[UNK]"]


def test_bert_tokenizer_on_tiny_vocab(tiny_vocab):
    tok = BertTokenizer(tiny_vocab)
    tokens = tok.tokenize("UNwant\u00E9d,running")
    assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert tok.convert_tokens_to_ids(tokens) == [9, 6, 7, 12, 10, 11]
    # Special tokens are cut out of words (today's behaviour), kept in their case.
    assert tok.tokenize("want[SEP]running [MASK]") == ["want", "[SEP]", "runn", "##ing", "[MASK]"]
    assert tok.tokenize("[sep]") == ["[UNK]", "[UNK]", "[UNK]"]
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id, tok.unk_token_id) == (
        2, 3, 0, 4, 1)
    assert (tok.cls_token, tok.sep_token, tok.pad_token, tok.mask_token, tok.unk_token) == (
        "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")
    assert tok.vocab["runn"] == 10 and tok.ids_to_tokens[10] == "runn" and len(tok) == len(TINY)
    # Picklable (feature building in worker processes), caches included.
    import pickle
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.tokenize("UNwant\u00E9d,running \u535A x[SEP]") == tok.tokenize("UNwant\u00E9d,running \u535A x[SEP]")
    # Cased keeps the accent, so é stays a separate known token only when lower-cased.
    assert BertTokenizer(tiny_vocab, do_lower_case=False).tokenize("é É") == ["é", "[UNK]"]


@pytest.mark.parametrize("content,needle", [
    (b"", "is empty"),
    (b"[PAD]\n[UNK]\nhello\n", "[SEP], [CLS], [MASK] are not in the vocab"),
    ("\ufeff[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n".encode("utf-8"), ":1: starts with a byte-order mark"),
    (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nab\xffc\n", ":6: not valid UTF-8"),
])
def test_bad_vocab_files_are_refused_with_file_and_line(tmp_path, content, needle):
    # Each would shift or break token ids (an appended [MASK] id can lie outside the embedding matrix).
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        BertTokenizer(str(path))
    assert needle in str(err.value) and str(path) in str(err.value)


def test_bad_byte_deep_in_a_large_vocab_names_its_line(tmp_path):
    # Python decodes text files in blocks: the line must come from the bytes, not the block offset.
    lines = [b"[PAD]", b"[UNK]", b"[CLS]", b"[SEP]", b"[MASK]"] + [f"tok{i}".encode() for i in range(20000)]
    lines[15000] = b"caf\xe9"
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ConfigError, match=f"^{path}:15001: not valid UTF-8"):
        BertTokenizer(str(path))


def test_save_vocabulary_and_from_pretrained(tiny_vocab, tmp_path):
    tok = BertTokenizer(tiny_vocab)
    out = tmp_path / "out"
    out.mkdir()
    path = tok.save_vocabulary(str(out))
    assert path == str(out / "vocab.txt")
    assert open(path, encoding="utf-8").read() == open(tiny_vocab, encoding="utf-8").read()
    again = BertTokenizer.from_pretrained(str(out))
    assert again.vocab == tok.vocab and again.vocab_fingerprint == tok.vocab_fingerprint
    assert BertTokenizer.from_pretrained(tiny_vocab).vocab == tok.vocab
    # Fingerprint: stable, short, changes with the vocab and with settings that change ids.
    assert len(tok.vocab_fingerprint) == 16
    assert BertTokenizer(tiny_vocab, do_lower_case=False).vocab_fingerprint != tok.vocab_fingerprint
    other = tmp_path / "other.txt"
    other.write_text("\n".join(TINY + ["extra"]) + "\n", encoding="utf-8")
    assert BertTokenizer(str(other)).vocab_fingerprint != tok.vocab_fingerprint
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="vocab.txt"):
        BertTokenizer.from_pretrained(str(empty))
    with pytest.raises(ConfigError):
        BertTokenizer.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ConfigError):
        BertTokenizer(str(tmp_path / "missing.txt"))


def test_from_pretrained_warns_on_casing_mismatch(tiny_vocab, tmp_path, caplog):
    folder = tmp_path / "my-cased-model"
    folder.mkdir()
    (folder / "vocab.txt").write_text(open(tiny_vocab, encoding="utf-8").read(), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    with caplog.at_level("WARNING", logger="tokenization"):
        BertTokenizer.from_pretrained(str(folder), do_lower_case=False)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="tokenization"):
        tok = BertTokenizer.from_pretrained(str(folder), do_lower_case=True)
    assert tok.do_lower_case is True  # warned, not overridden
    assert "do_lower_case=True" in caplog.text and "tokenizer_config.json" in caplog.text


def test_from_pretrained_bundled(minilm_dir):
    tok = BertTokenizer.from_pretrained("minilm-l6")
    assert len(tok.vocab) == 30522
    assert tok.vocab_file == os.path.join(minilm_dir, "vocab.txt")
    assert tok.tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id) == (101, 102, 0, 103)


def test_truncate_seq_pair():
    a, b = list("abcdef"), list("xyz")
    truncate_seq_pair(a, b, 6)
    assert (a, b) == (list("abc"), list("xyz"))
    a, b = list("abcd"), list("wxyz")
    truncate_seq_pair(a, b, 5)  # tie -> second is cut first, then the now-longer first
    assert (a, b) == (list("abc"), list("wx"))
    a, b = list("ab"), []
    truncate_seq_pair(a, b, 5)
    assert (a, b) == (list("ab"), [])
    a, b = list("abc"), list("xy")
    truncate_seq_pair(a, b, 0)
    assert (a, b) == ([], [])
