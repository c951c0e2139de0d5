"""Benchmark: one optimizer step on bert-base-sized parameters, per-tensor loop vs multi-tensor.

Parameters have the shapes of `BertForMultiTask(configs/bert_base_config.json, one 2-label head)`
(random values, 110M parameters in 201 tensors), in the engine's weight-decay groups
(optimization.param_groups). Every step gets fresh random gradients, shared by all variants (the
optimizers only read p.grad). Compared in ONE process, steps interleaved and the order rotated, so
that load on a shared machine hits all variants alike:

- BertAdam(foreach=False): the per-tensor reference loop;
- BertAdam() (default): multi-tensor `torch._foreach_*` update;
- torch.optim.AdamW(foreach=False): torch's per-tensor loop (its default on CPU);
- torch.optim.AdamW(foreach=True): torch's multi-tensor implementation;
- torch.optim.AdamW(fused=True): torch's fused kernel (what build_optimizer('adamw') runs on CPU
  and CUDA).

On CPU the ratios use process time (one thread): on a shared machine wall time mostly measures
the other jobs.

Prints the median step time of each, the ratios loop / multi-tensor, and whether the two paths left
bit-identical parameters (BertAdam's must on CPU). bench/gpu_check.py runs `measure` on CUDA.

    python bench/bench_optimizer.py [--steps 6] [--threads 1] [--device cpu]
"""
import argparse
import os
import statistics
import sys
import time

import torch

import modeling
import optimization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_groups(config=None):
    """The engine's parameter groups for BertForMultiTask(config, one 2-label head), on the meta
    device (shapes only). config: a BertConfig; default configs/bert_base_config.json."""
    if config is None:
        config = modeling.BertConfig.from_json_file(os.path.join(ROOT, "configs", "bert_base_config.json"))
    with torch.device("meta"):  # shapes only; the values are drawn below
        model = modeling.BertForMultiTask(config, [2])
    groups = optimization.param_groups(model, weight_decay=0.01, lr=5e-5)
    return [dict(g, params=[p for p in g["params"]]) for g in groups]


def materialize(groups, device, seed):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g in groups:
        params = [torch.nn.Parameter((torch.randn(p.shape, generator=gen) * 0.02).to(device)) for p in g["params"]]
        out.append(dict(g, params=params))
    return out


VARIANTS = {
    "BertAdam loop": lambda gr: optimization.BertAdam(gr, lr=5e-5, foreach=False),
    "BertAdam foreach": lambda gr: optimization.BertAdam(gr, lr=5e-5),
    "AdamW loop": lambda gr: torch.optim.AdamW(gr, lr=5e-5, eps=1e-6, foreach=False),
    "AdamW foreach": lambda gr: torch.optim.AdamW(gr, lr=5e-5, eps=1e-6, foreach=True),
    "AdamW fused": lambda gr: torch.optim.AdamW(gr, lr=5e-5, eps=1e-6, fused=True),
}
PAIRS = (("BertAdam loop", "BertAdam foreach"), ("AdamW loop", "AdamW foreach"), ("AdamW loop", "AdamW fused"))


def measure(device, steps, config=None):
    """Median seconds per step of every variant and the max parameter difference of each pair.

    -> (seconds {variant: s}, basis 'process time'|'wall time', diffs {(a, b): max abs diff},
        n_params, n_tensors, wall seconds {variant: s}). On CPU `seconds` is process time."""
    device = torch.device(device)
    shapes = model_groups(config)
    params, opts = {}, {}
    for name, make in VARIANTS.items():
        groups = materialize(shapes, device, seed=0)  # same start for every variant
        params[name] = [p for g in groups for p in g["params"]]
        opts[name] = make(groups)
    gen = torch.Generator().manual_seed(1)
    times = {name: [] for name in VARIANTS}
    cpu = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for step in range(steps + 1):
        grads = [torch.randn(p.shape, generator=gen).to(device) for p in params[names[0]]]
        for name in names[step % len(names):] + names[:step % len(names)]:
            for p, g in zip(params[name], grads):
                p.grad = g
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            opts[name].step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step > 0:  # step 0 allocates the optimizer state
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
        del grads
    # On a CPU shared with other jobs the wall time mostly measures them; with one thread the
    # process time (user + system: page faults of fresh temporaries count) measures the work.
    use_cpu_time = device.type == "cpu"
    seconds = {name: statistics.median(cpu[name] if use_cpu_time else times[name]) for name in names}
    diffs = {(a, b): max((x - y).abs().max().item() for x, y in zip(params[a], params[b])) for a, b in PAIRS}
    n_params = sum(p.numel() for p in params[names[0]])
    return (seconds, "process time" if use_cpu_time else "wall time", diffs, n_params, len(params[names[0]]),
            {name: statistics.median(times[name]) for name in names})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch default); 1 by default on a small shared CPU")
    parser.add_argument("--device", default="cpu")
    a = parser.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    seconds, basis, diffs, n_params, n_tensors, wall = measure(a.device, a.steps)
    print(f"torch {torch.__version__}, device {a.device}, {torch.get_num_threads()} threads; "
          f"{n_params / 1e6:.1f}M parameters in {n_tensors} tensors; {a.steps} timed steps")
    for name in VARIANTS:
        print(f"{name:16s} wall {wall[name] * 1000:8.1f} ms/step"
              + (f" | process time {seconds[name] * 1000:8.1f} ms/step" if basis == "process time" else ""))
    for (a_, b_), diff in diffs.items():
        print(f"{a_} / {b_} ({basis}) = {seconds[a_] / seconds[b_]:.2f}x; parameters after {a.steps + 1} steps: "
              + ("bit-identical" if diff == 0 else f"max abs difference {diff:.2e}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
