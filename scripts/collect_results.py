"""Collect finished run folders into one GLUE results table (the paper's Table 1 shape).

    python scripts/collect_results.py runs/pals runs/shared runs/cola runs/mrpc ... [--output table.md]

A folder is either a run_multi_task.py output (results.json with "kind": "multi_task"), a
run_classifier.py output (one GLUE task: run_config.json + eval_results.txt / results.json), or a
parent folder whose sub-folders are runs. Multi-task runs give one row each (dev metrics of the
selected epoch; its label says "[frozen encoder]" / "[2019 protocol]" when its run_config.json has
--freeze / --reference_protocol); all single-task runs together give ONE row "separate fine-tuned
BERTs" (one model per task, parameters summed), as in the paper's first row.

Columns: per-task dev metrics (CoLA MCC, SST-2 acc, MRPC F1/acc, STS-B Pearson/Spearman, QQP
F1/acc, MNLI-m/mm acc, QNLI, RTE, WNLI acc), "GLUE" = the leaderboard rule (tasks/glue.py
glue_score: each task's main score, MNLI once), "Avg9" = the BERT/PALs-paper average over the 9
columns CoLA, SST-2, MRPC F1, STS-B Spearman, QQP F1, MNLI-m, MNLI-mm, QNLI, RTE (BERT-base test:
79.6), parameters and the multiplier vs one BERT. Published BERT-base numbers are printed beside
them (marked: they are GLUE TEST numbers; ours are dev).
"""
import argparse
import json
import os

from safetensors import safe_open

from file_utils import ConfigError, DataError, atomic_write_json, atomic_write_text, run_cli
from tasks import glue

# (column title, task, metric key); the 9 "paper" columns are marked True.
COLUMNS = [
    ("CoLA", "cola", "mcc", True),
    ("SST-2", "sst-2", "acc", True),
    ("MRPC F1", "mrpc", "f1", True),
    ("MRPC acc", "mrpc", "acc", False),
    ("STS-B P", "sts-b", "pearson", False),
    ("STS-B S", "sts-b", "spearmanr", True),
    ("QQP F1", "qqp", "f1", True),
    ("QQP acc", "qqp", "acc", False),
    ("MNLI-m", "mnli", "acc", True),
    ("MNLI-mm", "mnli-mm", "acc", True),
    ("QNLI", "qnli", "acc", True),
    ("RTE", "rte", "acc", True),
    ("WNLI", "wnli", "acc", False),
]
PAPER_COLUMNS = [c for c in COLUMNS if c[3]]

# Published reference rows (values in %). Sources: reference/peers.md 7.2, reference/bert_n_pals.md 4.3.
REFERENCE_ROWS = [
    {"label": "BERT-base, separate models (Devlin et al. 2018) [GLUE TEST]",
     "metrics": {"cola": {"mcc": 52.1}, "sst-2": {"acc": 93.5}, "mrpc": {"f1": 88.9}, "sts-b": {"spearmanr": 85.8},
                 "qqp": {"f1": 71.2}, "mnli": {"acc": 84.6}, "mnli-mm": {"acc": 83.4}, "qnli": {"acc": 90.5},
                 "rte": {"acc": 66.4}, "wnli": {"acc": 65.1}},
     "multiplier": 8.0,
     "note": "test set, not dev; CoLA 52.1 and MNLI 84.6/83.4 confirmed second-hand (CLaF), the rest from the "
             "BERT paper as quoted, not re-verified; QNLI was v1 then (v2 now)"},
    {"label": "bert-base-cased, HF run_glue README [dev]",
     "metrics": {"cola": {"mcc": 56.53}, "sst-2": {"acc": 92.32}, "mrpc": {"f1": 88.85, "acc": 84.07},
                 "sts-b": {"pearson": 88.64, "spearmanr": 88.48}, "qqp": {"acc": 90.71, "f1": 87.49},
                 "mnli": {"acc": 83.91}, "mnli-mm": {"acc": 84.10}, "qnli": {"acc": 90.66}, "rte": {"acc": 65.70},
                 "wnli": {"acc": 56.34}},
     "multiplier": 9.0,
     "note": "dev set, cased model, 3 epochs (5 for MRPC/WNLI), one model per task"},
]
PAPER_AVERAGES_NOTE = ("PALs paper Table 1 averages as quoted second-hand (UNVERIFIED against the PDF; test or dev "
                       "not verified): BERT-base (8x) 79.6, Shared 79.9, Top Proj. Attn. 79.6, PALs (204) 80.4; "
                       "Table 2: PALs + annealed sampling 81.7. Expected multipliers (bert_n_pals.md 4.2): "
                       "shared 1.00x, "
                       "top proj. attn. 1.10x, PALs 204 1.13x, low-rank 100 1.13x, Houlsby 50 1.14x, "
                       "Houlsby+PALs 1.15x, top BERT layer 1.52x.")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"not valid JSON: {exc.msg}") from None


