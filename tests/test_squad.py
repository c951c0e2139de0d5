"""tasks/squad.py: reading, sliding windows, span decoding and the official EM/F1 (hand-worked values)."""
import json
import os

import pytest

from file_utils import ConfigError, DataError
from fixtures_qa import make_tokenizer, squad_v1_data, squad_v2_data, write_squad
from tasks import squad, squad_eval


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return make_tokenizer(vocab_file)


# ---------------------------------------------------------------------------------------------
# official evaluation, hand-worked


def test_normalize_answer():
    assert squad_eval.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert squad_eval.normalize_answer("an apple, a pear and THE plum") == "apple pear and plum"
    # article removal is word-bounded: "theater" keeps its "the"
    assert squad_eval.normalize_answer("Theater") == "theater"


def _dataset(qas):
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]


def test_evaluate_v1_hand_worked():
    data = _dataset([
        {"id": "a", "answers": [{"text": "The Eiffel Tower"}, {"text": "Eiffel Tower"}]},
        {"id": "b", "answers": [{"text": "Paris, France"}]},
        {"id": "c", "answers": [{"text": "1889"}]},
    ])
    preds = {"a": "eiffel tower!", "b": "in Paris"}   # "c" missing -> scores 0 but counts
    # a: EM 1, F1 1.  b: pred [in, paris] vs gold [paris, france]: 1 common, P = R = 1/2, F1 = 1/2.
    out = squad_eval.evaluate_v1(data, preds)
    assert out["exact_match"] == pytest.approx(100 * 1 / 3)
    assert out["f1"] == pytest.approx(100 * 1.5 / 3)


def test_evaluate_v1_takes_max_over_gold_answers():
    data = _dataset([{"id": "a", "answers": [{"text": "red blue green"}, {"text": "blue"}]}])
    # vs gold 1: common 1, P 1, R 1/3 -> F1 0.5; vs gold 2: exact -> 1
    assert squad_eval.evaluate_v1(data, {"a": "blue"}) == {"exact_match": 100.0, "f1": 100.0}
    # "blue green yellow" vs gold 1: common 2, P 2/3, R 2/3 -> 2/3; vs gold 2: P 1/3, R 1 -> 0.5
    out = squad_eval.evaluate_v1(data, {"a": "blue green yellow"})
    assert out == {"exact_match": 0.0, "f1": pytest.approx(100 * 2 / 3)}


def _v2_data():
    return _dataset([
        {"id": "q1", "answers": [{"text": "Denver Broncos"}, {"text": "the Denver Broncos"}]},
        {"id": "q2", "answers": []},
        {"id": "q3", "answers": []},
        {"id": "q4", "answers": [{"text": "Levi's Stadium"}]},
    ])


V2_PREDS = {"q1": "Broncos", "q2": "", "q3": "Santa Clara", "q4": "Levi's Stadium"}


def test_evaluate_v2_hand_worked_without_null_odds():
    # q1: pred [broncos] vs [denver, broncos]: P 1, R 1/2 -> F1 2/3, EM 0.  q2: "" vs no answer: 1/1.
    # q3: text for an unanswerable question: 0/0.  q4: exact: 1/1.
    out = squad_eval.evaluate_v2(_v2_data(), V2_PREDS)
    assert out["total"] == 4
    assert out["exact"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1 + 0 + 1) / 4)
    assert (out["HasAns_exact"], out["HasAns_f1"], out["HasAns_total"]) == (
        pytest.approx(50.0), pytest.approx(100 * (2 / 3 + 1) / 2), 2)
    assert (out["NoAns_exact"], out["NoAns_f1"], out["NoAns_total"]) == (50.0, 50.0, 2)
    assert "best_f1" not in out


