"""Gradient surgery memory and time: the engine's combination of K task gradients of the shared
parameters (one [K, N] float32 buffer, Gram matrix in float64 slices, sum_k w_k g_k written into
the parameters' .grad) against the implementation it replaced (tests/test_training_helpers.py: K flat copies, an
unscaled copy of each, PCGrad/Vaccine on running copies with float64 dot products of whole
gradients, the result rescaled and copied back).

Each variant runs in its own process on random gradients of N elements per task (N = 110M is
bert-base's shared encoder); the peak is that process's RSS high-water mark (VmHWM, reset through
/proc/self/clear_refs once the per-task gradients exist: what the model, its gradients and the task
gradients need anyway) above its RSS then, so it shows what the combination adds. Linux only. The
gradients carry an fp16-like loss scale of 2^16.

    python bench/bench_grad_surgery.py [--tasks 4] [--numel 25000000] [--method vaccine]
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status_mib(field):
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _reset_peak():
    """Linux: set the RSS high-water mark (VmHWM) to the current RSS, so that it measures from here."""
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")
    return _status_mib("VmRSS")


def worker(variant, k, n, method):
    import numpy as np
    import torch
    from tree_modules import load_script

    import multitask as mt
    import training
    helpers = load_script("tests/test_training_helpers.py")
    reference_gradvac, reference_pcgrad = helpers.reference_gradvac, helpers.reference_pcgrad  # the ones replaced
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    scale = 2.0 ** 16
    base = torch.randn(n, generator=g)
    # the parameters' .grad (the last task's, as the engine leaves it) and the per-task rows
    grad = torch.empty(n)
    rows = torch.empty(k, n)
    for i in range(k):
        rows[i] = ((-1.0) ** i * 0.5 * base + torch.randn(n, generator=g)) * scale
    grad.copy_(rows[-1])
    orders = mt._other_orders(k, np.random.default_rng(0))
    phi = np.full((k, k), 0.2)
    if variant == "old":
        flats = [row.clone() for row in rows]  # the old engine's per-task flat copies
        del rows
    before = _reset_peak()
    start = time.perf_counter()
    if variant == "old":
        unscaled = [f / scale for f in flats]
        combined = (reference_pcgrad(unscaled, orders) if method == "pcgrad"
                    else reference_gradvac(unscaled, phi, 0.01, orders))
        combined = combined * scale
        grad.copy_(combined)
    else:
        gram = training.gram_matrix(rows).numpy()
        w = mt.pcgrad_weights(gram, orders) if method == "pcgrad" else mt.gradvac_weights(gram, phi, 0.01, orders)
        training.weighted_rows_into(grad, rows, torch.as_tensor(w, dtype=rows.dtype))
    seconds = time.perf_counter() - start
    print(json.dumps({"variant": variant, "added_mib": _status_mib("VmHWM") - before, "seconds": seconds,
                      "checksum": float(grad.double().sum() / scale), "grad_mib": n * 4 / 2 ** 20}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--numel", type=int, default=25_000_000)
    p.add_argument("--method", choices=("pcgrad", "vaccine"), default="vaccine")
    p.add_argument("--worker", choices=("old", "new"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.worker, a.tasks, a.numel, a.method)
    out = {}
    for variant in ("old", "new"):
        proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--tasks", str(a.tasks), "--numel",
                               str(a.numel), "--method", a.method], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    gm = out["new"]["grad_mib"]
    print(f"{a.method}, {a.tasks} tasks x {a.numel / 1e6:.0f}M elements ({gm:.0f} MiB per task gradient), 1 thread")
    print(f"{'implementation':<32} {'memory added':>13} {'in gradients':>12} {'time':>8}")
    for name, label in (("old", "before (copies, float64 dots)"), ("new", "now (Gram matrix, in place)")):
        r = out[name]
        print(f"{label:<32} {r['added_mib']:>9.0f} MiB {r['added_mib'] / gm:>11.1f}x {r['seconds']:>7.2f}s")
    rel = abs(out["old"]["checksum"] - out["new"]["checksum"]) / max(abs(out["old"]["checksum"]), 1e-30)
    print(f"old / new: memory {out['old']['added_mib'] / max(out['new']['added_mib'], 1):.1f}x, time "
          f"{out['old']['seconds'] / out['new']['seconds']:.2f}x; sums of the combined gradient agree to {rel:.1e}")


if __name__ == "__main__":
    main()
