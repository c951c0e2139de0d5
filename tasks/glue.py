"""GLUE: read the official task files, build features, compute GLUE metrics, write submissions.

Covers CoLA, SST-2, MRPC, STS-B, QQP, MNLI (matched and mismatched), QNLI, RTE, WNLI and the
AX diagnostic set, for the train, dev and test files of the official GLUE release
(`download_glue_data.py` layout: `<data_dir>/<TASK DIR>/train.tsv` ...).

A run's GLUE task is a `Glue` (tasks.base.Task) built from the `FAMILY` declaration at the end of
this module: it reads the split files (`read_examples`), builds features, scores dev sets with the
GLUE metrics (`compute_metrics`, `main_score`) and writes the leaderboard files (`write_predictions`).

Files are read like the reference readers: `csv.reader`, tab delimiter, no quoting (double
quotes are literal text). Each row must have as many fields as the file's header (or the fixed
layout for headerless CoLA train/dev); anything else is a `DataError(path, line, msg)`. The only
deliberate skip is the reference's: QQP train/dev rows with the wrong number of fields (counted
and logged).
"""
import csv
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from file_utils import ConfigError, DataError, atomic_open, file_fingerprint, utf8_error
from tasks.base import STDIN, Family, Task, plain_lines, register, softmax
from tokenization import truncate_seq_pair

logger = logging.getLogger(__name__)

# Task order of the PALs reference (`--tasks all`): the task id of a task is its position here.
PAPER_TASKS = ["cola", "mrpc", "mnli", "rte", "sts-b", "sst-2", "qqp", "qnli"]
# Every GLUE task that has a training set (the 8 paper tasks + WNLI), in leaderboard order.
GLUE_TASKS = ["cola", "sst-2", "mrpc", "sts-b", "qqp", "mnli", "qnli", "rte", "wnli"]
# Named task sets accepted by `--tasks` (tasks.parse_task_names).
TASK_SETS = {
    "all": PAPER_TASKS,
    "paper": PAPER_TASKS,
    "glue": GLUE_TASKS,
    "inf": ["qnli", "mnli", "rte"],  # the reference's inference-only set
}

STSB_MAX_SCORE = 5.0


# ---- Metrics (corpus level, as GLUE reports them) ------------------------------------------------

def _as_arrays(preds, labels):
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.ndim != 1:
        raise ValueError(f"predictions {preds.shape} and labels {labels.shape} must be equal-length 1-d arrays")
    if preds.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return preds, labels


def simple_accuracy(preds, labels):
    preds, labels = _as_arrays(preds, labels)
    return {"acc": float((preds == labels).mean())}


# scikit-learn and SciPy are imported inside the functions that use them: their imports cost
# ~1.5 s, which every runner (even `--help`) would otherwise pay at start-up.

def matthews(preds, labels):
    from sklearn.metrics import matthews_corrcoef
    preds, labels = _as_arrays(preds, labels)
    return {"mcc": float(matthews_corrcoef(labels, preds))}


def acc_and_f1(preds, labels):
    """MRPC/QQP: accuracy, binary F1 of class id 1, and their mean."""
    from sklearn.metrics import f1_score
    preds, labels = _as_arrays(preds, labels)
    acc = float((preds == labels).mean())
    f1 = float(f1_score(y_true=labels, y_pred=preds, pos_label=1, average="binary", zero_division=0.0))
    return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}


def pearson_and_spearman(preds, labels):
    """STS-B: Pearson r, Spearman rho and their mean.

    A constant vector has no correlation; SciPy returns NaN there. We report 0.0 instead so
    that a summed model-selection score never turns NaN (the reference's per-batch Pearson
    did, and then never saved a better model again).
    """
    preds, labels = _as_arrays(preds, labels)
    preds, labels = preds.astype(np.float64), labels.astype(np.float64)
    if np.ptp(preds) == 0 or np.ptp(labels) == 0:
        pearson = spearman = 0.0
    else:
        from scipy.stats import pearsonr, spearmanr
        pearson = float(pearsonr(preds, labels)[0])
        spearman = float(spearmanr(preds, labels)[0])
    return {"pearson": pearson, "spearmanr": spearman, "corr": (pearson + spearman) / 2}


# ---- GLUE tasks -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Column use of one kind of file (train/dev, or test). Column -1 means the last field."""
    header: bool
    text_a: int
    text_b: Optional[int]
    label: Optional[int]        # None: unlabelled (test files)
    index: Optional[int]        # column with the example id (None: use the row's position)
    min_cols: int               # a header must have at least this many columns
    exact_cols: Optional[int] = None  # headerless files: the fixed number of columns


