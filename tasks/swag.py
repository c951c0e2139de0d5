"""SWAG multiple choice: read the swagaf CSV files, build four `[CLS] context [SEP] start + ending [SEP]`
sequences per example, score accuracy, write test predictions.

Layout (swagaf `data/train.csv`, `val.csv`, `test.csv`), header
`,video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label`
(test.csv has no `label` column). UTF-8 (a leading BOM is ignored); a quoted field may span lines,
and a record is named by the line it starts on. As in the reference run_swag.py the context is
`sent1`, the start of every ending is `sent2`, and the pair is truncated longest-first to
max_seq_length - 3.
"""
import csv
import logging
import os
from dataclasses import dataclass

from file_utils import DataError, atomic_open, file_fingerprint, utf8_error
from tasks.base import STDIN, Family, Task, plain_lines, register, softmax
from tokenization import truncate_seq_pair

logger = logging.getLogger(__name__)

NUM_CHOICES = 4
LABELS = [str(i) for i in range(NUM_CHOICES)]
HEADER = ["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
          "ending0", "ending1", "ending2", "ending3", "label"]
PREDICTION_HEADER = ["id", "video-id", "fold-ind", "label"]


@dataclass
class SwagExample:
    row_id: str          # the first (unnamed) column
    video_id: str
    fold_ind: str
    context: str         # sent1
    start_ending: str    # sent2
    endings: list
    label: int = None
    line: int = None


def read_swag_examples(path, require_label=True):
    """Read a SWAG CSV. A file without a `label` column (test.csv) gives label None, unless
    `require_label` (training / evaluation), which makes it an error."""
    try:
        # utf-8-sig: a leading BOM is not part of the first header name.
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(path, None, f"cannot read file: {exc.strerror}") from exc
    with f:
        try:
            return _read_swag_rows(path, csv.reader(f), require_label)
        except UnicodeDecodeError:
            raise utf8_error(path) from None


def _read_swag_rows(path, reader, require_label):
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, 1, "empty file: expected the SWAG header") from None
    except csv.Error as exc:
        raise DataError(path, reader.line_num, f"bad CSV: {exc}") from exc
    header = [h.strip() for h in header]
    if header == HEADER:
        has_label = True
    elif header == HEADER[:-1]:
        has_label = False
    else:
        raise DataError(path, 1, "not a SWAG header: expected " + ",".join(HEADER)
                        + " (test.csv: without ',label')")
    if require_label and not has_label:
        raise DataError(path, 1, "this file has no 'label' column (a test file?); "
                                 "training and evaluation need labels")
    examples = []
    while True:
        # A quoted field may hold line breaks: a record is named by the line it starts on.
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(path, line, f"bad CSV: {exc}") from exc
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(path, line, f"expected {len(header)} columns, got {len(row)}")
        endings = row[7:11]
        label = None
        if has_label:
            # Only the digits 0..3 (ASCII blanks around them): int() would also take "+1", "1_0" or other
            # scripts' digits, and str.strip() control characters such as \x1c.
            value = row[11].strip(" \t\r\n")
            if value not in LABELS:
                raise DataError(path, line, f"label must be 0..{NUM_CHOICES - 1}, got {row[11]!r}")
            label = int(value)
        if not row[4].strip() or any(not e.strip() for e in endings):
            raise DataError(path, line, "empty sent1 or ending")
        examples.append(SwagExample(row[0], row[1], row[2], row[4], row[5], endings, label, line))
    return examples


def convert_examples_to_features(examples, tokenizer, max_seq_length):
    """One feature per example: input_ids / token_type_ids / attention_mask are lists of 4 lists
    (unpadded); `labels` (int) when the example has a label. Returns (features, n_truncated)."""
    features, n_truncated = [], 0
    for ex in examples:
        context_tokens = tokenizer.tokenize(ex.context)
        start_ending_tokens = tokenizer.tokenize(ex.start_ending)
        choices_ids, choices_types = [], []
        truncated = False
        for ending in ex.endings:
            tokens_a = list(context_tokens)
            tokens_b = start_ending_tokens + tokenizer.tokenize(ending)
            if len(tokens_a) + len(tokens_b) > max_seq_length - 3:
                truncated = True
            truncate_seq_pair(tokens_a, tokens_b, max_seq_length - 3)
            tokens = ["[CLS]"] + tokens_a + ["[SEP]"] + tokens_b + ["[SEP]"]
            choices_ids.append(tokenizer.convert_tokens_to_ids(tokens))
            choices_types.append([0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1))
        n_truncated += truncated
        feature = {"input_ids": choices_ids, "token_type_ids": choices_types,
                   "attention_mask": [[1] * len(ids) for ids in choices_ids]}
        if ex.label is not None:
            feature["labels"] = ex.label
        features.append(feature)
    if n_truncated:
        logger.warning("%d of %d examples were truncated to --max_seq_length %d",
                       n_truncated, len(examples), max_seq_length)
    return features, n_truncated


