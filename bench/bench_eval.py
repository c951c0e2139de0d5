"""Benchmark: evaluation throughput of training.predict by batch size, and inference_mode vs no_grad.

The bundled MiniLM (or random bert-base weights with --model bert-base) predicts a GLUE-like dev
set (lognormal lengths, median ~25 word pieces, clipped to [4, 128], as bench/bench_batching.py)
through the engine's `training.predict` (length-sorted batches, dynamic padding) at several batch
sizes; then the same sorted batches are run through the bare model under torch.no_grad() and under
torch.inference_mode(). Everything in ONE process, repeats interleaved (the order rotated), so load
on a shared machine hits all variants alike. Prints examples/s and ratios; on CPU the ratios use
process time (one thread: it measures the work even when other jobs share the cores).

    python bench/bench_eval.py [--examples 512] [--batch_sizes 8,16,32,64,128] [--repeats 3] [--threads 1]
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

import numpy as np
import torch

import modeling
import training
from file_utils import resolve_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def glue_like_features(n, seed, max_len=128, median=25, sigma=0.6, vocab=(1000, 30000)):
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 4, max_len).astype(int)
    return [{"input_ids": [101] + rng.integers(vocab[0], vocab[1], int(k) - 2).tolist() + [102],
             "token_type_ids": [0] * int(k), "labels": int(rng.integers(0, 2))} for k in lengths]


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def measure(model, feats, sizes, repeats, device, env=None):
    """Median seconds of predict over `feats` per batch size and of the bare forward under no_grad
    and inference_mode (autocast as env says), and (CUDA) the peak memory of each. On CPU: process
    time."""
    runs = {("predict", b): (lambda b=b: training.predict(model, feats, 0, b, env)) for b in sizes}
    # The bare forward over predict's own sorted batches, to isolate the grad-mode context.
    lengths = np.array([len(f["input_ids"]) for f in feats])
    order = np.argsort(-lengths, kind="stable")
    base = min(sizes)
    batches = [training.collate([feats[i] for i in order[s:s + base]]) for s in range(0, len(feats), base)]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    amp = env.amp_dtype if env is not None else None

    def forward_all(context):
        with context(), torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            for b in batches:
                model(**b, task_id=0)

    runs[("no_grad", base)] = lambda: forward_all(torch.no_grad)
    runs[("inference_mode", base)] = lambda: forward_all(torch.inference_mode)
    peak = {}
    for key, fn in runs.items():  # warm-up, and the peak memory of each
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        fn()
        if device.type == "cuda":
            peak[key] = torch.cuda.max_memory_allocated()
    results = {key: [] for key in runs}
    keys = list(runs)
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            wall, cpu = timed(runs[key], device)
            results[key].append(cpu if device.type == "cpu" else wall)
    return {key: statistics.median(v) for key, v in results.items()}, peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("minilm", "bert-base"), default="minilm")
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch_sizes", default="8,16,32,64,128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.model == "minilm":
        model = modeling.BertForMultiTask.from_pretrained(resolve_model_dir("minilm-l6"), task_num_labels=[2])
    else:
        config = modeling.BertConfig.from_json_file(os.path.join(ROOT, "configs", "bert_base_config.json"))
        model = modeling.BertForMultiTask(config, [2])
    model = model.to(device).eval()
    feats = glue_like_features(a.examples, seed=0)
    sizes = [int(x) for x in a.batch_sizes.split(",")]
    print(f"{a.model} on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; {a.examples} "
          f"examples, median length {int(np.median([len(f['input_ids']) for f in feats]))}; {a.repeats} repeats")
    med, peak = measure(model, feats, sizes, a.repeats, device)
    basis = "process time" if device.type == "cpu" else "wall time"
    for (kind, b), sec in med.items():
        name = f"predict, batch {b}" if kind == "predict" else f"bare forward, batch {b}, {kind}"
        mem = f", peak {peak[(kind, b)] / 2**20:.0f} MiB" if (kind, b) in peak else ""
        print(f"{name:40s} {a.examples / sec:9.1f} examples/s ({basis} {sec:.2f} s{mem})")
    for b in sizes[1:]:
        print(f"batch {b} / batch {sizes[0]}: {med[('predict', sizes[0])] / med[('predict', b)]:.2f}x throughput")
    print(f"inference_mode / no_grad: {med[('no_grad', min(sizes))] / med[('inference_mode', min(sizes))]:.2f}x "
          "throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
