"""Convert GLUE as the Hugging Face Hub serves it (parquet) into the official GLUE TSV layout.

    hf download nyu-mll/glue --repo-type dataset --local-dir glue_hub
    python scripts/prepare_glue.py glue_hub glue_data [--tasks cola,mnli,...]

writes what `download_glue_data.py` used to (and tasks/glue.py reads): CoLA/, SST-2/, MRPC/, STS-B/,
QQP/, MNLI/, QNLI/, RTE/, WNLI/ with train.tsv, dev.tsv, test.tsv (MNLI: train.tsv,
dev_matched.tsv, dev_mismatched.tsv, test_matched.tsv, test_mismatched.tsv) and
diagnostic/diagnostic.tsv (AX). Needs pyarrow (`pip install pyarrow`). A task's files are
written all or none: each goes to a temporary file beside its final name, and they replace the
existing files only once every file of the task has been written and synced (a bad row in test.tsv
never leaves new train/dev files beside an old test.tsv).

Source layout (the dataset card of nyu-mll/glue: its `configs:` block and `dataset_info`):
`<SRC>/<config>/<split>-NNNNN-of-NNNNN.parquet` for the configs cola, sst2, mrpc, qqp, stsb, mnli,
mnli_matched, mnli_mismatched, qnli, rte, wnli, ax, with splits train / validation / test, and for
mnli train / validation_matched / validation_mismatched / test_matched / test_mismatched
(mnli_matched and mnli_mismatched repeat those as validation / test and are used only when the
mnli files are absent). The Hub's auto-converted branch (refs/convert/parquet,
`<config>/<split>/0000.parquet`) is read as well. Several shards of one split are concatenated in
file-name order.

Columns (dataset card `dataset_info.features`, the same as the former `datasets` script
datasets/glue/glue.py that produced these files): cola/sst2 `sentence`; mrpc/rte/wnli/stsb
`sentence1`, `sentence2`; qqp `question1`, `question2`; qnli `question`, `sentence`;
mnli/ax `premise`, `hypothesis`; always `label` and `idx`.

Labels: the Hub stores ClassLabel ids; the official files store strings. Mapping (ids and names
from the dataset card; how the ids were made from the TSV strings from glue.py, which cast "0"/"1"
labels with int() and looked other strings up in the class names):
- CoLA (0 unacceptable, 1 acceptable), SST-2 (0 negative, 1 positive), MRPC (0 not_equivalent,
  1 equivalent), QQP (0 not_duplicate, 1 duplicate), WNLI (0 not_entailment, 1 entailment):
  the official files say "0"/"1", so id k is written as "k".
- QNLI, RTE: 0 -> "entailment", 1 -> "not_entailment".
- MNLI: 0 -> "entailment", 1 -> "neutral", 2 -> "contradiction" (tasks/glue.py orders them
  contradiction, entailment, neutral: it is the strings that carry the meaning).
- STS-B: the float32 score, written as the shortest decimal that reads back to the same float32
  (4.0 -> "4", 3.8 -> "3.8"; the official files write "4.000", "3.800": same value).
- Test splits (and AX) have label -1 on the Hub and no label column in the official files.

Columns the Hub does not have are written as placeholders so every row has the official number
of fields: index/id columns get the Hub `idx` (which glue.py set to the row's position in the
official file, so test indices match the leaderboard's); every other missing column (CoLA's
source and original-judgement columns, MRPC's #1 ID/#2 ID, STS-B's genre/filename/year/
old_index/source1/source2, QQP's qid1/qid2, MNLI's promptID/pairID/genre/parses/label1..label5)
is an empty string. tasks/glue.py reads none of them.

The official files are tab-separated with no quoting, so a tab, CR or LF inside a text would
break its row: each is replaced by a space, and the number of texts changed is logged per file.

A task whose parquet files are missing is an error when it was named in --tasks, and a warning
(the task is skipped) otherwise.
"""
import argparse
import contextlib
import glob
import logging
import os
import re
from dataclasses import dataclass

from file_utils import ConfigError, DataError, atomic_open, run_cli

logger = logging.getLogger("prepare_glue")

_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")  # Hub ClassLabel order (ids 0, 1, 2)
_MNLI_BASE = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
_STSB_BASE = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]


