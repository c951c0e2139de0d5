"""Wall and CPU time of the bundled demo (`run_multi_task.py --tasks all --sample anneal`), on an idle
machine and beside one competing CPU-bound process, for this checkout and for an older one
(`--before DIR`, e.g. a `git worktree` of the commit before the thread settings), so that the
effect of the engine's thread count and passive OpenMP waiting is measured on the real job.

Each run is a fresh process (`--num_train_epochs` 1 by default: one third of the demo) with its
own output folder; CPU time is the run's user + system time (os.wait4), all threads. Order:
idle before, idle after, busy before, busy after (the competitor, `python -c "while True: pass"`,
runs only in the busy phase). The load average before each run is printed.

    git worktree add /tmp/before <commit>
    python bench/bench_demo_cpu.py --before /tmp/before [--epochs 1] [--phases idle] [--after_first]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo(checkout, epochs, out):
    cmd = [sys.executable, "run_multi_task.py", "--tasks", "all", "--sample", "anneal",
           "--num_train_epochs", str(epochs), "--output_dir", out, "--no_plots"]
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)  # each checkout decides for itself
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: exit {proc.returncode}\n{err[-2000:]}")
    threads = next((ln.split("torch threads", 1)[1].strip() for ln in err.splitlines() if "torch threads" in ln),
                   "(not logged)")
    return wall, usage.ru_utime + usage.ru_stime, threads


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="an older checkout of this repository")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--phases", default="idle,busy", help="which phases, in this order")
    p.add_argument("--after_first", action="store_true", help="run this checkout first in each phase")
    args = p.parse_args()
    variants = {"before": os.path.abspath(args.before), "after": ROOT}
    if args.after_first:
        variants = dict(reversed(variants.items()))
    phases = args.phases.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for phase in phases:
            competitor = None
            if phase == "busy":
                competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(5)
            try:
                for name, checkout in variants.items():
                    load = os.getloadavg()[0]
                    wall, cpu, threads = run_demo(checkout, args.epochs, os.path.join(tmp, f"{phase}-{name}"))
                    rows.append((phase, name, load, wall, cpu, threads))
                    print(f"{phase:5} {name:6} load {load:4.1f}  wall {wall:7.1f} s  CPU {cpu:7.1f} s  "
                          f"threads {threads}", flush=True)
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
    print(f"\ndemo, --num_train_epochs {args.epochs}, {os.cpu_count()} CPUs")
    print("phase | variant | load before | wall s | CPU s | CPU/wall")
    for phase, name, load, wall, cpu, _ in rows:
        print(f"{phase} | {name} | {load:.1f} | {wall:.1f} | {cpu:.1f} | {cpu / wall:.2f}")
    for phase in phases:
        b, a = sorted((r for r in rows if r[0] == phase), key=lambda r: r[1] != "before")
        print(f"{phase}: after / before: wall {a[3] / b[3]:.2f}x, CPU {a[4] / b[4]:.2f}x")


if __name__ == "__main__":
    main()