@dataclass(frozen=True)
class GlueTask:
    name: str                   # canonical lower-case name ("sts-b")
    display: str                # name as GLUE writes it ("STS-B")
    directory: str              # folder in the GLUE download
    labels: Optional[tuple]     # label strings in id order; None for regression
    head_type: str              # "classification" or "regression"
    metric: Callable            # (preds, labels) -> dict of metric name -> float
    main_metric_key: str        # metric used for the GLUE average and model selection
    files: dict                 # split -> tuple of candidate file names (first = official)
    submissions: dict           # test split -> leaderboard file name
    layouts: dict               # "train" (train and dev files) / "test" -> Layout
    aliases: tuple = ()
    head_task: Optional[str] = None   # AX is predicted with the MNLI head
    skip_bad_rows: bool = False       # QQP train/dev: reference skips rows with wrong field count

    @property
    def num_labels(self):
        """Number of head outputs (1 for regression)."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self):
        return self.head_type == "regression"

    @property
    def label_map(self):
        return {} if self.labels is None else {label: i for i, label in enumerate(self.labels)}

    @property
    def splits(self):
        return tuple(self.files)

    def split_kind(self, split):
        """Which layout a split uses: 'test' (unlabelled) or 'train' (train and dev files)."""
        return "test" if split.startswith("test") else "train"

    def submission_file(self, split="test"):
        if split not in self.submissions:
            raise ConfigError(f"task {self.display} has no test split '{split}' "
                              f"(test splits: {', '.join(self.submissions)})")
        return self.submissions[split]


def _files(train=True, dev="dev.tsv", test="test.tsv", **extra):
    files = {}
    if train:
        files["train"] = ("train.tsv",)
    if dev:
        files["dev"] = (dev,)
    files["test"] = (test,) if isinstance(test, str) else tuple(test)
    for split, name in extra.items():
        files[split] = (name,)
    return files


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI = ("contradiction", "entailment", "neutral")

# test layout shared by QNLI, RTE, WNLI and AX: `index sentence1 sentence2` (QNLI: question sentence)
_PAIR_TEST = Layout(header=True, text_a=1, text_b=2, label=None, index=0, min_cols=3)
_PAIR_TRAIN = Layout(header=True, text_a=1, text_b=2, label=-1, index=0, min_cols=4)
_MNLI_LAYOUTS = {
    # train: 12 columns (index promptID pairID genre 4 parses sentence1 sentence2 label1 gold_label),
    # dev: 16 (label1..label5 gold_label); test: 10. Sentences are columns 8 and 9.
    "train": Layout(header=True, text_a=8, text_b=9, label=-1, index=0, min_cols=11),
    "test": Layout(header=True, text_a=8, text_b=9, label=None, index=0, min_cols=10),
}

_TASK_LIST = [
    GlueTask(
        name="cola", display="CoLA", directory="CoLA", labels=_BIN, head_type="classification",
        metric=matthews, main_metric_key="mcc", files=_files(), submissions={"test": "CoLA.tsv"},
        layouts={
            # train/dev: no header; source, label, original judgement ("*" or empty), sentence
            "train": Layout(header=False, text_a=3, text_b=None, label=1, index=None, min_cols=4, exact_cols=4),
            "test": Layout(header=True, text_a=1, text_b=None, label=None, index=0, min_cols=2),
        }),
    GlueTask(
        name="sst-2", display="SST-2", directory="SST-2", labels=_BIN, head_type="classification",
        metric=simple_accuracy, main_metric_key="acc", files=_files(), submissions={"test": "SST-2.tsv"},
        aliases=("sst", "sst2"),
        layouts={
            "train": Layout(header=True, text_a=0, text_b=None, label=1, index=None, min_cols=2),
            "test": Layout(header=True, text_a=1, text_b=None, label=None, index=0, min_cols=2),
        }),
    GlueTask(
        name="mrpc", display="MRPC", directory="MRPC", labels=_BIN, head_type="classification",
        metric=acc_and_f1, main_metric_key="acc_and_f1", files=_files(), submissions={"test": "MRPC.tsv"},
        layouts={
            # train/dev: Quality #1 ID #2 ID #1 String #2 String; test: index #1 ID #2 ID #1 String #2 String
            "train": Layout(header=True, text_a=3, text_b=4, label=0, index=None, min_cols=5),
            "test": Layout(header=True, text_a=3, text_b=4, label=None, index=0, min_cols=5),
        }),
    GlueTask(
        name="sts-b", display="STS-B", directory="STS-B", labels=None, head_type="regression",
        metric=pearson_and_spearman, main_metric_key="corr", files=_files(), submissions={"test": "STS-B.tsv"},
        aliases=("sts", "stsb"),
        layouts={
            # index genre filename year old_index source1 source2 sentence1 sentence2 [score]
            "train": Layout(header=True, text_a=7, text_b=8, label=-1, index=0, min_cols=10),
            "test": Layout(header=True, text_a=7, text_b=8, label=None, index=0, min_cols=9),
        }),
    GlueTask(
        name="qqp", display="QQP", directory="QQP", labels=_BIN, head_type="classification",
        metric=acc_and_f1, main_metric_key="acc_and_f1", files=_files(), submissions={"test": "QQP.tsv"},
        skip_bad_rows=True,
        layouts={
            # train/dev: id qid1 qid2 question1 question2 is_duplicate; test: id question1 question2
            "train": Layout(header=True, text_a=3, text_b=4, label=5, index=0, min_cols=6),
            "test": Layout(header=True, text_a=1, text_b=2, label=None, index=0, min_cols=3),
        }),
    GlueTask(
        name="mnli", display="MNLI-m", directory="MNLI", labels=_MNLI, head_type="classification",
        metric=simple_accuracy, main_metric_key="acc",
        files=_files(dev="dev_matched.tsv", test="test_matched.tsv",
                     dev_matched="dev_matched.tsv", dev_mismatched="dev_mismatched.tsv",
                     test_matched="test_matched.tsv", test_mismatched="test_mismatched.tsv"),
        submissions={"test": "MNLI-m.tsv", "test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
        aliases=("mnli-m", "mnli-matched"), layouts=_MNLI_LAYOUTS),
    GlueTask(
        # Not a separate model: the MNLI head evaluated on the mismatched dev/test files.
        name="mnli-mm", display="MNLI-mm", directory="MNLI", labels=_MNLI, head_type="classification",
        metric=simple_accuracy, main_metric_key="acc",
        files=_files(dev="dev_mismatched.tsv", test="test_mismatched.tsv",
                     dev_mismatched="dev_mismatched.tsv", test_mismatched="test_mismatched.tsv"),
        submissions={"test": "MNLI-mm.tsv", "test_mismatched": "MNLI-mm.tsv"},
        aliases=("mnlimm", "mnli-mismatched"), head_task="mnli", layouts=_MNLI_LAYOUTS),
    GlueTask(
        name="qnli", display="QNLI", directory="QNLI", labels=_NLI2, head_type="classification",
        metric=simple_accuracy, main_metric_key="acc", files=_files(), submissions={"test": "QNLI.tsv"},
        layouts={"train": _PAIR_TRAIN, "test": _PAIR_TEST}),
    GlueTask(
        name="rte", display="RTE", directory="RTE", labels=_NLI2, head_type="classification",
        metric=simple_accuracy, main_metric_key="acc", files=_files(), submissions={"test": "RTE.tsv"},
        layouts={"train": _PAIR_TRAIN, "test": _PAIR_TEST}),
    GlueTask(
        name="wnli", display="WNLI", directory="WNLI", labels=_BIN, head_type="classification",
        metric=simple_accuracy, main_metric_key="acc", files=_files(), submissions={"test": "WNLI.tsv"},
        layouts={"train": _PAIR_TRAIN, "test": _PAIR_TEST}),
    GlueTask(
        # Diagnostic set: test only, labelled with the MNLI head; the leaderboard scores it with R3
        # (3-class Matthews correlation), which is what `metric` computes if gold labels are given.
        name="ax", display="AX", directory="diagnostic", labels=_MNLI, head_type="classification",
        metric=matthews, main_metric_key="mcc",
        files={"test": ("diagnostic.tsv", "AX.tsv")}, submissions={"test": "AX.tsv"},
        aliases=("diagnostic", "glue-diagnostic"), head_task="mnli",
        layouts={"test": _PAIR_TEST}),
]

TASKS = {t.name: t for t in _TASK_LIST}
_ALIASES = {}
for _t in _TASK_LIST:
    for _alias in (_t.name, _t.display, _t.directory) + _t.aliases:
        # setdefault: the MNLI folder name means MNLI (matched), not the MNLI-mm entry after it.
        _ALIASES.setdefault(_alias.lower().replace("_", "-"), _t.name)


def get_task(name):
    """Look a task up by name, GLUE name, directory or alias (case-insensitive, `_` = `-`)."""
    if isinstance(name, GlueTask):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise ConfigError(f"unknown GLUE task '{name}' (known: {', '.join(TASKS)})")
    return TASKS[_ALIASES[key]]


# ---- Reading files -------------------------------------------------------------------------------

@dataclass
class InputExample:
    guid: str                   # "<task>-<split>-<line>"
    text_a: str
    text_b: Optional[str]
    label: object               # label string, float score, or None (test files)
    index: Optional[str]        # the file's id column (test files: the submission index)
    line: int                   # 1-based line in `path`
    path: str = field(repr=False, default="")


def task_file(task, data_dir, split):
    """Path of a task's split file: `<data_dir>/<TASK DIR>/<file>`, or `<data_dir>/<file>` when
    data_dir already is the task folder. Missing -> DataError naming the expected path."""
    task = get_task(task)
    if split not in task.files:
        raise ConfigError(f"task {task.display} has no split '{split}' (splits: {', '.join(task.files)})")
    names = task.files[split]
    for folder in (os.path.join(data_dir, task.directory), data_dir):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    expected = os.path.join(data_dir, task.directory, names[0])
    alt = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    raise DataError(expected, None, f"missing {task.display} {split} file{alt}; "
                                    "expected the official GLUE layout <data_dir>/<TASK>/<file>")


def _column(row, col):
    return row[col] if col is not None else None


def _tsv_rows(path):
    """(line number, fields) of the non-blank rows of a GLUE TSV file; unreadable -> DataError."""
    reader = None
    try:
        # utf-8-sig: the MRPC files of the GLUE download start with the BOM of the MSR corpus.
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                if row and row != [""]:  # a blank line (e.g. a trailing newline) is not a record
                    yield reader.line_num, row
    except OSError as exc:   # a --data_dir file that is a folder, unreadable, or gone
        raise DataError(path, None, f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        # (the decoder's own offset is relative to a block of the file: find the line instead)
        raise utf8_error(path) from None
    except csv.Error as exc:   # e.g. a field over csv.field_size_limit() (no newline in 128 KiB)
        raise DataError(path, reader.line_num if reader else None, f"unreadable TSV: {exc}") from None


def _empty_text(task, layout, kind, text_a, text_b, path, line):
    """True for a row with an empty text that is kept, False for a row with its texts; an empty
    text anywhere else is a DataError."""
    if text_a.strip() and (text_b is None or text_b.strip()):
        return False
    # Test rows cannot be dropped (the submission needs one line per index); QQP's reference
    # reader keeps them too. Everywhere else an empty text is a broken row.
    if kind == "test" or task.skip_bad_rows:
        return True
    which = "text" if layout.text_b is None else ("first sentence" if not text_a.strip() else "second sentence")
    raise DataError(path, line, f"empty {which}")


def _row_label(task, row, layout, path, line):
    """The row's label (a label string, an STS-B score) or None for an unlabelled layout."""
    if layout.label is None:
        return None
    raw = row[layout.label].strip()
    if task.is_regression:
        try:
            label = float(raw)
        except ValueError:
            raise DataError(path, line, f"bad score {raw!r} (expected a number in 0..5)") from None
        if not (math.isfinite(label) and 0.0 <= label <= STSB_MAX_SCORE):
            raise DataError(path, line, f"score {raw!r} outside 0..5")
        return label
    if raw not in task.label_map:
        raise DataError(path, line, f"unknown label {raw!r} for {task.display} "
                        f"(expected one of {', '.join(task.labels)})")
    return raw