def _read_key_values(path):
    """eval_results.txt: `key = value` lines -> dict (numbers parsed when possible)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def _count_saved_parameters(directory):
    """(all, without heads) parameter counts of a saved model.safetensors, read from its header."""
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        return None, None
    total = encoder = 0
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            if key.endswith("position_ids"):
                continue  # a buffer, not a parameter
            n = 1
            for dim in f.get_slice(key).get_shape():
                n *= dim
            total += n
            if not key.startswith("heads."):
                encoder += n
    return total, encoder


def _metric_dict(raw, task):
    """Pick a task's metrics from a flat dict (keys 'mcc', 'eval_mcc', 'cola.mcc', ...)."""
    names = ("mcc", "acc", "f1", "acc_and_f1", "pearson", "spearmanr", "corr")
    out = {}
    for name in names:
        for key in (f"{task}.{name}", f"eval_{name}", name):
            if key in raw and isinstance(raw[key], (int, float)):
                out[name] = float(raw[key])
                break
    return out


def read_run(directory):
    """One run folder -> dict(kind, label, results {task: metrics (0..1)}, parameters, one_bert).

    results.json is the one results format ({eval set: metrics}, MNLI as `mnli` and `mnli-mm`),
    written by run_multi_task.py (history per epoch) and run_classifier.py (kind single_task). A
    run_classifier folder from before results.json existed is read from run_config.json +
    eval_results.txt (the 2019 keys, MNLI-mm with an `mm_` prefix)."""
    results_path = os.path.join(directory, "results.json")
    data = _read_json(results_path) if os.path.exists(results_path) else None
    if data is not None and data.get("kind") == "multi_task":
        best = next((h for h in data.get("history", []) if h["epoch"] == data.get("best_epoch")), None)
        if best is None:
            raise DataError(results_path, None, "no evaluated epoch (training did not finish an epoch?)")
        params = data.get("parameters") or {}
        label = (data.get("label") or os.path.basename(os.path.normpath(directory))) + _protocol(directory)
        return {"kind": "multi_task", "label": label,
                "results": _glue_only(best["results"]), "parameters": params.get("total"),
                "one_bert": params.get("shared"), "best_epoch": data.get("best_epoch"), "path": directory}
    if data is not None and data.get("kind") == "single_task":
        results = _glue_only({name: _metric_dict(metrics, name) for name, metrics in data["results"].items()})
        total, encoder = _count_saved_parameters(directory)
        return {"kind": "single_task", "label": data.get("task"), "results": results, "parameters": total,
                "one_bert": encoder, "path": directory}
    config_path = os.path.join(directory, "run_config.json")
    eval_path = os.path.join(directory, "eval_results.txt")
    if not (os.path.exists(config_path) and os.path.exists(eval_path)):
        return None
    config = _read_json(config_path)
    flags = config.get("flags") or config
    task = flags.get("task_name")
    if not task:
        return None
    task = glue.get_task(task).name
    raw = _read_key_values(eval_path)
    results = {task: _metric_dict(raw, task)}
    if task == "mnli":
        mm = {k[len("mm_"):]: v for k, v in raw.items() if k.startswith("mm_")}
        if mm:
            results["mnli-mm"] = _metric_dict(mm, "mnli-mm")
    total, encoder = _count_saved_parameters(directory)
    return {"kind": "single_task", "label": task, "results": results, "parameters": total, "one_bert": encoder,
            "path": directory}


def _protocol(directory):
    """' [frozen encoder, 2019 protocol]' from the run's run_config.json flags (--freeze,
    --reference_protocol), which its results label does not name: two protocols of one config are two
    rows that must not read alike."""
    path = os.path.join(directory, "run_config.json")
    flags = (_read_json(path).get("flags") or {}) if os.path.isfile(path) else {}
    parts = [name for flag, name in (("freeze", "frozen encoder"), ("reference_protocol", "2019 protocol"))
             if flags.get(flag)]
    return f" [{', '.join(parts)}]" if parts else ""