@dataclass(frozen=True)
class OutFile:
    name: str               # file name in the task folder
    sources: tuple          # (config, split) alternatives on the Hub, first found wins
    labelled: bool


@dataclass(frozen=True)
class TaskSpec:
    name: str               # tasks/glue.py name
    directory: str          # official folder
    columns: tuple          # Hub text columns
    labels: object          # id -> official string (tuple), or "score" for STS-B
    files: tuple            # OutFile, ...
    header: object          # callable(labelled, file name) -> header list, or None for no header
    row: object             # callable(idx, texts, label, file name) -> list of fields


def _std_files(config):
    return (OutFile("train.tsv", ((config, "train"),), True),
            OutFile("dev.tsv", ((config, "validation"),), True),
            OutFile("test.tsv", ((config, "test"),), False))


def _pair_header(first, second):
    return lambda labelled, _: ["index", first, second] + (["label"] if labelled else [])


def _pair_row(idx, texts, label, _):
    return [idx, texts[0], texts[1]] + ([label] if label is not None else [])


def _mnli_header(labelled, name):
    if not labelled:
        return list(_MNLI_BASE)
    if name == "train.tsv":
        return _MNLI_BASE + ["label1", "gold_label"]
    return _MNLI_BASE + ["label1", "label2", "label3", "label4", "label5", "gold_label"]


def _mnli_row(idx, texts, label, name):
    row = [idx, "", "", "", "", "", "", "", texts[0], texts[1]]
    if label is not None:
        row += [""] * (1 if name == "train.tsv" else 5) + [label]
    return row


TASKS = [
    TaskSpec("cola", "CoLA", ("sentence",), _BIN, _std_files("cola"),
             # train/dev have no header: source, label, original judgement, sentence
             header=lambda labelled, _: None if labelled else ["index", "sentence"],
             row=lambda idx, t, label, _: ["", label, "", t[0]] if label is not None else [idx, t[0]]),
    TaskSpec("sst-2", "SST-2", ("sentence",), _BIN, _std_files("sst2"),
             header=lambda labelled, _: ["sentence", "label"] if labelled else ["index", "sentence"],
             row=lambda idx, t, label, _: [t[0], label] if label is not None else [idx, t[0]]),
    TaskSpec("mrpc", "MRPC", ("sentence1", "sentence2"), _BIN, _std_files("mrpc"),
             header=lambda labelled, _: (["Quality"] if labelled else ["index"])
             + ["#1 ID", "#2 ID", "#1 String", "#2 String"],
             row=lambda idx, t, label, _: [label if label is not None else idx, "", "", t[0], t[1]]),
    TaskSpec("sts-b", "STS-B", ("sentence1", "sentence2"), "score", _std_files("stsb"),
             header=lambda labelled, _: _STSB_BASE + (["score"] if labelled else []),
             row=lambda idx, t, label, _: [idx, "", "", "", "", "", "", t[0], t[1]]
             + ([label] if label is not None else [])),
    TaskSpec("qqp", "QQP", ("question1", "question2"), _BIN, _std_files("qqp"),
             header=lambda labelled, _: ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
             if labelled else ["id", "question1", "question2"],
             row=lambda idx, t, label, _: [idx, "", "", t[0], t[1], label] if label is not None
             else [idx, t[0], t[1]]),
    TaskSpec("mnli", "MNLI", ("premise", "hypothesis"), _MNLI, (
        OutFile("train.tsv", (("mnli", "train"),), True),
        OutFile("dev_matched.tsv", (("mnli", "validation_matched"), ("mnli_matched", "validation")), True),
        OutFile("dev_mismatched.tsv", (("mnli", "validation_mismatched"), ("mnli_mismatched", "validation")), True),
        OutFile("test_matched.tsv", (("mnli", "test_matched"), ("mnli_matched", "test")), False),
        OutFile("test_mismatched.tsv", (("mnli", "test_mismatched"), ("mnli_mismatched", "test")), False),
    ), header=_mnli_header, row=_mnli_row),
    TaskSpec("qnli", "QNLI", ("question", "sentence"), _NLI2, _std_files("qnli"),
             header=_pair_header("question", "sentence"), row=_pair_row),
    TaskSpec("rte", "RTE", ("sentence1", "sentence2"), _NLI2, _std_files("rte"),
             header=_pair_header("sentence1", "sentence2"), row=_pair_row),
    TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), _BIN, _std_files("wnli"),
             header=_pair_header("sentence1", "sentence2"), row=_pair_row),
    TaskSpec("ax", "diagnostic", ("premise", "hypothesis"), _MNLI,
             (OutFile("diagnostic.tsv", (("ax", "test"),), False),),
             header=_pair_header("sentence1", "sentence2"), row=_pair_row),
]
TASKS_BY_NAME = {t.name: t for t in TASKS}
# --tasks spellings: our names, official folder names and Hub config names
_ALIASES = {"sst2": "sst-2", "sst": "sst-2", "stsb": "sts-b", "sts": "sts-b", "mnli-m": "mnli", "mnli-mm": "mnli",
            "mnli_matched": "mnli", "mnli_mismatched": "mnli", "diagnostic": "ax"}