def read_examples(task, data_dir, split, path=None):
    """Read one split of a task into `InputExample`s (see module docstring for the rules).

    `path` overrides the file location (the layout still comes from task + split).
    """
    task = get_task(task)
    if path is None:
        path = task_file(task, data_dir, split)
    kind = task.split_kind(split)
    if kind not in task.layouts:
        raise ConfigError(f"task {task.display} has no {kind} files")
    layout = task.layouts[kind]
    examples, skipped, empty_kept = [], 0, 0
    expected = layout.exact_cols
    header = None if layout.header else []
    for line, row in _tsv_rows(path):
        if header is None:
            header, expected = row, len(row)
            if expected < layout.min_cols:
                raise DataError(path, line, f"header has {expected} columns, a {task.display} {kind} "
                                f"file needs at least {layout.min_cols} (is this the right file?)")
            continue
        if len(row) != expected:
            if task.skip_bad_rows and kind == "train":
                skipped += 1
                continue
            raise DataError(path, line, f"expected {expected} tab-separated fields, found {len(row)}")
        text_a, text_b = row[layout.text_a], _column(row, layout.text_b)
        empty_kept += _empty_text(task, layout, kind, text_a, text_b, path, line)
        examples.append(InputExample(guid=f"{task.name}-{split}-{line}", text_a=text_a, text_b=text_b,
                                     label=_row_label(task, row, layout, path, line),
                                     index=_column(row, layout.index), line=line, path=path))
    if skipped:
        logger.warning("%s: skipped %d rows with a wrong number of fields (the reference QQP reader "
                       "skips them too); read %d examples", path, skipped, len(examples))
    if empty_kept:
        logger.warning("%s: %d rows have an empty text; kept them", path, empty_kept)
    if not examples:
        raise DataError(path, None, f"no {task.display} examples in this file")
    return examples