def test_evaluate_v2_hand_worked_with_null_odds():
    na = {"q1": 1.5, "q2": 2.0, "q3": -4.0, "q4": -3.0}
    out = squad_eval.evaluate_v2(_v2_data(), V2_PREDS, na_probs=na, na_prob_thresh=1.0)
    # thresh 1.0: q1 (1.5) and q2 (2.0) count as "no answer": q1 -> 0 (has an answer), q2 -> 1.
    assert out["exact"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(50.0)
    assert out["HasAns_f1"] == pytest.approx(50.0)
    # Sweep in na order q3 (-4), q4 (-3), q1 (1.5), q2 (2.0) from 2 (= number of no-answer qids):
    # exact raw: q3 -1 -> 1, q4 +1 -> 2, q1 +0 -> 2, q2 +0 -> 2: never above 2 -> 50 at 0.0.
    assert out["best_exact"] == pytest.approx(50.0)
    assert out["best_exact_thresh"] == 0.0
    # f1 raw: 1, 2, 2 + 2/3 (> 2 at q1's 1.5), 2 + 2/3 -> 100 * (8/3) / 4 at threshold 1.5.
    assert out["best_f1"] == pytest.approx(100 * (8 / 3) / 4)
    assert out["best_f1_thresh"] == 1.5


def test_evaluate_v2_missing_prediction_is_skipped():
    preds = dict(V2_PREDS)
    del preds["q3"]
    out = squad_eval.evaluate_v2(_v2_data(), preds)
    assert out["total"] == 3
    assert out["exact"] == pytest.approx(100 * 2 / 3)
    assert out["NoAns_total"] == 1


def test_compute_f1_empty_cases():
    assert squad_eval.compute_f1("", "") == 1
    assert squad_eval.compute_f1("the", "") == 1      # gold normalizes to nothing -> both empty
    assert squad_eval.compute_f1("Paris", "") == 0
    assert squad_eval.f1_score_v1("", "") == 0        # v1.1 script: no overlap -> 0


# ---------------------------------------------------------------------------------------------
# reading


def test_read_v1_examples_word_positions(tmp_path):
    path = write_squad(tmp_path / "train.json", squad_v1_data())
    examples, dropped = squad.read_squad_examples(str(path), is_training=True)
    assert dropped == []
    assert len(examples) == 11
    ex = examples[0]
    assert ex.qas_id == "q0000" and ex.question_text == "Who designed the tower?"
    # whitespace words keep their punctuation
    assert " ".join(ex.doc_tokens[ex.start_position:ex.end_position + 1]) == "Gustave Eiffel,"
    # "Paris," is one whitespace word: the answer "Paris" lies inside it
    ex = examples[1]
    assert ex.doc_tokens[ex.start_position] == "Paris,"
    # for prediction, answers are ignored
    examples, _ = squad.read_squad_examples(str(path), is_training=False)
    assert examples[0].start_position is None


def test_read_v2_impossible(tmp_path):
    path = write_squad(tmp_path / "train.json", squad_v2_data(), "2.0")
    examples, _ = squad.read_squad_examples(str(path), is_training=True, version_2_with_negative=True)
    impossible = [e for e in examples if e.is_impossible]
    assert len(impossible) == 3
    assert all(e.start_position == -1 and e.orig_answer_text == "" for e in impossible)


def test_mismatched_answer_is_dropped_and_counted(tmp_path):
    data = squad_v1_data()
    data[0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "Gustav Eiffel"   # typo: not in context
    path = write_squad(tmp_path / "train.json", data)
    examples, dropped = squad.read_squad_examples(str(path), is_training=True)
    assert dropped == ["q0000"]
    assert len(examples) == 10


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d[1]["paragraphs"][0]["qas"][2]["answers"][0].update(answer_start=10 ** 6),
     "outside the context"),
    (lambda d: d[1]["paragraphs"][0]["qas"][2].pop("question"), 'missing "question"'),
    (lambda d: d[1]["paragraphs"][0]["qas"][2].update(answers=[]), "exactly 1 answer"),
    (lambda d: d[1]["paragraphs"][0]["qas"][2]["answers"][0].pop("text"), 'no "text"'),
])
def test_malformed_record_names_file_record_and_line(tmp_path, mutate, needle):
    data = squad_v1_data()
    mutate(data)
    path = write_squad(tmp_path / "bad.json", data)
    with pytest.raises(DataError) as err:
        squad.read_squad_examples(str(path), is_training=True)
    msg = str(err.value)
    assert needle in msg and str(path) in msg
    assert "data[1].paragraphs[0].qas[2]" in msg and "q0006" in msg
    # the line number points at the question's id in the file
    lines = open(path, encoding="utf-8").read().splitlines()
    assert '"q0006"' in lines[err.value.line - 1]


def test_record_without_id_points_at_its_article(tmp_path):
    data = squad_v1_data()
    del data[2]["paragraphs"][0]["qas"][0]["id"]
    path = write_squad(tmp_path / "bad.json", data)
    with pytest.raises(DataError) as err:
        squad.read_squad_examples(str(path), is_training=False)
    assert "data[2].paragraphs[0].qas[0] (title='Super_Bowl_50'): missing question \"id\"" in str(err.value)
    assert '"Super_Bowl_50"' in open(path).read().splitlines()[err.value.line - 1]


