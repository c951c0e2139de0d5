"""Task families: each module reads its files into examples and features, knows its metrics and
writes its official prediction files, behind one interface (tasks.base.Task), and declares its
family once (tasks.base.Family, registered on import). Modules never touch model internals
(docs/tasks.md; adding one: docs/adding_a_family.md).

- `tasks.glue`: the GLUE benchmark (CoLA, SST-2, MRPC, STS-B, QQP, MNLI(-mm), QNLI, RTE, WNLI, AX).
- `tasks.squad`: SQuAD v1.1 (`squad1`) and v2.0 (`squad2`); `tasks.squad_eval` its official scores.
- `tasks.conll`: CoNLL-2003 NER (`conll`).
- `tasks.swag`: SWAG multiple choice (`swag`).
- `tasks.pos`: Universal Dependencies part-of-speech tagging, UPOS (`pos`).
- `tasks.pretraining`: masked-LM + next-sentence data for lm_finetuning/ (not a Task).

This package turns a run's `--tasks` list into Task objects (`parse_task_names`, `build_task`)
from the registry (`FAMILIES`, `family_of`); the names below are derived from it.
"""
import importlib
import json
import os

from file_utils import TASK_LABELS_FILE, ConfigError
from tasks.base import REGISTRY

# The family modules, in the order of help texts and messages; importing one registers its family.
FAMILY_MODULES = ("glue", "squad", "conll", "swag", "pos")
for _module in FAMILY_MODULES:
    importlib.import_module(f"tasks.{_module}")
from tasks import conll, glue  # noqa: E402  (imported above; named here for saved_labels and build_task)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = tuple(REGISTRY.values())
# Task names outside GLUE (families with their own data folder) -> what they are.
OTHER_TASKS = {name: what for f in FAMILIES if not f.uses_data_dir for name, what in f.tasks.items()}
# A family's own default length where the run's --max_seq_length (128) does not fit it: SQuAD
# reads 384-piece windows with stride 128, as the BERT paper did.
DEFAULT_MAX_SEQ_LENGTH = {name: f.max_seq_length for f in FAMILIES if f.max_seq_length for name in f.tasks}


def family_of(name):
    """The Family of task `name` (a canonical task name)."""
    for family in FAMILIES:
        if name in family.tasks:
            return family
    raise ConfigError(f"unknown task '{name}'")


def sample_data_dirs(root=ROOT):
    """{task name: its family's bundled sample folder} of the families with their own data folder
    (the demo's --task_data); GLUE's sample is the demo's --data_dir."""
    return {name: os.path.join(root, "data", f.sample_data) for f in FAMILIES
            if f.sample_data and not f.uses_data_dir for name in f.tasks}


def task_data_help():
    """What each family's data folder holds, for --task_data's help."""
    return ", ".join(f"{','.join(t + '=DIR' for t in f.tasks)} ({f.data_files})" for f in FAMILIES
                     if not f.uses_data_dir)


def parse_task_names(spec):
    """`--tasks` -> task names in order: `all`/`paper` (the 8 paper tasks in the reference order,
    which fixes the task ids), `glue` (9 with WNLI), `inf`, GLUE task names or aliases, and the
    other families' task names (squad1, squad2, conll, swag, pos). A task listed twice, or one
    without a training set (mnli-mm, ax), is an error."""
    raw = [item.strip().lower() for item in str(spec or "").split(",") if item.strip()]
    if not raw:
        raise ConfigError("--tasks is empty: give 'all' or a comma list such as 'cola,rte,squad2'")
    names = []
    for item in raw:
        expanded = next((found for f in FAMILIES if (found := f.task_names(item)) is not None), None)
        if expanded is None:
            raise ConfigError(f"unknown task '{item}' (GLUE: {', '.join(glue.GLUE_TASKS)}; others: "
                              f"{', '.join(OTHER_TASKS)}; sets: {', '.join(glue.TASK_SETS)})")
        for name in expanded:
            if name in names:
                raise ConfigError(f"task '{name}' is listed twice in --tasks")
            names.append(name)
    for name in names:
        evaluated_by = family_of(name).evaluated_by
        if name in evaluated_by:
            raise ConfigError(f"task '{name}' has no training set; it is evaluated with the "
                              f"{evaluated_by[name]} head (give that task instead)")
    return names


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
    """True for a task of a family that reads the run's --data_dir (GLUE)."""
    return family_of(name).uses_data_dir


def build_task(name, tokenizer, data_dir, max_seq_length, cache=None, max_eval_examples=None,
               regression_scale=glue.MULTITASK_REGRESSION_SCALE, labels=None, doc_stride=128, max_query_length=64,
               reference_selection=False):
    """A Task object of the family of `name`, reading from `data_dir` (GLUE: the GLUE root)."""
    return family_of(name).build(name, tokenizer, data_dir, max_seq_length, cache=cache,
                                 max_eval_examples=max_eval_examples, regression_scale=regression_scale,
                                 labels=labels, doc_stride=doc_stride, max_query_length=max_query_length,
                                 reference_selection=reference_selection)
