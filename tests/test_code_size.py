"""Size limits of the product code: no module over 800 lines, no function over 80 lines (ruff has no
length rule; its C901 in pyproject.toml bounds complexity). Today's offenders are listed below with
their size when the limit came in; the work that splits them removes them from the list, and the
test fails when a listed one is back under the limit, so the list cannot go stale."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80
# Not product code: tests, benchmarks, helper scripts and non-code folders.
NOT_PRODUCT = {"tests", "bench", "scripts", "data", "docs", "configs", "runs"}

# Offenders when the limit came in (lines then). Functions are `file:Class.method` (nested: `outer.inner`).
ALLOWED = {
}


def product_files():
    """Every product .py file, relative to the tree root with / separators."""
    for dirpath, dirs, files in os.walk(ROOT):
        top = os.path.relpath(dirpath, ROOT) == "."
        dirs[:] = sorted(d for d in dirs if not (top and d in NOT_PRODUCT)
                         and not d.startswith((".", "__")) and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, "/")


def functions(tree, prefix=""):
    """(qualified name, lines from `def` to its last line) of every function and method, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node.end_lineno - node.lineno + 1
            yield from functions(node, prefix + node.name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, prefix + node.name + ".")


def measure():
    """{"file": lines, "file:function": lines} of everything over its limit."""
    over = {}
    for rel in product_files():
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            source = f.read()
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            over[rel] = lines
        for name, size in functions(ast.parse(source, rel)):
            if size > MAX_FUNCTION_LINES:
                over[f"{rel}:{name}"] = size
    return over


def test_the_walk_finds_the_product_modules_and_skips_the_rest():
    files = set(product_files())
    assert {"training/trainer.py", "tasks/glue.py", "lm_finetuning/simple_lm_finetuning.py"} <= files
    assert not {f for f in files if f.split("/")[0] in NOT_PRODUCT}


def test_function_sizes_count_from_def_to_last_line():
    tree = ast.parse("class A:\n    def f(self):\n        x = 1\n\n        return x\n\n\ndef g():\n    def h():\n"
                     "        pass\n    return h\n")
    assert dict(functions(tree)) == {"A.f": 4, "g": 4, "g.h": 2}


def test_no_module_or_function_over_the_limits_outside_the_list():
    over = measure()
    new = {name: size for name, size in over.items() if name not in ALLOWED}
    assert not new, (
        f"over the limits ({MAX_MODULE_LINES} lines a module, {MAX_FUNCTION_LINES} a function): "
        + ", ".join(f"{name} ({size} lines)" for name, size in sorted(new.items()))
        + ". Split it along its seams; tests/test_code_size.py's ALLOWED list is only for the offenders "
          "the limit found, not for new ones.")


def test_every_listed_offender_is_still_over_the_limit():
    over = measure()
    fixed = sorted(name for name in ALLOWED if name not in over)
    assert not fixed, ("now within the limits (or gone), remove from ALLOWED in tests/test_code_size.py: "
                       + ", ".join(fixed))
