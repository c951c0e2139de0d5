"""Benchmark: one multi-task training step with PALs vs the shared encoder alone (same batch).

Target (issue): a PALs step costs at most 1.2x a shared-encoder step. Both models are trained
through the engine's real step (training.Trainer.training_step: forward, backward, BertAdam
update) on the same batches, task ids cycling over the 8 GLUE tasks, timed interleaved
(plain, pals, plain, pals, ...) so that load drift on a shared machine hits both alike; the
median step time of each is reported with the ratio. On CPU the process CPU time per step is
reported too: with --threads 1 it measures the work done even when other jobs share the cores
(wall time then mostly measures the other jobs).

    python bench/bench_multitask_step.py                       # MiniLM (bundled) plain vs minilm_pals
    python bench/bench_multitask_step.py --model bert-base     # random bert-base weights, pals_config
    python bench/bench_multitask_step.py --batch_size 32 --seq_len 128 --steps 6 --threads 2
"""
import argparse
import os
import statistics
import sys
import time

import torch

import modeling
import training
from file_utils import resolve_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASK_LABELS = [2, 2, 3, 2, 1, 2, 2, 2]  # cola mrpc mnli rte sts-b sst-2 qqp qnli


def build(kind, adapters, tmp):
    """(model, label). kind: minilm (pretrained) or bert-base (random weights)."""
    if kind == "minilm":
        config = os.path.join(ROOT, "configs", "minilm_pals_config.json") if adapters else None
        return modeling.BertForMultiTask.from_pretrained(resolve_model_dir("minilm-l6"), config=config,
                                                         task_num_labels=TASK_LABELS)
    name = "pals_config.json" if adapters else "bert_base_config.json"
    config = modeling.BertConfig.from_json_file(os.path.join(ROOT, "configs", name))
    return modeling.BertForMultiTask(config, TASK_LABELS)


def make_batches(n, batch_size, seq_len, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        task = i % len(TASK_LABELS)
        batch = {"input_ids": torch.randint(5, vocab, (batch_size, seq_len), generator=g),
                 "token_type_ids": torch.zeros(batch_size, seq_len, dtype=torch.long),
                 "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}
        if TASK_LABELS[task] == 1:
            batch["labels"] = torch.rand(batch_size, generator=g)
        else:
            batch["labels"] = torch.randint(0, TASK_LABELS[task], (batch_size,), generator=g)
        out.append((task, batch))
    return out


def trainer_for(model, args, env):
    return training.Trainer(args, env, model, num_training_steps=1000)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("minilm", "bert-base", "both"), default="minilm")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per model (after 1 warm-up step)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no_cuda", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    parser = training.add_engine_args(argparse.ArgumentParser())
    engine_options = ["--output_dir", "/tmp/bench_multitask_step", "--learning_rate", "1e-5", "--logging_steps",
                      "100000"]
    if a.no_cuda:
        engine_options.append("--no_cuda")
    args = training.EngineOptions.from_args(parser.parse_args(engine_options))
    env = training.setup_env(args)
    kinds = ["minilm", "bert-base"] if a.model == "both" else [a.model]
    print(f"device {env.device}, torch threads {torch.get_num_threads()}, batch {a.batch_size} x {a.seq_len} tokens, "
          f"{a.steps} timed steps per model, tasks cycling over {len(TASK_LABELS)} heads")
    for kind in kinds:
        models = {name: build(kind, name == "pals", None) for name in ("plain", "pals")}
        trainers = {name: trainer_for(m, args, env) for name, m in models.items()}
        batches = make_batches(a.steps + 1, a.batch_size, a.seq_len, models["plain"].config.vocab_size)
        times = {name: [] for name in models}
        cpu = {name: [] for name in models}
        for i, (task, batch) in enumerate(batches):
            for name, trainer in trainers.items():
                batch_dev = {k: v.to(env.device) for k, v in batch.items()}
                if env.device.type == "cuda":
                    torch.cuda.synchronize()
                start, cpu_start = time.perf_counter(), time.process_time()
                trainer.training_step([(task, batch_dev)])
                if env.device.type == "cuda":
                    torch.cuda.synchronize()
                if i > 0:  # step 0 is warm-up (allocations, optimizer state)
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - cpu_start)
        plain, pals = statistics.median(times["plain"]), statistics.median(times["pals"])
        n_plain, n_pals = (modeling.count_parameters(m) for m in (models["plain"], models["pals"]))
        print(f"{kind}: shared encoder + heads {plain * 1000:8.1f} ms/step ({n_plain / 1e6:.1f}M params) | "
              f"PALs {pals * 1000:8.1f} ms/step ({n_pals / 1e6:.1f}M params) | wall ratio {pals / plain:.3f}x "
              f"(target <= 1.2x) | {a.batch_size * a.seq_len / pals:.0f} tokens/s with PALs")
        if env.device.type == "cpu":
            cp, cq = statistics.median(cpu["plain"]), statistics.median(cpu["pals"])
            print(f"{kind}: process CPU time per step: shared {cp * 1000:.1f} ms, PALs {cq * 1000:.1f} ms, "
                  f"ratio {cq / cp:.3f}x")
        del models, trainers
    return 0


if __name__ == "__main__":
    sys.exit(main())