def gold_labels(task, examples):
    """Gold labels of labelled examples as metric input: label ids, or float scores (0..5)."""
    task = get_task(task)
    if task.is_regression:
        return np.array([float(e.label) for e in examples], dtype=np.float64)
    label_map = task.label_map
    return np.array([label_map[e.label] for e in examples], dtype=np.int64)


# ---- Features ------------------------------------------------------------------------------------

def convert_examples_to_features(examples, task, tokenizer, max_seq_length, label_scale=1.0):
    """`[CLS] a [SEP] (b [SEP])` features, unpadded (the engine's collator pads).

    Each feature: `input_ids`, `token_type_ids` (0 for CLS/a/first SEP, 1 for b/last SEP) and,
    for labelled examples, `labels`: the label id, or for regression the score times
    `label_scale` (the PALs multi-task reference trains STS-B on score/5, i.e. 0.2).
    A pair is truncated longest-first to max_seq_length - 3, a single text to max_seq_length - 2.
    The length for length-grouped batching is `len(feature["input_ids"])`.
    """
    task = get_task(task)
    if max_seq_length < 3:
        raise ConfigError(f"max_seq_length must be at least 3, got {max_seq_length}")
    cls_token = getattr(tokenizer, "cls_token", "[CLS]")
    sep_token = getattr(tokenizer, "sep_token", "[SEP]")
    label_map = task.label_map
    features = []
    for ex in examples:
        tokens_a = tokenizer.tokenize(ex.text_a)
        tokens_b = tokenizer.tokenize(ex.text_b) if ex.text_b is not None else None
        if tokens_b is not None:
            truncate_seq_pair(tokens_a, tokens_b, max_seq_length - 3)
        else:
            tokens_a = tokens_a[:max_seq_length - 2]
        tokens = [cls_token] + tokens_a + [sep_token]
        token_type_ids = [0] * len(tokens)
        if tokens_b is not None:
            tokens += tokens_b + [sep_token]
            token_type_ids += [1] * (len(tokens_b) + 1)
        feature = {"input_ids": list(tokenizer.convert_tokens_to_ids(tokens)), "token_type_ids": token_type_ids}
        if ex.label is not None:
            if task.is_regression:
                feature["labels"] = float(ex.label) * label_scale
            else:
                feature["labels"] = label_map[ex.label]
        features.append(feature)
    return features


