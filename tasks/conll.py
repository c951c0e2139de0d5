"""CoNLL-2003 named-entity recognition: read the column files, align word labels to word pieces,
decode predictions back to words, and score them with entity-level precision/recall/F1.

File format: one `word POS chunk tag` line per token (any number of columns >= 2: the first is the
word, the last the tag), a blank line between sentences, `-DOCSTART-` lines between documents.
Tags are IOB1 or IOB2 (`O`, `B-TYPE`, `I-TYPE`; `E-`/`S-` are accepted too). UTF-8, a leading BOM
is ignored; bytes that are not UTF-8 are a DataError naming the line.

Only the first word piece of a word carries its label; the other pieces, [CLS] and [SEP] are
labelled -100 (the reference's `X`), so they are neither trained on, predicted nor scored.
A sentence with more pieces than fit in one window is split at word boundaries into several
windows (each word is predicted exactly once); the split is counted and logged.

The metric is a re-implementation of seqeval's default (non-strict) mode: chunks are decoded
with seqeval's start/end-of-chunk rules over all sentences joined by `O`, and an entity counts
as correct when its type and exact span match (micro-averaged over types).
"""
import collections
import logging
import os
import re
from dataclasses import dataclass

from file_utils import ConfigError, DataError, atomic_open, file_fingerprint, utf8_error
from tasks.base import IGNORE_INDEX, STDIN, TOKEN_PADDING, Family, Task, plain_lines, pop_column, register, softmax

logger = logging.getLogger(__name__)

TAG_RE = re.compile(r"^(O|[BIES](-.+)?)$")
DEFAULT_DEV_NAMES = ("valid.txt", "dev.txt")


@dataclass
class Sentence:
    words: list
    tags: list      # gold tags (strings); None for an unlabelled file
    line: int       # line number of the first token (for messages)