_BREAKS = re.compile(r"\r\n|[\t\r\n]")


def parse_tasks(spec):
    """Comma list of task names (ours, official folder names or Hub config names) -> spec names."""
    names = []
    for item in str(spec).split(","):
        key = item.strip().lower()
        if not key:
            continue
        if key in ("all", "glue"):
            expanded = [t.name for t in TASKS]
        else:
            key = _ALIASES.get(key, key)
            key = {t.directory.lower(): t.name for t in TASKS}.get(key, key)
            if key not in TASKS_BY_NAME:
                raise ConfigError(f"unknown GLUE task '{item.strip()}' (known: {', '.join(TASKS_BY_NAME)})")
            expanded = [key]
        names += [n for n in expanded if n not in names]
    if not names:
        raise ConfigError(f"no tasks in --tasks '{spec}'")
    return names


def find_parquet(src, config, split):
    """Shards of one Hub split, in order; [] if absent."""
    for pattern in (os.path.join(src, config, f"{split}-*.parquet"), os.path.join(src, config, split, "*.parquet")):
        files = sorted(glob.glob(pattern))
        if files:
            return files
    return []


def _sources(src, out_file):
    for config, split in out_file.sources:
        files = find_parquet(src, config, split)
        if files:
            return files
    return []


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading the Hub's GLUE parquet files needs pyarrow: pip install pyarrow") from None
    return pq


def _read_columns(path, columns):
    """{column: python list} of one parquet file; DataError if it cannot be read or lacks a column."""
    pq = _pyarrow_parquet()
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise DataError(path, None, f"not a readable parquet file: {str(exc).splitlines()[0]}") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(path, None, f"missing column(s) {', '.join(missing)} (has: {', '.join(schema.names)}); "
                                    "is this the right config?")
    try:
        table = pq.read_table(path, columns=list(columns))
    except Exception as exc:
        raise DataError(path, None, f"cannot read parquet data: {str(exc).splitlines()[0]}") from None
    result = {c: table.column(c).to_pylist() for c in columns}
    result["_label_type"] = str(schema.field("label").type) if "label" in columns else None
    return result


def _format_score(value, label_type):
    import numpy as np
    if label_type == "float":  # pyarrow's name for float32: print what float32 actually holds
        return np.format_float_positional(np.float32(value), unique=True, trim="-")
    return np.format_float_positional(float(value), unique=True, trim="-")


def _clean(text, path, row, column):
    if not isinstance(text, str):
        raise DataError(path, None, f"row {row}: column '{column}' is {text!r}, expected a string")
    cleaned = _BREAKS.sub(" ", text)
    return cleaned, cleaned != text


