"""A test helper or a script of the tree, for bench scripts: tests/, scripts/ and lm_finetuning/ are not
installed (their generic names would collide with other projects'), so they are loaded by file path with
the tests' own loader (tests/tree_scripts.py). Bench scripts run as `python bench/x.py`, which puts
bench/ on sys.path: `from tree_modules import load_script`."""
import os
import runpy

load_script = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                                          "tree_scripts.py"))["load_script"]
