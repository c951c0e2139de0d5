"""Benchmark: per-step time and peak memory of each --loss_weighting against the plain sum, on the mixed
demo's model (bundled MiniLM + PALs, five heads: bench_mixed_step.MIXED) with every task in every step
(--combine_strategy all: one random batch per task).

Each method runs in a fresh subprocess (so its peak RSS, resource.getrusage ru_maxrss, is its own): one
warm-up step, then --steps timed steps of the engine's real step (training.Trainer.training_step),
FAMO's extra forwards included (a no-grad forward of the step before the backward, its weights need the
step's losses; one after the optimizer step, its update). The methods run in --rounds rounds, in turn,
so that load drift on a shared machine hits them alike; medians over all timed steps, and their ratios
to `none` (process CPU time too: with --threads 1 it measures the work even on a busy machine).

    python bench/bench_loss_weighting.py --threads 1 --steps 3 --rounds 2
"""
import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

import torch
from bench_mixed_step import MIXED, batch_for

import multitask as mt
import optimization
import training

METHODS = ("none", "uw", "dwa", "famo")


def child(method, steps, batch_size, threads):
    """One method's timings in this process: {"wall", "cpu" (lists, s), "max_rss_mib"}."""
    if threads:
        torch.set_num_threads(threads)
    parser = training.add_engine_args(argparse.ArgumentParser())
    opts = training.EngineOptions.from_args(parser.parse_args(
        ["--output_dir", "/tmp/bench_loss_weighting", "--config", "pals", "--max_seq_length", "256", "--no_cuda",
         "--optimizer", "adamw", "--learning_rate", "1e-5", "--logging_steps", "100000"]))
    env = training.setup_env(opts)
    names = [n for n, *_ in MIXED]
    model = training.load_model(opts, [o for _, _, o, _ in MIXED], [h for _, h, _, _ in MIXED], names)
    groups = optimization.param_groups(model, opts.weight_decay, opts.learning_rate)
    weighter = None
    if method != "none":
        flags = {f.name: f.default for f in dataclasses.fields(mt.LossWeightingFlags)}
        weighter = mt.LossWeighter(method, names, list(range(len(names))), 1000,
                                   types.SimpleNamespace(**dict(flags, loss_weighting=method)))
        if weighter.param_group(opts.learning_rate):
            groups.append(weighter.param_group(opts.learning_rate))
    trainer = training.Trainer(opts, env, model, 1000, param_groups=groups, loss_weighter=weighter)
    g = torch.Generator().manual_seed(0)
    wall, cpu = [], []
    for step in range(steps + 1):
        micro = [(tid, batch_for(head, outputs, batch_size, seq_len, g))
                 for tid, (_, head, outputs, seq_len) in enumerate(MIXED)]
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.training_step(micro)
        if step:  # step 0 warms up allocations and optimizer state
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    return {"wall": wall, "cpu": cpu, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=8, help="examples per task and step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per method and round (after 1 warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the methods")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.steps, a.batch_size, a.threads)))
        return 0
    results = {m: {"wall": [], "cpu": [], "max_rss_mib": []} for m in METHODS}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    for _ in range(a.rounds):
        for method in METHODS:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", method, "--steps",
                                  str(a.steps), "--batch_size", str(a.batch_size), "--threads", str(a.threads)],
                                 capture_output=True, text=True, env=env, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            for key in ("wall", "cpu"):
                results[method][key] += got[key]
            results[method]["max_rss_mib"].append(got["max_rss_mib"])
    print(f"mixed demo model (MiniLM + PALs, {len(MIXED)} tasks per step, batch {a.batch_size} per task), "
          f"threads {a.threads or torch.get_num_threads()}, {a.rounds} x {a.steps} timed steps per method")
    print("method | step wall | step CPU | ratio wall | ratio CPU | peak RSS (MiB) | ratio RSS")
    base = {k: statistics.median(results["none"][k]) for k in ("wall", "cpu", "max_rss_mib")}
    for method in METHODS:
        r = {k: statistics.median(results[method][k]) for k in ("wall", "cpu", "max_rss_mib")}
        ratio = {k: r[k] / base[k] for k in r}
        print(f"{method:<6} | {r['wall'] * 1000:7.0f} ms | {r['cpu'] * 1000:6.0f} ms | {ratio['wall']:9.3f}x "
              f"| {ratio['cpu']:8.3f}x | {r['max_rss_mib']:14.0f} | {ratio['max_rss_mib']:8.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
