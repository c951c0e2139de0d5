"""BERT word-piece tokenization: text in, vocab.txt ids out.

`BertTokenizer` = `BasicTokenizer` (cleaning, CJK splitting, lower-casing, accent stripping,
punctuation splitting) followed by `WordpieceTokenizer` (greedy longest-match-first sub-words).

The output is token-for-token identical to today's pure-Python reference tokenizer
(`transformers.BertTokenizerLegacy`, transformers 5.x), which differs from the 2019
pytorch-pretrained-BERT rules in three ways that we follow on purpose (the pretrained models
are used with today's tokenizers, and users compare against them):
1. the special tokens [UNK] [SEP] [PAD] [CLS] [MASK] are split out of the raw text anywhere,
   even inside a word (`x[SEP]y` -> `x`, `[SEP]`, `y`), and are never lower-cased or split;
2. each text piece is normalised to Unicode NFC before whitespace splitting;
3. a token missing from the vocab maps to the [UNK] id instead of raising KeyError.

Speed: everything after whitespace splitting depends on the word alone, so the word -> word
pieces result is cached per tokenizer (bounded, oldest entries evicted first); character
classes are cached too. On warm caches this is several times faster than the reference.
"""
import hashlib
import json
import logging
import os
import re
import unicodedata

from file_utils import ConfigError, atomic_open, atomic_write_json, resolve_model_dir, utf8_error

logger = logging.getLogger(__name__)

VOCAB_NAME = "vocab.txt"


