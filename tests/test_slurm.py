"""scripts/slurm/: the multi-node sbatch script run by a stub `srun` as two local "nodes" (gloo, CPU), and
the paper-table job array resolved index by index against docs/reproducing.md (dry run)."""
import json
import os
import re
import shlex
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from test_training_helpers import ROOT, state_dict_max_diff

SLURM = os.path.join(ROOT, "scripts", "slurm")

# srun as SLURM starts one task per node: here SLURM_NNODES local processes of the command (options
# before it are srun's own), each with its SLURM_NODEID / SLURM_PROCID; the exit code is the worst.
STUB_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 "$@" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""
# One name per node of a big job: more output than a pipe buffer holds, so a script that reads only the
# first line through `| head` under pipefail dies of SIGPIPE here (as it would on a large cluster).
STUB_SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] || exit 1
for ((i = 0; i < 20000; i++)); do echo 127.0.0.1; done
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_multinode_script_on_two_local_nodes_equals_one_process(tmp_path, tiny_mt):
    args = ["--data_dir", tiny_mt["data"], "--bert_model", tiny_mt["model"], "--config", tiny_mt["pals_nodrop"],
            "--tasks", "rte,sts-b,mnli", "--num_train_epochs", "1", "--steps_per_epoch", "4", "--sample", "sqrt",
            "--max_seq_length", "32", "--train_batch_size", "4", "--eval_batch_size", "16", "--learning_rate",
            "1e-3", "--logging_steps", "1000", "--no_plots"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                      "MASTER_PORT", "PYTHONPATH")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "run_multi_task.py", *args, "--output_dir", str(single), "--cache_dir",
                           str(tmp_path / "cache-single")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    multi = tmp_path / "multi"
    job = dict(env, PATH=f"{_stubs(tmp_path)}{os.pathsep}{env['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="2",
               SLURM_JOB_NODELIST="node[1-2]", REPO=ROOT, PYTHON=sys.executable, GPUS_PER_NODE="1",
               MASTER_PORT=str(_free_port()), CACHE=str(tmp_path / "cache"),
               RUN_ARGS=" ".join(args + ["--output_dir", str(multi)]))
    proc = subprocess.run(["bash", os.path.join(SLURM, "multinode.sbatch")], cwd=tmp_path, env=job,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 nodes x 1 processes, master 127.0.0.1" in proc.stderr
    assert proc.stdout.count("Dev results after epoch 1") == 1  # global rank 0 only
    for node in (0, 1):  # each node built its own feature cache
        assert len(os.listdir(tmp_path / "cache" / f"node{node}")) > 0
    a, b = json.loads((single / "results.json").read_text()), json.loads((multi / "results.json").read_text())
    assert a["realized_frequencies"] == b["realized_frequencies"]
    wa, wb = load_file(str(single / "best" / "model.safetensors")), load_file(str(multi / "best" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert state_dict_max_diff(wa, wb) < 1e-4
    start = load_file(os.path.join(tiny_mt["model"], "model.safetensors"))
    key = "encoder.layer.0.attention.self.query.weight"
    assert float((wa["bert." + key] - start[key]).abs().max()) > 1e-4  # it trained


def _doc_rows():
    """(COMMON as the docs write it, [command of each row of the "One command per row" table])."""
    with open(os.path.join(ROOT, "docs", "reproducing.md"), encoding="utf-8") as f:
        text = f.read()
    common = re.search(r'^COMMON="([^"]+)"$', text, re.M).group(1)
    table = text.split("## One command per row", 1)[1].split("\n\n", 2)[1]
    rows = [re.search(r"`([^`]+)`", line).group(1) for line in table.splitlines()[2:]]
    return common, rows


def _dry_run(index, seeds, protocol):
    env = dict(os.environ, DRY_RUN="1", SLURM_ARRAY_TASK_ID=str(index), SEEDS=seeds, PROTOCOL=protocol,
               GLUE="/data/glue", BERT="/models/bert", PYTHON="py3", RUNS_ROOT="/out")
    return subprocess.run(["bash", os.path.join(SLURM, "paper_table.sbatch")], env=env, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("protocol", ["reference", "defaults"])
def test_paper_table_array_resolves_every_index_to_its_docs_row(protocol):
    common, rows = _doc_rows()
    assert len(rows) == 8
    seeds = ["42", "7"]
    common = common.replace("$GLUE", "/data/glue").replace("$BERT", "/models/bert")
    for index in range(len(rows) * len(seeds)):
        proc = _dry_run(index, " ".join(seeds), protocol)
        assert proc.returncode == 0, proc.stderr
        row, seed = rows[index % 8], seeds[index // 8]
        got = shlex.split(proc.stdout)  # shlex expands no variables: $T, $GLUE of the loop row stay
        want = shlex.split(row.replace("$COMMON", common))
        # what the array adds to each python call: the protocol flag, the seed, and its runs folder
        added = (["--reference_protocol"] if protocol == "reference" else []) + ["--seed", seed]
        folder = f"/out/{'2019' if protocol == 'reference' else 'defaults'}/seed{seed}/"
        rebuilt, i = [], 0
        while i < len(got):
            if got[i:i + len(added)] == added and got[i + len(added)] == "--output_dir":
                i += len(added)
                continue
            if got[i - 1:i] == ["--output_dir"]:
                assert got[i].startswith(folder), (index, got[i])
                rebuilt.append("runs/" + got[i][len(folder):])
            else:
                rebuilt.append("python" if got[i] == "py3" else got[i])
            i += 1
        assert rebuilt == want, index
        assert proc.stdout.count("--output_dir") == proc.stdout.count(" ".join(added) + " --output_dir") >= 1


def test_paper_table_array_refuses_an_index_outside_the_table():
    assert _dry_run(16, "42 7", "reference").returncode == 2
    out = _dry_run(8, "42", "reference")
    assert out.returncode == 2 and "outside 0..7" in out.stderr
    assert _dry_run(0, "42", "exact").returncode == 2
