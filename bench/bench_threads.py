"""CPU threads: the engine's automatic setting (--threads 0 + passive OpenMP waiting) against torch's
default, on an idle machine and beside one competing CPU-bound process.

Each run is a fresh process that trains the bundled MiniLM for a fixed number of engine steps
(training.Trainer.training_step, AdamW, GLUE-like lengths) and reports its wall time and process
CPU time (all threads) for those steps, model loading excluded:

- default: torch imported first (libgomp's default waiting: idle threads spin for a while), torch's
  own thread count;
- auto:    file_utils imported first (OMP_WAIT_POLICY=PASSIVE), training.configure_threads(0);
- one:     auto with --threads 1 (for reference).

The variants run interleaved (each repeat starting with the next variant), `--repeats` times each,
first with nothing else of ours running (whatever else shares the machine shows in the printed load
average), then with `python -c "while True: pass"` beside them. Ratios compare medians measured in
the same phase.

    python bench/bench_threads.py [--steps 30] [--repeats 2] [--batch_size 32]
"""
import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("default", "auto", "one")


def worker(mode, steps, batch_size):
    """One run in this (fresh) process; prints a JSON line."""
    if mode == "default":
        import torch  # noqa: F401  before file_utils: libgomp keeps its default waiting
    import file_utils  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE unless torch is already loaded)
    seen = os.environ.get("OMP_WAIT_POLICY") if mode != "default" else None  # what libgomp read at load

    # isort: split
    import argparse as ap
    import tempfile

    import bench_eval
    import torch

    import training
    parser = ap.ArgumentParser()
    training.add_engine_args(parser)
    threads = {"default": [], "auto": [], "one": ["--threads", "1"]}[mode]
    with tempfile.TemporaryDirectory() as out:
        opts = training.EngineOptions.from_args(parser.parse_args(
            ["--output_dir", out, "--train_batch_size", str(batch_size), "--cache_dir", "none", "--no_cuda",
             "--optimizer", "adamw", *threads]))
        if mode == "default":
            opts = dataclasses.replace(opts, threads=torch.get_num_threads())  # leave torch's count
        env = training.setup_env(opts)
        model = training.load_model(opts, [2])
        stream = training.make_stream(opts, env, bench_eval.glue_like_features(batch_size * steps, seed=0))
        trainer = training.Trainer(opts, env, model, steps)
        batches = [stream.next_step() for _ in range(steps)]
        trainer.training_step(batches[0])  # warm-up (first-call allocations)
        wall, cpu = time.perf_counter(), time.process_time()
        for micro in batches[1:]:
            trainer.training_step(micro)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"mode": mode, "threads": torch.get_num_threads(), "wall": wall, "cpu": cpu,
                      "wait_policy": seen or "(unset)"}))


def run(mode, steps, batch_size):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--steps", str(steps),
                           "--batch_size", str(batch_size)], env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def phase(name, steps, batch_size, repeats):
    results = {m: [] for m in VARIANTS}
    load = os.getloadavg()[0]
    for r in range(repeats):
        for mode in VARIANTS[r % 3:] + VARIANTS[:r % 3]:  # each repeat starts with another variant
            results[mode].append(run(mode, steps, batch_size))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu")} for m, rs in results.items()}
    print(f"\n{name} (load average before: {load:.1f}; {steps - 1} timed steps of batch {batch_size}, median of "
          f"{repeats})")
    print(f"{'variant':<8} {'threads':>7} {'wait':>8} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>8}")
    for m in VARIANTS:
        r = results[m][0]
        print(f"{m:<8} {r['threads']:>7} {str(r['wait_policy']):>8} {med[m]['wall']:8.2f} {med[m]['cpu']:8.2f} "
              f"{med[m]['cpu'] / med[m]['wall']:8.2f}")
    d, a = med["default"], med["auto"]
    print(f"auto / default: wall {a['wall'] / d['wall']:.2f}x, CPU {a['cpu'] / d['cpu']:.2f}x")
    return med


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.worker, a.steps, a.batch_size)
    print(f"{os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}")
    phase("idle", a.steps, a.batch_size, a.repeats)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1)
        phase("beside one CPU-bound process", a.steps, a.batch_size, a.repeats)
    finally:
        hog.kill()
        hog.wait()


if __name__ == "__main__":
    main()
