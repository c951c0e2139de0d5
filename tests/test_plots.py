"""Pictures of a multi-task run (plots.py, scripts/plot_run.py, the end of run_multi_task.py).

A tiny 3-epoch run draws its PNGs at the end; each picture's drawn series (read back from the
figure) equal results.json, and results.json's new per-epoch records are checked against
independent quantities: the epoch training losses average to the run's mean loss, the realized
shares are the epoch's step counts over its steps, the targets are the hand-computed sampling
probabilities. scripts/plot_run.py redraws from the folder alone; a plotting failure costs only a
warning; a folder without results is a one-line error.
"""
import json
import os

import pytest

import plots
import run_multi_task
from file_utils import run_cli
from test_training_helpers import single_thread
from tiny_multitask import run
from tree_scripts import load_script

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PICTURES = ("dev_scores", "average", "sampling", "train_loss")


@pytest.fixture(scope="module")
def finished_run(tiny_mt, tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "run"
    # sts-b gets batch 2: realized shares differ from targets, and its 12 examples make 6 batches per pass
    assert run(tiny_mt, out, "--tasks", "rte,mrpc,sts-b", "--num_train_epochs", 3, "--steps_per_epoch", 6,
               "--sample", "anneal", "--batch_size_sts_b", 2) == 0
    return out, json.loads((out / "results.json").read_text())


def test_run_writes_valid_pngs(finished_run):
    out, _ = finished_run
    for name in PICTURES:
        data = (out / "plots" / f"{name}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name


def test_results_records_per_epoch_sampling_and_loss(finished_run):
    _, res = finished_run
    history = res["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for h in history:
        steps = h["sampling"]["steps"]
        assert sum(steps.values()) == 6
        for task in res["tasks"]:
            assert h["sampling"]["realized"][task] == pytest.approx(steps[task] / 6)
            # anneal over 3 epochs with equal sizes (12 each): uniform targets whatever alpha is
            assert h["sampling"]["target"][task] == pytest.approx(1 / 3)
        # each epoch's overall mean is the step-weighted mean of its per-task means
        weighted = sum(h["task_train_loss"][t] * steps[t] for t in res["tasks"] if steps[t])
        assert h["train_loss"] == pytest.approx(weighted / 6, rel=1e-9)
    assert sum(h["train_loss"] for h in history) / 3 == pytest.approx(res["loss"], rel=1e-9)  # 6 steps per epoch
    totals = [sum(h["sampling"]["steps"][t] for h in history) / 18 for t in res["tasks"]]
    assert totals == pytest.approx(res["realized_frequencies"])


def test_drawn_series_equal_results(finished_run, tmp_path):
    _, res = finished_run
    history = res["history"]
    epochs = [1.0, 2.0, 3.0]
    drawn = plots.plot_dev_scores(res, str(tmp_path / "dev.png"))
    assert set(drawn) == set(res["tasks"])
    for task in res["tasks"]:
        assert drawn[task] == (epochs, pytest.approx([100 * h["main"][task] for h in history]))
    drawn = plots.plot_average(res, str(tmp_path / "avg.png"))
    assert drawn["GLUE average"] == (epochs, pytest.approx([100 * h["glue_average"] for h in history]))
    best = res["best_epoch"]
    assert drawn["selected_epoch"] == best
    assert drawn[f"selected (epoch {best})"] == ([best], pytest.approx([100 * res["best_glue_average"]]))
    drawn = plots.plot_sampling(res, str(tmp_path / "sampling.png"))
    for task in res["tasks"]:
        assert drawn[f"{task} realized"] == (epochs, pytest.approx([h["sampling"]["realized"][task] for h in history]))
        assert drawn[f"{task} target"] == (epochs, pytest.approx([h["sampling"]["target"][task] for h in history]))
    drawn = plots.plot_train_loss(res, str(tmp_path / "loss.png"))
    assert drawn["all steps"] == (epochs, pytest.approx([h["train_loss"] for h in history]))
    for task in res["tasks"]:
        points = [(float(h["epoch"]), h["task_train_loss"][task]) for h in history
                  if h["task_train_loss"][task] is not None]
        assert drawn[task] == ([e for e, _ in points], pytest.approx([v for _, v in points]))
    for name in ("dev", "avg", "sampling", "loss"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC


def _plot_run_script():
    return load_script("scripts/plot_run.py")


def test_plot_run_script_redraws_from_the_folder(finished_run, tmp_path, capsys):
    out, _ = finished_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_bytes((out / "results.json").read_bytes())
    with pytest.raises(SystemExit) as exc:
        run_cli(_plot_run_script().main, [str(copy)])
    assert exc.value.code == 0
    printed = capsys.readouterr().out.splitlines()
    for name in PICTURES:
        assert (copy / "plots" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert str(copy / "plots" / f"{name}.png") in printed
    for folder, message in ((tmp_path / "missing", "no such folder"), (tmp_path, "no results.json")):
        with pytest.raises(SystemExit) as exc:
            run_cli(_plot_run_script().main, [str(folder)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and message in err[0]


def test_plot_failure_only_warns(tiny_mt, tmp_path, monkeypatch, caplog):
    def broken(run_dir, pairs=None):
        raise RuntimeError("no fonts today")
    monkeypatch.setattr(plots, "plot_run", broken)
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        assert run(tiny_mt, out, "--tasks", "rte,mrpc", "--num_train_epochs", 1, "--steps_per_epoch", 2) == 0
    assert (out / "best" / "model.safetensors").exists() and (out / "results.json").exists()
    assert any("could not draw the pictures (RuntimeError: no fonts today)" in r.message for r in caplog.records)


def test_evaluation_only_results_are_refused(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"history": [{"epoch": 0, "main": {}, "average": 0.5}]}))
    with pytest.raises(SystemExit) as exc:
        run_cli(_plot_run_script().main, [str(tmp_path)])
    assert exc.value.code == 2 and "no training epochs" in capsys.readouterr().err
    assert run_multi_task.draw_pictures(str(tmp_path)) == {}  # the runner's path: a warning, no exception


def test_task_weights_pictures_show_the_combiner_weights(tiny_mt, tmp_path):
    """--projection pcgrad with diagnostics: plots/task_weights.png's bars are results.json's task_weights;
    the cosine picture gets a third panel, titled with the method, whose lines are weights_E.csv's weights
    per diagnosis step; the step-weighted mean of those interval means is the run's mean (two records of
    the same weights agree); and PCGrad on two tasks only adds to a task's weight of 1 (c_j -= negative)."""
    import numpy as np

    import diagnostics
    out = tmp_path / "run"
    assert run(tiny_mt, out, "--tasks", "rte,sts-b", "--projection", "pcgrad", "--num_train_epochs", 2,
               "--steps_per_epoch", 3, "--diagnose_every", 2) == 0
    res = json.loads((out / "results.json").read_text())
    assert (out / "plots" / "task_weights.png").read_bytes()[:8] == PNG_MAGIC
    drawn = plots.plot_task_weights(res, str(tmp_path / "w.png"))
    assert drawn["bars"] == pytest.approx(res["task_weights"]) and "pcgrad" in drawn["title"]
    diag = diagnostics.read_csvs(str(out))
    weights = diag["weights"]
    assert weights["steps"] == [2, 4, 6] and weights["method"] == "pcgrad"
    drawn = plots.plot_task_cosines(diag, str(tmp_path / "c.png"))
    panel = drawn["task weights"]
    assert drawn["panels"] == 3 and panel["title"] == "task weights (pcgrad)" and panel["xlabel"] == "training step"
    for k, task in enumerate(weights["tasks"]):
        assert panel["lines"][task] == ([2.0, 4.0, 6.0], pytest.approx(weights["weight"][:, k].tolist()))
    # 2 steps before each diagnosis, every step trains both tasks
    assert np.all(weights["weight"] >= 1.0)
    np.testing.assert_allclose(weights["weight"].mean(axis=0), [res["task_weights"][t] for t in weights["tasks"]],
                               rtol=1e-12)
    assert plots.plot_task_cosines(dict(diag, weights=None), str(tmp_path / "plain.png"))["panels"] == 2