# ---- Metrics per task, GLUE score, predictions and submission files ------------------------------

def compute_metrics(task, preds, labels):
    """GLUE metrics on the whole set. preds/labels: label ids, or scores in 0..5 units (STS-B)."""
    return get_task(task).metric(preds, labels)


def main_score(task, metrics):
    """The single number GLUE uses for this task (MRPC/QQP: (acc+F1)/2, STS-B: (Pearson+Spearman)/2)."""
    task = get_task(task)
    key = task.main_metric_key
    if key in metrics:
        return float(metrics[key])
    if key == "acc_and_f1" and "acc" in metrics and "f1" in metrics:
        return (float(metrics["acc"]) + float(metrics["f1"])) / 2
    if key == "corr" and "pearson" in metrics and "spearmanr" in metrics:
        return (float(metrics["pearson"]) + float(metrics["spearmanr"])) / 2
    raise KeyError(f"metrics of {task.display} lack '{key}': {sorted(metrics)}")


def glue_score(results):
    """GLUE average as the official leaderboard computes it.

    `results`: task name -> metrics dict. Each task contributes its `main_score`; MNLI counts
    ONCE, as the mean of MNLI-m and MNLI-mm when both are given (the leaderboard rule: it gives
    78.3 for BERT-base's published test numbers; counting m and mm as two entries gives 78.9).
    AX is not part of the average. Returns the unweighted mean over the tasks present.
    """
    scores = {}
    for name, metrics in results.items():
        task = get_task(name)
        if task.name != "ax":
            scores[task.name] = main_score(task, metrics)
    if "mnli-mm" in scores:
        mm = scores.pop("mnli-mm")
        scores["mnli"] = (scores["mnli"] + mm) / 2 if "mnli" in scores else mm
    if not scores:
        raise ValueError("no GLUE task results to average")
    return float(sum(scores.values()) / len(scores))


