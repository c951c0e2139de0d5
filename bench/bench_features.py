"""Features in memory: the feature cache read back and one epoch of batches, this tree vs another.

A GLUE-like training set (sentence pairs, lognormal lengths with median ~40 word pieces, clipped to
[8, 128], like MNLI's) is written once per tree into that tree's own feature cache
(`training.cached_features`), then a fresh process per run reads it back and draws one epoch of
length-grouped batches of 32 from it (`training.EpochStream`, the engine's training path). Per run:
the time to read the cache, the time to collate the epoch's batches, and the memory the features hold
(resident set after the read minus before it) and the peak resident set over the run (above the
process after its imports). The trees alternate, a fresh process each; medians are compared.

    python bench/bench_features.py --before /path/to/older/tree [--examples 392702] [--repeats 3]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _features(n, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(40), 0.5, n).astype(int), 8, 128)
    out = []
    for i, length in enumerate(lengths.tolist()):
        ids = rng.integers(1000, 30000, length).tolist()
        first = length // 2
        out.append({"input_ids": ids, "token_type_ids": [0] * first + [1] * (length - first), "label": i % 3})
    return out


def worker(mode, cache_dir, n):
    import training
    key = {"task": "bench-features", "examples": n}
    if mode == "write":
        training.cached_features(cache_dir, key, lambda: _features(n))
        return {}
    before_rss, before_peak = _rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    features = training.cached_features(cache_dir, key, lambda: sys.exit("the cache was not read"))
    read = time.perf_counter() - t
    held = _rss_mb() - before_rss
    stream = training.EpochStream(features, batch_size=32, seed=0)
    t = time.perf_counter()
    for _ in range(stream.steps_per_epoch):
        stream.next_step()
    epoch = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before_peak
    return {"read_s": read, "epoch_s": epoch, "held_mb": held, "peak_mb": peak, "steps": stream.steps_per_epoch}


def run(tree, mode, cache_dir, n):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [tree] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", mode, cache_dir, str(n)],
                          env=env, capture_output=True, text=True, cwd=tree)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="another tree (an older commit's worktree) to compare with")
    p.add_argument("--examples", type=int, default=392702, help="training pairs (default: MNLI's)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    trees = {"before": os.path.abspath(a.before), "now": ROOT}
    results = {label: [] for label in trees}
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        for label, tree in trees.items():
            run(tree, "write", os.path.join(tmp, label), a.examples)
        for _ in range(a.repeats):
            for label, tree in trees.items():
                results[label].append(run(tree, "read", os.path.join(tmp, label), a.examples))
    print(f"{a.examples} GLUE-like pairs, {results['now'][0]['steps']} batches of 32, {a.repeats} runs each, "
          f"alternating (load average now {os.getloadavg()[0]:.1f})")
    print(f"{'median':<34} {'before':>9} {'now':>9} {'now/before':>11}")
    for key, label in (("read_s", "read the cache, s"), ("epoch_s", "collate one epoch, s"),
                       ("held_mb", "memory the features hold, MB"), ("peak_mb", "peak resident set, MB")):
        before = statistics.median(r[key] for r in results["before"])
        now = statistics.median(r[key] for r in results["now"])
        print(f"{label:<34} {before:>9.2f} {now:>9.2f} {now / before:>10.2f}x")


if __name__ == "__main__":
    main()
