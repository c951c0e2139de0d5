"""A small comparison of gradient-combination methods: main dev scores of `run_multi_task.py` for each
method x seed, printed as a markdown table (mean +- sample std over the seeds, per task and their mean).

Runs on the bundled synthetic sample data (the demo profile: MiniLM-L6 + PALs, 20 steps per task and
epoch) with `--combine_strategy all`, so that every step trains every task and the methods see the same
several-task steps (with one task per step a projection has nothing to combine). Each run is a fresh
`run_multi_task.py` process with its own output folder under --work_dir; the dev scores are those of
results.json's last epoch.

Synthetic sample tasks cannot rank methods: they are made to be learnt by any method, and 3 seeds x 1
short epoch measure noise. The table shows that the methods run end to end and what a comparison looks
like; on real data give --data_dir/--bert_model and the paper's length
(docs/benchmarks.md#method-comparison-on-the-sample-data).

    python bench/compare_methods.py [--methods none,pcgrad,jd-upgrad] [--seeds 1,2,3] [--tasks rte,mrpc,sts-b]
        [--epochs 1] [--work_dir /tmp/compare_methods] [-- extra run_multi_task.py flags]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(method, seed, args, extra):
    out = os.path.join(args.work_dir, f"{method}-seed{seed}")
    results = os.path.join(out, "results.json")
    if not os.path.isfile(results):  # a finished run is reused: the script can be restarted
        cmd = [sys.executable, os.path.join(ROOT, "run_multi_task.py"), "--tasks", args.tasks,
               "--projection", method, "--combine_strategy", "all", "--num_train_epochs", str(args.epochs),
               "--seed", str(seed), "--output_dir", out, "--no_plots", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        print(f"{method} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    with open(results, encoding="utf-8") as f:
        data = json.load(f)
    return data["history"][-1]["main"], data.get("task_weights")


def _cell(values):
    values = [100 * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {std:.2f}"


def table(scores, tasks):
    """scores: {method: [ {task: main score} per seed ]} -> markdown lines."""
    lines = ["| method | " + " | ".join(tasks) + " | mean of tasks |", "|---" * (len(tasks) + 2) + "|"]
    for method, runs in scores.items():
        cells = [_cell([r[t] for r in runs]) for t in tasks]
        cells.append(_cell([statistics.mean(r[t] for t in tasks) for r in runs]))
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="none,pcgrad,jd-upgrad", help="--projection values ('none': the plain sum)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--tasks", default="rte,mrpc,sts-b")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--work_dir", default="/tmp/compare_methods")
    args = p.parse_args(argv)
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    scores = {}
    for method in methods:
        for seed in seeds:
            main_scores, _ = run_one(method, seed, args, extra)
            scores.setdefault(method, []).append(main_scores)
    tasks = list(scores[methods[0]][0])
    print(f"main dev score x100, mean +- std over seeds {args.seeds}; tasks {args.tasks}, {args.epochs} epoch(s), "
          "--combine_strategy all")
    print("\n".join(table(scores, tasks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
