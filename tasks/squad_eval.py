"""The official SQuAD evaluation: evaluate-v1.1.py and evaluate-v2.0.py, same definitions (answer
normalisation, exact match, token F1, v2.0 no-answer thresholds).

Scores are computed once, as fractions of the questions, and multiplied by `scale`: 100 (the
default) gives the official scripts' percent, which run_squad.py writes to eval_results.txt; the
task interface (tasks.squad.Squad.score) asks for scale 1, its 0..1 unit, so no score goes
percent -> fraction. Thresholds and counts are not scores and are never scaled.
"""
import collections
import logging
import re
import string

from file_utils import DataError

logger = logging.getLogger(__name__)


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    exclude = set(string.punctuation)
    s = "".join(ch for ch in s if ch not in exclude)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score_v1(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def iter_questions(dataset):
    """Every question (qa dict) of a SQuAD `data` list."""
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield qa


def evaluate_v1(dataset, predictions, path="<dataset>", scale=100.0):
    """evaluate-v1.1.py: {'exact_match', 'f1'}, in percent (scale 1: in 0..1); a missing prediction
    scores 0."""
    f1 = exact_match = total = 0
    missing = 0
    for qa in iter_questions(dataset):
        total += 1
        qid = str(qa["id"])
        if qid not in predictions:
            missing += 1
            continue
        ground_truths = [a["text"] for a in qa.get("answers", [])]
        if not ground_truths:
            raise DataError(path, None, f"question id={qid!r} has no answers; a SQuAD 2.0 file needs "
                                        "--version_2_with_negative")
        prediction = predictions[qid]
        exact_match += max(exact_match_score(prediction, gt) for gt in ground_truths)
        f1 += max(f1_score_v1(prediction, gt) for gt in ground_truths)
    if missing:
        logger.warning("%d unanswered questions will receive score 0", missing)
    if total == 0:
        return {"exact_match": 0.0, "f1": 0.0}
    return {"exact_match": scale * exact_match / total, "f1": scale * f1 / total}


def _get_tokens(s):
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold, a_pred):
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks, pred_toks = _get_tokens(a_gold), _get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)   # no-answer: 1 iff both are empty
    if num_same == 0:
        return 0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _make_eval_dict(exact_scores, f1_scores, qid_list=None, scale=100.0):
    qids = list(exact_scores) if qid_list is None else qid_list
    total = len(qids)
    if total == 0:
        return collections.OrderedDict([("exact", 0.0), ("f1", 0.0), ("total", 0)])
    return collections.OrderedDict([
        ("exact", scale * sum(exact_scores[k] for k in qids) / total),
        ("f1", scale * sum(f1_scores[k] for k in qids) / total),
        ("total", total)])


def _find_best_thresh(preds, scores, na_probs, qid_to_has_ans, scale=100.0):
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = best_score = num_no_ans
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score, best_thresh = cur_score, na_probs[qid]
    return scale * best_score / max(len(scores), 1), best_thresh


def evaluate_v2(dataset, predictions, na_probs=None, na_prob_thresh=1.0, scale=100.0):
    """evaluate-v2.0.py: exact, f1, total, HasAns_*, NoAns_* and, given na_probs (null_odds.json),
    best_exact(_thresh) / best_f1(_thresh); scores in percent (scale 1: in 0..1). Missing
    predictions are skipped, as the script does."""
    qid_to_has_ans = {str(qa["id"]): bool(qa.get("answers")) for qa in iter_questions(dataset)}
    exact_raw, f1_raw = {}, {}
    for qa in iter_questions(dataset):
        qid = str(qa["id"])
        gold_answers = [a["text"] for a in qa.get("answers", []) if normalize_answer(a["text"])]
        if not gold_answers:
            gold_answers = [""]   # unanswerable: the only correct prediction is the empty string
        if qid not in predictions:
            logger.warning("Missing prediction for %s", qid)
            continue
        a_pred = predictions[qid]
        exact_raw[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
        f1_raw[qid] = max(compute_f1(a, a_pred) for a in gold_answers)

    probs = na_probs if na_probs is not None else {k: 0.0 for k in predictions}

    def apply_thresh(scores):
        out = {}
        for qid, s in scores.items():
            pred_na = probs[qid] > na_prob_thresh
            out[qid] = float(not qid_to_has_ans[qid]) if pred_na else s
        return out

    exact_thresh, f1_thresh = apply_thresh(exact_raw), apply_thresh(f1_raw)
    out = _make_eval_dict(exact_thresh, f1_thresh, scale=scale)
    has_ans = [k for k, v in qid_to_has_ans.items() if v and k in exact_thresh]
    no_ans = [k for k, v in qid_to_has_ans.items() if not v and k in exact_thresh]
    for prefix, qids in (("HasAns", has_ans), ("NoAns", no_ans)):
        if qids:
            for k, v in _make_eval_dict(exact_thresh, f1_thresh, qids, scale).items():
                out[f"{prefix}_{k}"] = v
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _find_best_thresh(
            predictions, exact_raw, na_probs, qid_to_has_ans, scale)
        out["best_f1"], out["best_f1_thresh"] = _find_best_thresh(
            predictions, f1_raw, na_probs, qid_to_has_ans, scale)
    return out