def test_bad_json_reports_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"version": "1.1",\n "data": [\n  {"title": "x",, }]}')
    with pytest.raises(DataError) as err:
        squad.load_squad_json(str(path))
    assert err.value.line == 3
    path.write_text('{"version": "1.1"}')
    with pytest.raises(DataError, match='"data" list'):
        squad.load_squad_json(str(path))


# ---------------------------------------------------------------------------------------------
# windows and features


def test_doc_windows_and_max_context_hand_worked():
    assert squad.doc_windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert squad.doc_windows(3, 4, 3) == [(0, 3)]
    assert squad.doc_windows(0, 4, 3) == []
    spans = squad.doc_windows(10, 4, 3)
    # token 4: only window 1 holds it
    assert [squad._check_is_max_context(spans, i, 4) for i in range(3)] == [False, True, False]
    # token 6: windows 1 (left 3, right 0) and 2 (left 0, right 3) tie at 0.04 -> earlier wins
    assert [squad._check_is_max_context(spans, i, 6) for i in range(3)] == [False, True, False]
    # token 5: window 1 score min(2,1)+0.04 beats window ... only window 1 holds 5 -> True
    assert squad._check_is_max_context(spans, 1, 5)


def test_features_sliding_windows_hold_the_answer(tmp_path, tokenizer):
    path = write_squad(tmp_path / "train.json", squad_v1_data())
    examples, _ = squad.read_squad_examples(str(path), is_training=True)
    features, metas = squad.convert_examples_to_features(
        examples, tokenizer, max_seq_length=40, doc_stride=16, max_query_length=8, is_training=True)
    assert len(features) > len(examples)        # contexts are cut into several windows
    assert metas[0].unique_id == squad.FIRST_UNIQUE_ID
    assert [m.unique_id for m in metas] == list(range(squad.FIRST_UNIQUE_ID,
                                                      squad.FIRST_UNIQUE_ID + len(metas)))
    n_inside = 0
    for feature, meta in zip(features, metas):
        ex = examples[meta.example_index]
        n = len(feature["input_ids"])
        assert n <= 40 and len(feature["token_type_ids"]) == n == len(meta.tokens)
        assert meta.tokens[0] == "[CLS]" and meta.tokens[-1] == "[SEP]"
        q_len = meta.tokens.index("[SEP]") - 1
        assert q_len <= 8
        assert feature["token_type_ids"] == [0] * (q_len + 2) + [1] * (n - q_len - 2)
        assert feature["input_ids"] == tokenizer.convert_tokens_to_ids(meta.tokens)
        s, e = feature["start_positions"], feature["end_positions"]
        if s == 0:
            assert e == 0
            continue
        n_inside += 1
        # the labelled pieces spell the tokenized answer
        assert " ".join(meta.tokens[s:e + 1]) == " ".join(tokenizer.tokenize(ex.orig_answer_text))
    assert n_inside >= len(examples)   # every answer lies fully inside at least one window
    # each document piece is "max context" in exactly one window
    for example_index, ex in enumerate(examples):
        n_max = sum(sum(m.token_is_max_context.values()) for m in metas if m.example_index == example_index)
        assert n_max == sum(len(tokenizer.tokenize(w)) for w in ex.doc_tokens)


def test_improve_answer_span(tokenizer):
    # the answer "1895" sits inside the word "(1895-1943)."; the tightest span is the "1895" piece
    doc = tokenizer.tokenize("(1895-1943).")
    start, end = squad._improve_answer_span(doc, 0, len(doc) - 1, tokenizer, "1895")
    assert doc[start:end + 1] == ["1895"]


def test_query_too_long_for_window_is_config_error(tmp_path, tokenizer):
    path = write_squad(tmp_path / "train.json", squad_v1_data())
    examples, _ = squad.read_squad_examples(str(path), is_training=False)
    with pytest.raises(ConfigError, match="max_seq_length"):
        squad.convert_examples_to_features(examples, tokenizer, 8, 4, 64, is_training=False)


# ---------------------------------------------------------------------------------------------
# decoding


