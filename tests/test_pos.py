"""The POS family (tasks/pos.py, task `pos`): the CoNLL-U reader (comments, multiword tokens and empty
nodes skipped, errors naming file and line), token accuracy against scikit-learn, the CoNLL-U
prediction file (UPOS filled, everything else as read), a user's own file, and `pos` mixed with other
families in run_multi_task.py on the bundled sample data."""
import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

import modeling
import run_multi_task
import tasks
from file_utils import ConfigError, DataError
from tasks import pos
from test_training_helpers import single_thread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "pos_sample")

# Shaped like UD English-EWT: comments, a multiword token (2-3) and an empty node (6.1).
EWT_LIKE = """# sent_id = a-1
# text = I cannot go.
1\tI\tI\tPRON\tPRP\tCase=Nom\t3\tnsubj\t3:nsubj\t_
2-3\tcannot\t_\t_\t_\t_\t_\t_\t_\t_
2\tcan\tcan\tAUX\tMD\tVerbForm=Fin\t4\taux\t4:aux\t_
3\tnot\tnot\tPART\tRB\t_\t4\tadvmod\t4:advmod\t_
4\tgo\tgo\tVERB\tVB\tVerbForm=Inf\t0\troot\t0:root\tSpaceAfter=No
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t4:punct\t_

# sent_id = a-2
1\tSam\tSam\tPROPN\tNNP\t_\t2\tnsubj\t2:nsubj\t_
2\tate\teat\tVERB\tVBD\t_\t0\troot\t0:root\t_
3\tpie\tpie\tNOUN\tNN\t_\t2\tobj\t2:obj\t_
4\tand\tand\tCCONJ\tCC\t_\t5\tcc\t6.1:cc\t_
5\tAnn\tAnn\tPROPN\tNNP\t_\t2\tconj\t6.1:nsubj\t_
5.1\tate\teat\tVERB\tVBD\t_\t_\t_\t2:conj\tCopyOf=2
6\tcake\tcake\tNOUN\tNN\t_\t5\torphan\t6.1:obj\tSpaceAfter=No
"""


@pytest.fixture(scope="module")
def tok(vocab_file):
    from fixtures_qa import make_tokenizer
    return make_tokenizer(vocab_file)


def _folder(tmp_path, train=EWT_LIKE, dev=EWT_LIKE, test=EWT_LIKE):
    tmp_path.mkdir(exist_ok=True)
    for split, text in (("train", train), ("dev", dev), ("test", test)):
        (tmp_path / f"{split}.conllu").write_text(text, encoding="utf-8")
    return str(tmp_path)


