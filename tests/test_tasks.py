"""The task interface (tasks/base.py) and the family registry (tasks/__init__.py): task names, the
families behind one interface on official-format fixtures, and that multitask/ imports no task."""
import ast
import os

import numpy as np
import pytest

import tasks
from file_utils import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_task_names_sets_aliases_and_errors():
    assert tasks.parse_task_names("all") == ["cola", "mrpc", "mnli", "rte", "sts-b", "sst-2", "qqp", "qnli"]
    assert tasks.parse_task_names("RTE, wnli,sts") == ["rte", "wnli", "sts-b"]
    assert tasks.parse_task_names("sst-2,squad2,conll,swag,squad1") == ["sst-2", "squad2", "conll", "swag", "squad1"]
    for spec, message in (("cola,squad", "unknown task 'squad'"), ("cola,CoLA", "twice"), ("", "empty"),
                          ("rte,mnli-mm", "no training set"), ("conll,conll", "twice"), ("all,rte", "twice")):
        with pytest.raises(ConfigError, match=message):
            tasks.parse_task_names(spec)


def test_multitask_imports_no_task_module():
    """multitask/ is task-agnostic: no import of `tasks` or any tasks.* module (parsed, not grepped)."""
    package = os.path.join(ROOT, "multitask")
    imported = set()
    for name in sorted(os.listdir(package)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(package, name), encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
    assert imported, "no imports found: the test would pass vacuously"
    assert not {m for m in imported if m == "tasks" or m.startswith("tasks.")}, imported


# ----------------------------------------------------------------------------------------------
# Each family through the interface, with a fake model whose outputs are chosen by the test
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(vocab_file):
    from fixtures_qa import make_tokenizer
    return make_tokenizer(vocab_file)


def _cache_recorder():
    keys = []

    def cache(key, build):
        keys.append(key)
        return build()
    return cache, keys


def test_glue_family_evaluate_main_score_and_submissions(tmp_path, tok):
    from sklearn.metrics import accuracy_score

    from glue_fixtures import write_glue_fixture
    write_glue_fixture(str(tmp_path / "glue"), tasks=["mnli", "ax"], n=9)
    cache, keys = _cache_recorder()
    task = tasks.build_task("mnli", tok, str(tmp_path / "glue"), 64, cache=cache, max_eval_examples=5)
    task.prepare(train=True, dev=True, test=True)
    assert (task.head_type, task.num_labels, task.train_size) == ("classification", 3, 9)
    assert [name for name, *_ in task.dev_sets] == ["mnli", "mnli-mm"] and len(task.dev_sets[0][2]) == 5
    assert {k["task"] for k in keys} >= {"glue-mnli-train", "glue-mnli-dev", "glue-mnli-mm-dev", "glue-ax-test"}
    gold = {name: [task.dataset.label_map[e.label] for e in examples] for name, _, examples, _ in task.dev_sets}

    def fake_predict(features):
        # mnli: every prediction right; mnli-mm: always class 0
        name = "mnli" if features is task.dev_sets[0][3] else "mnli-mm"
        logits = np.zeros((len(features), 3))
        for i, g in enumerate(gold[name]):
            logits[i, g if name == "mnli" else 0] = 1.0
        return {"logits": logits, "loss": 0.5}

    results = task.evaluate(fake_predict)
    expected_mm = accuracy_score(gold["mnli-mm"], [0] * len(gold["mnli-mm"]))
    assert results["mnli"] == {"acc": 1.0, "loss": 0.5}
    assert results["mnli-mm"]["acc"] == pytest.approx(expected_mm)
    assert task.main_score(results) == pytest.approx((1.0 + expected_mm) / 2)  # MNLI counts once
    written = task.write_predictions(lambda f: {"logits": np.tile([0.0, 1.0, 0.0], (len(f), 1))},
                                     str(tmp_path / "pred"))
    assert sorted(os.path.basename(p) for p in written) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"]
    rows = open(written[0], encoding="utf-8").read().splitlines()
    assert rows[0] == "index\tprediction" and {r.split("\t")[1] for r in rows[1:]} == {"entailment"}


def test_squad_family_scores_in_zero_one_on_the_evaluated_questions(tmp_path, tok):
    from fixtures_qa import squad_v2_data, write_squad_dir
    folder = write_squad_dir(str(tmp_path / "squad2"), version=2)
    task = tasks.build_task("squad2", tok, folder, 64, max_eval_examples=6)
    task.prepare(train=True, dev=True)
    assert (task.head_type, task.num_labels, task.main_metric) == ("span", 2, "f1")
    assert task.train_size == 14 and len(task.train_features) >= 14  # questions; a question may get windows
    assert all(len(f["input_ids"]) <= 64 for f in task.train_features)
    qids = [e.qas_id for e in task.dev_examples]
    assert len(qids) == 6
    gold = {qa["id"]: [a["text"] for a in qa["answers"]]
            for article in squad_v2_data() for qa in article["paragraphs"][0]["qas"]}
    # first 3 of the 6 questions right, 3 wrong (by hand: EM = F1 = 3/6); only the 6 count
    preds = {q: (gold[q][0] if gold[q] else "") if i < 3 else "nothing like it" for i, q in enumerate(qids)}
    scores = task.score(preds, {q: -1.0 for q in qids})
    assert scores["exact"] == pytest.approx(0.5) and scores["f1"] == pytest.approx(0.5)


def test_conll_family_entity_f1_against_seqeval(tmp_path, tok):
    from seqeval.metrics import f1_score

    from fixtures_qa import write_conll_dir
    folder = write_conll_dir(str(tmp_path / "conll"))
    task = tasks.build_task("conll", tok, folder, 32)
    task.prepare(train=True, dev=True, test=True)
    assert task.labels[0] == "O" and task.num_labels == len(task.labels) and task.train_size == 6
    gold = [s.tags for s in task.sentences["dev"]]

    def predict_tags(wanted):
        """Logits that decode to the tags `wanted` (per sentence) on each word's first piece."""
        def predict(features):
            width = max(len(f["input_ids"]) for f in features)
            logits = np.zeros((len(features), width, len(task.labels)))
            for i, meta in enumerate(task.metas["dev"]):
                for k, pos in enumerate(meta.first_piece):
                    logits[i, pos, task.labels.index(wanted[meta.sentence_index][meta.word_start + k])] = 1.0
            return {"logits": logits, "loss": None}
        return predict

    assert task.evaluate(predict_tags(gold))["conll"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    damaged = [["O"] * len(t) if i % 2 else t for i, t in enumerate(gold)]
    assert task.evaluate(predict_tags(damaged))["conll"]["f1"] == pytest.approx(f1_score(gold, damaged))


def test_swag_family_accuracy_and_predictions(tmp_path, tok):
    from sklearn.metrics import accuracy_score

    from fixtures_qa import write_swag_dir
    folder = write_swag_dir(str(tmp_path / "swag"))
    task = tasks.build_task("swag", tok, folder, 48)
    task.prepare(train=True, dev=True, test=True)
    assert (task.head_type, task.num_labels, task.train_size) == ("choice", 4, 4)
    labels = [e.label for e in task.examples["dev"]]
    always_zero = task.evaluate(lambda f: {"logits": np.tile([1.0, 0, 0, 0], (len(f), 1)), "loss": None})
    assert always_zero["swag"]["acc"] == pytest.approx(accuracy_score(labels, [0] * len(labels)))
    path, = task.write_predictions(lambda f: {"logits": np.tile([0, 0, 1.0, 0], (len(f), 1))}, str(tmp_path / "p"))
    rows = open(path, encoding="utf-8").read().splitlines()
    assert rows[0] == "id,video-id,fold-ind,label" and len(rows) == 4 and all(r.endswith(",2") for r in rows[1:])


def test_per_task_lengths_and_dry_run_counts_without_tokenizing(tmp_path, tok):
    from fixtures_qa import write_squad_dir
    folder = write_squad_dir(str(tmp_path / "s"), version=1)
    task = tasks.build_task("squad1", tok, folder, tasks.DEFAULT_MAX_SEQ_LENGTH["squad1"])
    assert task.max_seq_length == 384 and task.count_train_examples() == 11
