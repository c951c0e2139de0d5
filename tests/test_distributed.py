"""torchrun (2 CPU processes, gloo) trains exactly like one process with the same global batch.

The worker trains a 2-task tiny BERT (dropout 0) through the engine on a step stream that mixes
single-task steps with accumulation, an uneven last micro-batch (3 + 2 examples on two ranks)
and steps whose micro-batches come from BOTH tasks (the manual all-reduce path, and with a
gradient combiner the per-task path). After training it runs the collective predict. The
single-process and the 2-process runs must end with the same weights and predictions. Finally
a bad input file met while building cached features must fail on every rank (no hang).
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from test_training_helpers import state_dict_max_diff, worker_env, write_tiny_model

WORKER = r'''
import os, sys, json
import torch
import training
from test_training_helpers import engine_options, synthetic_features

model_dir, out_root = sys.argv[1], sys.argv[2]


class Mixed:
    """task 0 step, task 1 step, one step with a micro-batch of each task, repeat."""
    def __init__(self):
        self.i = 0
    def next_step(self):
        kind = self.i % 3
        self.i += 1
        if kind == 2:
            return [streams[0].next_step()[0], streams[1].next_step()[0]]
        return streams[kind].next_step()
    def state_dict(self):
        return {{"i": self.i, "s": [s.state_dict() for s in streams]}}
    def load_state_dict(self, d):
        self.i = d["i"]
        for s, sd in zip(streams, d["s"]):
            s.load_state_dict(sd)


for mode in ("plain", "combiner"):
    out_dir = os.path.join(out_root, mode)
    args = engine_options(model_dir, out_dir, "--train_batch_size", 12, "--gradient_accumulation_steps", 2,
                       "--learning_rate", 1e-3, "--warmup_proportion", 0.2, "--logging_steps", 1000)
    env = training.setup_env(args)
    training.prepare_output_dir(args, env)
    model = training.load_model(args, [2, 3], task_names=["a", "b"])
    feats = [synthetic_features(23, seed=1, num_labels=2), synthetic_features(17, seed=2, num_labels=3)]
    streams = [training.make_stream(args, env, f, task_id=t) for t, f in enumerate(feats)]
    combiner = (lambda flats: 0.7 * flats[0] + 0.3 * flats[1]) if mode == "combiner" else None
    steps = 12
    trainer = training.Trainer(args, env, model, steps, grad_combiner=combiner)
    result = trainer.train(Mixed(), steps, steps_per_epoch=6)
    pred = trainer.predict(feats[1], task_id=1, batch_size=4)
    if env.is_main:
        torch.save({{"weights": trainer.model.state_dict(), "logits": torch.tensor(pred["logits"]),
                    "pred_loss": pred["loss"], "train_loss": result["loss"]}}, os.path.join(out_dir, "result.pt"))

# A bad input file while building cached features: every rank must fail with it, none may hang.
from file_utils import DataError
def bad_build():
    raise DataError("train.tsv", 3, "expected 2 tab-separated fields, found 1")
try:
    training.cached_features(os.path.join(out_root, "cache"), {{"task": "bad"}}, bad_build)
except DataError as exc:
    with open(os.path.join(out_root, f"error-rank{{env.rank}}.txt"), "w") as f:
        f.write(str(exc))
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    model_dir = write_tiny_model(str(base / "model"), dropout=0.0)
    worker = base / "worker.py"
    worker.write_text(WORKER.format())
    env = worker_env()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return base, model_dir, worker, env


@pytest.fixture(scope="module")
def runs(setup):
    """One single-process and one 2-process launch; each trains a plain and a combiner run."""
    base, model_dir, worker, env = setup
    _run([sys.executable, str(worker), model_dir, str(base / "single")], env)
    _run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
          f"--master_port={_free_port()}", str(worker), model_dir, str(base / "ddp")], env)
    load = lambda path: torch.load(path / "result.pt", weights_only=True)  # noqa: E731
    yield {(kind, mode): load(base / kind / mode) for kind in ("single", "ddp") for mode in ("plain", "combiner")}


@pytest.mark.parametrize("mode", ["plain", "combiner"])
def test_two_process_training_equals_single_process(setup, runs, mode):
    a, b = runs["single", mode], runs["ddp", mode]
    import modeling
    initial = modeling.BertModel.from_pretrained(setup[1]).state_dict()
    moved = max(float((a["weights"]["bert." + k] - v).abs().max()) for k, v in initial.items()
                if "bert." + k in a["weights"])
    assert moved > 1e-3  # training really changed the shared encoder
    assert state_dict_max_diff(a["weights"], b["weights"]) < 2e-6
    torch.testing.assert_close(a["logits"], b["logits"], atol=2e-5, rtol=0)
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
    assert abs(a["pred_loss"] - b["pred_loss"]) < 1e-5


def test_bad_input_fails_on_every_rank_without_hanging(setup, runs):
    base = setup[0]
    for kind, ranks in (("single", 1), ("ddp", 2)):
        for rank in range(ranks):
            assert (base / kind / f"error-rank{rank}.txt").read_text() == \
                "train.tsv:3: expected 2 tab-separated fields, found 1"


def test_combiner_changes_the_update(runs):
    """Sanity of the comparison above: the combiner run differs from the plain run."""
    assert state_dict_max_diff(runs["single", "plain"]["weights"], runs["single", "combiner"]["weights"]) > 1e-4


@pytest.mark.parametrize("tasks, expected", [(1, False), (2, True)])
def test_ddp_searches_unused_parameters_only_when_a_step_leaves_some(tmp_path, monkeypatch, tasks, expected):
    """The engine's DDP wrapper (a one-process gloo group): a one-task classifier uses every
    parameter, a two-task model leaves the other task's head without gradient at every step."""
    import training
    from test_training_helpers import engine_options
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    opts = engine_options(write_tiny_model(str(tmp_path / "model")), str(tmp_path / "out"), "--no_cuda")
    env = training.setup_env(opts)
    try:
        assert env.distributed
        trainer = training.Trainer(opts, env, training.load_model(opts, [2] * tasks), 4)
        assert trainer.ddp_model.find_unused_parameters is expected
        trainer.close()
    finally:
        torch.distributed.destroy_process_group()


