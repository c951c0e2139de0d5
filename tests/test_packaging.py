"""The project installs in place (pyproject.toml, `-e .` in requirements.txt): the list of top-level
modules it installs matches the files at the tree root, and no other installed distribution provides
one of those names (an installed `tasks` or `tokenization` from PyPI would shadow ours or be shadowed)."""
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = "bert-pals"
# Folders at the root that are not installed: they run from the tree, and their generic names would
# collide with other projects' (`tests`, `scripts`, `bench`).
NOT_INSTALLED = {"tests", "bench", "scripts", "lm_finetuning", "data", "docs", "configs", "runs"}


def declared():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    setuptools = project["tool"]["setuptools"]
    return project, set(setuptools["py-modules"]), set(setuptools["packages"])


def present():
    """Top-level product modules and packages in the tree root."""
    modules, packages = set(), set()
    for name in os.listdir(ROOT):
        path = os.path.join(ROOT, name)
        if name.endswith(".py") and os.path.isfile(path):
            modules.add(name[:-3])
        elif (os.path.isdir(path) and name not in NOT_INSTALLED and not name.startswith((".", "_"))
              and not name.endswith(".egg-info")):
            packages.add(name)
    return modules, packages


def test_pyproject_lists_exactly_the_top_level_modules_and_packages():
    project, modules, packages = declared()
    assert project["project"]["name"] == DIST
    on_disk_modules, on_disk_packages = present()
    problems = []
    for kind, listed, found in (("py-modules", modules, on_disk_modules), ("packages", packages, on_disk_packages)):
        if found - listed:
            problems.append(f"add {sorted(found - listed)} to [tool.setuptools] {kind}")
        if listed - found:
            problems.append(f"remove {sorted(listed - found)} from [tool.setuptools] {kind} (no such file)")
    assert not problems, "pyproject.toml and the tree root disagree: " + "; ".join(problems)
    for package in packages:  # a folder at the root is a package of ours only with an __init__.py
        assert os.path.isfile(os.path.join(ROOT, package, "__init__.py")), (
            f"{package}/ has no __init__.py: make it a package or add it to NOT_INSTALLED in {__file__}")


def test_no_other_installed_distribution_provides_our_top_level_names():
    _, modules, packages = declared()
    owners = importlib.metadata.packages_distributions()
    clashes = {name: sorted(set(owners.get(name, ())) - {DIST}) for name in sorted(modules | packages)}
    clashes = {name: dists for name, dists in clashes.items() if dists}
    assert not clashes, (
        "installed distributions provide top-level names of this project: "
        + ", ".join(f"{name} by {', '.join(dists)}" for name, dists in clashes.items())
        + f". One of the two shadows the other on import. Install this project into its own virtualenv "
          f"(docs/testing.md#installing), or uninstall those from {sys.prefix}.")


def test_our_top_level_names_import_from_this_tree():
    """Where the project is installed elsewhere, or another distribution shadows a name, `import tasks`
    would run other code than this tree's."""
    _, modules, packages = declared()
    wrong = {}
    for name in sorted(modules | packages):
        origin = importlib.util.find_spec(name).origin
        if os.path.commonpath([os.path.realpath(origin), os.path.realpath(ROOT)]) != os.path.realpath(ROOT):
            wrong[name] = origin
    assert not wrong, f"these names import from outside {ROOT}: {wrong} (docs/testing.md#installing)"


def test_a_script_runs_from_another_folder_without_path_set_up(tmp_path):
    """scripts/ and lm_finetuning/ carry no sys.path set-up: the project comes from its install (or the
    tree root on PYTHONPATH), so a script runs from any working directory."""
    for script in ("scripts/plot_run.py", "lm_finetuning/pregenerate_training_data.py"):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage:" in proc.stdout, (script, proc.stderr[-2000:])
