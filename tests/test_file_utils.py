"""Tests for file_utils: model-name resolution, one-line user errors with exit 2, atomic writes."""
import json
import os
import subprocess
import sys

import pytest

import file_utils
from file_utils import ConfigError, DataError, atomic_open, atomic_write_json, resolve_model_dir


def test_bundled_name_resolves_to_real_model_folder():
    folder = resolve_model_dir("minilm-l6")
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert os.path.isfile(os.path.join(folder, name)), name
    with open(os.path.join(folder, "vocab.txt"), encoding="utf-8") as f:
        assert sum(1 for _ in f) == 30522  # bert-base-uncased vocab size


def test_folder_path_resolves_to_itself(tmp_path):
    assert resolve_model_dir(str(tmp_path)) == str(tmp_path)


def test_unknown_model_name_is_a_config_error():
    with pytest.raises(ConfigError, match="bert-base-uncased.*neither a folder nor a bundled"):
        resolve_model_dir("bert-base-uncased")


def test_data_error_names_file_and_line():
    assert str(DataError("data/x.tsv", 7, "expected 4 columns, got 3")) == "data/x.tsv:7: expected 4 columns, got 3"
    assert str(DataError("data/x.tsv", None, "missing")) == "data/x.tsv: missing"


def test_atomic_open_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half-written")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["results.txt"]  # no temp file left behind


def test_atomic_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {})
    finally:
        os.umask(umask)
    assert (os.stat(tmp_path / "r.json").st_mode & 0o777) == 0o644  # not mkstemp's 0600


def test_atomic_write_json_round_trip(tmp_path):
    atomic_write_json(tmp_path / "a" / "b.json", {"z": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"z": 1, "a": [1, 2]}


def test_run_cli_turns_user_error_into_one_line_and_exit_2(tmp_path):
    script = tmp_path / "cli.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(file_utils.__file__)!r})\n"
        "from file_utils import run_cli, DataError\n"
        "def main(argv):\n"
        "    raise DataError('train.tsv', 3, 'unknown label \"maybe\"')\n"
        "run_cli(main)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ['error: train.tsv:3: unknown label "maybe"']
