"""Benchmark: one multi-task training step of each task-module method against PALs and the shared
encoder (same batches), with peak memory and parameter counts (docs/benchmarks.md#methods).

Each config's model is trained through the engine's real step (training.Trainer.training_step:
forward, backward, BertAdam update), task ids cycling over the 8 GLUE heads; the configs take
their steps interleaved (shared, pals, lora, ..., shared, pals, ...) so load drift on a shared
machine hits all alike; medians. On CPU the process CPU time per step is reported too (with
--threads 1 it measures the work even when other jobs share the cores). Peak memory: CUDA's
max_memory_allocated over that config's steps. `--rss`: CPU memory instead, each config in a fresh
subprocess (the parent only starts them) that builds the model and takes the same 1 + --steps steps
on the same batches: its peak resident set (getrusage ru_maxrss, which counts the Python and torch
import too) and that peak minus the resident set just before the model was built (what the model,
optimizer state and activations added). `--freeze`: only task modules and heads train
(run_multi_task.py --freeze).

    python bench/bench_methods.py --threads 1 --batch_size 8 --steps 3        # MiniLM (bundled)
    python bench/bench_methods.py --model bert-base --freeze                  # bert-base sizes, random weights
    python bench/bench_methods.py --rss --threads 1 --batch_size 4 --steps 3  # CPU peak RSS, one process each
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

import modeling
import multitask as mt
import training
from file_utils import resolve_model_dir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_multitask_step import TASK_LABELS, make_batches, trainer_for  # noqa: E402

METHODS = ("shared", "pals", "lora", "lora_budget", "ia3", "prefix", "prefix_budget", "parallel_adapter",
           "parallel_adapter_budget")


def build(kind, method):
    width = 384 if kind == "minilm" else 768
    config = None if method == "shared" else modeling.adapter_config_path(method, width)
    if kind == "minilm":
        return modeling.BertForMultiTask.from_pretrained(resolve_model_dir("minilm-l6"), config=config,
                                                         task_num_labels=TASK_LABELS)
    path = config or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                  "bert_base_config.json")
    return modeling.BertForMultiTask(modeling.BertConfig.from_json_file(path), TASK_LABELS)


def _rss_bytes():
    """This process's resident set now (Linux /proc; the page size from the OS)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_child(a, env, args, method):
    """One config in this (fresh) process: {method, peak, start} in bytes, printed as one JSON line."""
    start = _rss_bytes()
    model = build(a.model, method)
    if a.freeze:
        mt.freeze_all_but(model, range(len(TASK_LABELS)))
    trainer = trainer_for(model, args, env)
    for task, batch in make_batches(a.steps + 1, a.batch_size, a.seq_len, model.config.vocab_size):
        trainer.training_step([(task, batch)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"method": method, "peak": peak, "start": start}), flush=True)


def rss_table(a, argv, methods):
    """Run each config in its own subprocess (rss_child) and print peak RSS with ratios to the first."""
    rows = []
    for method in methods:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--rss_child", method]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{a.model}, CPU, torch threads {a.threads or 'default'}, batch {a.batch_size} x {a.seq_len}, "
          f"1 + {a.steps} steps in a fresh process per config, {'--freeze' if a.freeze else 'encoder trained'}; "
          f"ratios to {base['method']}")
    print(f"{'method':<24} {'peak RSS MiB':>12} {'ratio':>6} {'added MiB':>10} {'ratio':>6}")
    for row in rows:
        added, base_added = row["peak"] - row["start"], base["peak"] - base["start"]
        print(f"{row['method']:<24} {row['peak'] / 2 ** 20:12.0f} {row['peak'] / base['peak']:6.3f} "
              f"{added / 2 ** 20:10.0f} {added / base_added:6.3f}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("minilm", "bert-base"), default="minilm")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per method (after 1 warm-up step)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--freeze", action="store_true", help="train only task modules and heads")
    p.add_argument("--no_cuda", action="store_true")
    p.add_argument("--rss", action="store_true", help="CPU peak resident memory, one fresh process per config")
    p.add_argument("--rss_child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if a.rss and not a.rss_child:
        return rss_table(a, argv, methods)
    options = ["--output_dir", "/tmp/bench_methods", "--learning_rate", "1e-5", "--logging_steps", "100000"]
    args = training.EngineOptions.from_args(training.add_engine_args(argparse.ArgumentParser()).parse_args(
        options + (["--no_cuda"] if a.no_cuda or a.rss else [])))
    env = training.setup_env(args)
    if a.rss_child:
        return rss_child(a, env, args, a.rss_child)
    models = {m: build(a.model, m) for m in methods}
    trainable = {}
    for name, model in models.items():
        trainable[name] = mt.freeze_all_but(model, range(len(TASK_LABELS))) if a.freeze else \
            modeling.count_parameters(model, trainable_only=True)
    trainers = {name: trainer_for(model, args, env) for name, model in models.items()}
    batches = make_batches(a.steps + 1, a.batch_size, a.seq_len, next(iter(models.values())).config.vocab_size)
    wall, cpu, peak = ({m: [] for m in methods} for _ in range(3))
    cuda = env.device.type == "cuda"
    for i, (task, batch) in enumerate(batches):
        for name, trainer in trainers.items():
            batch_dev = {k: v.to(env.device) for k, v in batch.items()}
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer.training_step([(task, batch_dev)])
            if cuda:
                torch.cuda.synchronize()
                peak[name].append(torch.cuda.max_memory_allocated())
            if i > 0:  # step 0 is warm-up (allocations, optimizer state)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    base = statistics.median(wall[methods[0]])
    base_cpu = statistics.median(cpu[methods[0]])
    print(f"{a.model}, device {env.device}, torch threads {torch.get_num_threads()}, batch {a.batch_size} x "
          f"{a.seq_len}, {a.steps} timed steps each, {'--freeze' if a.freeze else 'encoder trained'}; ratios to "
          f"{methods[0]}")
    print(f"{'method':<24} {'params':>12} {'trainable':>12} {'ms/step':>9} {'ratio':>6} {'CPU ms':>9} {'ratio':>6} "
          f"{'peak MiB':>9}")
    for name in methods:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        mem = f"{max(peak[name]) / 2 ** 20:9.0f}" if peak[name] else f"{'n/a':>9}"
        print(f"{name:<24} {modeling.count_parameters(models[name]):>12,d} {trainable[name]:>12,d} {w * 1000:9.1f} "
              f"{w / base:6.3f} {c * 1000:9.1f} {c / base_cpu:6.3f} {mem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
