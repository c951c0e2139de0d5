"""Part-of-speech tagging with the Universal POS tags of Universal Dependencies (task `pos`).

File format: CoNLL-U (https://universaldependencies.org/format.html), UTF-8 (a leading BOM is
ignored). A word line has 10 tab-separated columns: ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS
MISC; the task reads FORM (column 2) and UPOS (column 4). Sentences end at a blank line; `#` lines
are comments. Multiword-token lines (ID `1-2`, e.g. "cannot" over the words "can" and "not") and
empty nodes (ID `8.1`, an elided word) are skipped: they are not words of the sentence, and UD
tags the syntactic words the range covers. Word IDs count 1, 2, ... in each sentence. Anything
else (another column count, a bad ID, a UPOS tag that is not one of the 17) is a DataError naming
file and line. Test files may leave UPOS as `_` (unlabelled); train and dev files must tag every word.

Features are the NER family's (tasks.conll): each word's first word piece carries its tag, other
pieces -100; a long sentence is split into windows at word boundaries. The tag set is the 17 UPOS
tags (a fixed head size for every treebank). Metric: token accuracy over all words (main score).
Predictions: the test file as read, with the UPOS column of each word line filled with the
predicted tag and every other column, comment, multiword-token and empty-node line kept.
"""
import glob
import os
import re
from dataclasses import dataclass

from file_utils import ConfigError, DataError, atomic_open, utf8_error
from tasks.base import STDIN, TOKEN_PADDING, Family, Task, plain_lines, register
from tasks.conll import build_tagged_windows, convert_sentences_to_features, decode_predictions

# The 17 Universal POS tags (UD v2), in the order of the UD documentation.
UPOS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
             "PUNCT", "SCONJ", "SYM", "VERB", "X")
COLUMNS = 10
FORM, UPOS = 1, 3   # 0-based columns
WORD_ID = re.compile(r"[1-9][0-9]*")
SKIPPED_ID = re.compile(r"[1-9][0-9]*-[1-9][0-9]*|[0-9]+\.[1-9][0-9]*")   # multiword token, empty node
PREDICTIONS_FILE = "test_predictions.conllu"


@dataclass
class Sentence:
    words: list
    tags: list      # gold UPOS per word; None where the file has `_` (or for a user's plain text)
    line: int       # line of the first word (for messages)
    word_lines: list


def read_lines(path):
    """The lines of a UTF-8 file (BOM ignored); unreadable -> DataError naming the file (and line)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except OSError as exc:
        raise DataError(path, None, f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise utf8_error(path) from None


def _word_id(field, path, lineno):
    """The ID of a word line; None for a multiword-token range or an empty node (skipped)."""
    if WORD_ID.fullmatch(field):
        return int(field)
    if SKIPPED_ID.fullmatch(field):
        return None
    raise DataError(path, lineno, f"ID {field!r} is not a word ID (1), a multiword range (1-2) or an empty "
                                  "node (8.1)")


def _tag(field, path, lineno, require_tags):
    if field == "_" and not require_tags:
        return None
    if field not in UPOS_TAGS:
        what = "no UPOS tag (column 4 is '_')" if field == "_" else f"UPOS tag {field!r} is not a Universal POS tag"
        raise DataError(path, lineno, f"{what}; expected one of {', '.join(UPOS_TAGS)}")
    return field


def parse_conllu(path, lines, require_tags=True):
    """CoNLL-U lines -> Sentences (see the module docstring for the rules); `path` names the file in
    messages. `require_tags`: every word must carry a UPOS tag (train and dev files)."""
    sentences, words, tags, word_lines = [], [], [], []
    for lineno, line in enumerate(list(lines) + [""], 1):
        if not line.strip():
            if words:
                sentences.append(Sentence(words, tags, word_lines[0], word_lines))
            words, tags, word_lines = [], [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != COLUMNS:
            raise DataError(path, lineno, f"expected {COLUMNS} tab-separated CoNLL-U columns, got {len(cols)}")
        word_id = _word_id(cols[0], path, lineno)
        if word_id is None:
            continue
        if word_id != len(words) + 1:
            raise DataError(path, lineno, f"word ID {word_id} where {len(words) + 1} was expected (IDs count 1, "
                                          "2, ... in each sentence; a blank line ends a sentence)")
        words.append(cols[FORM])
        tags.append(_tag(cols[UPOS], path, lineno, require_tags))
        word_lines.append(lineno)
    return sentences


def read_conllu(path, require_tags=True):
    """A CoNLL-U file -> Sentences."""
    return parse_conllu(path, read_lines(path), require_tags)


def looks_like_conllu(lines):
    """True when the first non-blank line is a `#` comment or has the 10 tab-separated columns."""
    first = next((line for line in lines if line.strip()), "")
    return first.startswith("#") or len(first.split("\t")) == COLUMNS


def find_file(data_dir, split):
    """`<split>.conllu` in data_dir, else the folder's one Universal Dependencies `*-ud-<split>.conllu`."""
    own = os.path.join(data_dir, f"{split}.conllu")
    if os.path.isfile(own):
        return own
    found = sorted(glob.glob(os.path.join(glob.escape(data_dir), f"*-ud-{split}.conllu")))
    if len(found) > 1:
        raise ConfigError(f"{data_dir}: several UD {split} files ({', '.join(map(os.path.basename, found))}); "
                          "give one treebank per folder")
    if found:
        return found[0]
    raise DataError(own, None, f"missing POS {split} file (or one Universal Dependencies *-ud-{split}.conllu)")


