"""Benchmark of the gradient-combination methods (--projection), three measurements:

memory  Peak memory of one combined training step (the engine's real Trainer.training_step) on a
        bert-base-sized random model (configs/pals_config.json: BERT-base + PALs), tiny batches, CPU,
        K tasks per step: the plain sum, jd-upgrad on the Gram matrix (today's path: the [K, shared]
        buffer, weights from the K x K Gram matrix, written straight into .grad), TorchJD's Nash-MTL and
        ConFIG through the engine's full-gradient protocol ("full:jd-nashmtl", "full:jd-config": a
        callable on the per-task gradients; the library gets the [K, shared] matrix itself, as a view of
        the same buffer, no copy), and the two as offered, on a K x K factor of the Gram matrix
        (multitask/library.py, FACTOR_METHODS). Each method
        runs in a fresh process; after one warm-up step (optimizer state allocated) the RSS high-water
        mark is reset (Linux /proc/self/clear_refs) and a second step is measured: "step peak" is that
        step's VmHWM above the RSS before it, "process peak" the whole process's VmHWM.
weights The weights computation alone on a K x K Gram matrix (K = 2..9): our PCGrad / Gradient Vaccine
        (multitask.GradientCombiner.weights, order drawing included) against TorchJD's through
        multitask.LibraryCombiner.weights (our RNG and state handling included), median per call.
step    Per-step time and memory of every offered --projection on the mixed demo's model (bundled
        MiniLM-L6 + PALs, five heads: sst-2, rte, squad2, conll, swag; bench/bench_mixed_step.py), every
        task in every step (--combine_strategy all), beside the plain sum ("none"), as ratios. One fresh
        process per method: median wall and process CPU time of the timed steps, and the step peak as above.

    python bench/bench_mtl_methods.py memory [--tasks 4]
    python bench/bench_mtl_methods.py weights [--calls 300]
    python bench/bench_mtl_methods.py step [--steps 5] [--batch_size 8] [--methods none,pcgrad,...]

Linux only (memory from /proc). Nash-MTL needs cvxpy + ecos (requirements-dev.txt).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_grad_surgery import _reset_peak, _status_mib

ROOT = os.path.dirname(os.path.abspath(__file__))
SOLVER_FLAGS = {"jd_cagrad_c": 0.4, "jd_fairgrad_alpha": 1.0}  # the two without a library default
MEMORY_METHODS = ("none", "jd-upgrad", "full:jd-nashmtl", "full:jd-config", "jd-nashmtl", "jd-config")


def _options():
    import run_multi_task
    args = run_multi_task.build_parser().parse_args([])
    for k, v in SOLVER_FLAGS.items():
        setattr(args, k, v)
    return args


class FullMatrixCombiner:
    """The engine's full-gradient protocol for a TorchJD Aggregator: f(list of flat task gradients) -> the
    combined flat gradient. The engine hands the rows of its [K, shared] buffer; they are viewed as that
    matrix again (no copy) when they are its consecutive rows."""

    def __init__(self, aggregator):
        self.aggregator = aggregator

    def __call__(self, grads):
        import torch
        first, n = grads[0], grads[0].numel()
        if all(g.data_ptr() == first.data_ptr() + i * n * first.element_size() for i, g in enumerate(grads)):
            matrix = first.as_strided((len(grads), n), (n, 1), first.storage_offset())
        else:
            matrix = torch.stack(grads)
        return self.aggregator(matrix)


def _combiner(method, names, k):
    import multitask as mt
    if method == "none":
        return None
    if method in ("pcgrad", "vaccine"):
        return mt.GradientCombiner(method, k, seed=0, beta=0.01, names=names)
    if method == "full:jd-nashmtl":
        from torchjd.aggregation import NashMTL
        return FullMatrixCombiner(NashMTL(n_tasks=k))
    if method == "full:jd-config":
        from torchjd.aggregation import ConFIG
        return FullMatrixCombiner(ConFIG())
    return mt.LibraryCombiner(method, names, 0, _options())


def _engine(model_args):
    import training
    parser = training.add_engine_args(argparse.ArgumentParser())
    opts = training.EngineOptions.from_args(parser.parse_args(
        ["--output_dir", "/tmp/bench_mtl_methods", "--no_cuda", "--optimizer", "adamw", "--learning_rate", "1e-5",
         "--logging_steps", "100000", *model_args]))
    return opts, training.setup_env(opts)


def _measure(trainer, micro_for, steps):
    """1 warm-up step, then `steps` timed ones; the peak is over the timed steps."""
    trainer.training_step(micro_for(0))
    process_before = _status_mib("VmHWM")
    before = _reset_peak()
    wall, cpu = [], []
    for i in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.training_step(micro_for(i + 1))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu),
            "step_peak_mib": _status_mib("VmHWM") - before,
            "process_peak_mib": max(process_before, _status_mib("VmHWM"))}


def worker_memory(method, k):
    import torch

    import modeling
    import training
    torch.set_num_threads(1)
    opts, env = _engine([])
    config = modeling.BertConfig.from_json_file(os.path.join(os.path.dirname(ROOT), "configs", "pals_config.json"))
    names = [f"t{i}" for i in range(k)]
    model = modeling.BertForMultiTask(config, [2] * k)
    trainer = training.Trainer(opts, env, model, 1000, grad_combiner=_combiner(method, names, k))
    shared = sum(p.numel() for p in trainer.shared_parameters())

    def micro_for(step):
        g = torch.Generator().manual_seed(step)
        return [(t, {"input_ids": torch.randint(5, 30000, (2, 16), generator=g),
                     "token_type_ids": torch.zeros(2, 16, dtype=torch.long),
                     "attention_mask": torch.ones(2, 16, dtype=torch.long),
                     "labels": torch.randint(0, 2, (2,), generator=g)}) for t in range(k)]
    out = _measure(trainer, micro_for, 1)
    out.update(method=method, shared_mib=shared * 4 / 2 ** 20)
    return out


def worker_step(method, steps, batch_size):
    import torch
    from bench_mixed_step import MIXED, batch_for

    import training
    torch.set_num_threads(1)
    opts, env = _engine(["--config", "pals", "--max_seq_length", "256"])
    names = [n for n, *_ in MIXED]
    model = training.load_model(opts, [o for _, _, o, _ in MIXED], [h for _, h, _, _ in MIXED], names)
    trainer = training.Trainer(opts, env, model, 1000, grad_combiner=_combiner(method, names, len(names)))

    def micro_for(step):
        g = torch.Generator().manual_seed(step)
        return [(t, batch_for(head, outputs, batch_size, seq_len, g))
                for t, (_, head, outputs, seq_len) in enumerate(MIXED)]
    out = _measure(trainer, micro_for, steps)
    out["method"] = method
    return out


def _spawn(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, *map(str, argv)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{argv}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(a):
    rows = [_spawn("--worker", "memory", m, "--tasks", a.tasks) for m in a.methods.split(",") for _ in range(a.repeat)]
    shared = rows[0]["shared_mib"]
    print(f"one combined step, BERT-base + PALs (random weights), {a.tasks} tasks x batch 2 x 16 tokens, CPU, "
          f"1 thread; one task gradient of the shared parameters = {shared:.0f} MiB")
    print(f"{'method':<16} {'step peak':>10} {'in gradients':>12} {'process peak':>13}")
    for r in rows:
        print(f"{r['method']:<16} {r['step_peak_mib']:>6.0f} MiB {r['step_peak_mib'] / shared:>11.2f}x "
              f"{r['process_peak_mib']:>9.0f} MiB")


def weights(a):
    import numpy as np

    import multitask as mt
    rng = np.random.default_rng(0)
    print(f"weights from a K x K Gram matrix: median microseconds per call over {a.calls} calls (1 thread)")
    print("K | ours pcgrad | jd-pcgrad | library/ours | ours vaccine | jd-gradvac | library/ours")
    for k in range(2, 10):
        names = [f"t{i}" for i in range(k)]
        grams = []
        for _ in range(a.calls):
            g = rng.standard_normal((k, 16)) * rng.uniform(0.1, 10, (k, 1))
            grams.append(g @ g.T)
        ids = list(range(k))
        combiners = {"pcgrad": mt.GradientCombiner("pcgrad", k, seed=0, names=names),
                     "jd-pcgrad": mt.LibraryCombiner("jd-pcgrad", names, 0, _options()),
                     "vaccine": mt.GradientCombiner("vaccine", k, seed=0, beta=0.01, names=names),
                     "jd-gradvac": mt.LibraryCombiner("jd-gradvac", names, 0, _options())}
        times = {name: [] for name in combiners}
        for gram in grams:  # interleaved: load drift hits all alike
            for name, comb in combiners.items():
                start = time.perf_counter()
                comb.weights(gram, ids)
                times[name].append(time.perf_counter() - start)
        us = {name: 1e6 * statistics.median(t) for name, t in times.items()}
        print(f"{k} | {us['pcgrad']:.0f} | {us['jd-pcgrad']:.0f} | {us['jd-pcgrad'] / us['pcgrad']:.2f}x | "
              f"{us['vaccine']:.0f} | {us['jd-gradvac']:.0f} | {us['jd-gradvac'] / us['vaccine']:.2f}x")


def step(a):
    import multitask as mt
    methods = a.methods.split(",") if a.methods else ["none", "pcgrad", "vaccine", *sorted(mt.library_methods())]
    rows = [_spawn("--worker", "step", m, "--steps", a.steps, "--batch_size", a.batch_size) for m in methods]
    base = next(r for r in rows if r["method"] == "none") if "none" in methods else rows[0]
    print(f"mixed demo model (MiniLM-L6 + PALs, 5 heads), all 5 tasks per step, batch {a.batch_size}, CPU, 1 thread, "
          f"median of {a.steps} steps after 1 warm-up; ratios to '{base['method']}' (the plain sum)")
    print("| --projection | wall ms | CPU ms | CPU ratio | step peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['method']}` | {1000 * r['wall']:.0f} | {1000 * r['cpu']:.0f} | {r['cpu'] / base['cpu']:.2f}x | "
              f"{r['step_peak_mib']:.0f} | {r['step_peak_mib'] / base['step_peak_mib']:.2f}x |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("memory", "weights", "step"), nargs="?")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--methods", default=None)
    p.add_argument("--repeat", type=int, default=1, help="memory: processes per method (the spread is the noise)")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=8)
    a = p.parse_args()
    if a.worker:
        kind, method = a.worker
        out = worker_memory(method, a.tasks) if kind == "memory" else worker_step(method, a.steps, a.batch_size)
        print(json.dumps(out))
        return 0
    if a.what == "memory":
        a.methods = a.methods or ",".join(MEMORY_METHODS)
    {"memory": memory, "weights": weights, "step": step}[a.what or "step"](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
