"""SQuAD scores as run_squad.py computes them, against values worked out by hand.

A tiny dev file (several gold answers per question, unanswerable questions in v2.0) and a
hand-written predictions.json / null_odds.json go through exactly what run_squad.py does after
prediction: `load_squad_json(--predict_file)`, then `evaluate_v2(data, preds, null_odds,
--null_score_diff_threshold)` or `evaluate_v1(data, preds, --predict_file)`. Every expected number
is derived in the comments from the official definitions:
- normalise: lower case, drop punctuation (string.punctuation: ASCII only, so the en dash in
  "24–10" stays), drop the words a/an/the, collapse whitespace;
- EM: normalised strings equal; F1: over the bag of normalised tokens, P = common / |pred|,
  R = common / |gold|, F1 = 2PR / (P + R); both the max over the gold answers;
- v2.0: an unanswerable question's only gold answer is "" (EM = F1 = 1 iff the prediction is
  empty too); a question whose null odds exceed the threshold counts as answered "".
"""
import json

import pytest

from tasks import squad, squad_eval

CONTEXT = ("Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara, California. "
           "The Denver Broncos defeated the Carolina Panthers 24\u201310.")


def _qa(qid, question, golds, impossible=None):
    qa = {"id": qid, "question": question,
          "answers": [{"text": g, "answer_start": CONTEXT.find(g)} for g in golds]}
    if impossible is not None:
        qa["is_impossible"] = impossible
        if impossible:
            qa["plausible_answers"] = [{"text": "Denver Broncos", "answer_start": CONTEXT.find("Denver Broncos")}]
    return qa