def logits_to_predictions(task, logits, label_scale=1.0):
    """Model outputs -> predictions: argmax label ids, or regression outputs / label_scale
    (back in 0..5 units; not clipped, so metrics see the raw values)."""
    task = get_task(task)
    logits = np.asarray(logits, dtype=np.float64)
    if task.is_regression:
        return logits.reshape(-1) / label_scale
    if logits.ndim != 2 or logits.shape[1] != task.num_labels:
        raise ValueError(f"{task.display} logits must have shape [N, {task.num_labels}], got {list(logits.shape)}")
    return logits.argmax(axis=-1)


def prediction_strings(task, predictions):
    """Predictions (label ids or label strings; floats for STS-B) -> submission strings."""
    task = get_task(task)
    out = []
    for p in predictions:
        if task.is_regression:
            value = float(p)
            if not math.isfinite(value):
                raise ValueError(f"{task.display} prediction {p!r} is not a finite number")
            out.append(f"{min(max(value, 0.0), STSB_MAX_SCORE):.3f}")
        elif isinstance(p, str):
            if p not in task.label_map:
                raise ValueError(f"unknown {task.display} label {p!r}")
            out.append(p)
        else:
            i = int(p)
            if not 0 <= i < task.num_labels:
                raise ValueError(f"{task.display} label id {i} out of range 0..{task.num_labels - 1}")
            out.append(task.labels[i])
    return out


def write_predictions(task, path_or_dir, indices, predictions, split="test"):
    """Write a GLUE leaderboard file (`index<TAB>prediction`, label strings, STS-B clipped to
    0..5) atomically. A directory gets the leaderboard file name (e.g. MNLI-mm.tsv for
    task mnli + split test_mismatched). Returns the path written."""
    task = get_task(task)
    indices, predictions = list(indices), list(predictions)
    if len(indices) != len(predictions):
        raise ValueError(f"{len(indices)} indices but {len(predictions)} predictions")
    path = os.fspath(path_or_dir)
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        path = os.path.join(path, task.submission_file(split))
    lines = ["index\tprediction"]
    for i, (index, text) in enumerate(zip(indices, prediction_strings(task, predictions))):
        lines.append(f"{i if index is None else index}\t{text}")
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ---- The GLUE family behind the task interface (tasks.base.Task) ---------------------------------

# Label orders of the PALs reference code where they differ from ours (its QNLI/RTE processors listed
# not_entailment first): the rows of heads it saved are in this order.
REFERENCE_LABEL_ORDER = {"qnli": ("not_entailment", "entailment"), "rte": ("not_entailment", "entailment")}


def reference_head_order(name):
    """Row order that turns a 2019 head of task `name` into ours ([1, 0] for QNLI/RTE), or None."""
    order = REFERENCE_LABEL_ORDER.get(get_task(name).name)
    return None if order is None else [order.index(label) for label in get_task(name).labels]


def reference_head_rows():
    """{task name: row order} for the checkpoint loader (modeling.BertForMultiTask.from_pretrained's
    `reference_head_rows`): heads loaded from a Bert-n-Pals checkpoint get their rows put in our label
    order (QNLI's and RTE's differ from ours: else every prediction of those tasks is flipped)."""
    return {name: reference_head_order(name) for name in REFERENCE_LABEL_ORDER}


# The PALs reference trains STS-B on score/5 in multi-task runs (targets in [0, 1]); the
# single-task scripts train on the raw 0..5 score. Predictions are divided by the same scale.
MULTITASK_REGRESSION_SCALE = 0.2


def reference_selection_metric(dataset, logits, gold, label_scale=MULTITASK_REGRESSION_SCALE, batch_size=8):
    """The metric the 2019 run_multi_task.py summed over tasks to select its model, on one dev set in
    file order, in its eval batches of 8: CoLA's Matthews correlation and STS-B's Pearson correlation
    (predictions clipped to [0, 1] against score/5) computed per batch and averaged weighted by batch
    size, everything else plain accuracy. A batch of constant STS-B predictions (or of one example)
    gives NaN, as in the 2019 code (and a NaN sum never beat the best). `gold` are label ids or 0..5 scores."""
    from scipy.stats import pearsonr
    from sklearn.metrics import matthews_corrcoef
    dataset = get_task(dataset)
    logits, gold = np.asarray(logits, dtype=np.float64), np.asarray(gold)
    total, n = 0.0, len(gold)
    for start in range(0, n, batch_size):
        out, labels = logits[start:start + batch_size], gold[start:start + batch_size]
        if dataset.name == "cola":
            total += matthews_corrcoef(labels, out.argmax(-1)) * len(labels)
        elif dataset.is_regression:
            preds = np.clip(out.reshape(-1), 0.0, 1.0)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # one example (a short last batch): constant, so NaN as a constant batch (scipy now raises)
                r = pearsonr(preds, labels * label_scale)[0] if len(labels) > 1 else float("nan")
                total += r * len(labels)
        else:
            total += float((out.argmax(-1) == labels).sum())
    return float(total / n)


