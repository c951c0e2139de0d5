"""run_swag.py end to end on tiny SWAG CSV files with the bundled MiniLM model."""
import csv
import json
import os

import pytest

import run_swag
from file_utils import run_cli
from fixtures_qa import swag_rows, write_swag, write_swag_dir
from tests.test_run_squad import read_kv, train_losses


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(run_swag.main, argv)
    return exc.value.code, capsys.readouterr().err


def test_train_eval_predict_with_pals(tmp_path, capsys):
    data = write_swag_dir(tmp_path / "swag")
    out = tmp_path / "out"
    pals = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "minilm_pals_config.json")
    code, err = run(["--bert_model", "minilm-l6", "--config", pals,
                     "--data_dir", str(data), "--do_train", "--do_eval", "--do_predict",
                     "--output_dir", str(out), "--max_seq_length", "40", "--train_batch_size", "4",
                     "--num_train_epochs", "8", "--learning_rate", "3e-4", "--warmup_proportion", "0",
                     "--logging_steps", "1", "--seed", "2"], capsys)
    assert code == 0, err
    losses = train_losses(out)
    assert len(losses) == 8                       # 4 examples, batch 4: one step per epoch
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    results = read_kv(out / "eval_results.txt")
    # val.csv = the first 3 training rows, which the model has now fit
    assert float(results["eval_accuracy"]) in (0.0, 1 / 3, 2 / 3, 1.0)
    assert float(results["eval_accuracy"]) >= 2 / 3
    assert results["eval_examples"] == "3" and float(results["eval_loss"]) > 0
    rows = list(csv.reader(open(out / "test_predictions.csv")))
    assert rows[0] == ["id", "video-id", "fold-ind", "label"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert all(r[3] in "0123" for r in rows[1:])
    saved = json.load(open(out / "config.json"))   # the PALs setting travels with the model
    assert saved["pals"] is True and saved["task_types"] == ["choice"]


def test_bad_label_is_one_line_exit_2(tmp_path, capsys):
    data = write_swag_dir(tmp_path / "swag")
    rows = swag_rows()
    rows[1]["label"] = "7"
    write_swag(data / "val.csv", rows)
    code, err = run(["--data_dir", str(data), "--do_eval", "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2
    assert err.strip() == f"error: {data / 'val.csv'}:3: label must be 0..3, got '7'"


def test_eval_on_test_file_without_labels_is_error(tmp_path, capsys):
    data = write_swag_dir(tmp_path / "swag")
    (data / "val.csv").write_bytes((data / "test.csv").read_bytes())
    code, err = run(["--data_dir", str(data), "--do_eval", "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "no 'label' column" in err


def test_eval_alone_works(tmp_path, capsys):
    # the reference crashed here (tr_loss undefined without --do_train)
    data = write_swag_dir(tmp_path / "swag")
    out = tmp_path / "o"
    code, err = run(["--data_dir", str(data), "--do_eval", "--output_dir", str(out), "--max_seq_length", "32",
                     "--cache_dir", "none"], capsys)
    assert code == 0, err
    results = read_kv(out / "eval_results.txt")
    assert set(results) == {"eval_accuracy", "eval_loss", "eval_examples"}