def _iter_lines(path):
    """Yield (kind, line_number, payload) with kind in {'doc', 'blank', 'token'}."""
    try:
        # utf-8-sig: a file saved with a BOM would otherwise start with the word "\ufeff-DOCSTART-",
        # a token line that gets tagged and scored.
        f = open(path, encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(path, None, f"cannot read file: {exc.strerror}") from exc
    with f:
        try:
            for lineno, raw in enumerate(f, 1):
                yield _line_kind(lineno, raw)
        except UnicodeDecodeError:
            raise utf8_error(path) from None


def _line_kind(lineno, line):
    """(kind, line number, payload) of one line, as _iter_lines yields them."""
    line = line.rstrip("\r\n")
    # lstrip: " -DOCSTART- -X- -X- O" is a document line too, not a word tagged O
    if line.lstrip().startswith("-DOCSTART-"):
        return "doc", lineno, line
    if not line.strip():
        return "blank", lineno, line
    return "token", lineno, line.split()


def conll_evidence(items):
    """(line, reason) of the first sign that lines (_iter_lines items) are a CoNLL file, or None when
    they are plainly not one: no -DOCSTART- line, no blank line between two sentences, no line
    ending in an IOB tag, and not one word per line (docs/multitask.md#predicting-a-users-file)."""
    tokens = [(lineno, payload) for kind, lineno, payload in items if kind == "token"]
    seen_token, blank = False, None
    for kind, lineno, payload in items:
        if kind == "doc":
            return lineno, "a -DOCSTART- line"
        if kind == "blank" and seen_token:
            blank = lineno
        elif kind == "token":
            if blank is not None:
                return blank, "a blank line between sentences"
            if len(payload) > 1 and TAG_RE.match(payload[-1]):
                return lineno, f"a line ending in the IOB tag {payload[-1]!r}"
            seen_token = True
    if tokens and all(len(payload) == 1 for _, payload in tokens) and len(tokens) > 1:
        return tokens[0][0], "one word per line"
    return None


def read_conll(path, labelled=True):
    """Read a CoNLL file into Sentences; a malformed token line -> DataError(path, line)."""
    sentences, words, tags, first_line = [], [], [], None
    ncols = None

    def flush():
        nonlocal words, tags, first_line
        if words:
            sentences.append(Sentence(words, tags if labelled else None, first_line))
        words, tags, first_line = [], [], None

    for kind, lineno, payload in _iter_lines(path):
        if kind != "token":
            flush()
            continue
        if labelled:
            if len(payload) < 2:
                raise DataError(path, lineno, f"expected 'word ... tag' columns, got {' '.join(payload)!r}")
            if ncols is not None and len(payload) != ncols:
                raise DataError(path, lineno, f"expected {ncols} columns like the lines before, "
                                              f"got {len(payload)}")
            ncols = len(payload)
            tag = payload[-1]
            if not TAG_RE.match(tag):
                raise DataError(path, lineno, f"tag {tag!r} is not an IOB tag (O, B-TYPE, I-TYPE)")
            tags.append(tag)
        if first_line is None:
            first_line = lineno
        words.append(payload[0])
    flush()
    return sentences


def find_dev_file(data_dir):
    """valid.txt (CoNLL-2003's name) or dev.txt."""
    for name in DEFAULT_DEV_NAMES:
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    return os.path.join(data_dir, DEFAULT_DEV_NAMES[0])


def read_labels_file(path):
    """One label per line; 'O' is put first if missing."""
    labels = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                label = line.strip()
                if not label:
                    continue
                if not TAG_RE.match(label):
                    raise DataError(path, lineno, f"label {label!r} is not an IOB tag")
                if label in labels:
                    raise DataError(path, lineno, f"label {label!r} listed twice")
                labels.append(label)
    except OSError as exc:
        raise DataError(path, None, f"cannot read file: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise utf8_error(path) from None
    if "O" not in labels:
        labels.insert(0, "O")
    return labels


def labels_from_sentences(sentences):
    """Label list read from data: 'O' first, then the other tags sorted."""
    seen = {t for s in sentences for t in s.tags}
    return ["O"] + sorted(seen - {"O"})


def check_labels(sentences, label_list, path):
    """Every gold tag of a training file must be in the label list (DataError naming the line)."""
    known = set(label_list)
    for sent in sentences:
        for i, tag in enumerate(sent.tags):
            if tag not in known:
                raise DataError(path, sent.line + i, f"tag {tag!r} is not in the label list "
                                                     f"({', '.join(label_list)})")


@dataclass
class WindowMeta:
    sentence_index: int
    word_start: int          # first word of the sentence covered by this window
    first_piece: list        # position in the feature of each covered word's first piece


def convert_sentences_to_features(sentences, tokenizer, label_list, max_seq_length):
    """Sentences -> (features, metas, stats). One feature per window:
    `[CLS] pieces [SEP]`, labels = tag id on each word's first piece, -100 elsewhere.

    Gold tags missing from `label_list` (possible in dev/test files) get -100 (not in the loss)
    and are still scored by `entity_scores` as strings.
    """
    label_map = {label: i for i, label in enumerate(label_list)}
    max_pieces = max_seq_length - 2
    if max_pieces < 1:
        raise ValueError("max_seq_length must be at least 3")
    features, metas = [], []
    stats = collections.Counter()
    cls_id, sep_id = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    unk = "[UNK]"
    for si, sent in enumerate(sentences):
        word_pieces = []
        for word in sent.words:
            pieces = tokenizer.tokenize(word) or [unk]   # every word gets a position to predict from
            if len(pieces) > max_pieces:
                stats["words_truncated"] += 1
                pieces = pieces[:max_pieces]
            word_pieces.append(pieces)
        windows, start, count = [], 0, 0
        for wi, pieces in enumerate(word_pieces):
            if count + len(pieces) > max_pieces and wi > start:
                windows.append((start, wi))
                start, count = wi, 0
            count += len(pieces)
        windows.append((start, len(word_pieces)))
        if len(windows) > 1:
            stats["sentences_split"] += 1
            stats["extra_windows"] += len(windows) - 1
        for w_start, w_end in windows:
            tokens, labels, first_piece = [], [], []
            for wi in range(w_start, w_end):
                first_piece.append(len(tokens) + 1)
                tokens.extend(word_pieces[wi])
                tag = sent.tags[wi] if sent.tags is not None else None
                label = label_map.get(tag, IGNORE_INDEX) if tag is not None else IGNORE_INDEX
                if tag is not None and tag not in label_map:
                    stats["unknown_tags"] += 1
                labels.extend([label] + [IGNORE_INDEX] * (len(word_pieces[wi]) - 1))
            input_ids = [cls_id] + tokenizer.convert_tokens_to_ids(tokens) + [sep_id]
            features.append({"input_ids": input_ids, "token_type_ids": [0] * len(input_ids),
                             "attention_mask": [1] * len(input_ids),
                             "labels": [IGNORE_INDEX] + labels + [IGNORE_INDEX]})
            metas.append(WindowMeta(si, w_start, first_piece))
    if stats["sentences_split"]:
        logger.warning("%d sentences have more than %d word pieces and were split into %d extra "
                       "windows (every word is still predicted once)", stats["sentences_split"],
                       max_pieces, stats["extra_windows"])
    if stats["words_truncated"]:
        logger.warning("%d single words have more than %d word pieces; their extra pieces were cut",
                       stats["words_truncated"], max_pieces)
    if stats["unknown_tags"]:
        logger.warning("%d gold tags are not in the label list: not in the loss, still scored",
                       stats["unknown_tags"])
    return features, metas, stats


def decode_predictions(sentences, metas, logits, label_list, with_scores=False):
    """Per-window logits [S, C] (padding beyond the window ignored) -> predicted tags per sentence
    (with_scores: and each tag's softmax probability, as (tags, scores))."""
    preds = [[None] * len(s.words) for s in sentences]
    scores = [[None] * len(s.words) for s in sentences]
    for meta, window_logits in zip(metas, logits):
        for k, pos in enumerate(meta.first_piece):
            row = window_logits[pos]
            best = max(range(len(row)), key=lambda c: row[c])
            preds[meta.sentence_index][meta.word_start + k] = label_list[best]
            if with_scores:
                scores[meta.sentence_index][meta.word_start + k] = float(softmax(row)[best])
    for si, p in enumerate(preds):
        if any(t is None for t in p):
            raise RuntimeError(f"sentence {si} has words without a prediction")
    return (preds, scores) if with_scores else preds


# ----------------------------------------------------------------------------------------------
# Entity-level metric (seqeval default mode)


def _end_of_chunk(prev_tag, tag, prev_type, type_):
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_tag != "." and prev_type != type_


def _start_of_chunk(prev_tag, tag, prev_type, type_):
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and tag != "." and prev_type != type_


def get_entities(seq):
    """(type, start, end) chunks of a tag sequence, or of a list of sentences joined by 'O'."""
    if any(isinstance(s, list) for s in seq):
        seq = [item for sublist in seq for item in sublist + ["O"]]
    prev_tag, prev_type, begin = "O", "", 0
    chunks = []
    for i, chunk in enumerate(list(seq) + ["O"]):
        tag = chunk[0]
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _prf(tp, n_pred, n_true):
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def entity_scores(y_true, y_pred):
    """Micro precision/recall/F1 over entities + per-type rows, as seqeval computes them.

    Returns {"precision", "recall", "f1", "support", "per_type": {type: {...}}}.
    """
    if len(y_true) != len(y_pred) or any(len(t) != len(p) for t, p in zip(y_true, y_pred)):
        raise ValueError("y_true and y_pred must have the same shape")
    true_by_type, pred_by_type = collections.defaultdict(set), collections.defaultdict(set)
    for t, s, e in get_entities(y_true):
        true_by_type[t].add((s, e))
    for t, s, e in get_entities(y_pred):
        pred_by_type[t].add((s, e))
    per_type = {}
    tp_all = pred_all = true_all = 0
    for etype in sorted(set(true_by_type) | set(pred_by_type)):
        tp = len(true_by_type[etype] & pred_by_type[etype])
        n_pred, n_true = len(pred_by_type[etype]), len(true_by_type[etype])
        p, r, f = _prf(tp, n_pred, n_true)
        per_type[etype] = {"precision": p, "recall": r, "f1": f, "support": n_true}
        tp_all, pred_all, true_all = tp_all + tp, pred_all + n_pred, true_all + n_true
    p, r, f = _prf(tp_all, pred_all, true_all)
    return {"precision": p, "recall": r, "f1": f, "support": true_all, "per_type": per_type}


def format_report(scores, digits=4):
    """A seqeval-style per-type table plus the micro average."""
    rows = [(name, v) for name, v in scores["per_type"].items()]
    rows.append(("micro avg", scores))
    width = max([len(n) for n, _ in rows] + [9])
    lines = [f"{'':>{width}}  precision    recall  f1-score   support", ""]
    for i, (name, v) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("")
        lines.append(f"{name:>{width}}  {v['precision']:>9.{digits}f} {v['recall']:>9.{digits}f} "
                     f"{v['f1']:>9.{digits}f} {v['support']:>9}")
    return "\n".join(lines) + "\n"


def write_results(path, scores, extra=None):
    """`key = value` lines, keys sorted: `precision`, `recall`, `f1` (micro), the `extra` values, and
    per entity type `<TYPE>_precision`, `<TYPE>_recall`, `<TYPE>_f1`, `<TYPE>_support`."""
    values = {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"]}
    for etype, row in scores["per_type"].items():
        for key in ("precision", "recall", "f1", "support"):
            values[f"{etype}_{key}"] = row[key]
    values.update(extra or {})
    with atomic_open(path, "w", encoding="utf-8") as f:
        for key in sorted(values):
            f.write(f"{key} = {values[key]}\n")


def write_predictions(path, source_path, predicted_tags):
    """`word tag` per token line of `source_path`, keeping blank lines and -DOCSTART- lines."""
    with atomic_open(path, "w", encoding="utf-8") as out:
        si, wi = 0, 0
        in_sentence = False
        for kind, lineno, payload in _iter_lines(source_path):
            if kind != "token":
                if in_sentence:
                    si, wi, in_sentence = si + 1, 0, False
                out.write(payload + "\n")
                continue
            in_sentence = True
            out.write(f"{payload[0]} {predicted_tags[si][wi]}\n")
            wi += 1


# ----------------------------------------------------------------------------------------------
# The CoNLL NER family behind the task interface (tasks.base.Task)

LABELS_FILE = "labels.txt"  # the tag list saved with a fine-tuned single-task NER model


def build_tagged_windows(task, split, cache_format):
    """A word-tagging task's features of one split (task.paths/sentences/tokenizer/labels/cache), through
    its feature cache, and their windows' metadata into task.metas: shared by CoNLL NER and POS
    (`cache_format`: each family's own cache key version)."""
    path, sentences = task.paths[split], task.sentences[split]
    key = {"task": f"{task.name}-{os.path.basename(path)}", "file": file_fingerprint(path),
           "vocab": task.tokenizer.vocab_fingerprint, "lower": task.tokenizer.do_lower_case,
           "max_seq_length": task.max_seq_length, "labels": task.labels, "count": len(sentences),
           "format": cache_format}

    def build():
        features, metas, _ = convert_sentences_to_features(sentences, task.tokenizer, task.labels,
                                                           task.max_seq_length)
        for feature, meta in zip(features, metas):
            feature["meta"] = [meta.sentence_index, meta.word_start, meta.first_piece]
        return features

    features = task.cache(key, build)
    task.metas[split] = [WindowMeta(*meta) for meta in pop_column(features, "meta")]
    task.features[split] = features


class Conll(Task):
    """CoNLL-2003-style NER as a task of a run: `train.txt`, `valid.txt` (or `dev.txt`) and `test.txt`
    in `data_dir`. The tag list is `labels` when given (e.g. a fine-tuned model's), else read from
    the training file (O first, then sorted); every training tag must be in it. Metrics: entity-level
    micro precision/recall/F1 (seqeval's default mode); main score F1."""
    head_type = "token"
    main_metric = "f1"

    def __init__(self, data_dir, tokenizer, max_seq_length=128, labels=None, name="conll", cache=None,
                 max_eval_examples=None):
        super().__init__(cache, max_eval_examples)
        self.name, self.data_dir, self.tokenizer, self.max_seq_length = name, data_dir, tokenizer, max_seq_length
        self.labels = list(labels) if labels is not None else None
        self.num_labels = len(self.labels) if self.labels is not None else None
        self.paths, self.sentences, self.features, self.metas = {}, {}, {}, {}
        self.results = {}   # split -> last entity_scores (with per-type rows), for the runners' reports

    def path(self, split):
        return {"train": os.path.join(self.data_dir, "train.txt"), "dev": find_dev_file(self.data_dir),
                "test": os.path.join(self.data_dir, "test.txt")}[split]

    def _build(self, split):
        build_tagged_windows(self, split, cache_format=2)

    def prepare(self, train=True, dev=True, test=False):
        splits = [s for s, wanted in (("train", train), ("dev", dev), ("test", test)) if wanted]
        for split in splits:  # read (and check) every file before building anything
            self.paths[split] = self.path(split)
            sentences = read_conll(self.paths[split])
            self.sentences[split] = self._limit(sentences) if split == "dev" else sentences
        if self.labels is None:
            if "train" not in self.sentences:
                raise ConfigError(f"{self.name}: no tag list: give the model's {LABELS_FILE}, or train")
            self.labels = labels_from_sentences(self.sentences["train"])
            self.num_labels = len(self.labels)
        if "train" in self.sentences:
            check_labels(self.sentences["train"], self.labels, self.paths["train"])
            self.train_examples = len(self.sentences["train"])
        for split in splits:
            self._build(split)
        self.train_features = self.features.get("train")
        if train:
            self.check_training_set(self.paths["train"], self.train_features)
        return self

    def count_train_examples(self):
        return len(read_conll(self.path("train")))

    def read_labels(self):
        """The tag list (given, or read from the training file) without building features."""
        return self.labels if self.labels is not None else labels_from_sentences(read_conll(self.path("train")))

    def predict_tags(self, predict, split):
        """(predicted tags per sentence, the engine's prediction dict) for a prepared split."""
        out = predict(self.features[split])
        return decode_predictions(self.sentences[split], self.metas[split], out["logits"], self.labels), out

    def scores(self, predict, split):
        predicted, out = self.predict_tags(predict, split)
        scores = entity_scores([s.tags for s in self.sentences[split]], predicted)
        self.results[split] = scores
        return scores, predicted, out

    def evaluate(self, predict):
        scores, _, out = self.scores(predict, "dev")
        metrics = {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"]}
        if out.get("loss") is not None:
            metrics["loss"] = float(out["loss"])
        return {self.name: metrics}

    def read_inputs(self, path=None, lines=None, plain=False):
        """A CoNLL file (`word ... TAG` lines, or one word per line; blank lines between sentences)
        when it looks like one (conll_evidence), else one sentence per line, words separated by
        spaces. `plain`: every line a sentence. A CoNLL file with a bad line is an error."""
        source = path or STDIN
        if not plain:
            items = list(_iter_lines(path)) if lines is None else [_line_kind(i, line) for i, line in
                                                                   enumerate(lines, 1)]
            evidence = conll_evidence(items)
            if evidence is not None and lines is not None:
                raise DataError(source, evidence[0], f"looks like a CoNLL file ({evidence[1]}): give its path, "
                                                     "or lines:- to read one sentence per line")
            if evidence is not None:
                tokens = [payload for kind, _, payload in items if kind == "token"]
                labelled = not all(len(payload) == 1 for payload in tokens)
                try:
                    sentences = read_conll(path, labelled=labelled)
                except DataError as exc:
                    raise DataError(exc.path, exc.line, f"{exc.message} (read as a CoNLL file: {evidence[1]} on "
                                    f"line {evidence[0]}; one sentence per line: lines:{path})") from None
                if not sentences:
                    raise DataError(path, None, "no sentences in this file")
                return sentences
        return [Sentence(text.split(), None, line) for line, text in plain_lines(path, lines)]

    def predict_rows(self, predict, sentences):
        """One row per word (word, tag, probability of the tag); a blank line after each sentence."""
        if self.labels is None:
            raise ConfigError(f"{self.name}: the model folder has no tag list ({LABELS_FILE} or task_labels.json)")
        features, metas, _ = convert_sentences_to_features(sentences, self.tokenizer, self.labels,
                                                           self.max_seq_length)
        tags, scores = decode_predictions(sentences, metas, predict(features)["logits"], self.labels,
                                          with_scores=True)
        rows = []
        for sentence, sentence_tags, sentence_scores in zip(sentences, tags, scores):
            rows.extend(zip(sentence.words, sentence_tags, sentence_scores))
            rows.append(None)
        return rows

    def write_predictions(self, predict, out_dir):
        """test_predictions.txt (`word tag` lines, blank and -DOCSTART- lines kept) and, as the test file
        is labelled, test_results.txt."""
        scores, predicted, out = self.scores(predict, "test")
        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, "test_predictions.txt"), os.path.join(out_dir, "test_results.txt")]
        write_predictions(paths[0], self.paths["test"], predicted)
        write_results(paths[1], scores, {"loss": out["loss"]} if out.get("loss") is not None else {})
        return paths


def _build(name, tokenizer, data_dir, max_seq_length, labels=None, cache=None, max_eval_examples=None, **_):
    return Conll(data_dir, tokenizer, max_seq_length, labels=labels, name=name, cache=cache,
                 max_eval_examples=max_eval_examples)


FAMILY = register(Family(
    name="conll", tasks={"conll": "CoNLL-2003 NER"}, task_class=Conll, build=_build, head_type="token",
    data_files="train.txt, valid.txt, test.txt", output_names=(LABELS_FILE, "test_predictions.txt"),
    padding=TOKEN_PADDING, sample_data="conll_sample"))