def test_reader_skips_comments_multiword_tokens_and_empty_nodes(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_bytes(b"\xef\xbb\xbf" + EWT_LIKE.encode("utf-8"))   # a BOM is ignored
    first, second = pos.read_conllu(str(path))
    assert first.words == ["I", "can", "not", "go", "."] and first.tags == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert second.words == ["Sam", "ate", "pie", "and", "Ann", "cake"]
    assert second.tags == ["PROPN", "VERB", "NOUN", "CCONJ", "PROPN", "NOUN"]
    assert first.word_lines == [3, 5, 6, 7, 8] and second.word_lines == [11, 12, 13, 14, 15, 17]


@pytest.mark.parametrize("line, message", [
    ("1\tI\tI\tPRON\t_\t_\t_\t_\t_", "expected 10 tab-separated CoNLL-U columns, got 9"),
    ("1 I I PRON _ _ _ _ _ _", "got 1"),
    ("x\tI\tI\tPRON\t_\t_\t_\t_\t_\t_", "ID 'x' is not a word ID"),
    ("2\tI\tI\tPRON\t_\t_\t_\t_\t_\t_", "word ID 2 where 1 was expected"),
    ("1\tI\tI\tPRP\t_\t_\t_\t_\t_\t_", "UPOS tag 'PRP' is not a Universal POS tag"),
    ("1\tI\tI\t_\t_\t_\t_\t_\t_\t_", "no UPOS tag"),
])
def test_reader_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.conllu"
    path.write_text(EWT_LIKE + "\n# sent_id = a-3\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        pos.read_conllu(str(path))
    assert (info.value.path, info.value.line) == (str(path), 20)
    path.write_bytes(EWT_LIKE.encode("utf-8") + b"\n1\tcaf\xe9\tx\tNOUN" + b"\t_" * 6 + b"\n")
    with pytest.raises(DataError, match="UTF-8") as info:
        pos.read_conllu(str(path))
    assert info.value.line == 19


def test_token_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    gold = [[pos.UPOS_TAGS[i] for i in rng.integers(0, 17, size=n)] for n in (3, 7, 1, 12)]
    pred = [[t if rng.random() < 0.6 else "X" for t in sentence] for sentence in gold]
    flat = (sum(gold, []), sum(pred, []))
    assert pos.token_accuracy(gold, pred) == pytest.approx(accuracy_score(*flat))
    with pytest.raises(ValueError):
        pos.token_accuracy(gold, pred[:-1])


def _predictor(task, split, wanted):
    """A fake model whose logits decode to the tags `wanted` (per sentence) on each word's first piece."""
    def predict(features):
        width = max(len(f["input_ids"]) for f in features)
        logits = np.zeros((len(features), width, len(task.labels)))
        for i, meta in enumerate(task.metas[split]):
            for k, position in enumerate(meta.first_piece):
                logits[i, position, task.labels.index(wanted[meta.sentence_index][meta.word_start + k])] = 1.0
        return {"logits": logits, "loss": 0.25}
    return predict


def test_evaluate_and_prediction_file_round_trip(tmp_path, tok):
    task = tasks.build_task("pos", tok, _folder(tmp_path / "data"), 16)
    task.prepare(train=True, dev=True, test=True)
    assert (task.head_type, task.num_labels, task.main_metric, task.train_size) == ("token", 17, "acc", 2)
    assert task.padding["labels"] == -100 and task.padding["input_ids"] == 0
    gold = [s.tags for s in task.sentences["dev"]]
    wrong = [["NOUN"] * len(tags) for tags in gold]   # right only where the gold tag is NOUN
    result = task.evaluate(_predictor(task, "dev", wrong))["pos"]
    assert result == {"acc": pytest.approx(accuracy_score(sum(gold, []), sum(wrong, []))), "loss": 0.25}
    assert task.main_score({"pos": result}) == result["acc"] == pytest.approx(2 / 11)

    predicted = [["X"] * len(s.words) for s in task.sentences["test"]]
    predicted[1][4] = "PROPN"
    written = task.write_predictions(_predictor(task, "test", predicted), str(tmp_path / "out"))
    assert [os.path.basename(p) for p in written] == ["test_predictions.conllu", "test_results.txt"]
    source, output = EWT_LIKE.splitlines(), open(written[0], encoding="utf-8").read().splitlines()
    assert len(output) == len(source)
    for before, after in zip(source, output):
        cols_before, cols_after = before.split("\t"), after.split("\t")
        if len(cols_before) == 10 and cols_before[0].isdigit():
            assert cols_after[:3] + cols_after[4:] == cols_before[:3] + cols_before[4:]
            assert cols_after[3] in ("X", "PROPN")
        else:   # comments, blank lines, the multiword token and the empty node as read
            assert after == before
    assert [s.tags for s in pos.read_conllu(written[0])] == predicted
    assert open(written[1]).read() == f"acc = {1 / 11}\nloss = 0.25\n"   # Ann is PROPN: 1 of 11 words


def test_unlabelled_test_file_gets_predictions_without_scores(tmp_path, tok):
    unlabelled = "\n".join("\t".join(c if i != 3 else "_" for i, c in enumerate(line.split("\t")))
                           for line in EWT_LIKE.splitlines()) + "\n"
    task = tasks.build_task("pos", tok, _folder(tmp_path, test=unlabelled), 16).prepare(train=False, test=True)
    predicted = [["NOUN"] * len(s.words) for s in task.sentences["test"]]
    written = task.write_predictions(_predictor(task, "test", predicted), str(tmp_path / "out"))
    assert [os.path.basename(p) for p in written] == ["test_predictions.conllu"]
    assert [s.tags for s in pos.read_conllu(written[0])] == predicted


def test_ud_treebank_file_names(tmp_path, tok):
    (tmp_path / "en_ewt-ud-train.conllu").write_text(EWT_LIKE, encoding="utf-8")
    assert pos.find_file(str(tmp_path), "train") == str(tmp_path / "en_ewt-ud-train.conllu")
    with pytest.raises(DataError, match="missing POS dev file") as info:
        pos.find_file(str(tmp_path), "dev")
    assert info.value.path == str(tmp_path / "dev.conllu")
    (tmp_path / "en_gum-ud-train.conllu").write_text(EWT_LIKE, encoding="utf-8")
    with pytest.raises(ConfigError, match="several UD train files"):
        pos.find_file(str(tmp_path), "train")


def test_a_users_file_conllu_or_one_sentence_per_line(tmp_path, tok):
    task = tasks.build_task("pos", tok, None, 16)
    plain = task.read_inputs(None, ["Sam ate pie", "", "Ann ate cake ."])
    assert [s.words for s in plain] == [["Sam", "ate", "pie"], ["Ann", "ate", "cake", "."]]
    path = tmp_path / "mine.conllu"
    path.write_text(EWT_LIKE.replace("\tPROPN\t", "\t_\t"), encoding="utf-8")   # UPOS may be '_'
    sentences = task.read_inputs(str(path))
    assert [s.words for s in sentences][1] == ["Sam", "ate", "pie", "and", "Ann", "cake"]
    assert sentences[1].tags[0] is None
    assert [s.words for s in task.read_inputs(str(path), plain=True)][0][0] == "#"   # lines: every line a sentence

    def predict(features):
        logits = np.zeros((len(features), max(len(f["input_ids"]) for f in features), 17))
        logits[:, :, pos.UPOS_TAGS.index("VERB")] = 2.0
        return {"logits": logits}
    rows = task.predict_rows(predict, plain)
    assert rows[:3] == [("Sam", "VERB", pytest.approx(np.exp(2) / (np.exp(2) + 16))), ("ate", "VERB", rows[1][2]),
                        ("pie", "VERB", rows[2][2])] and rows[3] is None and len(rows) == 9


def test_registry_declares_pos():
    assert tasks.parse_task_names("sst-2,pos,conll") == ["sst-2", "pos", "conll"]
    family = tasks.family_of("pos")
    assert (family.name, family.head_type, family.task_class) == ("pos", "token", pos.Pos)
    assert tasks.OTHER_TASKS["pos"] and "pos" not in tasks.DEFAULT_MAX_SEQ_LENGTH
    assert run_multi_task.DEMO_TASK_DATA["pos"] == SAMPLE
    for split in ("train", "dev", "test"):   # the bundled sample is valid CoNLL-U with every case in it
        text = open(os.path.join(SAMPLE, f"{split}.conllu"), encoding="utf-8").read()
        assert pos.read_conllu(os.path.join(SAMPLE, f"{split}.conllu")) and "\n2-3\tcannot" in text
        assert any(line.split("\t")[0].endswith(".1") for line in text.splitlines())


@pytest.mark.usefixtures(single_thread.__name__)
def test_run_multi_task_mixes_pos_with_other_families_on_the_bundled_samples(tmp_path, vocab_file, capsys):
    keys = dict(vocab_size=30522, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                max_position_embeddings=64, type_vocab_size=2)
    torch.manual_seed(0)
    model_dir = str(tmp_path / "tiny")
    modeling.BertModel(modeling.BertConfig(**keys)).save_pretrained(model_dir, vocab_file=vocab_file)
    pals = tmp_path / "pals.json"
    pals.write_text(json.dumps(dict(keys, hidden_size_aug=12, mult=True, pals=True)))
    out = tmp_path / "run"
    argv = ["--tasks", "sst-2,pos,conll", "--data_dir", os.path.join(ROOT, "data", "glue_sample"),
            "--task_data", f"pos={SAMPLE},conll={os.path.join(ROOT, 'data', 'conll_sample')}",
            "--bert_model", model_dir, "--config", str(pals), "--output_dir", str(out), "--max_seq_length", "32",
            "--num_train_epochs", "1", "--steps_per_epoch", "6", "--train_batch_size", "4", "--eval_batch_size", "32",
            "--max_eval_examples", "20", "--learning_rate", "1e-3", "--logging_steps", "1000", "--do_predict"]
    assert run_multi_task.main(argv) == 0
    assert any(line.startswith("pos ") for line in capsys.readouterr().out.splitlines())
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == ["sst-2", "pos", "conll"]
    assert 0.0 <= results["history"][-1]["results"]["pos"]["acc"] <= 1.0
    assert json.loads((out / "best" / "task_labels.json").read_text())["pos"] == list(pos.UPOS_TAGS)
    predicted = pos.read_conllu(str(out / "predictions" / "pos" / "test_predictions.conllu"))
    gold = pos.read_conllu(os.path.join(SAMPLE, "test.conllu"))
    assert [s.words for s in predicted] == [s.words for s in gold] and len(predicted) == 100
