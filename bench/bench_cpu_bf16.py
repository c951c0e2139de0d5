"""--bf16 against fp32 on this CPU: the engine's training step on the bundled MiniLM, both precisions
interleaved step by step in one process on copies of the same model and the same batches.

Prints the CPU's bfloat16-related flags (/proc/cpuinfo: avx512_bf16, amx_bf16, amx_tile; without
them bf16 matrix products are converted and computed in fp32 kernels), the vector ISA torch
uses, the median process CPU time and wall time per step, and the ratio. Speed only: whether a
dev score holds under bf16 needs a real-size run (docs/benchmarks.md#cpu-bf16).

    python bench/bench_cpu_bf16.py [--steps 8] [--batch_size 32] [--threads 1]
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

FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2")


def cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            words = set(next((ln for ln in f if ln.startswith("flags")), "").split())
    except OSError:
        return {}
    return {flag: flag in words for flag in FLAGS}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: the engine's auto)")
    a = p.parse_args()
    import logging
    logging.disable(logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = tempfile.mkdtemp(prefix="bench-bf16-")
    parser = argparse.ArgumentParser()
    training.add_engine_args(parser)
    trainers = {}
    model = None
    for name, flags in (("fp32", []), ("bf16", ["--bf16"])):
        opts = training.EngineOptions.from_args(parser.parse_args(
            ["--output_dir", out, "--cache_dir", "none", "--no_cuda", "--train_batch_size", str(a.batch_size),
             *flags]))
        env = training.setup_env(opts)
        model = model or training.load_model(opts, [2])
        trainers[name] = training.Trainer(opts, env, copy.deepcopy(model), 1000)
        stream = training.make_stream(opts, env, bench_eval.glue_like_features(a.batch_size * (a.steps + 2), seed=0))
    steps = [stream.next_step() for _ in range(a.steps + 2)]
    print(f"CPU flags: {', '.join(f'{k} {v}' for k, v in cpu_flags().items())}; torch {torch.__version__} "
          f"(CPU capability {torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads; batch "
          f"{a.batch_size}, {a.steps} timed steps each")
    times = {name: [] for name in trainers}
    for i, micro in enumerate(steps):
        for name, t in trainers.items():
            w, c = time.perf_counter(), time.process_time()
            t.training_step(micro)
            if i >= 2:  # two warm-up steps
                times[name].append((time.perf_counter() - w, time.process_time() - c))
    med = {n: (statistics.median(c for _, c in ts), statistics.median(w for w, _ in ts)) for n, ts in times.items()}
    for name, (cpu, wall) in med.items():
        print(f"{name}: {cpu:.3f} CPU s/step, {wall:.3f} wall s/step")
    print(f"bf16 / fp32 step time: {med['bf16'][0] / med['fp32'][0]:.2f}x CPU, {med['bf16'][1] / med['fp32'][1]:.2f}x "
          "wall (below 1: bf16 faster)")


if __name__ == "__main__":
    main()