def _write(tmp_path, qas, version, preds, null_odds=None):
    """The dev file and the prediction files as run_squad.py would find and write them."""
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps({"version": version, "data": [
        {"title": "Super_Bowl_50", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}, indent=1), encoding="utf-8")
    (tmp_path / "predictions.json").write_text(json.dumps(preds), encoding="utf-8")
    if null_odds is not None:
        (tmp_path / "null_odds.json").write_text(json.dumps(null_odds), encoding="utf-8")
    return str(dev)


def _load(tmp_path, name):
    with open(tmp_path / name, encoding="utf-8") as f:
        return json.load(f)


V2_QAS = [
    _qa("q1", "Which team won?", ["Denver Broncos", "The Denver Broncos", "Broncos"], False),
    _qa("q2", "Where was it played?", ["Levi's Stadium", "Levi's Stadium in Santa Clara, California",
                                       "Santa Clara"], False),
    _qa("q3", "What was the score?", ["24\u201310", "24"], False),
    _qa("q4", "Who won Super Bowl 49?", [], True),
    _qa("q5", "Who lost Super Bowl 49?", [], True),
    _qa("q6", "On which date?", ["February 7, 2016"], False),
    _qa("q7", "Who lost?", ["the Carolina Panthers"], False),
]
V2_PREDS = {
    "q1": "the Broncos.",              # -> "broncos" = gold 3: EM 1, F1 1
    "q2": "Stadium in Santa Clara",    # -> [stadium in santa clara], 4 tokens:
    #   vs "levis stadium" (2):                         common 1, P 1/4, R 1/2 -> F1 (1/4)/(3/4) = 1/3
    #   vs "levis stadium in santa clara california" (6): common 4, P 1,  R 2/3 -> F1 (4/3)/(5/3) = 4/5
    #   vs "santa clara" (2):                           common 2, P 1/2, R 1   -> F1 1/(3/2)     = 2/3
    #   EM 0, F1 = max = 4/5
    "q3": "24\u201310 points",         # -> [24–10 points] (en dash kept):
    #   vs "24–10": common 1, P 1/2, R 1 -> 2/3;  vs "24": no common token ("24–10" is one) -> 0
    #   EM 0, F1 2/3
    "q4": "",                          # unanswerable, answered "": EM 1, F1 1
    "q5": "Carolina Panthers",         # unanswerable, answered: EM 0, F1 0
    "q6": "",                          # answerable, answered "": EM 0, F1 0
    "q7": "Panthers, Carolina",        # -> [panthers carolina] vs [carolina panthers]: EM 0, F1 1 (a bag)
}
# Null odds consistent with predictions.json at threshold 0.0 (as run_squad.py writes them):
# odds > 0 exactly where the prediction is "".
V2_NULL_ODDS = {"q1": -3.0, "q2": -1.0, "q3": -0.5, "q4": 2.0, "q5": -2.0, "q6": 1.0, "q7": -4.0}

# Per question (EM, F1) from the comments above; HasAns = q1 q2 q3 q6 q7, NoAns = q4 q5.
#   EM: 1 0 0 1 0 0 0             -> 2/7
#   F1: 1 4/5 2/3 1 0 0 1 = 67/15 -> 67/105
#   HasAns EM 1/5; F1 (1 + 4/5 + 2/3 + 0 + 1)/5 = (52/15)/5 = 52/75.  NoAns EM = F1 = 1/2.
V2_EXPECTED = {
    "exact": 100 * 2 / 7, "f1": 100 * 67 / 105, "total": 7,
    "HasAns_exact": 20.0, "HasAns_f1": 100 * 52 / 75, "HasAns_total": 5,
    "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
}


def test_v2_scores_by_hand_without_null_odds(tmp_path):
    path = _write(tmp_path, V2_QAS, "v2.0", V2_PREDS)
    data, _, _ = squad.load_squad_json(path)
    out = squad_eval.evaluate_v2(data, _load(tmp_path, "predictions.json"))
    assert out == pytest.approx(V2_EXPECTED)
    assert "best_f1" not in out
    # The file is a valid v2.0 predict file for the runner (several golds, plausible_answers).
    examples, _ = squad.read_squad_examples(path, False, True)
    assert [e.qas_id for e in examples] == list(V2_PREDS)


def test_v2_scores_by_hand_with_null_odds_and_best_threshold(tmp_path):
    path = _write(tmp_path, V2_QAS, "v2.0", V2_PREDS, V2_NULL_ODDS)
    data, _, _ = squad.load_squad_json(path)
    preds, odds = _load(tmp_path, "predictions.json"), _load(tmp_path, "null_odds.json")
    # Threshold 0.0: only q4 and q6 (odds 2.0, 1.0) count as "no answer", and they are "" already.
    out = squad_eval.evaluate_v2(data, preds, odds, 0.0)
    expected = dict(V2_EXPECTED)
    # Best-threshold sweep, questions by odds: q7 -4, q1 -3, q5 -2, q2 -1, q3 -0.5, q6 1, q4 2.
    # Start at the NoAns count, 2 (everything answered ""); each step answers one more question:
    #   EM: q7 +0 = 2, q1 +1 = 3 (best, at -3.0), q5 -1 = 2 (an answer to an unanswerable one),
    #       q2 +0, q3 +0, q6 +0, q4 +0 ("" is no answer) -> best 3/7 at -3.0
    #   F1: q7 +1 = 3 (best at -4.0), q1 +1 = 4 (-3.0), q5 -1 = 3, q2 +4/5 = 3.8, q3 +2/3 = 67/15
    #       (best at -0.5), q6 +0, q4 +0 -> best 67/15 / 7 = 67/105 at -0.5
    expected.update(best_exact=100 * 3 / 7, best_exact_thresh=-3.0, best_f1=100 * 67 / 105, best_f1_thresh=-0.5)
    assert out == pytest.approx(expected)
    # Threshold -1.5 (--null_score_diff_threshold -1.5): odds above it (q2, q3, q4, q6) count as "".
    #   q1 1/1, q2 0/0, q3 0/0, q4 1/1, q5 0/0 (odds -2: its text stands), q6 0/0, q7 0/1
    #   EM 2/7, F1 3/7; HasAns EM 1/5, F1 2/5; NoAns 1/2, 1/2
    out = squad_eval.evaluate_v2(data, preds, odds, -1.5)
    assert {k: out[k] for k in V2_EXPECTED} == pytest.approx({
        "exact": 100 * 2 / 7, "f1": 100 * 3 / 7, "total": 7, "HasAns_exact": 20.0, "HasAns_f1": 40.0,
        "HasAns_total": 5, "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2})
    # Threshold -1.0, q2's own odds: only odds strictly above count, so q2 keeps its answer (4/5).
    #   F1: 1 + 4/5 + 0 + 1 + 0 + 0 + 1 = 19/5 -> 19/35; HasAns F1 (1 + 4/5 + 0 + 0 + 1)/5 = 14/25
    out = squad_eval.evaluate_v2(data, preds, odds, -1.0)
    assert (out["exact"], out["f1"], out["HasAns_f1"]) == pytest.approx((100 * 2 / 7, 100 * 19 / 35, 56.0))


V1_QAS = [
    _qa("a1", "Which team won?", ["Denver Broncos", "The Denver Broncos", "Broncos"]),
    _qa("a2", "Where was it played?", ["Levi's Stadium", "Levi's Stadium in Santa Clara, California", "Santa Clara"]),
    _qa("a3", "What was the score?", ["24\u201310", "24"]),
    _qa("a4", "Who lost?", ["the Carolina Panthers"]),
    _qa("a5", "On which date?", ["February 7, 2016"]),
    _qa("a6", "Which article?", ["The"]),
    _qa("a7", "Which stadium?", ["Levi's Stadium"]),
]
V1_PREDS = {
    "a1": "the Broncos.",              # EM 1, F1 1 (as q1)
    "a2": "Stadium in Santa Clara",    # EM 0, F1 4/5 (as q2)
    "a3": "24\u201310 points",         # EM 0, F1 2/3 (as q3)
    "a4": "Panthers, Carolina",        # EM 0, F1 1 (as q7)
    # a5: no prediction -> 0 and 0, still counted in the total
    "a6": "an",                        # both normalise to "": EM 1; evaluate-v1.1.py's F1 of two empty
    #                                    token lists is 0 (no common token), unlike v2.0's 1
    "a7": "",                          # EM 0, F1 0
}


def test_v1_scores_by_hand(tmp_path, caplog):
    path = _write(tmp_path, V1_QAS, "1.1", V1_PREDS)
    data, _, version = squad.load_squad_json(path)
    assert version == "1.1"
    with caplog.at_level("WARNING"):
        out = squad_eval.evaluate_v1(data, _load(tmp_path, "predictions.json"), path)
    assert "1 unanswered questions will receive score 0" in caplog.text
    # EM: 1 0 0 0 0 1 0 -> 2/7.  F1: 1 + 4/5 + 2/3 + 1 + 0 + 0 + 0 = 52/15 -> 52/105.
    assert out == pytest.approx({"exact_match": 100 * 2 / 7, "f1": 100 * 52 / 105})
    examples, _ = squad.read_squad_examples(path, False)
    assert len(examples) == 7
