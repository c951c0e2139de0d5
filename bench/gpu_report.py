"""The frame of bench/gpu_check.py: the table, its files under $OUT, per-check time budgets, child processes.

A borrowed GPU machine is killed at its time limit and only files under $OUT come back, so the
table (gpu_check_table.txt) and a JSON of every row (gpu_check.json) are rewritten after every row:
a kill keeps what finished. A check that raises or runs over its budget becomes a FAIL row, and
the next check still runs.
"""
import contextlib
import os
import signal
import subprocess
import time
import traceback

from file_utils import atomic_write_json, atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TABLE_NAME, JSON_NAME = "gpu_check_table.txt", "gpu_check.json"


class OverBudget(Exception):
    """A check ran past its time budget."""


class Table:
    def __init__(self, out_dir=None, header=""):
        self.rows, self.checks = [], []
        self.out_dir, self.header = out_dir, header
        self.started = time.time()
        self.finished = False

    def add(self, section, name, status, value="", detail=""):
        self.rows.append((section, name, status, str(value), str(detail)))
        print(f"  [{status}] {section} | {name} | {value}" + (f" | {detail}" if detail else ""), flush=True)
        self.save()

    @property
    def failed(self):
        return [r for r in self.rows if r[2] == "FAIL"]

    def text(self):
        headers = ("check", "what", "status", "result", "detail")
        widths = [max(len(headers[i]), *(len(r[i]) for r in self.rows)) for i in range(4)] if self.rows else [5] * 4
        line = " | ".join(h.ljust(w) for h, w in zip(headers[:4], widths)) + " | " + headers[4]
        body = [" | ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + " | " + r[4] for r in self.rows]
        state = "finished" if self.finished else "INCOMPLETE (still running, or killed)"
        return "\n".join([self.header, f"state: {state}", "", line, "-" * len(line), *body]) + "\n"

    def print(self):
        print("\n" + self.text())

    def save(self):
        """Rewrite the table and the JSON under out_dir (atomically: a kill leaves the last complete copy)."""
        if not self.out_dir:
            return
        atomic_write_text(os.path.join(self.out_dir, TABLE_NAME), self.text())
        atomic_write_json(os.path.join(self.out_dir, JSON_NAME), {
            "header": self.header, "finished": self.finished, "elapsed_s": round(time.time() - self.started, 1),
            "checks": self.checks,
            "rows": [dict(zip(("check", "what", "status", "result", "detail"), r)) for r in self.rows]})


@contextlib.contextmanager
def time_budget(seconds):
    """Raise OverBudget in the main thread after `seconds` (SIGALRM; POSIX only)."""
    def alarm(signum, frame):
        raise OverBudget(f"over its time budget of {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_check(table, section, fn, args, budget_s, deadline):
    """Run fn(table, *args) within min(budget_s, time left before `deadline`); an exception or the
    budget running out becomes a FAIL row; the check's outcome goes into the JSON's "checks"."""
    left = deadline - time.monotonic()
    entry = {"check": section, "function": fn.__name__, "budget_s": budget_s}
    if left < 3:
        entry.update(status="not run", error="the total time budget is spent")
        table.checks.append(entry)
        table.add(section, fn.__name__, "FAIL", "not run: the total time budget is spent",
                  "run it alone with --only")
        return
    start = time.monotonic()
    n_rows = len(table.rows)
    try:
        with time_budget(min(budget_s, left)):
            fn(table, *args)
        entry["status"] = "done"
    except Exception as exc:  # noqa: BLE001 - every failure must reach the table
        traceback.print_exc()
        message = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:150]}"
        entry.update(status="raised", error=message)
        table.add(section, fn.__name__, "FAIL", message, f"after {time.monotonic() - start:.0f} s; "
                  f"{len(table.rows) - n_rows} rows of it before")
    entry["seconds"] = round(time.monotonic() - start, 1)
    table.checks.append(entry)
    table.save()


def run_proc(cmd, timeout, **kwargs):
    """subprocess.run(capture_output, text) in its own process group, killed with all its children on a
    timeout or on any exception here (such as OverBudget), so nothing keeps using the GPU afterwards."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
