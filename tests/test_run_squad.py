"""run_squad.py end to end on tiny official-format files with the bundled MiniLM model."""
import json
import os

import pytest

import run_squad
from file_utils import run_cli
from fixtures_qa import squad_v1_data, squad_v2_data, write_squad
from tasks import squad, squad_eval


def train_losses(output_dir):
    """The per-step train/loss scalars the engine wrote to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(output_dir, "runs"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def read_kv(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        if " = " in line:
            k, v = line.rstrip("\n").split(" = ", 1)
            out[k] = v
    return out


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(run_squad.main, argv)
    return exc.value.code, capsys.readouterr().err


def test_train_and_predict_v1(tmp_path, capsys):
    train = squad_v1_data()
    train[0]["paragraphs"][0]["qas"][3]["answers"][0]["text"] = "cast iron"   # not in context: dropped
    train_file = write_squad(tmp_path / "train-v1.1.json", train)
    dev_file = write_squad(tmp_path / "dev-v1.1.json", squad_v1_data(multi_answer=True))
    out = tmp_path / "out"
    code, err = run(["--bert_model", "minilm-l6", "--do_train", "--do_predict", "--train_file", str(train_file),
                     "--predict_file", str(dev_file), "--output_dir", str(out), "--max_seq_length", "64",
                     "--doc_stride", "24", "--max_query_length", "16", "--train_batch_size", "8",
                     "--num_train_epochs", "4", "--learning_rate", "1e-4", "--warmup_proportion", "0",
                     "--logging_steps", "1", "--seed", "1"], capsys)
    assert code == 0, err
    # steps come from the windows (features), not the questions: 10 questions -> more windows
    trained = read_kv(out / "train_results.txt")
    assert trained["train_dropped_answers"] == "1" and trained["train_examples"] == "10"
    n_features = int(trained["train_features"])
    assert n_features > 10
    losses = train_losses(out)
    steps_per_epoch = -(-n_features // 8)
    assert len(losses) == 4 * steps_per_epoch == int(trained["global_step"])
    first, last = losses[:steps_per_epoch], losses[-steps_per_epoch:]
    assert sum(last) / len(last) < 0.8 * sum(first) / len(first)

    preds = json.load(open(out / "predictions.json"))
    nbest = json.load(open(out / "nbest_predictions.json"))
    qids = [qa["id"] for a in squad_v1_data() for p in a["paragraphs"] for qa in p["qas"]]
    assert list(preds) == qids and list(nbest) == qids
    for qid in qids:   # v1.1 n-best is filled (the old script left it empty)
        assert nbest[qid][0]["text"] == preds[qid]
        assert sum(e["probability"] for e in nbest[qid]) == pytest.approx(1.0)
        assert len(nbest[qid]) <= 20
    assert not (out / "null_odds.json").exists()
    results = read_kv(out / "eval_results.txt")
    data, _, _ = squad.load_squad_json(str(dev_file))
    expected = squad_eval.evaluate_v1(data, preds)
    assert float(results["exact_match"]) == pytest.approx(expected["exact_match"])
    assert float(results["f1"]) == pytest.approx(expected["f1"])
    assert results["train_dropped_answers"] == "1"
    assert {"config.json", "model.safetensors", "vocab.txt"} <= set(os.listdir(out))


def test_predict_v2_writes_null_odds_and_scores(tmp_path, capsys):
    dev_file = write_squad(tmp_path / "dev-v2.0.json", squad_v2_data(), "2.0")
    out = tmp_path / "out"
    code, err = run(["--bert_model", "minilm-l6", "--do_predict", "--version_2_with_negative",
                     "--predict_file", str(dev_file), "--output_dir", str(out), "--max_seq_length", "48",
                     "--doc_stride", "16", "--null_score_diff_threshold", "0.5", "--cache_dir", "none"], capsys)
    assert code == 0, err
    preds = json.load(open(out / "predictions.json"))
    null_odds = json.load(open(out / "null_odds.json"))
    assert set(preds) == set(null_odds) and len(preds) == 14
    for qid, diff in null_odds.items():   # the decision rule of the threshold
        assert (preds[qid] == "") == (diff > 0.5)
    results = read_kv(out / "eval_results.txt")
    data, _, _ = squad.load_squad_json(str(dev_file))
    expected = squad_eval.evaluate_v2(data, preds, null_odds, 0.5)
    for key in ("exact", "f1", "HasAns_exact", "NoAns_f1", "best_f1", "best_f1_thresh"):
        assert float(results[key]) == pytest.approx(expected[key])
    assert results["HasAns_total"] == "11" and results["NoAns_total"] == "3"


def test_malformed_record_is_one_line_exit_2(tmp_path, capsys):
    data = squad_v1_data()
    data[2]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 99999
    bad = write_squad(tmp_path / "train.json", data)
    code, err = run(["--do_train", "--train_file", str(bad), "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:")
    assert "q0008" in lines[0] and "outside the context" in lines[0]
    assert not (tmp_path / "o").exists()   # nothing left behind: a fixed rerun is not refused


def test_flag_errors(tmp_path, capsys):
    code, err = run(["--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "--do_train or --do_predict" in err
    code, err = run(["--do_predict", "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "--predict_file" in err
