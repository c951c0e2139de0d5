"""scripts/collect_results.py builds docs/reproducing.md's extended table (the paper's rows plus the
methods' rows, each in two protocols) from run folders in the layout run_multi_task.py writes
(results.json + run_config.json + best/): one row per run, the protocol in its label, the dev
metrics of the selected epoch and the multiplier from the run's parameter counts."""
import json

from tree_scripts import load_script

collect_results = load_script("scripts/collect_results.py")
ONE_BERT = 109_482_240  # bert-base with pooler (docs/reproducing.md)


def _run(folder, config, score, total, **flags):
    """A finished run_multi_task.py folder: two evaluated epochs, the second selected."""
    folder.mkdir(parents=True)
    (folder / "best").mkdir()
    glue = {"cola": {"mcc": score}, "sst-2": {"acc": score}, "mrpc": {"f1": score, "acc": score},
            "sts-b": {"pearson": score, "spearmanr": score}, "qqp": {"f1": score, "acc": score},
            "mnli": {"acc": score}, "mnli-mm": {"acc": score}, "qnli": {"acc": score}, "rte": {"acc": score}}
    history = [{"epoch": 1, "results": {t: {k: 0.1 for k in m} for t, m in glue.items()}},
               {"epoch": 2, "results": glue}]
    (folder / "results.json").write_text(json.dumps({
        "kind": "multi_task", "label": f"{config} (anneal)", "best_epoch": 2, "history": history,
        "parameters": {"total": total, "shared": ONE_BERT}}))
    (folder / "run_config.json").write_text(json.dumps({
        "argv": [], "command": "", "flags": dict({"config": config, "freeze": False, "reference_protocol": False},
                                                 **flags)}))


def _rows(table):
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| model") and not cells[0].startswith("*"):
            rows[cells[0]] = cells
    return rows


def test_the_extended_table_from_run_folders(tmp_path):
    runs = tmp_path / "runs"
    _run(runs / "pals", "pals", 0.80, 124_053_232)
    _run(runs / "2019" / "pals", "pals", 0.78, 124_053_232, reference_protocol=True)
    _run(runs / "lora", "lora", 0.79, 111_853_840)
    _run(runs / "frozen" / "lora", "lora", 0.75, 111_853_840, freeze=True)
    _run(runs / "frozen" / "prefix_budget", "prefix_budget", 0.74, 124_050_424, freeze=True)
    out = tmp_path / "table.md"
    assert collect_results.main([str(runs / "pals"), str(runs / "2019"), str(runs / "lora"), str(runs / "frozen"),
                                 "--output", str(out), "--no_reference"]) == 0
    rows = _rows(out.read_text())
    assert sorted(rows) == ["lora (anneal)", "lora (anneal) [frozen encoder]", "pals (anneal)",
                            "pals (anneal) [2019 protocol]", "prefix_budget (anneal) [frozen encoder]"]
    # columns: CoLA .. WNLI (13), GLUE, Avg9, params, x BERT; the selected epoch 2's metrics
    assert rows["lora (anneal) [frozen encoder]"][1:4] == ["75.0", "75.0", "75.0"]
    assert rows["lora (anneal)"][14:16] == ["79.0", "79.0"] and rows["lora (anneal)"][13] == "-"  # no WNLI
    assert rows["pals (anneal) [2019 protocol]"][15] == "78.0"
    # multipliers: 124,053,232 / 109,482,240 = 1.133; 111,853,840 / ... = 1.022; 124,050,424 / ... = 1.133
    assert [rows[k][-1] for k in ("pals (anneal)", "lora (anneal)", "prefix_budget (anneal) [frozen encoder]")] == \
        ["1.13x", "1.02x", "1.13x"]
    assert rows["lora (anneal)"][-2] == "111.9M"
