"""The task interface (tasks/base.py) and the family registry (tasks/__init__.py): task names, the
families behind one interface on official-format fixtures, and that multitask.py imports no task."""
import ast
import os

import pytest

import tasks
from file_utils import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_task_names_sets_aliases_and_errors():
    assert tasks.parse_task_names("all") == ["cola", "mrpc", "mnli", "rte", "sts-b", "sst-2", "qqp", "qnli"]
    assert tasks.parse_task_names("RTE, wnli,sts") == ["rte", "wnli", "sts-b"]
    assert tasks.parse_task_names("sst-2,squad2,conll,swag,squad1") == ["sst-2", "squad2", "conll", "swag", "squad1"]
    for spec, message in (("cola,squad", "unknown task 'squad'"), ("cola,CoLA", "twice"), ("", "empty"),
                          ("rte,mnli-mm", "no training set"), ("conll,conll", "twice"), ("all,rte", "twice")):
        with pytest.raises(ConfigError, match=message):
            tasks.parse_task_names(spec)


def test_multitask_imports_no_task_module():
    """multitask.py is task-agnostic: no import of `tasks` or any tasks.* module (parsed, not grepped)."""
    tree = ast.parse(open(os.path.join(ROOT, "multitask.py"), encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported, "no imports found: the test would pass vacuously"
    assert not {m for m in imported if m == "tasks" or m.startswith("tasks.")}, imported


def test_task_labels_file_name_is_the_same_on_both_sides():
    import multitask
    assert multitask.TASK_LABELS_FILE == tasks.TASK_LABELS_FILE