def load_vocab(vocab_file):
    """Read vocab.txt into the list of tokens (id = line index), as the reference reads it.

    Refused (ConfigError naming the file and line): an empty file, a byte-order mark (it would
    become part of the first token and shift nothing visibly but break its id), invalid UTF-8,
    and a vocab without one of the special tokens (an appended id can fall outside the model's
    embedding matrix)."""
    try:
        with open(vocab_file, "r", encoding="utf-8") as reader:
            # readlines + rstrip("\n") (not strip()): a token keeps any other surrounding spaces.
            tokens = [line.rstrip("\n") for line in reader.readlines()]
    except UnicodeDecodeError as exc:
        # exc.start is relative to a decoded block: utf8_error finds the line from the bytes
        raise ConfigError(str(utf8_error(vocab_file))) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read vocab file {vocab_file}: {exc}") from exc
    if not tokens:
        raise ConfigError(f"{vocab_file}: the vocab file is empty")
    if tokens[0].startswith("\ufeff"):
        raise ConfigError(f"{vocab_file}:1: starts with a byte-order mark (U+FEFF), which would become part of "
                          f"the token {tokens[0][1:]!r}; save the file as UTF-8 without BOM")
    missing = [t for t in BertTokenizer.SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise ConfigError(f"{vocab_file}: the special token(s) {', '.join(missing)} are not in the vocab; "
                          "a BERT vocab.txt lists [PAD] [UNK] [CLS] [SEP] [MASK] (ids must match the model's)")
    return tokens


def truncate_seq_pair(tokens_a, tokens_b, max_length):
    """Truncate two token lists IN PLACE until their total length <= max_length.

    Longest-first, one token at a time from the end: a short sequence keeps more of its
    information than if both were cut by the same fraction. On a tie the second list is cut.
    """
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


# --------------------------------------------------------------------------- character classes

def _is_whitespace(char):
    if char in " \t\n\r":
        return True
    return unicodedata.category(char) == "Zs"


def _is_control(char):
    # \t \n \r are category Cc but count as whitespace.
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def _is_punctuation(char):
    cp = ord(char)
    # All non-letter/number ASCII counts as punctuation ("^", "$", "`" are not category P*).
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_chinese_char(cp):
    """CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana: those are space-separated)."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class _CleanMap(dict):
    """str.translate table, filled lazily: drop NUL/U+FFFD/control chars, whitespace -> ' ',
    optionally CJK ideograph -> ' X '. One pass does the reference's _clean_text and
    _tokenize_chinese_chars (each maps one char independently, so composing them is exact)."""

    def __init__(self, tokenize_chinese_chars):
        super().__init__()
        self.tokenize_chinese_chars = tokenize_chinese_chars

    def __missing__(self, cp):
        char = chr(cp)
        if cp == 0 or cp == 0xFFFD or _is_control(char):
            value = None
        elif _is_whitespace(char):
            value = " "
        elif self.tokenize_chinese_chars and _is_chinese_char(cp):
            value = " " + char + " "
        else:
            value = cp
        self[cp] = value
        return value


# ASCII control chars other than \t \n \r (all category Cc): removed by the cleaning step.
_ASCII_CLEAN = {cp: None for cp in list(range(0, 32)) + [127] if cp not in (9, 10, 13)}
_ASCII_CLEAN.update({9: " ", 10: " ", 13: " "})
_ASCII_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_PUNCT = r"!-/:-@\[-`{-~"
_ASCII_PUNCT_SPLIT_RE = re.compile(f"[{_ASCII_PUNCT}]|[^{_ASCII_PUNCT}]+")


# --------------------------------------------------------------------------- basic tokenizer

class BasicTokenizer:
    """Cleaning, CJK splitting, lower-casing + accent stripping, punctuation splitting.

    strip_accents=None means: strip accents iff lower-casing (as in the original BERT).
    Tokens in `never_split` are neither lower-cased nor split on punctuation.
    """

    def __init__(self, do_lower_case=True, never_split=None, tokenize_chinese_chars=True,
                 strip_accents=None):
        self.do_lower_case = do_lower_case
        self.never_split = set(never_split or ())
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self._clean_map = _CleanMap(tokenize_chinese_chars)
        self._punct = {}

    def clean_and_split(self, text):
        """Whole-text steps: clean, pad CJK, NFC, whitespace split -> raw words."""
        if text.isascii():
            if _ASCII_CONTROL_RE.search(text):
                text = text.translate(_ASCII_CLEAN)
            return text.split()
        text = text.translate(self._clean_map)
        # NFC so that the same character written with different code points gives the same tokens.
        return unicodedata.normalize("NFC", text).split()

    def normalize_word(self, token):
        """Lower-case and/or strip accents of one word (not in never_split)."""
        if self.do_lower_case:
            token = token.lower()
            if self.strip_accents is not False:
                token = _strip_accents(token)
        elif self.strip_accents:
            token = _strip_accents(token)
        return token

    def split_on_punc(self, token):
        """Every punctuation char becomes its own piece; runs of other chars stay together."""
        if token.isascii():
            return _ASCII_PUNCT_SPLIT_RE.findall(token)
        punct = self._punct
        output = []
        start_new_word = True
        for char in token:
            is_p = punct.get(char)
            if is_p is None:
                is_p = punct[char] = _is_punctuation(char)
            if is_p:
                output.append(char)
                start_new_word = True
            else:
                if start_new_word:
                    output.append(char)
                else:
                    output[-1] += char
                start_new_word = False
        return output

    def tokenize_word(self, token):
        """The per-word part of basic tokenization (word has no whitespace, not in never_split)."""
        token = self.normalize_word(token)
        pieces = self.split_on_punc(token)
        if len(pieces) == 1 and pieces[0] == token:
            return pieces
        # Re-split on whitespace, as the reference does after joining (lower()/NFD never make
        # whitespace in practice, but this keeps the result exact if they ever do).
        out = []
        for piece in pieces:
            out.extend(piece.split())
        return out

    def tokenize(self, text, never_split=None):
        """Basic tokens of `text` (2019 API; `never_split` adds to the constructor's set)."""
        never = self.never_split.union(never_split) if never_split else self.never_split
        output = []
        for token in self.clean_and_split(text):
            if token in never:
                output.append(token)
            else:
                output.extend(self.tokenize_word(token))
        return output


def _strip_accents(text):
    if text.isascii():
        return text
    text = unicodedata.normalize("NFD", text)
    return "".join(c for c in text if unicodedata.category(c) != "Mn")


# --------------------------------------------------------------------------- word pieces

class WordpieceTokenizer:
    """Greedy longest-match-first word pieces; a word with any unmatched position -> one unk."""

    def __init__(self, vocab, unk_token="[UNK]", max_input_chars_per_word=100):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word
        # No vocab entry is longer than these, so longer candidates need not be tried.
        # (a word may itself start with "##", so every entry counts for the first piece).
        self._max_first = max((len(t) for t in vocab), default=0)
        self._max_cont = max((len(t) - 2 for t in vocab if t.startswith("##")), default=0)

    def tokenize_word(self, word):
        """Word pieces of one whitespace-free word."""
        n = len(word)
        if n > self.max_input_chars_per_word:
            return [self.unk_token]
        vocab = self.vocab
        if word in vocab:
            return [word]
        pieces = []
        start = 0
        while start < n:
            if start == 0:
                end = min(n, start + self._max_first)
                prefix = ""
            else:
                end = min(n, start + self._max_cont)
                prefix = "##"
            cur = None
            while start < end:
                sub = prefix + word[start:end]
                if sub in vocab:
                    cur = sub
                    break
                end -= 1
            if cur is None:
                return [self.unk_token]
            pieces.append(cur)
            start = end
        return pieces

    def tokenize(self, text):
        output = []
        for word in text.split():
            output.extend(self.tokenize_word(word))
        return output


# --------------------------------------------------------------------------- full tokenizer

class BertTokenizer:
    """vocab.txt-based BERT tokenizer: `tokenize` (text -> word pieces) and id conversion."""

    unk_token = "[UNK]"
    sep_token = "[SEP]"
    pad_token = "[PAD]"
    cls_token = "[CLS]"
    mask_token = "[MASK]"
    SPECIAL_TOKENS = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")

    def __init__(self, vocab_file, do_lower_case=True, never_split=None,
                 tokenize_chinese_chars=True, strip_accents=None, cache_size=200_000):
        if not os.path.isfile(vocab_file):
            raise ConfigError(f"vocab file not found: {vocab_file}")
        self.vocab_file = vocab_file
        self._tokens = load_vocab(vocab_file)
        self.vocab = {}
        for index, token in enumerate(self._tokens):
            self.vocab[token] = index  # a duplicated line keeps its last id, as in the reference
        self.ids_to_tokens = {index: token for token, index in self.vocab.items()}
        self.do_lower_case = do_lower_case
        self.never_split = tuple(never_split or ())
        self.basic_tokenizer = BasicTokenizer(do_lower_case, never_split, tokenize_chinese_chars,
                                              strip_accents)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab, self.unk_token)
        self.unk_token_id = self.vocab[self.unk_token]
        self.sep_token_id = self.vocab[self.sep_token]
        self.pad_token_id = self.vocab[self.pad_token]
        self.cls_token_id = self.vocab[self.cls_token]
        self.mask_token_id = self.vocab[self.mask_token]
        # Special tokens are cut out of the raw text first (case-sensitive, anywhere).
        self._special_re = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(self.SPECIAL_TOKENS, key=len, reverse=True)) + ")")
        self._special_set = set(self.SPECIAL_TOKENS)
        self._never = set(self.never_split) | self._special_set
        self._cache = {}
        self._cache_size = cache_size
        h = hashlib.sha256("\n".join(self._tokens).encode("utf-8"))
        # Settings that change the ids are part of the key, so cached features never go stale.
        h.update(repr((bool(do_lower_case), sorted(self.never_split), bool(tokenize_chinese_chars),
                       strip_accents)).encode("utf-8"))
        self.vocab_fingerprint = h.hexdigest()[:16]

    def __len__(self):
        """Number of ids the tokenizer can produce (the model's vocab_size must be at least this)."""
        return len(self._tokens)

    def _word_pieces(self, word):
        """Word pieces of one raw word (after cleaning and whitespace splitting); cached."""
        if word in self._never:
            if word in self.basic_tokenizer.never_split:
                pieces = [word]
            else:
                # A special token that only appeared after cleaning (e.g. "[SE\u200bP]"):
                # kept whole by the basic step, then word-pieced (it is in the vocab).
                pieces = self.wordpiece_tokenizer.tokenize_word(word)
        else:
            pieces = []
            wp = self.wordpiece_tokenizer.tokenize_word
            for token in self.basic_tokenizer.tokenize_word(word):
                pieces.extend(wp(token))
        cache = self._cache
        if len(cache) >= self._cache_size:
            # Evict the oldest entry (dicts keep insertion order): O(1), bounded memory.
            del cache[next(iter(cache))]
        cache[word] = pieces
        return pieces

    def _tokenize_chunk(self, text, out):
        cache_get = self._cache.get
        for word in self.basic_tokenizer.clean_and_split(text):
            pieces = cache_get(word)
            if pieces is None:
                pieces = self._word_pieces(word)
            out.extend(pieces)

    def tokenize(self, text):
        """Text -> list of word-piece strings (special tokens in the text are kept whole)."""
        out = []
        if "[" in text:
            special = self._special_set
            for chunk in self._special_re.split(text):
                if chunk in special:
                    out.append(chunk)
                elif chunk:
                    self._tokenize_chunk(chunk, out)
        else:
            self._tokenize_chunk(text, out)
        return out

    def convert_tokens_to_ids(self, tokens):
        """Tokens -> ids; unknown tokens get the [UNK] id. A single str gives a single int."""
        vocab, unk = self.vocab, self.unk_token_id
        if isinstance(tokens, str):
            return vocab.get(tokens, unk)
        return [vocab.get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        """Ids -> tokens; an id outside the vocab gives the [UNK] token."""
        try:
            iter(ids)
        except TypeError:  # one id: int, numpy integer or 0-d tensor
            return self.ids_to_tokens.get(int(ids), self.unk_token)
        return [self.ids_to_tokens.get(int(i), self.unk_token) for i in ids]

    def save_vocabulary(self, vocab_path):
        """Write vocab.txt (one token per line, in id order) into a folder; return its path."""
        path = os.path.join(vocab_path, VOCAB_NAME) if os.path.isdir(vocab_path) else vocab_path
        with atomic_open(path, "w", encoding="utf-8") as writer:
            for token in self._tokens:
                writer.write(token + "\n")
        return path

    def save_pretrained(self, directory, model_max_length=None):
        """vocab.txt, tokenizer_config.json (with do_lower_case) and special_tokens_map.json: what
        transformers' AutoTokenizer reads, and what casing_from_folder reads back here."""
        self.save_vocabulary(directory)
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(self.do_lower_case),
                  "strip_accents": self.basic_tokenizer.strip_accents,
                  "tokenize_chinese_chars": self.basic_tokenizer.tokenize_chinese_chars,
                  "unk_token": self.unk_token, "sep_token": self.sep_token, "pad_token": self.pad_token,
                  "cls_token": self.cls_token, "mask_token": self.mask_token}
        if model_max_length:
            config["model_max_length"] = int(model_max_length)
        atomic_write_json(os.path.join(directory, "tokenizer_config.json"), config)
        atomic_write_json(os.path.join(directory, "special_tokens_map.json"), {
            "unk_token": self.unk_token, "sep_token": self.sep_token, "pad_token": self.pad_token,
            "cls_token": self.cls_token, "mask_token": self.mask_token})

    @classmethod
    def from_pretrained(cls, name_or_path, do_lower_case=True, **kwargs):
        """From a folder holding vocab.txt, a vocab file itself, or a bundled model name."""
        if os.path.isfile(str(name_or_path)):
            return cls(str(name_or_path), do_lower_case=do_lower_case, **kwargs)
        folder = resolve_model_dir(name_or_path)
        vocab_file = os.path.join(folder, VOCAB_NAME)
        if not os.path.isfile(vocab_file):
            raise ConfigError(f"no {VOCAB_NAME} in model folder {folder}")
        _warn_casing_mismatch(folder, do_lower_case)
        return cls(vocab_file, do_lower_case=do_lower_case, **kwargs)


