"""Which torch the suite runs on: the oldest supported version and the torch APIs that are recent or private.

The suite is developed on torch 2.13 (requirements.txt) and must also run on 2.11 (the GPU machines
this project borrows ship 2.11; docs/engine.md#torch-versions). CI cannot install 2.11, so:

- MIN_TORCH is the oldest version we support; bench/gpu_check.py's first row compares the running
  torch against it and FAILs below it.
- WATCHED_APIS is THE grep-able list of torch APIs the code uses that are either recent (added in
  2.x, with the version that added them) or private (`torch._*`, `torch.utils._*`: no stability
  promise, may move in any release). Every use of such a name in the code should appear here; a
  new use of an API added after MIN_TORCH must be guarded at its call site (hasattr / try) and
  listed here with its fallback.
- `used_torch_names()` reads every `torch.*` name the tracked Python files use (AST, no import), and
  `missing_torch_names()` resolves them on the running torch: gpu_check's first row lists any name
  that torch lacks, so an API missing from an older torch shows up before any row uses it.

As of this writing no name the code uses is newer than 2.4 (see the list), so nothing needs a
fallback on 2.11; the private names are the ones most likely to move.
"""
import ast
import functools
import importlib
import inspect
import os
import subprocess

MIN_TORCH = (2, 11)

# name -> (torch version that added it, or "private"; where it is used; what happens without it)
WATCHED_APIS = {
    "torch.get_autocast_dtype": ("2.4", "modeling._autocast_dtype", "none needed on >= 2.4"),
    "torch.is_autocast_enabled": ("2.4 (device_type argument)", "modeling._autocast_dtype",
                                  "none needed on >= 2.4"),
    "torch.cuda.is_bf16_supported": ("2.4 (including_emulation=)", "training.py: refuse --bf16 on GPUs without bf16",
                                     "none needed on >= 2.4"),
    "torch.amp.GradScaler": ("2.3 (device argument)", "training.Trainer (fp16)", "none needed on >= 2.3"),
    "torch.nn.attention.sdpa_kernel": ("2.3", "tests/test_modeling.py: pin an SDPA backend", "none needed on >= 2.3"),
    "torch.optim.AdamW": ("2.4 (fused=True on CPU)", "optimization.build_optimizer", "none needed on >= 2.4"),
    "torch.utils._foreach_utils._get_fused_kernels_supported_devices": (
        "private", "optimization: fused AdamW where supported", "fused on CUDA only (ImportError caught)"),
    "torch._dynamo.eval_frame.OptimizedModule": ("private", "tests/test_engine_paths.py (--compile)", "-"),
    "torch._dynamo.reset": ("private", "bench/gpu_check.py, tests/test_engine_paths.py", "-"),
    "torch.ops.aten._local_scalar_dense": ("private", "tests/test_engine_paths.py: count host-device syncs", "-"),
    "torch.utils._python_dispatch.TorchDispatchMode": ("private", "tests/test_engine_paths.py", "-"),
    "torch.utils._pytree.tree_leaves": ("private", "tests/test_engine_paths.py", "-"),
    "torch._foreach_add_": ("private (stable in practice)", "optimization.BertAdam foreach path", "-"),
}
# Keyword arguments the code passes that older torch versions lack: name -> keyword.
WATCHED_KEYWORDS = {
    "torch.cuda.is_bf16_supported": "including_emulation",
    "torch.load": "weights_only",
    "torch.optim.AdamW": "fused",
}

ROOT = os.path.dirname(os.path.abspath(__file__))


def parse_version(text):
    """'2.11.0+cu130' -> (2, 11)."""
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def python_files(root=ROOT):
    """The tracked (and untracked, not ignored) .py files: what travels to a GPU machine."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (a copy): walk the tree
        out = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
               if f.endswith(".py") and not any(part.startswith(".") for part in
                                                os.path.relpath(d, root).split(os.sep) if part != ".")]
    return sorted(out)


def used_torch_names(root=ROOT):
    """{dotted torch name: sorted files using it}: `torch.a.b` attribute chains and `from torch.x import y`."""
    return {k: list(v) for k, v in _used_torch_names(root).items()}


@functools.lru_cache(maxsize=4)
def _used_torch_names(root):
    names = {}
    for rel in python_files(root):
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            tree = ast.parse(f.read(), rel)
        for node in ast.walk(tree):
            found = []
            if isinstance(node, ast.Attribute):
                parts, inner = [], node
                while isinstance(inner, ast.Attribute):
                    parts.append(inner.attr)
                    inner = inner.value
                if isinstance(inner, ast.Name) and inner.id == "torch":
                    found.append("torch." + ".".join(reversed(parts)))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
                found += [f"{node.module}.{a.name}" for a in node.names]
            for name in found:
                names.setdefault(name, set()).add(rel)
    return {k: tuple(sorted(v)) for k, v in names.items()}


def resolve(name):
    """The object a dotted torch name refers to (importing submodules as needed); AttributeError if absent."""
    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            raise AttributeError(f"{'.'.join(parts[:i - 1])} has no attribute {part}") from None
    return obj


def missing_torch_names(root=ROOT):
    """[(name, files)] of the torch names the code uses that the running torch lacks, plus
    [(name(keyword), ...)] for watched keywords its signature lacks."""
    missing = []
    for name, files in sorted(used_torch_names(root).items()):
        try:
            resolve(name)
        except AttributeError:
            missing.append((name, files))
    for name, keyword in WATCHED_KEYWORDS.items():
        try:
            params = inspect.signature(resolve(name)).parameters
        except (AttributeError, TypeError, ValueError):
            continue  # absent (reported above) or a builtin without a readable signature
        if keyword not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            missing.append((f"{name}({keyword}=)", []))
    return missing