class Glue(Task):
    """One GLUE task of a run. MNLI evaluates on dev_matched (`mnli`) and dev_mismatched
    (`mnli-mm`) and predicts MNLI-m, MNLI-mm and AX (the diagnostic set, when its file is there);
    `mnli-mm` alone trains on MNLI and evaluates/predicts the mismatched sets only."""
    flat_predictions = True  # one folder of leaderboard files, zipped for the GLUE server

    def __init__(self, name, data_dir, tokenizer, max_seq_length=128, label_scale=1.0, cache=None,
                 max_eval_examples=None, reference_selection=False):
        super().__init__(cache, max_eval_examples)
        # 2019 protocol: also compute the metric the 2019 code selected its model on (`reference`)
        self.reference_selection = reference_selection
        self.dataset = get_task(name)
        if self.dataset.name == "ax":
            raise ConfigError("AX is a test-only diagnostic set: it is predicted by the mnli task")
        self.train_dataset = get_task(self.dataset.head_task) if self.dataset.head_task else self.dataset
        self.name = self.dataset.name
        self.head_type = self.dataset.head_type
        self.num_labels = self.dataset.num_labels
        self.labels = list(self.dataset.labels) if self.dataset.labels is not None else None
        self.main_metric = self.dataset.main_metric_key
        self.data_dir, self.tokenizer, self.max_seq_length = data_dir, tokenizer, max_seq_length
        self.label_scale = label_scale if self.dataset.is_regression else 1.0
        self.dev_sets = []    # (eval name, dataset, examples, features)
        self.test_sets = []   # (dataset, split, examples, features)

    def _features(self, dataset, split, examples, path):
        tok = self.tokenizer
        key = {"task": f"glue-{dataset.name}-{split}", "file": file_fingerprint(path),
               "vocab": getattr(tok, "vocab_fingerprint", None), "max_seq_length": self.max_seq_length,
               "label_scale": self.label_scale, "count": len(examples), "format": 2}

        def build():
            features = convert_examples_to_features(examples, dataset, tok, self.max_seq_length,
                                                    label_scale=self.label_scale)
            if split.startswith("test"):
                for feature, example in zip(features, examples):
                    feature["index"] = example.index  # a string: the collator leaves it out of batches
            return features
        return self.cache(key, build)

    def _split(self, dataset, split, limit=False):
        path = task_file(dataset, self.data_dir, split)
        examples = read_examples(dataset, self.data_dir, split, path=path)
        if limit:
            examples = self._limit(examples)
        return examples, self._features(dataset, split, examples, path)

    def prepare(self, train=True, dev=True, test=False):
        if train:
            _, self.train_features = self._split(self.train_dataset, "train")
            self.check_training_set(task_file(self.train_dataset, self.data_dir, "train"), self.train_features)
            self.train_examples = len(self.train_features)
        if dev:
            evals = [(self.name, self.dataset, "dev")]
            if self.name == "mnli":
                evals.append(("mnli-mm", get_task("mnli-mm"), "dev"))
            self.dev_sets = [(eval_name, ds) + self._split(ds, split, limit=True) for eval_name, ds, split in evals]
        if test:
            splits = [(self.dataset, "test")]
            if self.name == "mnli":
                splits = [(self.dataset, "test_matched"), (self.dataset, "test_mismatched"), (get_task("ax"), "test")]
            self.test_sets = []
            for ds, split in splits:
                if ds.name == "ax":
                    try:
                        task_file(ds, self.data_dir, split)
                    except DataError as exc:  # AX is optional in a data folder; every other test file is not
                        logger.warning("no AX diagnostic file (%s): AX.tsv not written", exc)
                        continue
                self.test_sets.append((ds, split) + self._split(ds, split))
        return self

    def count_train_examples(self):
        return len(read_examples(self.train_dataset, self.data_dir, "train"))

    def evaluate(self, predict):
        results = {}
        for eval_name, dataset, examples, features in self.dev_sets:
            out = predict(features)
            preds = logits_to_predictions(dataset, out["logits"], label_scale=self.label_scale)
            gold = gold_labels(dataset, examples)
            metrics = {k: float(v) for k, v in compute_metrics(dataset, preds, gold).items()}
            if self.reference_selection and eval_name == self.name:  # 2019: MNLI-m only
                metrics["reference"] = reference_selection_metric(dataset, out["logits"], gold, self.label_scale)
            if out.get("loss") is not None:
                metrics["loss"] = float(out["loss"])
            results[eval_name] = metrics
        return results

    def selection_score(self, results):
        if self.reference_selection:
            return results[self.name]["reference"]
        return self.main_score(results)

    def main_score(self, results):
        scores = [main_score(name, metrics) for name, metrics in results.items()]
        return float(np.mean(scores))

    PAIR_SEPARATOR = " ||| "  # between the two texts of a pair task in readable predictions

    def read_inputs(self, path=None, lines=None, plain=False):
        """One example per line (the text; pair tasks: the two texts separated by a tab), unless the
        first line has more tab-separated fields than that: then `path` is a file in the task's
        official layout (docs/multitask.md#predicting-a-users-file), its test.tsv when the first
        line is that file's header (`index`/`id` first, as many columns), else its train/dev
        layout; any bad row is an error. `plain`: every line an example."""
        dataset = self.dataset
        pair = dataset.layouts["train"].text_b is not None
        fields = 2 if pair else 1
        source = path or STDIN
        rows = plain_lines(path, lines)
        if not plain:
            first = rows[0][1].split("\t")
            if len(first) > fields:
                if lines is not None:
                    raise DataError(source, rows[0][0], f"{len(first)} tab-separated fields: a {dataset.display} "
                                    f"file in its GLUE layout? give its path, or lines:{path or '-'} for one "
                                    "example per line")
                test = dataset.layouts["test"]
                is_test = first[0].strip().lower() in ("index", "id") and len(first) == test.min_cols
                return read_examples(dataset, None, "test" if is_test else "dev", path=path)
        examples = []
        for line, text in rows:
            parts = text.split("\t") if pair else [text]
            if len(parts) != fields or not all(p.strip() for p in parts):
                raise DataError(source, line, f"expected {'two tab-separated texts' if pair else 'a text'} "
                                f"for {dataset.display} (a file in its GLUE layout has its header on the first "
                                f"line; every line an example: lines:{path or '-'})")
            examples.append(InputExample(guid=f"{dataset.name}-input-{line}", text_a=parts[0],
                                         text_b=parts[1] if pair else None, label=None, index=None, line=line,
                                         path=source))
        return examples

    def predict_rows(self, predict, examples):
        """(text, label, probability of that label); regression: (text, value, value), 0..5 for STS-B."""
        dataset = self.dataset
        features = convert_examples_to_features(examples, dataset, self.tokenizer, self.max_seq_length,
                                                label_scale=self.label_scale)
        logits = predict(features)["logits"]
        texts = [e.text_a if e.text_b is None else e.text_a + self.PAIR_SEPARATOR + e.text_b for e in examples]
        if dataset.is_regression:
            values = logits_to_predictions(dataset, logits, label_scale=self.label_scale)
            return [(text, f"{float(v):.3f}", float(v)) for text, v in zip(texts, values)]
        probs = softmax(logits)
        best = probs.argmax(axis=-1)
        return [(text, dataset.labels[int(i)], float(p[i])) for text, i, p in zip(texts, best, probs)]

    def write_predictions(self, predict, out_dir):
        written = []
        for dataset, split, examples, features in self.test_sets:
            out = predict(features)
            preds = logits_to_predictions(dataset, out["logits"], label_scale=self.label_scale)
            written.append(write_predictions(dataset, os.path.join(out_dir, ""), [e.index for e in examples], preds,
                                             split=split))
        return written


def _expand(item):
    """A `--tasks` item -> GLUE task names: a set (all, paper, glue, inf) or a name/alias; None if not GLUE."""
    if item in TASK_SETS:
        return list(TASK_SETS[item])
    key = item.strip().lower().replace("_", "-")
    return [TASKS[_ALIASES[key]].name] if key in _ALIASES else None


def _build(name, tokenizer, data_dir, max_seq_length, regression_scale=MULTITASK_REGRESSION_SCALE,
           reference_selection=False, cache=None, max_eval_examples=None, **_):
    return Glue(name, data_dir, tokenizer, max_seq_length, label_scale=regression_scale,
                reference_selection=reference_selection, cache=cache, max_eval_examples=max_eval_examples)


FAMILY = register(Family(
    name="glue", tasks={t.name: t.display for t in _TASK_LIST}, task_class=Glue, build=_build,
    head_type="classification", data_files="", sample_data="glue_sample", expand=_expand,
    output_names=tuple(name for t in _TASK_LIST for name in t.submissions.values()),
    evaluated_by={t.name: t.head_task for t in _TASK_LIST if t.head_task or "train" not in t.files}))
