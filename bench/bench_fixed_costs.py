"""Fixed costs of run_multi_task.py: time to the first training step (imports, model load, features;
cold feature cache vs warm) and evaluation time as a share of an epoch.

Each run is a fresh process running run_multi_task.main on the bundled sample data with the bundled
MiniLM-L6 + PALs (the demo: 9 GLUE tasks' data, dev capped at 200 examples per task), timed by
wrapping the runner's steps (nothing in the runner changes):

- cold: an empty --cache_dir, stopped after 2 steps (--stop_after_steps);
- warm: the same cache, one full epoch (--num_train_epochs 1: 20 steps per task) and its evaluation.

"first step" is the time from the process start to the end of the first optimizer step. The epoch
share compares the evaluation of all dev sets (multitask.evaluate_tasks) with the training steps of
that epoch.

    python bench/bench_fixed_costs.py [--threads 0] [--steps_per_epoch 160]
    python bench/bench_fixed_costs.py --before /path/to/older/tree [--repeats 5]

--before compares the time to the first step (cold cache, 2 steps) of this tree with another tree's
(e.g. a `git worktree` of an older commit), in one run: the two alternate, a fresh process each, and
the medians are compared, so a busy machine slows both alike. The other tree's own runner is timed by
this file's worker.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(argv):
    """One run_multi_task.main in this process, its phases timed; prints a JSON line."""
    import run_multi_task
    imported = time.perf_counter()
    import multitask as mt
    import training
    from tasks import conll, glue, squad, swag
    marks = {"imports": imported - START}
    spans = {"features": 0.0, "model": 0.0, "evaluate": 0.0, "steps": 0.0}
    counts = {"steps": 0}

    def timed(owner, name, span):
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spans[span] += time.perf_counter() - t
        setattr(owner, name, wrapper)

    for family in (glue.Glue, squad.Squad, conll.Conll, swag.Swag):
        timed(family, "prepare", "features")
    timed(training, "load_model", "model")
    # Where EpochEnd looks it up (multitask/evaluation.py; a tree older than the package: multitask.py).
    timed(getattr(mt, "evaluation", mt), "evaluate_tasks", "evaluate")
    step = training.Trainer.training_step

    def training_step(self, micro):
        t = time.perf_counter()
        try:
            return step(self, micro)
        finally:
            spans["steps"] += time.perf_counter() - t
            counts["steps"] += 1
            if counts["steps"] == 1:
                marks["first_step"] = time.perf_counter() - START
    training.Trainer.training_step = training_step
    run_multi_task.main(argv)
    marks["total"] = time.perf_counter() - START
    print(json.dumps({"marks": marks, "spans": spans, "steps": counts["steps"]}))


def run(argv, tree=ROOT):
    """The worker on `tree` (its runner and modules first on the path) -> its JSON line."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(
        [tree] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *argv], env=env,
                          capture_output=True, text=True, cwd=tree)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    if sys.argv[1:2] == ["--worker"]:  # before parsing: the worker's argv holds --threads/--steps_per_epoch too
        return worker(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="--threads of the runs (0: the engine's auto)")
    p.add_argument("--steps_per_epoch", type=int, default=None, help="default: the demo's 20 per task")
    p.add_argument("--before", default=None, help="another tree (an older commit's worktree) to compare with")
    p.add_argument("--repeats", type=int, default=5, help="--before: cold runs of each tree, alternating")
    a = p.parse_args()
    if a.before:
        return compare(a)
    with tempfile.TemporaryDirectory(prefix="fixed-costs-") as tmp:
        common = ["--tasks", "all", "--num_train_epochs", "1", "--threads", str(a.threads),
                  "--cache_dir", os.path.join(tmp, "cache")]
        if a.steps_per_epoch:
            common += ["--steps_per_epoch", str(a.steps_per_epoch)]
        load = os.getloadavg()[0]
        cold = run(common + ["--output_dir", os.path.join(tmp, "cold"), "--stop_after_steps", "2"])
        warm = run(common + ["--output_dir", os.path.join(tmp, "warm")])
    print(f"run_multi_task.py demo data, MiniLM-L6 + PALs, 9 dev sets (load average before: {load:.1f})")
    print(f"{'phase':<38} {'cold cache':>11} {'warm cache':>11}")
    rows = [("imports (torch, runner)", "marks", "imports"), ("features (read + tokenize, or cache)", "spans",
                                                                "features"),
            ("model load (MiniLM + PALs, 9 heads)", "spans", "model"), ("process start -> end of first step", "marks",
                                                                       "first_step")]
    for label, kind, key in rows:
        print(f"{label:<38} {cold[kind][key]:>10.2f}s {warm[kind][key]:>10.2f}s")
    steps, evaluate = warm["spans"]["steps"], warm["spans"]["evaluate"]
    print(f"\nwarm run, one epoch: {warm['steps']} training steps {steps:.1f} s ({steps / warm['steps']:.2f} s/step), "
          f"evaluation of the 9 dev sets {evaluate:.1f} s = {100 * evaluate / (steps + evaluate):.1f}% of "
          f"training + evaluation; whole process {warm['marks']['total']:.1f} s")


def compare(a):
    """--before: median time to the end of the first step (and of the imports), this tree vs the other."""
    import statistics
    times = {"before": [], "now": []}
    with tempfile.TemporaryDirectory(prefix="fixed-costs-") as tmp:
        for i in range(a.repeats):
            for label, tree in (("before", os.path.abspath(a.before)), ("now", ROOT)):
                out = os.path.join(tmp, f"{label}{i}")
                times[label].append(run(["--tasks", "all", "--num_train_epochs", "1", "--threads", str(a.threads),
                                         "--cache_dir", out + "-cache", "--output_dir", out,
                                         "--stop_after_steps", "2"], tree)["marks"])
    print(f"cold cache, {a.repeats} runs each, alternating (load average now {os.getloadavg()[0]:.1f})")
    print(f"{'median, s':<34} {'before':>8} {'now':>8} {'now/before':>11}")
    for key, label in (("imports", "imports (torch, runner)"), ("first_step", "process start -> first step end")):
        before = statistics.median(m[key] for m in times["before"])
        now = statistics.median(m[key] for m in times["now"])
        print(f"{label:<34} {before:>8.2f} {now:>8.2f} {now / before:>10.2f}x")


if __name__ == "__main__":
    main()