def _glue_only(results):
    """The GLUE columns of a run's results (a mixed multi-task run also holds SQuAD, NER, ...)."""
    out = {}
    for name, metrics in results.items():
        try:
            out[glue.get_task(name).name] = metrics
        except ConfigError:
            continue
    return out


def find_runs(paths):
    runs = []
    for path in paths:
        if not os.path.isdir(path):
            raise ConfigError(f"not a folder: {path}")
        run = read_run(path)
        if run is not None:
            runs.append(run)
            continue
        children = [os.path.join(path, c) for c in sorted(os.listdir(path))]
        found = [r for r in (read_run(c) for c in children if os.path.isdir(c)) if r is not None]
        if not found:
            raise ConfigError(f"{path}: no finished run_multi_task/run_classifier output here "
                              "(results.json or run_config.json + eval_results.txt)")
        runs.extend(found)
    return runs


def build_rows(runs):
    """Multi-task runs -> one row each; all single-task runs -> one combined row."""
    rows = []
    singles = [r for r in runs if r["kind"] == "single_task"]
    for run in runs:
        if run["kind"] != "multi_task":
            continue
        rows.append(_row(run["label"], run["results"], run["parameters"], run["one_bert"], glue,
                         source=run["path"], epoch=run.get("best_epoch")))
    if singles:
        merged, total, one = {}, 0, None
        for run in singles:
            merged.update(run["results"])
            total = None if total is None or run["parameters"] is None else total + run["parameters"]
            one = one or run["one_bert"]
        label = f"separate fine-tuned BERTs ({len(singles)} models)"
        rows.append(_row(label, merged, total, one, glue, source=", ".join(r["path"] for r in singles)))
    return rows


def _row(label, results, parameters, one_bert, glue, source="", epoch=None):
    pct = {task: {k: 100 * float(v) for k, v in m.items()} for task, m in results.items()}
    try:
        glue_avg = 100 * glue.glue_score({t: m for t, m in results.items() if m})
    except (KeyError, ValueError):
        glue_avg = None
    multiplier = parameters / one_bert if parameters and one_bert else None
    return {"label": label, "metrics": pct, "glue": glue_avg, "avg9": paper_average(pct), "parameters": parameters,
            "multiplier": multiplier, "source": source, "epoch": epoch}


def paper_average(metrics):
    """Mean over the 9 columns of the BERT / PALs papers' GLUE tables (None if any is missing)."""
    values = [metrics.get(task, {}).get(key) for _, task, key, _ in PAPER_COLUMNS]
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)


def format_table(rows, references=True):
    def cell(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    head = ["model"] + [c[0] for c in COLUMNS] + ["GLUE", "Avg9", "params", "x BERT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = [cell(row["metrics"].get(task, {}).get(key)) for _, task, key, _ in COLUMNS]
        n = row["parameters"]
        params = "-" if n is None else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,d}"
        lines.append("| " + " | ".join([row["label"]] + values + [cell(row["glue"]), cell(row["avg9"]), params,
                                                                    cell(row["multiplier"], "{:.2f}x")]) + " |")
    notes = []
    if references:
        for ref in REFERENCE_ROWS:
            values = [cell(ref["metrics"].get(task, {}).get(key)) for _, task, key, _ in COLUMNS]
            lines.append("| " + " | ".join([f"*{ref['label']}*"] + values + ["-", cell(paper_average(ref["metrics"])),
                                                                            "-", f"{ref['multiplier']:.0f}x"]) + " |")
            notes.append(f"- {ref['label']}: {ref['note']}")
        notes.append("- " + PAPER_AVERAGES_NOTE)
    notes.append("- Our rows: dev-set metrics of the selected epoch (multi-task: best GLUE average); "
                 "GLUE = leaderboard rule (MRPC/QQP (acc+F1)/2, STS-B (P+S)/2, MNLI once), "
                 "Avg9 = mean of the 9 paper columns.")
    return "\n".join(lines + [""] + notes) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run output folders (or folders holding runs)")
    parser.add_argument("--output", help="also write the markdown table here")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--no_reference", action="store_true", help="leave out the published reference rows")
    args = parser.parse_args(argv)
    rows = build_rows(find_runs(args.runs))
    table = format_table(rows, references=not args.no_reference)
    print(table, end="")
    if args.output:
        atomic_write_text(args.output, table)
    if args.json:
        atomic_write_json(args.json, {"rows": rows, "references": REFERENCE_ROWS})
    return 0


if __name__ == "__main__":
    run_cli(main)