def accuracy(logits, labels):
    """Fraction of rows whose argmax choice equals the label."""
    if len(labels) == 0:
        return 0.0
    correct = sum(int(max(range(len(row)), key=lambda c: row[c]) == label)
                  for row, label in zip(logits, labels))
    return correct / len(labels)


def write_predictions(path, examples, logits):
    """CSV `id,video-id,fold-ind,label` (predicted ending index), one row per example, input order."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_HEADER)
        for ex, row in zip(examples, logits):
            writer.writerow([ex.row_id, ex.video_id, ex.fold_ind, max(range(len(row)), key=lambda c: row[c])])


# ----------------------------------------------------------------------------------------------
# The SWAG family behind the task interface (tasks.base.Task)

class Swag(Task):
    """SWAG multiple choice as a task of a run: `train.csv`, `val.csv` and (for predictions, without
    labels) `test.csv` in `data_dir`. Metric: accuracy (main score); predictions: test_predictions.csv."""
    head_type = "choice"
    num_labels = NUM_CHOICES
    main_metric = "acc"

    def __init__(self, data_dir, tokenizer, max_seq_length=128, name="swag", cache=None, max_eval_examples=None):
        super().__init__(cache, max_eval_examples)
        self.name, self.data_dir, self.tokenizer, self.max_seq_length = name, data_dir, tokenizer, max_seq_length
        self.examples, self.features = {}, {}

    def path(self, split):
        return os.path.join(self.data_dir, {"train": "train.csv", "dev": "val.csv", "test": "test.csv"}[split])

    def prepare(self, train=True, dev=True, test=False):
        splits = [s for s, wanted in (("train", train), ("dev", dev), ("test", test)) if wanted]
        for split in splits:  # read (and check) every file before building anything
            examples = read_swag_examples(self.path(split), require_label=split != "test")
            self.examples[split] = self._limit(examples) if split == "dev" else examples
        for split in splits:
            path, examples = self.path(split), self.examples[split]
            key = {"task": f"{self.name}-{split}", "file": file_fingerprint(path), "count": len(examples),
                   "vocab": self.tokenizer.vocab_fingerprint, "lower": self.tokenizer.do_lower_case,
                   "max_seq_length": self.max_seq_length, "format": 2}
            self.features[split] = self.cache(key, lambda ex=examples: convert_examples_to_features(
                ex, self.tokenizer, self.max_seq_length)[0])
        self.train_features = self.features.get("train")
        if train:
            self.check_training_set(self.path("train"), self.train_features)
        if "train" in self.examples:
            self.train_examples = len(self.examples["train"])
        return self

    def count_train_examples(self):
        return len(read_swag_examples(self.path("train")))

    def evaluate(self, predict):
        out = predict(self.features["dev"])
        metrics = {"acc": accuracy(out["logits"], [e.label for e in self.examples["dev"]])}
        if out.get("loss") is not None:
            metrics["loss"] = float(out["loss"])
        return {self.name: metrics}

    def read_inputs(self, path=None, lines=None, plain=False):
        """A SWAG CSV (val.csv or test.csv layout), or (stdin, `plain`) one example per line, tab-separated:
        the context, optionally the start of the ending, then the 4 endings."""
        if path is not None and not plain:
            return read_swag_examples(path, require_label=False)
        examples = []
        for line, text in plain_lines(path, lines):
            parts = text.split("\t")
            if len(parts) not in (NUM_CHOICES + 1, NUM_CHOICES + 2) or not all(p.strip() for p in parts):
                raise DataError(path or STDIN, line, f"expected the context, optionally the start of the ending, and "
                                             f"{NUM_CHOICES} endings, tab-separated")
            start = parts[1] if len(parts) == NUM_CHOICES + 2 else ""
            examples.append(SwagExample(str(line), "", "", parts[0], start, parts[-NUM_CHOICES:], None, line))
        return examples

    def predict_rows(self, predict, examples):
        """(context, 'N: the chosen ending', its probability among the 4)."""
        features, _ = convert_examples_to_features(examples, self.tokenizer, self.max_seq_length)
        probs = softmax(predict(features)["logits"])
        rows = []
        for example, p in zip(examples, probs):
            best = int(p.argmax())
            ending = f"{example.start_ending} {example.endings[best]}".strip()
            rows.append((example.context, f"{best}: {ending}", float(p[best])))
        return rows

    def write_predictions(self, predict, out_dir):
        out = predict(self.features["test"])
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "test_predictions.csv")
        write_predictions(path, self.examples["test"], out["logits"])
        return [path]


def _build(name, tokenizer, data_dir, max_seq_length, cache=None, max_eval_examples=None, **_):
    return Swag(data_dir, tokenizer, max_seq_length, name=name, cache=cache, max_eval_examples=max_eval_examples)


FAMILY = register(Family(
    name="swag", tasks={"swag": "SWAG"}, task_class=Swag, build=_build, head_type="choice",
    data_files="train.csv, val.csv, test.csv", output_names=("test_predictions.csv",), sample_data="swag_sample"))
