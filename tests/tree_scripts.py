"""Loads a script of scripts/ or lm_finetuning/ as a module, by its file path.

Those folders are not installed with the project (names such as `scripts` would collide with other
projects'), so tests that call a script's functions load the file itself. The module is registered
under its plain name (`prepare_glue`), so `monkeypatch.setattr("prepare_glue.x", ...)` and a
second load see the same module."""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath):
    """The module of the script at `relpath` (relative to the tree root, e.g. "scripts/plot_run.py")."""
    name = os.path.splitext(os.path.basename(relpath))[0]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
