"""The interface every task family implements, so that the runners and the multi-task layer
(multitask.py, which imports no task module) handle any mix of families the same way.

A `Task` is one task of a run, built from its files: a GLUE task (`tasks.glue.Glue`), SQuAD v1.1
or v2.0 (`tasks.squad.Squad`), CoNLL-2003 NER (`tasks.conll.Conll`), SWAG (`tasks.swag.Swag`) or
UD part-of-speech tagging (`tasks.pos.Pos`). Each family module declares itself once with a
`Family` and `register(...)`s it; tasks/__init__.py builds tasks from those declarations
(docs/adding_a_family.md). A task knows its files, its head, its metrics and its official
prediction format, never the model:

    task.prepare(train=True, dev=True, test=False)   # read + validate files, build features (cached)
    task.train_features                              # plain-list features for the engine
    results = task.evaluate(predict)                 # {eval set name: {metric: value in 0..1}}
    task.main_score(results)                         # the one number model selection uses
    task.write_predictions(predict, out_dir)         # official test / prediction files

For a user's own examples (`run_multi_task.py --predict TASK=FILE`, no data folder needed):

    inputs = task.read_inputs(path)                  # the family's own file format, else one example a line
    inputs = task.read_inputs(None, lines)           # stdin: one example per line
    rows = task.predict_rows(predict, inputs)        # [(text, label, score)], None = a blank line
    write_readable_predictions(path, rows)           # text<TAB>label<TAB>score

`predict(features)` runs the model on features of this task and returns the engine's prediction
dict (`logits`, or `start_logits`/`end_logits`, and `loss`); the caller binds the task id.
Features are cached through `cache(key_parts, build)` (the engine's feature cache; the task never
imports the engine), so everything cached is plain data: lists, dicts with string keys, numbers.
"""
import logging
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from file_utils import DataError, atomic_open, utf8_error

logger = logging.getLogger(__name__)
STDIN = "<stdin>"  # the name of standard input in messages
# What the runners write into --output_dir beside the engine's own files (training.OUTPUT_NAMES) and their
# families' declared ones (Family.output_names): results, evaluation files, pictures, per-task folders.
# --overwrite_output_dir removes them (prepare_output_dir's output_names).
RUNNER_OUTPUT_NAMES = ("per_task_best", "predictions", "plots", "diagnostics", "results.json", "eval_results.txt",
                       "test_results.txt", "train_results.txt", "task_labels.json", "selection.json")


IGNORE_INDEX = -100  # a label the loss, predictions and scores skip (padding, non-first word pieces)
# How a family's features pad in a batch ({feature key: pad value}; the dtype comes from the data):
# every family pads its inputs with 0; a token-level family also pads its per-piece labels.
INPUT_PADDING = {"input_ids": 0, "token_type_ids": 0, "attention_mask": 0}
TOKEN_PADDING = dict(INPUT_PADDING, labels=IGNORE_INDEX)


@dataclass(frozen=True)
class Family:
    """What the runners and the engine need to know about a task family, declared once in its module
    and registered with `register` (tasks/__init__.py reads the registry, nothing keeps name lists).

    name            the family ("glue", "squad", "conll", "swag", "pos")
    tasks           {task name: what it is} the family provides, in order (`--tasks` names)
    task_class      its Task subclass
    build           build(name, tokenizer, data_dir, max_seq_length, **settings) -> Task; settings are
                    the run's (cache, max_eval_examples, labels, doc_stride, ...): each takes what it uses
    head_type       its modeling.HEAD_TYPES entry (GLUE: "classification"; STS-B's task says regression)
    data_files      what its data folder holds, for --task_data's help ("" : read from --data_dir)
    max_seq_length  its default max length where the run's --max_seq_length does not fit (SQuAD 384)
    output_names    files its single-task runner writes into --output_dir (--overwrite_output_dir removes them)
    padding         {feature key: pad value} for batching (INPUT_PADDING, TOKEN_PADDING)
    sample_data     its bundled sample folder under data/ (scripts/make_sample_data.py), for the demo
    expand          `--tasks` item -> task names (sets, aliases), None when the item is none of its
                    own; default: the item itself when it is one of `tasks`
    evaluated_by    {task without a training set: the task whose head evaluates it} (GLUE's mnli-mm
                    and ax: mnli); such a task is refused in --tasks
    """
    name: str
    tasks: dict
    task_class: type
    build: Callable
    head_type: str
    data_files: str = ""
    max_seq_length: Optional[int] = None
    output_names: tuple = ()
    padding: dict = field(default_factory=lambda: dict(INPUT_PADDING))
    sample_data: Optional[str] = None
    expand: Optional[Callable] = None
    evaluated_by: dict = field(default_factory=dict)

    @property
    def uses_data_dir(self):
        """True: its tasks read the run's --data_dir (GLUE's root folder), not --task_data NAME=DIR."""
        return not self.data_files

    def task_names(self, item):
        """The task names a `--tasks` item means in this family, or None."""
        if self.expand is not None:
            return self.expand(item)
        return [item] if item in self.tasks else None