NODE_WORKER = r'''
import json, os, sys
import torch.distributed as dist
import training
from file_utils import ConfigError
from test_training_helpers import engine_options, synthetic_features

model_dir, out_dir, marks, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
args = engine_options(model_dir, out_dir, "--train_batch_size", 4, "--save_steps", 2, "--logging_steps", 1000,
                      "--cache_dir", training.default_cache_dir(), *extra)
env = training.setup_env(args)
launch = {{k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "BERT_PALS_CACHE")}}
with open(os.path.join(marks, f"env-rank{{env.rank}}.json"), "w") as f:
    json.dump(launch, f)

def build():
    open(os.path.join(marks, f"built-rank{{env.rank}}"), "a").close()
    return synthetic_features(16, seed=1)

feats = training.cached_features(args.cache_dir, {{"task": "nodes"}}, build)
training.prepare_output_dir(args, env)
trainer = training.Trainer(args, env, training.load_model(args, [2]), 4)
try:
    result = trainer.train(training.make_stream(args, env, feats), 4)
except ConfigError as exc:
    with open(os.path.join(marks, f"error-rank{{env.rank}}.txt"), "w") as f:
        f.write(str(exc))
    dist.destroy_process_group()  # as file_utils.run_cli: a live gloo group at exit may abort the process
    sys.exit(0)
if env.is_main:
    training.write_eval_results(os.path.join(out_dir, "eval_results.txt"), {{"loss": result["loss"]}})
dist.destroy_process_group()
'''


def test_two_nodes_build_their_own_caches_and_only_global_rank_0_writes(tmp_path):
    """Two torchrun launches of the documented 2-node command (--nnodes 2 --node_rank 0/1, one process
    each, rendezvous at 127.0.0.1): each node's local rank 0 builds the features into its own cache
    folder (BERT_PALS_CACHE); checkpoints and results come only from global rank 0. A --resume where
    one node cannot see the checkpoint fails on both nodes with one line."""
    model_dir = write_tiny_model(str(tmp_path / "model"), dropout=0.0)
    worker = tmp_path / "node_worker.py"
    worker.write_text(NODE_WORKER.format())
    marks = tmp_path / "marks"
    marks.mkdir()
    base = worker_env()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK"):
        base.pop(key, None)

    def launch(*extra):
        port = _free_port()
        procs = [subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
             "--master_addr=127.0.0.1", f"--master_port={port}", str(worker), model_dir,
             str(tmp_path / f"node{node}" / "out"), str(marks), *extra],
            env=dict(base, BERT_PALS_CACHE=str(tmp_path / f"node{node}" / "cache")),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
        for proc in procs:
            out, err = proc.communicate(timeout=int(os.environ.get("NODE_TIMEOUT", 240)))
            assert proc.returncode == 0, out[-2000:] + err[-3000:]

    launch()
    seen = [json.loads((marks / f"env-rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["LOCAL_RANK"] for s in seen] == ["0", "0"] and [s["GROUP_RANK"] for s in seen] == ["0", "1"]
    for node in (0, 1):
        assert (marks / f"built-rank{node}").exists()  # each node built its features once
        assert len(os.listdir(tmp_path / f"node{node}" / "cache")) == 1
    node0 = tmp_path / "node0" / "out"
    assert (node0 / "checkpoint").is_dir() and (node0 / "eval_results.txt").exists()
    assert not (tmp_path / "node1" / "out").exists()  # rank 1 wrote nothing, not even the folder

    launch("--resume")  # node 1 has no checkpoint: both stop, neither trains on its own
    # The same line on both nodes, naming the output folder as each sees it.
    errors = [(marks / f"error-rank{r}.txt").read_text().replace(f"node{r}", "nodeN") for r in (0, 1)]
    assert errors[0] == errors[1] and "1 of 2 processes see no checkpoint" in errors[0]


@pytest.mark.parametrize("error", ["user", "ok"])
def test_run_cli_leaves_the_process_group_before_exiting(monkeypatch, error):
    """A gloo group still alive at interpreter exit may abort the process ("terminate called without an
    active exception"): run_cli leaves it, on an error as after a normal end."""
    import torch.distributed as dist

    from file_utils import ConfigError, run_cli
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)

    def main(argv):
        assert dist.is_initialized()
        if error == "user":
            raise ConfigError("bad flag")
        return 0

    try:
        with pytest.raises(SystemExit) as exit_:
            run_cli(main, [])
        assert exit_.value.code == (2 if error == "user" else 0)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
