"""Task families: each module reads its files into examples and features, knows its metrics and
writes its official prediction files, behind one interface (tasks.base.Task). Modules never
touch model internals (docs/tasks.md).

- `tasks.glue`: the GLUE benchmark (CoLA, SST-2, MRPC, STS-B, QQP, MNLI(-mm), QNLI, RTE, WNLI, AX).
- `tasks.squad`: SQuAD v1.1 (`squad1`) and v2.0 (`squad2`).
- `tasks.conll`: CoNLL-2003 NER (`conll`).
- `tasks.swag`: SWAG multiple choice (`swag`).
- `tasks.pretraining`: masked-LM + next-sentence data for lm_finetuning/ (not a Task).

This package also turns a run's `--tasks` list into Task objects (`parse_task_names`, `build_task`).
"""
import json
import os

from file_utils import ConfigError
from tasks import conll, glue, squad, swag

# Task names outside GLUE -> what they are. A run mixes them freely with GLUE task names.
OTHER_TASKS = {"squad1": "SQuAD v1.1", "squad2": "SQuAD v2.0", "conll": "CoNLL-2003 NER", "swag": "SWAG"}
# A family's own default length where the run's --max_seq_length (128) does not fit it: SQuAD
# reads 384-piece windows with stride 128, as the BERT paper did.
DEFAULT_MAX_SEQ_LENGTH = {"squad1": 384, "squad2": 384}


def parse_task_names(spec):
    """`--tasks` -> task names in order: `all`/`paper` (the 8 paper tasks in the reference order,
    which fixes the task ids), `glue` (9 with WNLI), `inf`, GLUE task names or aliases, and squad1,
    squad2, conll, swag. A task listed twice, or one without a training set (mnli-mm, ax), is an error."""
    raw = [item.strip().lower() for item in str(spec or "").split(",") if item.strip()]
    if not raw:
        raise ConfigError("--tasks is empty: give 'all' or a comma list such as 'cola,rte,squad2'")
    names = []
    for item in raw:
        if item in OTHER_TASKS:
            expanded = [item]
        elif item in glue.TASK_SETS:
            expanded = glue.TASK_SETS[item]
        else:
            try:
                expanded = [glue.get_task(item).name]
            except ConfigError:
                raise ConfigError(f"unknown task '{item}' (GLUE: {', '.join(glue.GLUE_TASKS)}; others: "
                                  f"{', '.join(OTHER_TASKS)}; sets: {', '.join(glue.TASK_SETS)})") from None
        for name in expanded:
            if name in names:
                raise ConfigError(f"task '{name}' is listed twice in --tasks")
            names.append(name)
    for name in names:
        dataset = glue.TASKS.get(name)
        if dataset is not None and (dataset.head_task is not None or "train" not in dataset.files):
            raise ConfigError(f"task '{name}' has no training set; it is evaluated with the "
                              f"{dataset.head_task} head (give that task instead)")
    return names


TASK_LABELS_FILE = "task_labels.json"  # {task: label strings}, saved beside a multi-task model


def saved_labels(model_dir):
    """{task: label strings} a fine-tuned model folder carries: task_labels.json (multi-task runs) or
    labels.txt (run_ner.py, for `conll`); {} when there is none."""
    path = os.path.join(model_dir, TASK_LABELS_FILE)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                labels = json.load(f)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc})") from None
        if not isinstance(labels, dict) or not all(isinstance(v, list) for v in labels.values()):
            raise ConfigError(f"{path}: expected {{task: [labels]}}")
        return labels
    path = os.path.join(model_dir, conll.LABELS_FILE)
    return {"conll": conll.read_labels_file(path)} if os.path.isfile(path) else {}


def is_glue(name):
    return name not in OTHER_TASKS


def build_task(name, tokenizer, data_dir, max_seq_length, cache=None, max_eval_examples=None,
               regression_scale=glue.MULTITASK_REGRESSION_SCALE, labels=None, doc_stride=128, max_query_length=64,
               reference_selection=False):
    """A Task object of the family of `name`, reading from `data_dir` (GLUE: the GLUE root)."""
    common = dict(cache=cache, max_eval_examples=max_eval_examples)
    if name in ("squad1", "squad2"):
        return squad.Squad(tokenizer, version=int(name[-1]), data_dir=data_dir, name=name,
                           max_seq_length=max_seq_length, doc_stride=doc_stride, max_query_length=max_query_length,
                           **common)
    if name == "conll":
        return conll.Conll(data_dir, tokenizer, max_seq_length, labels=labels, name=name, **common)
    if name == "swag":
        return swag.Swag(data_dir, tokenizer, max_seq_length, name=name, **common)
    return glue.Glue(name, data_dir, tokenizer, max_seq_length, label_scale=regression_scale,
                     reference_selection=reference_selection, **common)
