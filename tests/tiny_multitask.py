"""Shared helpers (no tests here) for the tests of run_multi_task.py's diagnostics, pictures, added
tasks, adapter files and predictions: a tiny random BERT (hidden 24, 2 layers, MiniLM's real
vocab so GLUE fixture text tokenizes normally), a PALs config with and without dropout, the
official-layout GLUE fixture, `run(setup, out, *flags)` with small, fast settings, and `torchrun` for
the same run as 2 processes."""
import json
import os
import socket
import subprocess
import sys

import torch

import modeling
import run_multi_task
from glue_fixtures import write_glue_fixture

HIDDEN, LAYERS, AUG = 24, 2, 12


def bert_keys(**extra):
    keys = dict(vocab_size=30522, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                intermediate_size=48, max_position_embeddings=64, type_vocab_size=2)
    keys.update(extra)
    return keys


def make_setup(base, vocab_file):
    """{"base", "model" (plain tiny BERT folder), "other_model" (another random one), "pals",
    "pals_nodrop" (adapter configs), "data" (GLUE fixture root)} under `base`."""
    base = str(base)
    setup = {"base": base, "model": os.path.join(base, "tiny"), "other_model": os.path.join(base, "tiny_other"),
             "data": os.path.join(base, "glue")}
    torch.manual_seed(0)
    modeling.BertModel(modeling.BertConfig(**bert_keys())).save_pretrained(setup["model"], vocab_file=vocab_file)
    torch.manual_seed(1)
    modeling.BertModel(modeling.BertConfig(**bert_keys())).save_pretrained(setup["other_model"],
                                                                           vocab_file=vocab_file)
    for name, extra in (("pals", {}), ("pals_nodrop", dict(hidden_dropout_prob=0.0,
                                                           attention_probs_dropout_prob=0.0))):
        setup[name] = os.path.join(base, name + ".json")
        with open(setup[name], "w") as f:
            json.dump(bert_keys(hidden_size_aug=AUG, mult=True, pals=True, **extra), f)
    write_glue_fixture(setup["data"], n=12)
    return setup


def argv(setup, out, *extra, config="pals", model=None):
    flags = ["--data_dir", setup["data"], "--bert_model", model or setup["model"], "--output_dir", str(out),
             "--max_seq_length", "32", "--train_batch_size", "4", "--eval_batch_size", "16",
             "--learning_rate", "1e-3", "--logging_steps", "1000",
             "--cache_dir", os.path.join(setup["base"], "cache")]
    if config is not None:
        flags += ["--config", setup.get(config, config)]
    return flags + [str(x) for x in extra]


def run(setup, out, *extra, config="pals", model=None):
    return run_multi_task.main(argv(setup, out, *extra, config=config, model=model))


def torchrun(argv_list, nproc=2, timeout=300):
    """run_multi_task.py under `torch.distributed.run` with `nproc` CPU processes (gloo) on a free port; the
    finished process (asserted to exit 0, its output shown otherwise)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
           os.path.join(root, "run_multi_task.py"), *map(str, argv_list)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def one_vs_two_processes(setup, base, *flags, config="pals_nodrop"):
    """The same run in one process and under 2-process torchrun, into base/single and base/multi ->
    (single, multi, largest difference of any weight of their checkpoints' models)."""
    from safetensors.torch import load_file
    single, multi = base / "single", base / "multi"
    assert run(setup, single, *flags, config=config) == 0
    torchrun(argv(setup, multi, *flags, config=config))
    wa = load_file(str(single / "checkpoint" / "model.safetensors"))
    wb = load_file(str(multi / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return single, multi, max(float((wa[k] - wb[k]).abs().max()) for k in wa)
