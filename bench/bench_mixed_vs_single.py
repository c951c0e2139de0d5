"""Benchmark: a mixed PALs run (GLUE + SQuAD 2.0 + CoNLL + SWAG in one model) against each of its
tasks trained alone with the same number of steps on that task, the same model and the same seed.

1. The mixed demo: `run_multi_task.py --tasks sst-2,rte,squad2,conll,swag` on the bundled sample
   data (demo profile: MiniLM + PALs, 3 epochs, lr 1e-4, seed 42); its wall time is printed.
2. For each task T: `run_multi_task.py --tasks T` with --steps_per_epoch = the steps T received per
   epoch in the mixed run (its realized count / 3), everything else equal.
3. A table of every task's main dev score (accuracy, SQuAD F1, entity F1) after the last epoch and
   at each run's best epoch, and mixed minus single. The stated margin: the mixed run may be worse
   than the task alone by at most --margin points (default 5) after the last epoch.

    python bench/bench_mixed_vs_single.py [--out /tmp/mixed_vs_single] [--margin 5]
"""
import argparse
import json
import os
import shutil
import sys
import time

import run_multi_task

TASKS = ["sst-2", "rte", "squad2", "conll", "swag"]


def run(out, *flags):
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    assert run_multi_task.main(["--output_dir", out, *map(str, flags)]) == 0
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        return json.load(f), time.time() - start


def scores(results, task):
    """(main score after the last epoch, best main score over epochs), in points."""
    history = [entry["main"][task] for entry in results["history"]]
    return 100 * history[-1], 100 * max(history)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/mixed_vs_single")
    p.add_argument("--margin", type=float, default=5.0, help="allowed points below the task alone (last epoch)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    mixed, mixed_time = run(os.path.join(args.out, "mixed"), "--tasks", ",".join(TASKS), "--seed", args.seed)
    epochs = len(mixed["history"])
    counts = [round(share * mixed["steps"]) for share in mixed["realized_frequencies"]]
    print(f"mixed demo: {mixed['steps']} steps, {mixed_time:.0f} s wall", flush=True)
    rows = []
    for task, count in zip(mixed["tasks"], counts):
        per_epoch = max(1, round(count / epochs))
        single, single_time = run(os.path.join(args.out, task), "--tasks", task, "--seed", args.seed,
                                  "--steps_per_epoch", per_epoch)
        rows.append((task, count, per_epoch * epochs, *scores(mixed, task), *scores(single, task), single_time))
        print(f"{task}: alone {per_epoch * epochs} steps, {single_time:.0f} s", flush=True)
    print()
    print(f"{'task':<8} {'steps mixed':>11} {'steps alone':>11} {'mixed last':>10} {'alone last':>10} "
          f"{'diff':>6} {'mixed best':>10} {'alone best':>10} {'within':>6}")
    worst = 0.0
    for task, n_mixed, n_alone, m_last, m_best, s_last, s_best, _ in rows:
        diff = m_last - s_last
        worst = min(worst, diff)
        print(f"{task:<8} {n_mixed:>11d} {n_alone:>11d} {m_last:>10.1f} {s_last:>10.1f} {diff:>+6.1f} "
              f"{m_best:>10.1f} {s_best:>10.1f} {'yes' if diff >= -args.margin else 'NO':>6}")
    print(f"\nmixed run wall time {mixed_time:.0f} s; worst difference {worst:+.1f} points "
          f"(margin {args.margin:.0f}): {'within' if worst >= -args.margin else 'OUTSIDE'} the margin")
    return 0 if worst >= -args.margin else 1


if __name__ == "__main__":
    sys.exit(main())