def test_get_final_text(tokenizer):
    bt = tokenizer.basic_tokenizer
    assert squad.get_final_text("steve smith", "Steve Smith's", bt) == "Steve Smith"
    assert squad.get_final_text("1895", "(1895-1943).", bt) == "1895"
    # not found -> the whole original span
    assert squad.get_final_text("xyz", "Steve Smith's", bt) == "Steve Smith's"


def _one_example(tokenizer, context, question="What?"):
    ex = squad.SquadExample("id1", question, context.split())
    feats, metas = squad.convert_examples_to_features([ex], tokenizer, 64, 32, 16, is_training=False)
    return ex, feats, metas


def test_decode_v1_hand_made_logits(tokenizer):
    ex, feats, metas = _one_example(tokenizer, "Steve Smith's dog barked.")
    tokens = metas[0].tokens   # [CLS] what ? [SEP] steve smith ' s dog barked . [SEP]
    assert tokens[4:8] == ["steve", "smith", "'", "s"]
    start = [0.0] * len(tokens)
    end = [0.0] * len(tokens)
    start[4], end[5] = 5.0, 4.0       # "steve smith" scores 9
    start[8], end[8] = 3.0, 3.0       # "dog" scores 6
    end[9] = 3.5                      # "dog barked" scores 6.5
    preds, nbest, null_odds = squad.decode_predictions(
        [ex], metas, [start + [99.0] * 5], [end + [99.0] * 5],   # trailing padding is ignored
        n_best_size=3, max_answer_length=30, basic_tokenizer=tokenizer.basic_tokenizer)
    assert preds == {"id1": "Steve Smith"}
    assert null_odds == {}
    texts = [e["text"] for e in nbest["id1"]]
    assert texts[0] == "Steve Smith" and len(texts) == 3
    probs = [e["probability"] for e in nbest["id1"]]
    assert sum(probs) == pytest.approx(1.0)
    assert nbest["id1"][0]["start_logit"] == 5.0 and nbest["id1"][0]["end_logit"] == 4.0


def test_decode_v2_null_threshold(tokenizer):
    ex, feats, metas = _one_example(tokenizer, "The dog barked loudly.")
    n = len(metas[0].tokens)
    start, end = [0.0] * n, [0.0] * n
    start[0], end[0] = 2.0, 2.0       # null score 4
    start[5], end[6] = 1.5, 1.0       # best span "dog barked": score 2.5
    kwargs = dict(n_best_size=5, max_answer_length=30, basic_tokenizer=tokenizer.basic_tokenizer,
                  version_2_with_negative=True)
    preds, nbest, null_odds = squad.decode_predictions([ex], metas, [start], [end], **kwargs)
    assert null_odds["id1"] == pytest.approx(4.0 - 2.5)
    assert preds["id1"] == ""                          # 1.5 > default threshold 0.0
    assert "" in [e["text"] for e in nbest["id1"]]
    preds, _, _ = squad.decode_predictions([ex], metas, [start], [end],
                                           null_score_diff_threshold=2.0, **kwargs)
    assert metas[0].tokens[5:7] == ["dog", "barked"]
    assert preds["id1"] == "dog barked"


def test_decode_respects_max_answer_length_and_max_context(tokenizer):
    ex, feats, metas = _one_example(tokenizer, "a b c d e f")
    n = len(metas[0].tokens)
    start, end = [0.0] * n, [0.0] * n
    first_doc = min(metas[0].token_to_orig_map)
    start[first_doc], end[first_doc + 4] = 10.0, 10.0   # 5 tokens long
    end[first_doc + 1] = 1.0
    preds, _, _ = squad.decode_predictions([ex], metas, [start], [end], n_best_size=20,
                                           max_answer_length=2,
                                           basic_tokenizer=tokenizer.basic_tokenizer)
    assert preds["id1"] == "a b"


def test_prediction_files_written(tmp_path):
    squad.write_prediction_files(str(tmp_path), {"a": "x"}, {"a": [{"text": "x"}]}, {"a": 0.5})
    assert json.load(open(tmp_path / "predictions.json")) == {"a": "x"}
    assert json.load(open(tmp_path / "null_odds.json")) == {"a": 0.5}
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_answer_offsets_are_only_checked_where_used(tmp_path):
    data = squad_v1_data()
    data[1]["paragraphs"][0]["qas"][2]["answers"][0]["answer_start"] = 10 ** 6
    path = write_squad(tmp_path / "dev.json", data)
    examples, _ = squad.read_squad_examples(str(path), is_training=False)   # prediction ignores answers
    assert len(examples) == 11
    with pytest.raises(DataError, match="outside the context"):
        squad.read_squad_examples(str(path), is_training=True)