REGISTRY = {}  # family name -> Family, in registration order (tasks/__init__.py imports the modules)


def register(family):
    """Add a family to the registry and link its Task class to the declaration. Returns it."""
    if family.name in REGISTRY:
        raise ValueError(f"task family {family.name!r} registered twice")
    clash = [t for other in REGISTRY.values() for t in family.tasks if t in other.tasks]
    if clash:
        raise ValueError(f"task family {family.name!r}: task names {clash} belong to another family")
    REGISTRY[family.name] = family
    family.task_class.declaration = family
    return family


def no_cache(key_parts, build):
    """The default `cache`: build every time."""
    return build()



def pop_column(features, name):
    """Take one key (metadata the family keeps apart) out of every feature -> its values, in order:
    from a list of feature dicts, or from the engine's FeatureTable (what a feature cache gives)."""
    if hasattr(features, "pop_column"):
        return features.pop_column(name)
    return [f.pop(name) for f in features]

class Task:
    """Base class of the task families. Subclasses set, in __init__:

    name          unique in the run ("rte", "mnli", "squad2", "conll", "swag")
    head_type     a modeling.HEAD_TYPES entry (classification, regression, span, token, choice)
    num_labels    outputs of the head (1 for regression and choice, 2 for span)
    labels        label strings in id order, or None
    main_metric   the metric key of the main score
    max_seq_length

    Its family's declaration (`declaration`, a Family set by `register`) gives `padding` and
    `output_names`.
    """
    declaration = None
    flat_predictions = False   # True: prediction files go straight into the run's predictions/ folder
    name = None
    head_type = None
    num_labels = None
    labels = None
    main_metric = None
    max_seq_length = None
    def __init__(self, cache=None, max_eval_examples=None):
        self.cache = cache or no_cache
        self.max_eval_examples = max_eval_examples
        self.train_features = None
        self.train_examples = None   # number of training examples, set by prepare(train=True)

    @property
    def padding(self):
        """{feature key: pad value} of this task's features (its family's declaration)."""
        return dict(self.declaration.padding if self.declaration is not None else INPUT_PADDING)

    @property
    def output_names(self):
        """Files this family's single-task runner writes into --output_dir."""
        return tuple(self.declaration.output_names) if self.declaration is not None else ()

    # -- data ------------------------------------------------------------------------------------
    def prepare(self, train=True, dev=True, test=False):
        """Read and check every file the run will need and build their features, so that bad input
        stops the run before training (DataError naming file and line). Returns self."""
        raise NotImplementedError

    @staticmethod
    def check_training_set(path, features):
        """An empty training set is an error naming its file (before any output is written)."""
        if not features:
            raise DataError(path, None, "no training examples (an empty file, or only a header?)")
        return features

    @property
    def train_size(self):
        """Training examples (questions, sentences, pairs): the N_i of the task sampler. A SQuAD
        question or a long NER sentence may give several windows (features)."""
        return self.train_examples if self.train_examples is not None else len(self.train_features)

    def count_train_examples(self):
        """Training examples, counted by reading the file without tokenizing (for --dry_run)."""
        raise NotImplementedError

    # -- evaluation and predictions -----------------------------------------------------------------
    def evaluate(self, predict):
        """Dev metrics: {eval set name: {metric: value}}, values in 0..1 (MNLI: mnli and mnli-mm)."""
        raise NotImplementedError

    def main_score(self, results):
        """The task's one number (0..1) from evaluate()'s results: GLUE's main score (MNLI: the mean of
        -m and -mm), SQuAD F1, entity F1, accuracy."""
        scores = [float(metrics[self.main_metric]) for metrics in results.values()]
        return sum(scores) / len(scores)

    def selection_score(self, results):
        """The task's part of the model-selection score (the main score, unless a family offers the
        2019 protocol's own, e.g. GLUE's per-batch metrics)."""
        return self.main_score(results)

    def write_predictions(self, predict, out_dir):
        """Official prediction files of the test data (SQuAD: of the dev file) into out_dir; returns
        the paths written. Call prepare(test=True) first."""
        raise NotImplementedError

    # -- a user's own examples --------------------------------------------------------------------
    def read_inputs(self, path=None, lines=None, plain=False):
        """Examples to predict, read from `path` in the family's own format (where it has one; see
        each family) or from `lines` (stdin, one example per line). `plain`: one example per line from
        `lines` or `path` (--predict TASK=lines:FILE), never the family's format. A file is never
        read a second way after its format failed. Bad input: DataError naming file and line."""
        raise NotImplementedError(f"{type(self).__name__} cannot predict a user's file")

    def predict_rows(self, predict, inputs):
        """Readable predictions of read_inputs()'s examples: [(text, label, score)] in input order,
        None for a blank line between groups (sentences of a NER file)."""
        raise NotImplementedError(f"{type(self).__name__} cannot predict a user's file")

    def _limit(self, items):
        """The first max_eval_examples dev items (all when unset)."""
        if self.max_eval_examples and len(items) > self.max_eval_examples:
            return items[:self.max_eval_examples]
        return items

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