def casing_from_folder(folder):
    """(do_lower_case, where it was read) from a model folder's tokenizer_config.json or its name,
    else (None, None). Google's release folders say it in their name (uncased_L-12_H-768_A-12)."""
    config_path = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                value = json.load(f).get("do_lower_case")
            if isinstance(value, bool):
                return value, config_path
        except (OSError, ValueError, AttributeError):
            pass
    base = os.path.basename(os.path.normpath(folder)).lower()
    if "uncased" in base:
        return True, f"the folder name '{base}'"
    if "cased" in base:
        return False, f"the folder name '{base}'"
    return None, None


def guess_do_lower_case(folder):
    """Whether a model folder is uncased: casing_from_folder, else the vocab itself (cased BERT
    vocabs have thousands of capitalised pieces, uncased ones none)."""
    value, _ = casing_from_folder(folder)
    if value is not None:
        return value
    vocab = os.path.join(folder, VOCAB_NAME)
    if not os.path.isfile(vocab):
        return True
    words = load_vocab(vocab)
    upper = sum(1 for w in words if not w.startswith("[") and any(c.isupper() for c in w))
    return upper < 0.01 * len(words)


def _warn_casing_mismatch(folder, do_lower_case):
    """Warn (do not override, unlike v0.6.2) when the model folder says the other casing:
    a cased model fed lower-cased text, or the reverse, silently loses accuracy (#35, #131, #343)."""
    expected, source = casing_from_folder(folder)
    if expected is not None and bool(do_lower_case) != expected:
        logger.warning("do_lower_case=%s but %s says do_lower_case=%s: the tokens will not match what the "
                       "model was trained on", bool(do_lower_case), source, expected)