def _score(raw, path, row, idx):
    """An STS-B score as the Hub stores it (a number in 0..5), else a DataError."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0.0 <= raw <= 5.0:
        raise DataError(path, None, f"row {row} (idx {idx}): score {raw!r} is not a number in 0..5")
    return raw


def convert_file(task, out_file, parquet_files, f, out_path):
    """Write one official TSV file from the Hub shards into the open file `f` (which becomes
    `out_path`); returns the number of rows written."""
    columns = list(task.columns) + ["label", "idx"]
    header = task.header(out_file.labelled, out_file.name)
    if header is not None:
        f.write("\t".join(header) + "\n")
    count, changed, empty = 0, 0, 0
    for path in parquet_files:
        data = _read_columns(path, columns)
        for i in range(len(data["idx"])):
            idx = data["idx"][i]
            if not isinstance(idx, int):
                raise DataError(path, None, f"row {i}: idx is {idx!r}, expected an integer")
            texts = []
            for column in task.columns:
                text, was_changed = _clean(data[column][i], path, i, column)
                changed += was_changed
                empty += not text.strip()
                texts.append(text)
            label = None
            if out_file.labelled:
                raw = data["label"][i]
                if task.labels == "score":
                    label = _format_score(_score(raw, path, i, idx), data["_label_type"])
                else:
                    if not isinstance(raw, int) or not 0 <= raw < len(task.labels):
                        raise DataError(path, None, f"row {i} (idx {idx}): label {raw!r} is not one of the "
                                                    f"{len(task.labels)} {task.directory} class ids")
                    label = task.labels[raw]
            f.write("\t".join(task.row(str(idx), texts, label, out_file.name)) + "\n")
            count += 1
    if changed:
        logger.warning("%s: %d texts had tabs or line breaks, replaced by spaces", out_path, changed)
    if empty:
        logger.warning("%s: %d empty texts (tasks/glue.py refuses them in train/dev files except QQP's)",
                       out_path, empty)
    return count


def convert_task(task, found, out):
    """Write every file of `task`, or none: {file name: rows}. Each file goes to its own temporary
    (atomic_open); all are written and synced before the first one is renamed into place."""
    counts = {}
    new_folders = [d for d in (out, os.path.join(out, task.directory)) if not os.path.isdir(d)]
    try:
        with contextlib.ExitStack() as stack:
            files = []
            for out_file in task.files:
                path = os.path.join(out, task.directory, out_file.name)
                f = stack.enter_context(atomic_open(path, "w", encoding="utf-8", newline=""))
                counts[out_file.name] = convert_file(task, out_file, found[out_file.name], f, path)
                files.append((f, path))
            for f, path in files:  # a full disk shows here, before any file replaces an old one
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as exc:
                    exc.filename = exc.filename or path
                    raise
    except BaseException:
        for folder in reversed(new_folders):  # made for this task: leave no empty folder behind
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    return counts


def prepare(src, out, tasks=None):
    """Convert the tasks (spec names; None = all found); returns {task: {file name: rows}}."""
    if not os.path.isdir(src):
        raise ConfigError(f"{src}: not a folder (expected the nyu-mll/glue download, e.g. {src}/cola/...)")
    explicit = tasks is not None
    names = tasks if explicit else [t.name for t in TASKS]
    plan, skipped = [], []
    for name in names:
        task = TASKS_BY_NAME[name]
        found = {f.name: _sources(src, f) for f in task.files}
        missing = [f for f in task.files if not found[f.name]]
        if missing:
            wanted = "; ".join(f"{f.name} <- {' or '.join(os.path.join(c, s + '-*.parquet') for c, s in f.sources)}"
                               for f in missing)
            if explicit:
                raise ConfigError(f"{src}: task {task.directory} was asked for but its parquet files are missing "
                                  f"({wanted})")
            logger.warning("%s: skipping %s: parquet files missing (%s)", src, task.directory, wanted)
            skipped.append(name)
            continue
        plan.append((task, found))
    if not plan:
        example = os.path.join(src, "cola", "train-00000-of-00001.parquet")
        raise ConfigError(f"{src}: no GLUE parquet files found (expected e.g. {example}; "
                          "download with: hf download nyu-mll/glue --repo-type dataset --local-dir DIR)")
    _pyarrow_parquet()  # fail before writing anything if pyarrow is missing
    result = {}
    for task, found in plan:
        result[task.name] = convert_task(task, found, out)
        for name, count in result[task.name].items():
            logger.info("%s: %d rows", os.path.join(out, task.directory, name), count)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", metavar="SRC", help="folder of the nyu-mll/glue download (parquet)")
    parser.add_argument("out", metavar="OUT", help="output folder (official GLUE layout)")
    parser.add_argument("--tasks", default=None,
                        help="comma list (cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte, wnli, ax; Hub config "
                             "names work too); default: every task found, skipping missing ones with a warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tasks = parse_tasks(args.tasks) if args.tasks is not None else None
    result = prepare(args.src, args.out, tasks)
    total = sum(sum(files.values()) for files in result.values())
    print(f"wrote {total} rows for {len(result)} tasks ({', '.join(result)}) under {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