def read_stdin_lines(stream=None):
    """The lines of standard input, decoded as UTF-8: other bytes are a DataError naming the line
    (not a UnicodeEncodeError when the predictions are written)."""
    stream = sys.stdin if stream is None else stream
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        data = buffer.read()
        try:
            return data.decode("utf-8-sig").splitlines()
        except UnicodeDecodeError as exc:
            line, start = data[:exc.start].count(b"\n") + 1, exc.start
            raise DataError(STDIN, line, f"not valid UTF-8 text (byte 0x{data[start]:02x}); send UTF-8") from None
    try:
        text = stream.read()
        text.encode("utf-8")  # a text stream that decodes with surrogateescape lets bad bytes through
    except UnicodeDecodeError:
        raise DataError(STDIN, None, "not valid UTF-8 text; send UTF-8") from None
    except UnicodeEncodeError as exc:
        raise DataError(STDIN, text[:exc.start].count("\n") + 1, "not valid UTF-8 text; send UTF-8") from None
    return text.splitlines()


def plain_lines(path=None, lines=None):
    """[(line number, text)] of the non-blank lines of `lines` (stdin, or a file already read) or of
    the UTF-8 file `path`."""
    if lines is None:
        try:
            with open(path, encoding="utf-8-sig") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise DataError(path, None, f"cannot read file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise utf8_error(path) from None
    rows = [(i, line.rstrip("\r\n")) for i, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise DataError(path or STDIN, None, "no examples (every line is empty)")
    return rows


def softmax(logits):
    """Row-wise softmax of [N, C] logits (float64)."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4f}"
    return " ".join(str(value).split())  # a tab or line break inside a text would break the row


def write_readable_predictions(path, rows):
    """`text<TAB>label<TAB>score` with a header; None rows become blank lines. Returns the number of
    predictions written."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("text\tlabel\tscore\n")
        for row in rows:
            f.write("\n" if row is None else "\t".join(_cell(v) for v in row) + "\n")
    return sum(row is not None for row in rows)