def test_v2_file_without_flag_hints(tmp_path):
    path = write_squad(tmp_path / "train.json", squad_v2_data(), "2.0")
    with pytest.raises(DataError, match="--version_2_with_negative"):
        squad.read_squad_examples(str(path), is_training=True)


# ---------------------------------------------------------------------------------------------
# one word split per paragraph


def _awkward_paragraphs():
    """v2-style data: several questions per paragraph, awkward whitespace (tabs, newlines, U+202F,
    runs of spaces), a training answer that does not match its context (dropped) between two kept
    questions, an unanswerable question, and two adjacent paragraphs with the same text."""
    context = "  Ada\tLovelace wrote\n\nthe first\u202fprogram  for the Analytical Engine in 1843.  "
    qas = [{"id": "a1", "question": "Who wrote it?", "answers": [{"answer_start": 2, "text": "Ada\tLovelace"}]},
           {"id": "a2", "question": "When?", "answers": [{"answer_start": context.index("1843"), "text": "1843"}]},
           {"id": "a3", "question": "Dropped?", "answers": [{"answer_start": 0, "text": "Babbage"}]},
           {"id": "a4", "question": "Which engine?",
            "answers": [{"answer_start": context.index("Analytical"), "text": "Analytical Engine"}]},
           {"id": "a5", "question": "Who painted it?", "answers": [], "is_impossible": True}]
    twin = [{"id": "b1", "question": "What did she write?",
             "answers": [{"answer_start": context.index("the first"), "text": "the first\u202fprogram"}]}]
    data = squad_v2_data()
    data.append({"title": "Ada", "paragraphs": [{"context": context, "qas": qas}]})
    data.append({"title": "Ada again", "paragraphs": [{"context": context, "qas": twin}]})
    return data


def _one_question_per_paragraph(data):
    """The same questions, each alone in a paragraph: the reader then splits the context once per
    question, as it did before the split was shared."""
    out = []
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                out.append({"title": article["title"], "paragraphs": [{"context": paragraph["context"], "qas": [qa]}]})
    return out


@pytest.mark.parametrize("is_training", [True, False])
def test_paragraph_split_is_shared_and_examples_equal_the_per_question_split(tmp_path, is_training):
    data = _awkward_paragraphs()
    grouped = write_squad(tmp_path / "grouped.json", data, "2.0")
    single = write_squad(tmp_path / "single.json", _one_question_per_paragraph(data), "2.0")
    examples, dropped = squad.read_squad_examples(str(grouped), is_training, version_2_with_negative=True)
    expected, expected_dropped = squad.read_squad_examples(str(single), is_training, version_2_with_negative=True)
    assert examples == expected and dropped == expected_dropped  # dataclass equality: every field
    assert dropped == (["a3"] if is_training else [])
    by_id = {e.qas_id: e for e in examples}
    # The per-question reads really produced separate lists: the comparison above is not vacuous.
    assert expected[0].doc_tokens is not expected[1].doc_tokens
    # Questions of one paragraph share one word list; other paragraphs have their own.
    eiffel = [by_id[f"q{n:04d}"] for n in range(4)] + [by_id["u0000"]]
    assert all(e.doc_tokens is eiffel[0].doc_tokens for e in eiffel)
    assert by_id["q0004"].doc_tokens is not eiffel[0].doc_tokens
    ada = [by_id[i] for i in ("a1", "a2", "a4", "a5")]
    assert all(e.doc_tokens is ada[0].doc_tokens for e in ada)
    # The awkward paragraph's words, by hand.
    assert ada[0].doc_tokens == ["Ada", "Lovelace", "wrote", "the", "first", "program", "for", "the", "Analytical",
                                 "Engine", "in", "1843."]
    if is_training:
        assert (by_id["a1"].start_position, by_id["a1"].end_position) == (0, 1)
        assert (by_id["a4"].start_position, by_id["a4"].end_position) == (8, 9)
        assert (by_id["b1"].start_position, by_id["b1"].end_position) == (3, 5)
    # The same text in another paragraph is split again (one split per paragraph, not per text).
    assert by_id["b1"].doc_tokens == ada[0].doc_tokens and by_id["b1"].doc_tokens is not ada[0].doc_tokens
