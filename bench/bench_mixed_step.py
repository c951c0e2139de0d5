"""Benchmark: the cost of a training step of one task inside a mixed multi-task model vs the same
step in a model that has only that task.

The mixed model is the mixed demo's: bundled MiniLM + PALs with five heads (sst-2 and rte
classification, squad2 span, conll token tagging, swag multiple choice). For each family the same
random batch goes through the engine's real step (training.Trainer.training_step: forward,
backward, optimizer update) in the mixed model and in a one-task model of the same family, timed
interleaved so that load drift on a shared machine hits both alike; medians and their ratio are
printed (process CPU time too: with --threads 1 it measures the work even on a busy machine).

    python bench/bench_mixed_step.py --threads 1 --steps 6
"""
import argparse
import statistics
import sys
import time

import torch

import training

# (name, head type, outputs, sequence length of its batches)
MIXED = [("sst-2", "classification", 2, 64), ("rte", "classification", 2, 64), ("squad2", "span", 2, 192),
         ("conll", "token", 9, 64), ("swag", "choice", 4, 64)]


def batch_for(head, outputs, batch_size, seq_len, g):
    shape = (batch_size, 4, seq_len) if head == "choice" else (batch_size, seq_len)
    batch = {"input_ids": torch.randint(1000, 30000, shape, generator=g),
             "token_type_ids": torch.zeros(shape, dtype=torch.long),
             "attention_mask": torch.ones(shape, dtype=torch.long)}
    if head == "span":
        batch["start_positions"] = torch.randint(0, seq_len, (batch_size,), generator=g)
        batch["end_positions"] = torch.randint(0, seq_len, (batch_size,), generator=g)
    elif head == "token":
        batch["labels"] = torch.randint(0, outputs, (batch_size, seq_len), generator=g)
    else:
        batch["labels"] = torch.randint(0, outputs, (batch_size,), generator=g)
    return batch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="timed steps per model and family (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    parser = training.add_engine_args(argparse.ArgumentParser())
    opts = training.EngineOptions.from_args(parser.parse_args(
        ["--output_dir", "/tmp/bench_mixed_step", "--config", "pals", "--max_seq_length", "256", "--no_cuda",
         "--optimizer", "adamw", "--learning_rate", "1e-5", "--logging_steps", "100000"]))
    env = training.setup_env(opts)
    mixed = training.Trainer(opts, env, training.load_model(opts, [o for _, _, o, _ in MIXED],
                                                            [h for _, h, _, _ in MIXED], [n for n, *_ in MIXED]), 1000)
    print(f"torch threads {torch.get_num_threads()}, batch {a.batch_size}, {a.steps} timed steps per model")
    print("task    | mixed model (5 tasks)       | one-task model              | ratio wall | ratio CPU")
    g = torch.Generator().manual_seed(0)
    for task_id, (name, head, outputs, seq_len) in enumerate(MIXED):
        single = training.Trainer(opts, env, training.load_model(opts, [outputs], [head], [name]), 1000)
        wall = {"mixed": [], "single": []}
        cpu = {"mixed": [], "single": []}
        for step in range(a.steps + 1):
            batch = batch_for(head, outputs, a.batch_size, seq_len, g)
            for kind, trainer, tid in (("mixed", mixed, task_id), ("single", single, 0)):
                start, cpu_start = time.perf_counter(), time.process_time()
                trainer.training_step([(tid, dict(batch))])
                if step:  # step 0 warms up allocations and optimizer state
                    wall[kind].append(time.perf_counter() - start)
                    cpu[kind].append(time.process_time() - cpu_start)
        m, s = statistics.median(wall["mixed"]), statistics.median(wall["single"])
        mc, sc = statistics.median(cpu["mixed"]), statistics.median(cpu["single"])
        print(f"{name:<7} | {m * 1000:7.0f} ms wall {mc * 1000:7.0f} ms CPU | {s * 1000:7.0f} ms wall "
              f"{sc * 1000:7.0f} ms CPU | {m / s:9.3f}x | {mc / sc:8.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
