"""Tests for file_utils: model-name resolution, one-line user errors with exit 2, atomic writes."""
import builtins
import errno
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


def _fake_hub_snapshot(cache, repo, files):
    """The layout `hf download REPO` leaves in HF_HUB_CACHE: refs/main -> snapshots/<commit>/files."""
    base = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def test_hub_names_resolve_from_the_local_cache_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any network attempt would fail loudly
    with pytest.raises(ConfigError) as err:
        resolve_model_dir("bert-base-uncased")
    message = str(err.value)
    assert "`hf download google-bert/bert-base-uncased --local-dir bert-base-uncased`" in message
    assert str(cache) in message and "\n" not in message
    # the 2019 shortcut name is found under google-bert/, an org/name repo under its own name
    snapshot = _fake_hub_snapshot(cache, "google-bert/bert-base-uncased", {"config.json": "{}"})
    assert os.path.samefile(resolve_model_dir("bert-base-uncased"), snapshot)
    other = _fake_hub_snapshot(cache, "someone/tiny-bert", {"config.json": "{}"})
    assert os.path.samefile(resolve_model_dir("someone/tiny-bert"), other)
    # HF_HOME works too (HF_HUB_CACHE unset: <HF_HOME>/hub)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert os.path.samefile(resolve_model_dir("someone/tiny-bert"), other)
    with pytest.raises(ConfigError, match="model folder ./not/there does not exist"):
        resolve_model_dir("./not/there")


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
        "from file_utils import run_cli, DataError\n"
        "def main(argv):\n"
        "    raise DataError('train.tsv', 3, 'unknown label \"maybe\"')\n"
        "run_cli(main)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ['error: train.tsv:3: unknown label "maybe"']


def test_replace_dir_atomically_replaces_keeps_old_on_failure_and_recovers(tmp_path):
    target = tmp_path / "best"
    file_utils.replace_dir_atomically(str(target), lambda d: open(os.path.join(d, "v"), "w").write("1"))
    file_utils.replace_dir_atomically(str(target), lambda d: open(os.path.join(d, "v"), "w").write("2"))
    assert (target / "v").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["best"]

    def crash(d):
        open(os.path.join(d, "v"), "w").write("partial")
        raise RuntimeError("killed while saving")
    with pytest.raises(RuntimeError):
        file_utils.replace_dir_atomically(str(target), crash)
    assert (target / "v").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["best"]  # temp folder removed
    os.replace(target, tmp_path / "best.old")  # a kill between the two renames
    file_utils.recover_dir(str(target))
    assert (target / "v").read_text() == "2" and not (tmp_path / "best.old").exists()
    # the next swap after such a kill also finds the good copy in .old
    os.replace(target, tmp_path / "best.old")
    file_utils.replace_dir_atomically(str(target), lambda d: open(os.path.join(d, "v"), "w").write("3"))
    assert (target / "v").read_text() == "3" and sorted(os.listdir(tmp_path)) == ["best"]


def test_remove_stale_temporaries_removes_only_what_killed_writes_left(tmp_path):
    (tmp_path / ".checkpoint.tmp-abc").mkdir()
    (tmp_path / ".checkpoint.tmp-abc" / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / ".model.safetensors.k3j.tmp").write_bytes(b"x")
    keep = [tmp_path / "results.json", tmp_path / ".hidden", tmp_path / "best" / "model.safetensors",
            tmp_path / "notes.tmp"]
    for path in keep:
        path.write_text("keep")
    removed = file_utils.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [".checkpoint.tmp-abc", ".model.safetensors.k3j.tmp"]
    assert all(path.exists() for path in keep)
    # atomic_open's temporary files match the pattern that is cleaned up
    with pytest.raises(RuntimeError):
        with atomic_open(str(tmp_path / "x.json")) as f:
            leftover = f.name
            raise RuntimeError("no cleanup on this path: simulate a kill by re-creating it")
    open(leftover, "w").close()
    removed = file_utils.remove_stale_temporaries(str(tmp_path))
    assert os.path.basename(leftover) in [os.path.basename(p) for p in removed]


class _FullDiskFile:
    """A file opened for writing on a full disk: write() and flush() fail as the kernel's write(2) does
    (ENOSPC, an OSError that names no file)."""

    def __init__(self, f):
        self._f = f

    def _full(self, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write = flush = _full

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def simulate_full_disk(monkeypatch):
    """Every file our writers (file_utils.atomic_open) open for writing is on a full disk; so is the
    file safetensors' own save_file writes (it raises a SafetensorError, as on a real full disk)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return _FullDiskFile(f) if any(c in mode for c in "wax+") else f

    def save_file(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')
    monkeypatch.setattr(file_utils, "open", open_on_full_disk, raising=False)
    real = safetensors.torch.save_file
    for module in list(sys.modules.values()):  # also where it was imported by name
        if getattr(module, "save_file", None) is real:
            monkeypatch.setattr(module, "save_file", save_file)


def test_full_disk_names_the_file_being_written(tmp_path, monkeypatch, capsys):
    target = tmp_path / "out" / "results.json"
    target.parent.mkdir()
    target.write_text("old")
    simulate_full_disk(monkeypatch)
    with pytest.raises(OSError) as excinfo:
        atomic_write_json(target, {"a": 1})
    assert excinfo.value.errno == errno.ENOSPC and excinfo.value.filename == str(target)
    assert target.read_text() == "old" and os.listdir(target.parent) == ["results.json"]
    # a folder written by replace_dir_atomically: the file in the final folder, not in its temporary
    folder = tmp_path / "best"

    def write(tmp):
        atomic_write_json(os.path.join(tmp, "config.json"), {})
    with pytest.raises(SystemExit) as exc:
        file_utils.run_cli(lambda argv: file_utils.replace_dir_atomically(str(folder), write))
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {folder / 'config.json'}: "
                                                           f"{os.strerror(errno.ENOSPC)}"]
    assert os.listdir(tmp_path) == ["out"]  # no folder, no temporary left

    def write_unnamed(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError) as excinfo:
        file_utils.replace_dir_atomically(str(folder), write_unnamed)
    assert excinfo.value.filename == str(folder)
