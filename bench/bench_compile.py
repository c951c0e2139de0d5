"""--compile on this machine: the engine's training step with torch.compile (inductor) against eager,
on the bundled MiniLM with GLUE-like lengths, and what rounding the padded length up to a multiple
of 8 costs in eager mode.

Three trainers on copies of the same model, fed the same batches (dynamic padding, length-grouped,
batch 32), timed interleaved step by step after warm-up; median process CPU time and wall time per
step, and the compile time (the first steps of the compiled trainer, until no new length needs a
graph). The compiled model's first step is compared with eager's on the same batch (loss, gradient).

    python bench/bench_compile.py [--steps 8] [--batch_size 32] [--threads 1]
"""
import argparse
import copy
import statistics
import tempfile
import time

import file_utils  # noqa: F401  (before torch: passive OpenMP waiting)

# isort: split
import bench_eval
import torch

import training


def trainer(model, out, *flags):
    parser = argparse.ArgumentParser()
    training.add_engine_args(parser)
    opts = training.EngineOptions.from_args(parser.parse_args(
        ["--output_dir", out, "--cache_dir", "none", "--no_cuda", "--optimizer", "adamw", "--threads", "0", *flags]))
    env = training.setup_env(opts)
    return opts, env, training.Trainer(opts, env, copy.deepcopy(model), 1000)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: the engine's auto)")
    a = p.parse_args()
    import logging
    logging.disable(logging.WARNING)
    out = tempfile.mkdtemp(prefix="bench-compile-")
    parser = argparse.ArgumentParser()
    training.add_engine_args(parser)
    opts = training.EngineOptions.from_args(parser.parse_args(["--output_dir", out, "--no_cuda"]))
    model = training.load_model(opts, [2])
    if a.threads:
        torch.set_num_threads(a.threads)
    n = a.batch_size * (a.steps + 6)
    feats = bench_eval.glue_like_features(n, seed=0)
    variants = {}
    for name, flags in (("eager", ()), ("eager, lengths rounded to 8", ("--compile",)), ("compiled", ("--compile",))):
        o, e, t = trainer(model, out, "--train_batch_size", str(a.batch_size), *flags)
        if name.startswith("eager"):
            t.ddp_model = t.model  # --compile only for its padding: run it eagerly
        stream = training.make_stream(o, e, feats)
        variants[name] = (t, [stream.next_step() for _ in range(a.steps + 6)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch_size}, "
          f"{a.steps} timed steps each; padded tokens per step: "
          + ", ".join(f"{k} {sum(b['input_ids'].numel() for _, b in v[1][6]) }" for k, v in variants.items()))

    # Same first batch through eager and compiled: loss and gradients (no optimizer step).
    eager_t, compiled_t = variants["eager, lengths rounded to 8"][0], variants["compiled"][0]
    micro = variants["compiled"][1][0]
    grads = {}
    for name, t in (("eager", eager_t), ("compiled", compiled_t)):
        batch = dict(micro[0][1])
        start = time.perf_counter()
        out_ = t.ddp_model(**batch, task_id=0)
        out_["loss"].backward()
        grads[name] = (float(out_["loss"]), torch.cat([p.grad.reshape(-1) for p in t.model.parameters()
                                                        if p.grad is not None]).clone(), time.perf_counter() - start)
        t.optimizer.zero_grad(set_to_none=True)
    diff = float((grads["eager"][1] - grads["compiled"][1]).abs().max())
    print(f"first batch: loss eager {grads['eager'][0]:.6f}, compiled {grads['compiled'][0]:.6f}; max |grad diff| "
          f"{diff:.2e} (max |grad| {float(grads['eager'][1].abs().max()):.2e}); first compiled call "
          f"{grads['compiled'][2]:.1f} s (compilation)")

    # Warm-up: the compiled model compiles a graph for the first lengths it sees (then a dynamic one).
    start = time.perf_counter()
    for t, steps in variants.values():
        for micro in steps[:6]:
            t.training_step(micro)
    print(f"warm-up (6 steps each, compiled graphs for new lengths included): {time.perf_counter() - start:.1f} s")
    times = {k: [] for k in variants}
    for i in range(6, 6 + a.steps):
        for name, (t, steps) in variants.items():
            w, c = time.perf_counter(), time.process_time()
            t.training_step(steps[i])
            times[name].append((time.perf_counter() - w, time.process_time() - c))
    base = statistics.median(c for _, c in times["eager"])
    print(f"\n{'variant':<30} {'CPU s/step':>10} {'wall s/step':>11} {'CPU vs eager':>12}")
    for name, ts in times.items():
        cpu, wall = statistics.median(c for _, c in ts), statistics.median(w for w, _ in ts)
        print(f"{name:<30} {cpu:10.3f} {wall:11.3f} {cpu / base:11.2f}x")


if __name__ == "__main__":
    main()
