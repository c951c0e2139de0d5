"""Benchmark: what gradient-conflict diagnostics (run_multi_task.py --diagnose_every N) cost.

One diagnosis is K forward + backward passes (one batch of each of the K tasks) and the Gram
products of the K shared-parameter gradients (diagnostics.diagnose); a training step is the
engine's real step (training.Trainer.training_step: forward, backward, AdamW update) of one task.
Both are timed interleaved on the same model and batches (bundled MiniLM + PALs, K task heads),
so load drift on a shared machine hits both alike. Printed: the median step and diagnosis times,
their ratio, and the cost of diagnosing every N steps, 1 + diagnosis / (N x step), for a few N;
then the same ratio measured directly: blocks of N steps with and without one diagnosis,
alternated. With --threads 1 the process CPU time measures the work even on a busy machine.

    python bench/bench_diagnostics.py --threads 1
    python bench/bench_diagnostics.py --tasks 8 --batch_size 32 --seq_len 128 --every 100
"""
import argparse
import os
import statistics
import sys
import time

import torch

import diagnostics
import modeling
import training
from file_utils import resolve_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batches(num_tasks, batch_size, seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {t: {"input_ids": torch.randint(1000, 30000, (batch_size, seq_len), generator=g),
                "token_type_ids": torch.zeros(batch_size, seq_len, dtype=torch.long),
                "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
                "labels": torch.randint(0, 2, (batch_size,), generator=g)} for t in range(num_tasks)}


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=4, help="K: task heads, one batch each per diagnosis")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed (step, diagnosis) pairs after one warm-up")
    p.add_argument("--every", type=int, default=10, help="N of the direct with/without measurement")
    p.add_argument("--blocks", type=int, default=2, help="blocks of N steps per variant in the direct measurement")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    parser = training.add_engine_args(argparse.ArgumentParser())
    opts = training.EngineOptions.from_args(parser.parse_args(
        ["--output_dir", "/tmp/bench_diagnostics", "--learning_rate", "1e-5", "--logging_steps", "100000",
         "--no_cuda"]))
    env = training.setup_env(opts)
    model = modeling.BertForMultiTask.from_pretrained(
        resolve_model_dir("minilm-l6"), config=os.path.join(ROOT, "configs", "minilm_pals_config.json"),
        task_num_labels=[2] * a.tasks)
    trainer = training.Trainer(opts, env, model, num_training_steps=10_000)
    data = batches(a.tasks, a.batch_size, a.seq_len)
    shared = sum(p.numel() for p in model.shared_parameters())
    print(f"MiniLM-L6 + PALs, {a.tasks} tasks, batch {a.batch_size} x {a.seq_len}, {shared:,} shared parameters, "
          f"torch threads {torch.get_num_threads()}, CPU")
    step_t, diag_t = [], []
    for i in range(a.repeats + 1):
        task = i % a.tasks
        s = timed(lambda: trainer.training_step([(task, dict(data[task]))]))
        d = timed(lambda: diagnostics.diagnose(trainer.model, {t: [dict(b)] for t, b in data.items()}))
        if i:  # the first pair warms up allocations and the optimizer state
            step_t.append(s)
            diag_t.append(d)
    for what, k in (("wall", 0), ("CPU", 1)):
        step = statistics.median(t[k] for t in step_t)
        diag = statistics.median(t[k] for t in diag_t)
        costs = ", ".join(f"N={n}: {1 + diag / (n * step):.3f}x" for n in (1, 10, 100))
        print(f"{what}: step {step * 1000:.0f} ms, diagnosis {diag * 1000:.0f} ms = {diag / step:.2f} steps "
              f"({diag / step / a.tasks:.2f} per task); cost of --diagnose_every N: {costs}")
    n = a.every
    blocks = {"without": [], "with": []}
    for _ in range(a.blocks):
        for variant in ("without", "with"):
            def block():
                for j in range(n):
                    task = j % a.tasks
                    trainer.training_step([(task, dict(data[task]))])
                if variant == "with":
                    diagnostics.diagnose(trainer.model, {t: [dict(b)] for t, b in data.items()})
            blocks[variant].append(timed(block))
    for what, k in (("wall", 0), ("CPU", 1)):
        ratio = statistics.median(t[k] for t in blocks["with"]) / statistics.median(t[k] for t in blocks["without"])
        print(f"{what}: measured --diagnose_every {n}: {ratio:.3f}x the time of {n} steps without diagnostics "
              f"(median of {a.blocks} blocks each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
