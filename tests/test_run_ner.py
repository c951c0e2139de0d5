"""run_ner.py end to end on tiny CoNLL-2003 files with the bundled MiniLM model."""

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

import run_ner
from file_utils import run_cli
from tasks import conll
from tests.fixtures_qa import write_conll_dir
from tests.test_run_squad import read_kv, train_losses


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(run_ner.main, argv)
    return exc.value.code, capsys.readouterr().err


def test_train_eval_predict_then_reload(tmp_path, capsys):
    data = write_conll_dir(tmp_path / "conll", dev_name="dev.txt")
    out = tmp_path / "out"
    code, err = run(["--bert_model", "minilm-l6", "--data_dir", str(data), "--do_train", "--do_eval", "--do_predict",
                     "--output_dir", str(out), "--max_seq_length", "16", "--train_batch_size", "4",
                     "--num_train_epochs", "4", "--learning_rate", "1e-4", "--warmup_proportion", "0",
                     "--logging_steps", "1", "--seed", "3"], capsys)
    assert code == 0, err
    trained = read_kv(out / "train_results.txt")
    # 16-token windows: the long sentences are split, so there are more windows than sentences
    assert int(trained["train_features"]) > int(trained["train_sentences"]) == 6
    losses = train_losses(out)
    steps_per_epoch = len(losses) // 4
    first, last = losses[:steps_per_epoch], losses[-steps_per_epoch:]
    assert sum(last) / len(last) < 0.7 * sum(first) / len(first)

    # test_predictions.txt keeps the layout; its tags score like test_results.txt says (seqeval)
    src = open(data / "test.txt").read().splitlines()
    pred_lines = open(out / "test_predictions.txt").read().splitlines()
    assert len(src) == len(pred_lines)
    gold, pred, g, p = [], [], [], []
    for a, b in zip(src + [""], pred_lines + [""]):
        if a.startswith("-DOCSTART-") or not a.strip():
            assert a == b
            if g:
                gold.append(g), pred.append(p)
            g, p = [], []
            continue
        assert b.split()[0] == a.split()[0]
        g.append(a.split()[-1])
        p.append(b.split()[1])
    results = read_kv(out / "test_results.txt")
    assert float(results["f1"]) == pytest.approx(f1_score(gold, pred, zero_division=0))
    assert float(results["precision"]) == pytest.approx(precision_score(gold, pred, zero_division=0))
    assert float(results["recall"]) == pytest.approx(recall_score(gold, pred, zero_division=0))
    assert "loss" in results
    assert {"precision", "recall", "f1", "loss", "global_step"} <= set(read_kv(out / "eval_results.txt"))
    assert open(out / "labels.txt").read().split() == conll.labels_from_sentences(
        conll.read_conll(str(data / "train.txt")))

    # the fine-tuned folder reloads with its head and label list and predicts the same tags
    out2 = tmp_path / "out2"
    code, err = run(["--bert_model", str(out), "--data_dir", str(data), "--do_predict", "--output_dir", str(out2),
                     "--max_seq_length", "16"], capsys)
    assert code == 0, err
    assert open(out2 / "test_predictions.txt").read() == open(out / "test_predictions.txt").read()


def test_bad_tag_is_one_line_exit_2(tmp_path, capsys):
    data = write_conll_dir(tmp_path / "conll")
    with open(data / "train.txt", "a") as f:
        f.write("Paris NNP B-NP LOCATION\n")
    n_lines = len(open(data / "train.txt").read().splitlines())
    code, err = run(["--data_dir", str(data), "--do_train", "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2
    assert err.strip() == f"error: {data / 'train.txt'}:{n_lines}: tag 'LOCATION' is not an IOB tag (O, B-TYPE, I-TYPE)"


def test_label_not_in_labels_file(tmp_path, capsys):
    data = write_conll_dir(tmp_path / "conll")
    labels = tmp_path / "labels.txt"
    labels.write_text("O\nB-PER\nI-PER\n")
    code, err = run(["--data_dir", str(data), "--do_train", "--labels", str(labels),
                     "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "train.txt:3: tag 'B-ORG' is not in the label list" in err
    assert not (tmp_path / "o").exists()  # no output folder behind a run that failed on its inputs
