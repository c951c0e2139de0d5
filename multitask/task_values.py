"""Per-task flag values: `--task_batch_sizes cola=16,mnli=64` and friends, the per-task batch-size flags,
`--predict TASK=FILE`."""
import os

from file_utils import ConfigError


def parse_task_values(spec, tasks, flag, convert=int, check=None):
    """'cola=16,mnli=64' -> {'cola': 16, 'mnli': 64} for --task_batch_sizes and friends (tasks of
    this run only; `convert` parses a value, `check(value)` returns an error text or None)."""
    result = {}
    for item in str(spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"{flag} item '{item}' is not TASK=VALUE")
        name, value = (part.strip() for part in item.split("=", 1))
        name = name.lower()
        if name not in tasks:
            raise ConfigError(f"{flag} names '{name}', which is not in --tasks ({', '.join(tasks)})")
        try:
            parsed = convert(value)
        except ValueError:
            raise ConfigError(f"{flag}: value for '{name}' is not {getattr(convert, '__name__', 'valid')}: "
                              f"'{value}'") from None
        problem = check(parsed) if check is not None else None
        if problem:
            raise ConfigError(f"{flag}: value for '{name}' {problem}, got {value}")
        result[name] = parsed
    return result


def parse_task_batch_sizes(spec, tasks):
    """'cola=16,mnli=64' -> {'cola': 16, 'mnli': 64} (only tasks of this run)."""
    return parse_task_values(spec, tasks, "--task_batch_sizes",
                             check=lambda v: "must be positive" if v <= 0 else None)


def batch_size_flag(task):
    """Per-task batch-size flag name: 'sts-b' -> 'batch_size_sts_b' (dest) / '--batch_size_sts_b'."""
    return "batch_size_" + task.replace("-", "_")


PLAIN_PREFIX = "lines:"  # --predict TASK=lines:FILE


def parse_predict_specs(specs, names):
    """--predict TASK=FILE values -> [(task, path, plain)] for tasks of the model (`names`); FILE '-' is
    stdin (at most one), `lines:FILE` reads every line as one example (`plain`), never the task's format."""
    parsed = []
    for spec in specs:
        task, sep, path = spec.partition("=")
        task = task.strip().lower()
        if not sep or not task or not path:
            raise ConfigError(f"--predict '{spec}' is not TASK=FILE (FILE '-' for stdin)")
        if task not in names:
            raise ConfigError(f"--predict: the model has no task '{task}' (its tasks: {', '.join(names)})")
        plain = path.startswith(PLAIN_PREFIX)
        path = path[len(PLAIN_PREFIX):] if plain else path
        if not path:
            raise ConfigError(f"--predict '{spec}': no file after '{PLAIN_PREFIX}' ('-' for stdin)")
        if path != "-" and not os.path.isfile(path):
            raise ConfigError(f"--predict {task}: {path} does not exist")
        parsed.append((task, path, plain))
    if sum(path == "-" for _, path, _ in parsed) > 1:
        raise ConfigError("--predict: only one input can be stdin ('-')")
    if len({task for task, _, _ in parsed}) < len(parsed):
        raise ConfigError("--predict: a task is named twice (one output file per task)")
    return parsed