def token_accuracy(gold, predicted):
    """The fraction of words whose predicted tag is the gold tag (tag lists per sentence)."""
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("gold and predicted tags must have the same shape")
    pairs = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
    return sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0


def write_conllu(path, lines, predicted_tags):
    """The CoNLL-U `lines` with the UPOS column of every word line set to its predicted tag."""
    sentence, word = 0, 0
    with atomic_open(path, "w", encoding="utf-8") as out:
        for line in lines:
            cols = line.split("\t")
            if not line.strip():
                sentence, word = (sentence + 1, 0) if word else (sentence, word)
            elif not line.startswith("#") and WORD_ID.fullmatch(cols[0]):
                cols[UPOS] = predicted_tags[sentence][word]
                line, word = "\t".join(cols), word + 1
            out.write(line + "\n")


class Pos(Task):
    """UD part-of-speech tagging as a task of a run: `train.conllu`, `dev.conllu`, `test.conllu` (or a
    UD treebank's `*-ud-train.conllu` ...) in `data_dir`. Tags: the 17 UPOS tags (or `labels`, a
    fine-tuned model's list). Metric: token accuracy (`acc`, main score)."""
    head_type = "token"
    main_metric = "acc"

    def __init__(self, data_dir, tokenizer, max_seq_length=128, labels=None, name="pos", cache=None,
                 max_eval_examples=None):
        super().__init__(cache, max_eval_examples)
        self.name, self.data_dir, self.tokenizer, self.max_seq_length = name, data_dir, tokenizer, max_seq_length
        self.labels = list(labels) if labels is not None else list(UPOS_TAGS)
        self.num_labels = len(self.labels)
        self.paths, self.lines, self.sentences, self.features, self.metas = {}, {}, {}, {}, {}

    def prepare(self, train=True, dev=True, test=False):
        splits = [s for s, wanted in (("train", train), ("dev", dev), ("test", test)) if wanted]
        for split in splits:  # read (and check) every file before building anything
            path = self.paths[split] = find_file(self.data_dir, split)
            self.lines[split] = read_lines(path)
            sentences = parse_conllu(path, self.lines[split], require_tags=split != "test")
            if not sentences:
                raise DataError(path, None, "no sentences in this file")
            self._check_labels(sentences, path)
            self.sentences[split] = self._limit(sentences) if split == "dev" else sentences
        for split in splits:
            self._build(split)
        self.train_features = self.features.get("train")
        if train:
            self.train_examples = len(self.sentences["train"])
            self.check_training_set(self.paths["train"], self.train_features)
        return self

    def _check_labels(self, sentences, path):
        """A gold tag outside a fine-tuned model's tag list could never be predicted: refuse it."""
        known = set(self.labels)
        for sentence in sentences:
            for tag, line in zip(sentence.tags, sentence.word_lines):
                if tag is not None and tag not in known:
                    raise DataError(path, line, f"tag {tag!r} is not in the model's tag list "
                                                f"({', '.join(self.labels)})")

    def _build(self, split):
        build_tagged_windows(self, split, cache_format=1)

    def count_train_examples(self):
        return len(read_conllu(find_file(self.data_dir, "train")))

    def predict_tags(self, predict, split):
        """(predicted tags per sentence, the engine's prediction dict) for a prepared split."""
        out = predict(self.features[split])
        return decode_predictions(self.sentences[split], self.metas[split], out["logits"], self.labels), out

    def evaluate(self, predict):
        predicted, out = self.predict_tags(predict, "dev")
        metrics = {"acc": token_accuracy([s.tags for s in self.sentences["dev"]], predicted)}
        if out.get("loss") is not None:
            metrics["loss"] = float(out["loss"])
        return {self.name: metrics}

    def write_predictions(self, predict, out_dir):
        """test_predictions.conllu (the test file with the predicted UPOS tags) and, when the test file
        is tagged, test_results.txt (`acc = ...`)."""
        predicted, out = self.predict_tags(predict, "test")
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, PREDICTIONS_FILE)]
        write_conllu(paths[0], self.lines["test"], predicted)
        gold = [s.tags for s in self.sentences["test"]]
        if all(tag is not None for tags in gold for tag in tags):
            paths.append(os.path.join(out_dir, "test_results.txt"))
            results = {"acc": token_accuracy(gold, predicted)}
            if out.get("loss") is not None:
                results["loss"] = float(out["loss"])
            with atomic_open(paths[1], "w", encoding="utf-8") as f:
                f.writelines(f"{key} = {value}\n" for key, value in sorted(results.items()))
        return paths

    def read_inputs(self, path=None, lines=None, plain=False):
        """A CoNLL-U file (or stdin) when its first line is a `#` comment or a 10-column word line, its
        UPOS column may be `_`; else (and with `plain`) one sentence per line, words split at spaces."""
        if not plain:
            text = read_lines(path) if lines is None else list(lines)
            if looks_like_conllu(text):
                sentences = parse_conllu(path or STDIN, text, require_tags=False)
                if not sentences:
                    raise DataError(path or STDIN, None, "no sentences in this CoNLL-U input")
                return sentences
        return [Sentence(text.split(), None, line, [line] * len(text.split()))
                for line, text in plain_lines(path, lines)]

    def predict_rows(self, predict, sentences):
        """One row per word (word, tag, probability of the tag); a blank line after each sentence."""
        features, metas, _ = convert_sentences_to_features(sentences, self.tokenizer, self.labels, self.max_seq_length)
        tags, scores = decode_predictions(sentences, metas, predict(features)["logits"], self.labels, with_scores=True)
        rows = []
        for sentence, sentence_tags, sentence_scores in zip(sentences, tags, scores):
            rows.extend(zip(sentence.words, sentence_tags, sentence_scores))
            rows.append(None)
        return rows


def _build(name, tokenizer, data_dir, max_seq_length, labels=None, cache=None, max_eval_examples=None, **_):
    return Pos(data_dir, tokenizer, max_seq_length, labels=labels, name=name, cache=cache,
               max_eval_examples=max_eval_examples)


FAMILY = register(Family(
    name="pos", tasks={"pos": "UD part-of-speech tagging (UPOS)"}, task_class=Pos, build=_build, head_type="token",
    data_files="train.conllu, dev.conllu, test.conllu", output_names=(PREDICTIONS_FILE,), padding=TOKEN_PADDING,
    sample_data="pos_sample"))
