"""SQuAD v1.1 / v2.0: read the JSON files, cut contexts into sliding windows, decode answer spans,
score them with the official EM/F1 definitions (tasks/squad_eval.py).

Pipeline (as in google-research/bert and pytorch-pretrained-BERT `run_squad.py`):
  read_squad_examples -> convert_examples_to_features (one feature per doc window; a parallel
  list of `SquadFeatureMeta` keeps what decoding needs) -> model start/end logits ->
  decode_predictions (n-best spans, get_final_text, v2 null answers) -> write_prediction_files ->
  evaluate_v1 / evaluate_v2 (tasks/squad_eval.py: the official evaluate-v1.1.py / evaluate-v2.0.py).

Differences from the 2019 script, all deliberate:
- `nbest_predictions.json` is filled for v1.1 too (the old script left it empty, issue #377).
- Malformed records raise `DataError` naming the file, the record path and (when it can be
  found) the line of the question id, instead of a KeyError deep inside the loop. Question ids
  must be unique (predictions are keyed by id; a repeat would silently lose one). UTF-8, with or
  without a BOM; anything else is a DataError with the line.
- Training answers whose text does not match the context are still dropped (as the reference
  does), but the drops are counted and returned so the runner can report them.
- Span candidates are taken from the real tokens of a window only (the engine pads dynamically,
  so padding positions are never scored).
"""
import collections
import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field

from file_utils import ConfigError, DataError, atomic_open, file_fingerprint, utf8_error
from tasks.base import STDIN, Family, Task, plain_lines, pop_column, register
from tasks.squad_eval import evaluate_v1, evaluate_v2, iter_questions

logger = logging.getLogger(__name__)

FIRST_UNIQUE_ID = 1000000000


@dataclass
class SquadExample:
    qas_id: str
    question_text: str
    doc_tokens: list
    orig_answer_text: str = None
    start_position: int = None     # word index in doc_tokens (training only)
    end_position: int = None
    is_impossible: bool = False


@dataclass
class SquadFeatureMeta:
    """Everything decoding needs about one window; kept apart from the model inputs. Plain lists,
    so the feature cache stores a meta as it is (`asdict`) and rebuilds it with `SquadFeatureMeta(**d)`."""
    unique_id: int
    example_index: int
    doc_span_index: int
    tokens: list
    doc_start: int = 0                                 # position of the window's first document piece
    doc_words: list = field(default_factory=list)      # word index of each document piece of the window
    max_context: list = field(default_factory=list)    # per document piece: this window is its max context

    def word_of(self, position):
        """The word index of the document piece at `position`, None outside the document part."""
        k = position - self.doc_start
        return self.doc_words[k] if 0 <= k < len(self.doc_words) else None

    def is_max_context(self, position):
        k = position - self.doc_start
        return bool(self.max_context[k]) if 0 <= k < len(self.max_context) else False

    @property
    def token_to_orig_map(self):
        """{feature position: word index} of the document pieces."""
        return {self.doc_start + k: w for k, w in enumerate(self.doc_words)}

    @property
    def token_is_max_context(self):
        """{feature position: bool} of the document pieces."""
        return {self.doc_start + k: bool(m) for k, m in enumerate(self.max_context)}


def _is_whitespace(c):
    return c in (" ", "\t", "\r", "\n") or ord(c) == 0x202F


def whitespace_tokenize(text):
    text = text.strip()
    return text.split() if text else []


def _line_of(raw_text, value, key="id", nth=1):
    """Line number (1-based) of the `nth` `"<key>": <value>` in the raw JSON text, or None."""
    if raw_text is None or value is None:
        return None
    # The lookahead ends the value, so that `"id": 1` does not find `"id": 12`.
    pattern = (r'"' + re.escape(key) + r'"\s*:\s*' + re.escape(json.dumps(value, ensure_ascii=False))
               + r'(?=\s*[,}\]])')
    for count, match in enumerate(re.finditer(pattern, raw_text), 1):
        if count == nth:
            return raw_text.count("\n", 0, match.start()) + 1
    return None


def load_squad_json(path):
    """Read a SQuAD file; return (the `data` list, raw text). Bad JSON -> DataError with line."""
    try:
        # utf-8-sig: a BOM (Windows editors write one) is not part of the JSON text.
        with open(path, encoding="utf-8-sig") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(path, None, f"cannot read file: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise utf8_error(path, universal_newlines=False) from None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
    except ValueError as exc:   # e.g. an integer of more than 4300 digits
        raise DataError(path, None, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise DataError(path, None, "invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise DataError(path, 1, 'not a SQuAD file: expected an object with a "data" list')
    version = obj.get("version")
    return obj["data"], raw, version


def _valid_id(value):
    return isinstance(value, (str, int)) and not isinstance(value, bool)


class _QaChecker:
    """Checks the structure of a SQuAD `data` list as _iter_qas walks it: a problem is a DataError
    naming the record (`data[i].paragraphs[j].qas[k] (title=..., id=...)`) and, where it can be
    found, the line of the question id (else of the article's title)."""

    def __init__(self, path, raw):
        self.path, self.raw = path, raw
        self.first_seen = {}                         # str(id) -> (record path, id) of its first question
        self.same_literal = collections.Counter()    # (type, id) -> occurrences so far, to find the right line

    def fail(self, where, message, qas_id=None, title=None, nth=1):
        line = _line_of(self.raw, qas_id, nth=nth) if qas_id is not None else _line_of(self.raw, title, "title")
        raise DataError(self.path, line, f"{where}: {message}")

    @staticmethod
    def first_id(paragraph):
        """Best line for a broken paragraph: its first question's id (the context has no key of its own)."""
        qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
        if isinstance(qas, list) and qas and isinstance(qas[0], dict) and _valid_id(qas[0].get("id")):
            return qas[0]["id"]
        return None

    def article(self, i, article):
        """The article's title (None if it has none) after checking its paragraph list."""
        title = article.get("title") if isinstance(article, dict) else None
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            self.fail(f"data[{i}]", 'missing "paragraphs" list', title=title if isinstance(title, str) else None)
        return title

    def paragraph(self, where, paragraph, title):
        if not isinstance(paragraph, dict):
            self.fail(where, "is not an object", title=title)
        if not isinstance(paragraph.get("context"), str):
            problem = "is not a string" if "context" in paragraph else "is missing"
            self.fail(where, f'"context" {problem}', self.first_id(paragraph), title=title)
        if not isinstance(paragraph.get("qas"), list):
            self.fail(where, 'missing "qas" list', title=title)

    def question(self, record, qa, title):
        """`where` of a question (record and id) after checking its id, text and answers."""
        if not isinstance(qa, dict) or not _valid_id(qa.get("id")):
            self.fail(record + (f" (title={title!r})" if title else ""), 'missing question "id" (a string)',
                      title=title)
        qid = str(qa["id"])
        where = f"{record} (id={qid!r})"
        self.same_literal[type(qa["id"]), qa["id"]] += 1
        if qid in self.first_seen:
            first_record, first_id_value = self.first_seen[qid]
            first_line = _line_of(self.raw, first_id_value)
            self.fail(where, f"duplicate question id {qid!r}, first used by {first_record}"
                             + (f" (line {first_line})" if first_line else "")
                             + "; ids must be unique (predictions are keyed by id)",
                      qa["id"], nth=self.same_literal[type(qa["id"]), qa["id"]])
        self.first_seen[qid] = (record, qa["id"])
        if not isinstance(qa.get("question"), str):
            self.fail(where, 'missing "question" string', qa["id"])
        self.answers(where, qa)
        return where

    def answers(self, where, qa):
        answers = qa.get("answers", [])
        if not isinstance(answers, list):
            self.fail(where, '"answers" is not a list', qa["id"])
        for n, answer in enumerate(answers):
            if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
                self.fail(where, f'answers[{n}] has no "text" string', qa["id"])
            start = answer.get("answer_start")
            # None: only used for training, checked there
            if start is not None and (not isinstance(start, int) or isinstance(start, bool)):
                self.fail(where, f"answers[{n}].answer_start is not an integer: {start!r}", qa["id"])


def _iter_qas(path, data, raw):
    """Yield (where, paragraph_text, qa) for every question, validating the structure (answer
    offsets are checked where they are used: training). Question ids must be unique: predictions,
    null odds and the official scripts are all keyed by id, so a second question with the same id
    would silently lose its prediction.

    `where` names the record for error messages: `data[i].paragraphs[j].qas[k] (title=..., id=...)`.
    """
    check = _QaChecker(path, raw)
    for i, article in enumerate(data):
        title = check.article(i, article)
        for j, paragraph in enumerate(article["paragraphs"]):
            check.paragraph(f"data[{i}].paragraphs[{j}]" + (f" (title={title!r})" if title is not None else ""),
                            paragraph, title)
            for k, qa in enumerate(paragraph["qas"]):
                yield check.question(f"data[{i}].paragraphs[{j}].qas[{k}]", qa, title), paragraph["context"], qa


def _split_context(context):
    """(words, character -> word index) of a context, words split at whitespace as the reference does;
    a whitespace character maps to the word before it (-1 before the first word)."""
    doc_tokens, char_to_word_offset = [], []
    prev_is_whitespace = True
    for c in context:
        if _is_whitespace(c):
            prev_is_whitespace = True
        else:
            if prev_is_whitespace:
                doc_tokens.append(c)
            else:
                doc_tokens[-1] += c
            prev_is_whitespace = False
        char_to_word_offset.append(len(doc_tokens) - 1)
    return doc_tokens, char_to_word_offset


def _training_answer(path, raw, where, qa, v2, context, doc_tokens, char_to_word_offset):
    """(start word, end word, answer text, is_impossible) of a training question; None when the answer
    text is not found at answer_start (the reference drops the question)."""
    answers = qa.get("answers", [])
    is_impossible = False
    if v2:
        is_impossible = qa.get("is_impossible", len(answers) == 0)
        if not isinstance(is_impossible, bool):
            raise DataError(path, _line_of(raw, qa["id"]), f"{where}: is_impossible must be true or false")
    if len(answers) != 1 and not is_impossible:
        hint = "" if answers or v2 else "; SQuAD 2.0 files need --version_2_with_negative"
        raise DataError(path, _line_of(raw, qa["id"]), f"{where}: for training each question needs exactly 1 "
                                                       f"answer (found {len(answers)}){hint}")
    if is_impossible:
        return -1, -1, "", True
    answer = answers[0]
    orig_answer_text = answer["text"]
    if answer.get("answer_start") is None:   # missing, or null
        raise DataError(path, _line_of(raw, qa["id"]), f"{where}: answer has no answer_start")
    if not orig_answer_text.strip():
        raise DataError(path, _line_of(raw, qa["id"]), f"{where}: empty answer text")
    answer_offset = answer["answer_start"]
    if answer_offset < 0 or answer_offset + len(orig_answer_text) > len(context):
        raise DataError(path, _line_of(raw, qa["id"]),
                        f"{where}: answer_start {answer_offset} with answer length "
                        f"{len(orig_answer_text)} is outside the context ({len(context)} characters)")
    # -1 = whitespace before the first word: the answer's first word is word 0 (left at -1 it would
    # index the last word of the context).
    start_position = max(char_to_word_offset[answer_offset], 0)
    end_position = char_to_word_offset[answer_offset + len(orig_answer_text) - 1]
    actual_text = " ".join(doc_tokens[start_position:end_position + 1])
    cleaned_answer_text = " ".join(whitespace_tokenize(orig_answer_text))
    if actual_text.find(cleaned_answer_text) == -1:
        logger.warning("%s: %s: could not find answer %r in %r; question dropped",
                       path, where, cleaned_answer_text, actual_text)
        return None
    return start_position, end_position, orig_answer_text, False


def read_squad_examples(path, is_training, version_2_with_negative=False, loaded=None):
    """Read a SQuAD file into SquadExamples (`loaded`: load_squad_json(path) when already read).

    Returns (examples, dropped) where `dropped` lists the question ids of training answers whose
    text was not found at answer_start (dropped with a warning, as the reference does).
    """
    data, raw, _ = loaded if loaded is not None else load_squad_json(path)
    examples, dropped, unanswered, answered = [], [], [], 0
    split_context = None
    for where, context, qa in _iter_qas(path, data, raw):
        # The questions of one paragraph share its word list (and offsets): the paragraph's context
        # (one str object) is split once, not once per question (v1.1 train: ~5 per paragraph).
        if context is not split_context:
            split_context = context
            doc_tokens, char_to_word_offset = _split_context(context)
        answer = (None, None, None, False)
        if is_training:
            answer = _training_answer(path, raw, where, qa, version_2_with_negative, context, doc_tokens,
                                      char_to_word_offset)
            if answer is None:
                dropped.append(str(qa["id"]))
                continue
        elif not version_2_with_negative and "answers" in qa:
            if qa["answers"]:
                answered += 1
            else:
                unanswered.append((where, qa["id"]))
        start_position, end_position, orig_answer_text, is_impossible = answer
        examples.append(SquadExample(str(qa["id"]), qa["question"], doc_tokens, orig_answer_text,
                                     start_position, end_position, is_impossible))
    if unanswered and answered:
        # Some questions have gold answers, some an empty list: a SQuAD 2.0 file read as v1.1, which
        # the v1.1 evaluation would only reject after training.
        where, qid = unanswered[0]
        raise DataError(path, _line_of(raw, qid), f"{where}: no answers while other questions have some; "
                                                  "SQuAD 2.0 files need --version_2_with_negative")
    if dropped:
        logger.warning("%s: dropped %d of %d training questions whose answer text does not match "
                       "the context", path, len(dropped), len(dropped) + len(examples))
    return examples, dropped


def _improve_answer_span(doc_tokens, input_start, input_end, tokenizer, orig_answer_text):
    """Tightest sub-span whose word pieces equal the tokenized answer (e.g. '1895' in '(1895-1943)')."""
    tok_answer_text = " ".join(tokenizer.tokenize(orig_answer_text))
    for new_start in range(input_start, input_end + 1):
        for new_end in range(input_end, new_start - 1, -1):
            if " ".join(doc_tokens[new_start:new_end + 1]) == tok_answer_text:
                return new_start, new_end
    return input_start, input_end


def _check_is_max_context(doc_spans, cur_span_index, position):
    """True iff window `cur_span_index` gives token `position` the most context (ties: earlier window)."""
    best_score, best_span_index = None, None
    for span_index, (start, length) in enumerate(doc_spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_span_index = score, span_index
    return cur_span_index == best_span_index


def doc_windows(num_tokens, max_tokens_for_doc, doc_stride):
    """(start, length) of the sliding windows over `num_tokens` document word pieces."""
    spans, start_offset = [], 0
    while start_offset < num_tokens:
        length = min(num_tokens - start_offset, max_tokens_for_doc)
        spans.append((start_offset, length))
        if start_offset + length == num_tokens:
            break
        start_offset += min(length, doc_stride)
    return spans


def convert_examples_to_features(examples, tokenizer, max_seq_length, doc_stride, max_query_length,
                                 is_training):
    """Examples -> (features, metas): one unpadded feature dict per document window.

    Feature keys: input_ids, token_type_ids, attention_mask, and for training start_positions /
    end_positions (0 = the [CLS] position when the answer is not inside the window or there is none).
    """
    features, metas = [], []
    unique_id = FIRST_UNIQUE_ID
    cls, sep = "[CLS]", "[SEP]"
    for example_index, example in enumerate(examples):
        query_tokens = tokenizer.tokenize(example.question_text)[:max_query_length]

        tok_to_orig_index, orig_to_tok_index, all_doc_tokens = [], [], []
        for i, token in enumerate(example.doc_tokens):
            orig_to_tok_index.append(len(all_doc_tokens))
            for sub_token in tokenizer.tokenize(token):
                tok_to_orig_index.append(i)
                all_doc_tokens.append(sub_token)

        tok_start_position = tok_end_position = None
        if is_training and example.is_impossible:
            tok_start_position = tok_end_position = -1
        if is_training and not example.is_impossible:
            tok_start_position = orig_to_tok_index[example.start_position]
            if example.end_position < len(example.doc_tokens) - 1:
                tok_end_position = orig_to_tok_index[example.end_position + 1] - 1
            else:
                tok_end_position = len(all_doc_tokens) - 1
            tok_start_position, tok_end_position = _improve_answer_span(
                all_doc_tokens, tok_start_position, tok_end_position, tokenizer,
                example.orig_answer_text)

        max_tokens_for_doc = max_seq_length - len(query_tokens) - 3
        if max_tokens_for_doc <= 0:
            raise ConfigError(f"--max_seq_length {max_seq_length} leaves no room for the document "
                              f"after a {len(query_tokens)}-token question; raise it or lower "
                              "--max_query_length")
        doc_spans = doc_windows(len(all_doc_tokens), max_tokens_for_doc, doc_stride)

        for doc_span_index, (span_start, span_length) in enumerate(doc_spans):
            tokens = [cls] + query_tokens + [sep]
            doc_start, span = len(tokens), range(span_start, span_start + span_length)
            doc_words = [tok_to_orig_index[i] for i in span]
            max_context = [_check_is_max_context(doc_spans, doc_span_index, i) for i in span]
            tokens += [all_doc_tokens[i] for i in span] + [sep]
            segment_ids = [0] * doc_start + [1] * (span_length + 1)
            input_ids = tokenizer.convert_tokens_to_ids(tokens)
            feature = {"input_ids": input_ids, "token_type_ids": segment_ids,
                       "attention_mask": [1] * len(input_ids)}
            if is_training:
                start_position = end_position = 0
                if not example.is_impossible:
                    doc_end = span_start + span_length - 1
                    if span_start <= tok_start_position and tok_end_position <= doc_end:
                        doc_offset = len(query_tokens) + 2
                        start_position = tok_start_position - span_start + doc_offset
                        end_position = tok_end_position - span_start + doc_offset
                feature["start_positions"] = start_position
                feature["end_positions"] = end_position
            features.append(feature)
            metas.append(SquadFeatureMeta(unique_id, example_index, doc_span_index, tokens, doc_start, doc_words,
                                          max_context))
            unique_id += 1
    return features, metas


# ----------------------------------------------------------------------------------------------
# Decoding


def _get_best_indexes(logits, n_best_size):
    """Indices of the n largest logits (stable: ties keep the lower index first)."""
    ranked = sorted(enumerate(logits), key=lambda x: x[1], reverse=True)
    return [i for i, _ in ranked[:n_best_size]]


def _compute_softmax(scores):
    if not scores:
        return []
    max_score = max(scores)
    exps = [math.exp(s - max_score) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def get_final_text(pred_text, orig_text, basic_tokenizer, verbose_logging=False):
    """Project the normalized prediction `pred_text` back onto the original words `orig_text`.

    `basic_tokenizer` is the BasicTokenizer of the model's tokenizer (same do_lower_case).
    Character-aligns the basic-tokenized original with the original after removing spaces; on
    any failure the whole original span is returned (as the reference does).
    """
    def _strip_spaces(text):
        ns_chars, ns_to_s_map = [], {}
        for i, c in enumerate(text):
            if c == " ":
                continue
            ns_to_s_map[len(ns_chars)] = i
            ns_chars.append(c)
        return "".join(ns_chars), ns_to_s_map

    tok_text = " ".join(basic_tokenizer.tokenize(orig_text))
    start_position = tok_text.find(pred_text)
    if start_position == -1:
        if verbose_logging:
            logger.info("Unable to find text: %r in %r", pred_text, orig_text)
        return orig_text
    end_position = start_position + len(pred_text) - 1

    orig_ns_text, orig_ns_to_s_map = _strip_spaces(orig_text)
    tok_ns_text, tok_ns_to_s_map = _strip_spaces(tok_text)
    if len(orig_ns_text) != len(tok_ns_text):
        if verbose_logging:
            logger.info("Length not equal after stripping spaces: %r vs %r", orig_ns_text, tok_ns_text)
        return orig_text
    tok_s_to_ns_map = {tok_index: i for i, tok_index in tok_ns_to_s_map.items()}

    orig_start_position = None
    if start_position in tok_s_to_ns_map:
        orig_start_position = orig_ns_to_s_map.get(tok_s_to_ns_map[start_position])
    if orig_start_position is None:
        return orig_text
    orig_end_position = None
    if end_position in tok_s_to_ns_map:
        orig_end_position = orig_ns_to_s_map.get(tok_s_to_ns_map[end_position])
    if orig_end_position is None:
        return orig_text
    return orig_text[orig_start_position:orig_end_position + 1]


def _window_spans(meta, feature_i, s_logits, e_logits, n_best_size, max_answer_length):
    """Candidate spans of one window: (score, feature_i, start, end, start_logit, end_logit) for the
    n_best start x end positions inside the document part, in the window where the start word has
    its maximum context, at most max_answer_length pieces long."""
    spans = []
    for start_index in _get_best_indexes(s_logits, n_best_size):
        if meta.word_of(start_index) is None or not meta.is_max_context(start_index):
            continue
        for end_index in _get_best_indexes(e_logits, n_best_size):
            if meta.word_of(end_index) is None or end_index < start_index:
                continue
            if end_index - start_index + 1 > max_answer_length:
                continue
            spans.append((s_logits[start_index] + e_logits[end_index], feature_i,
                          start_index, end_index, s_logits[start_index], e_logits[end_index]))
    return spans


def _span_text(meta, example, start_index, end_index, basic_tokenizer, verbose_logging):
    """The answer text of a span: its word pieces mapped back onto the original words."""
    tok_text = " ".join(meta.tokens[start_index:end_index + 1])
    tok_text = tok_text.replace(" ##", "").replace("##", "")
    tok_text = " ".join(tok_text.strip().split())
    orig_doc_start, orig_doc_end = meta.word_of(start_index), meta.word_of(end_index)
    orig_text = " ".join(example.doc_tokens[orig_doc_start:orig_doc_end + 1])
    return get_final_text(tok_text, orig_text, basic_tokenizer, verbose_logging)


def _nbest_answers(prelim, metas, example, n_best_size, basic_tokenizer, verbose_logging):
    """The n best distinct answers [(text, start_logit, end_logit)] of the sorted candidate spans."""
    seen, nbest = set(), []
    for _, feature_i, start_index, end_index, start_logit, end_logit in prelim:
        if len(nbest) >= n_best_size:
            break
        if start_index > 0:   # a real span (index 0 is [CLS], the null answer)
            final_text = _span_text(metas[feature_i], example, start_index, end_index, basic_tokenizer,
                                    verbose_logging)
            if final_text in seen:
                continue
        else:
            final_text = ""
        seen.add(final_text)
        nbest.append((final_text, start_logit, end_logit))
    return nbest, seen


def _decode_example(example, feature_ids, metas, start_logits, end_logits, n_best_size, max_answer_length,
                    basic_tokenizer, v2, verbose_logging):
    """(n best answers [(text, start_logit, end_logit)], null score) of one question."""
    prelim = []
    score_null, null_feature_i, null_start_logit, null_end_logit = 1000000, None, 0.0, 0.0
    for feature_i in feature_ids:
        n = len(metas[feature_i].tokens)
        s_logits = [float(x) for x in start_logits[feature_i][:n]]
        e_logits = [float(x) for x in end_logits[feature_i][:n]]
        if v2 and s_logits[0] + e_logits[0] < score_null:
            score_null, null_feature_i = s_logits[0] + e_logits[0], feature_i
            null_start_logit, null_end_logit = s_logits[0], e_logits[0]
        prelim.extend(_window_spans(metas[feature_i], feature_i, s_logits, e_logits, n_best_size,
                                    max_answer_length))
    if v2 and null_feature_i is not None:
        prelim.append((null_start_logit + null_end_logit, null_feature_i, 0, 0, null_start_logit, null_end_logit))
    prelim.sort(key=lambda p: p[0], reverse=True)   # stable, like the reference's sorted()
    nbest, seen = _nbest_answers(prelim, metas, example, n_best_size, basic_tokenizer, verbose_logging)
    if v2:
        if "" not in seen:
            nbest.append(("", null_start_logit, null_end_logit))
        if len(nbest) == 1:   # only the null answer: add a nonce so a non-null entry exists
            nbest.insert(0, ("empty", 0.0, 0.0))
    if not nbest:
        nbest.append(("empty", 0.0, 0.0))
    return nbest, score_null


def decode_predictions(examples, metas, start_logits, end_logits, n_best_size, max_answer_length,
                       basic_tokenizer, version_2_with_negative=False, null_score_diff_threshold=0.0,
                       verbose_logging=False):
    """Turn per-window start/end logits into answers.

    `start_logits[i]` / `end_logits[i]` are sequences of floats for `metas[i]` (at least
    len(metas[i].tokens) long; anything beyond is padding and ignored).
    Returns (predictions: qid -> text, nbest: qid -> list of dicts, null_odds: qid -> float;
    empty unless v2), all ordered like `examples`.
    """
    by_example = collections.defaultdict(list)
    for i, meta in enumerate(metas):
        by_example[meta.example_index].append(i)

    predictions, all_nbest, null_odds = (collections.OrderedDict() for _ in range(3))
    for example_index, example in enumerate(examples):
        nbest, score_null = _decode_example(example, by_example[example_index], metas, start_logits, end_logits,
                                            n_best_size, max_answer_length, basic_tokenizer,
                                            version_2_with_negative, verbose_logging)
        probs = _compute_softmax([s + e for _, s, e in nbest])
        all_nbest[example.qas_id] = [
            collections.OrderedDict([("text", text), ("probability", p),
                                     ("start_logit", s), ("end_logit", e)])
            for (text, s, e), p in zip(nbest, probs)]
        if not version_2_with_negative:
            predictions[example.qas_id] = nbest[0][0]
        else:
            best_non_null = next((entry for entry in nbest if entry[0]), ("empty", 0.0, 0.0))
            score_diff = score_null - best_non_null[1] - best_non_null[2]
            null_odds[example.qas_id] = score_diff
            predictions[example.qas_id] = "" if score_diff > null_score_diff_threshold else best_non_null[0]
    return predictions, all_nbest, null_odds


def write_prediction_files(output_dir, predictions, nbest, null_odds=None):
    """predictions.json, nbest_predictions.json and (v2) null_odds.json, each written atomically."""
    files = [("predictions.json", predictions), ("nbest_predictions.json", nbest)]
    if null_odds is not None:
        files.append(("null_odds.json", null_odds))
    for name, obj in files:
        with atomic_open(os.path.join(output_dir, name), "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=4) + "\n")


# ----------------------------------------------------------------------------------------------
# The SQuAD family behind the task interface (tasks.base.Task)

# File names looked for in a data folder (--task_data squad2=DIR), per version; the first is official.
SQUAD_FILES = {1: {"train": ("train-v1.1.json", "train.json"), "dev": ("dev-v1.1.json", "dev.json")},
               2: {"train": ("train-v2.0.json", "train.json"), "dev": ("dev-v2.0.json", "dev.json")}}
# Metrics kept for tables and model selection (0..1; counts and thresholds are not scores).
_V2_KEYS = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1")


def _gold_subset(data, qids):
    """The SQuAD `data` list cut to the questions `qids` (an evaluation on the first N questions)."""
    out = []
    for article in data:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            qas = [qa for qa in paragraph["qas"] if str(qa["id"]) in qids]
            if qas:
                paragraphs.append(dict(paragraph, qas=qas))
        if paragraphs:
            out.append(dict(article, paragraphs=paragraphs))
    return out


class Squad(Task):
    """SQuAD v1.1 (`squad1`) or v2.0 (`squad2`, unanswerable questions) as a task of a run.

    Files: `train_file` / `dev_file`, or the official names in `data_dir` (SQUAD_FILES). The dev
    file is both the evaluation set (EM/F1 by the official scripts' rules, in 0..1) and what
    `write_predictions` predicts (predictions.json, nbest_predictions.json, v2 null_odds.json):
    SQuAD has no public test set."""
    head_type = "span"
    num_labels = 2
    main_metric = "f1"

    def __init__(self, tokenizer, version=1, data_dir=None, train_file=None, dev_file=None, name=None,
                 max_seq_length=384, doc_stride=128, max_query_length=64, n_best_size=20, max_answer_length=30,
                 null_score_diff_threshold=0.0, cache=None, max_eval_examples=None, verbose_logging=False):
        super().__init__(cache, max_eval_examples)
        if version not in SQUAD_FILES:
            raise ConfigError(f"SQuAD version must be 1 or 2, got {version}")
        self.version, self.v2 = version, version == 2
        self.name = name or f"squad{version}"
        self.tokenizer, self.data_dir = tokenizer, data_dir
        self.files = {"train": train_file, "dev": dev_file}
        self.max_seq_length, self.doc_stride, self.max_query_length = max_seq_length, doc_stride, max_query_length
        self.n_best_size, self.max_answer_length = n_best_size, max_answer_length
        self.null_score_diff_threshold, self.verbose_logging = null_score_diff_threshold, verbose_logging
        self.train_examples, self.dropped = 0, []
        self.dev_examples, self.dev_features, self.dev_metas, self.gold = None, None, None, None
        self.dev_version = None   # the dev file's "version" field

    def file(self, split):
        if self.files.get(split):
            return self.files[split]
        names = SQUAD_FILES[self.version][split]
        for name in names:
            path = os.path.join(self.data_dir or ".", name)
            if os.path.isfile(path):
                return path
        raise DataError(os.path.join(self.data_dir or ".", names[0]), None,
                        f"missing SQuAD v{'2.0' if self.v2 else '1.1'} {split} file (or {', '.join(names[1:])})")

    def _features(self, path, is_training, examples):
        key = {"task": f"{self.name}-{'train' if is_training else 'predict'}", "file": file_fingerprint(path),
               "vocab": self.tokenizer.vocab_fingerprint, "lower": self.tokenizer.do_lower_case,
               "max_seq_length": self.max_seq_length, "doc_stride": self.doc_stride,
               "max_query_length": self.max_query_length, "v2": self.v2, "count": len(examples), "format": 3}

        def build():
            features, metas = convert_examples_to_features(examples, self.tokenizer, self.max_seq_length,
                                                           self.doc_stride, self.max_query_length, is_training)
            if not is_training:
                for feature, meta in zip(features, metas):
                    feature["meta"] = dataclasses.asdict(meta)
            return features

        features = self.cache(key, build)
        metas = [SquadFeatureMeta(**meta) for meta in pop_column(features, "meta")] if not is_training else None
        return features, metas

    def prepare(self, train=True, dev=True, test=False):
        if train:
            path = self.file("train")
            examples, self.dropped = read_squad_examples(path, True, self.v2)
            self.train_examples = len(examples)
            self.train_features, _ = self._features(path, True, examples)
            self.check_training_set(path, self.train_features)
        if dev or test:
            path = self.file("dev")
            loaded = load_squad_json(path)   # read once: the examples and the gold answers
            data, self.dev_version = loaded[0], loaded[2]
            examples, _ = read_squad_examples(path, False, self.v2, loaded)
            self.dev_examples = self._limit(examples)
            self.dev_features, self.dev_metas = self._features(path, False, self.dev_examples)
            qids = {e.qas_id for e in self.dev_examples}
            # A file with gold answers is scored; one without any (a test file) is only predicted.
            has_answers = any(qa.get("answers") for qa in iter_questions(data))
            self.gold = _gold_subset(data, qids) if has_answers else None
        return self

    def count_train_examples(self):
        return len(read_squad_examples(self.file("train"), True, self.v2)[0])

    def decode(self, predict):
        """(predictions, nbest, null_odds) of the dev questions."""
        out = predict(self.dev_features)
        preds, nbest, null_odds = decode_predictions(
            self.dev_examples, self.dev_metas, out["start_logits"], out["end_logits"], self.n_best_size,
            self.max_answer_length, self.tokenizer.basic_tokenizer, self.v2, self.null_score_diff_threshold,
            self.verbose_logging)
        return preds, nbest, null_odds, out.get("loss")

    def official_scores(self, preds, null_odds, scale=100.0):
        """What the official evaluate-v1.1.py / evaluate-v2.0.py print for `preds` (percent, with
        counts and thresholds; scale 1: scores in 0..1), or None when the dev file has no gold answers."""
        if self.gold is None:
            return None
        if self.v2:
            # na-prob threshold = the decoding threshold, so the scores describe predictions.json
            return dict(evaluate_v2(self.gold, preds, null_odds, self.null_score_diff_threshold, scale))
        return dict(evaluate_v1(self.gold, preds, self.file("dev"), scale))

    def score(self, preds, null_odds):
        """Official EM/F1 of `preds` on the dev questions, in 0..1 (None without gold answers)."""
        raw = self.official_scores(preds, null_odds, scale=1.0)
        if raw is None:
            return None
        if self.v2:
            return {k: raw[k] for k in _V2_KEYS if k in raw}
        return {"exact": raw["exact_match"], "f1": raw["f1"]}

    def evaluate(self, predict):
        preds, _, null_odds, loss = self.decode(predict)
        metrics = self.score(preds, null_odds)
        if metrics is None:
            raise DataError(self.file("dev"), None, "has no gold answers: it cannot be used for evaluation")
        if loss is not None:
            metrics["loss"] = float(loss)
        return {self.name: metrics}

    NO_ANSWER = "(no answer)"  # SQuAD v2.0's empty answer in readable predictions

    def read_inputs(self, path=None, lines=None, plain=False):
        """A SQuAD JSON file (its questions; answers are not needed), or (stdin, `plain`) one question
        per line: the question and its context separated by a tab."""
        if path is not None and not plain:
            return read_squad_examples(path, False, self.v2)[0]
        examples = []
        for line, text in plain_lines(path, lines):
            parts = text.split("\t")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                raise DataError(path or STDIN, line, "expected a question and its context separated by a tab")
            words = "".join(" " if _is_whitespace(c) else c for c in parts[1]).split()
            examples.append(SquadExample(f"line-{line}", parts[0], words))
        return examples

    def predict_rows(self, predict, examples):
        """(question, answer, its probability among the n best answers); v2.0: NO_ANSWER for none."""
        features, metas = convert_examples_to_features(examples, self.tokenizer, self.max_seq_length, self.doc_stride,
                                                       self.max_query_length, False)
        out = predict(features)
        preds, nbest, _ = decode_predictions(examples, metas, out["start_logits"], out["end_logits"],
                                             self.n_best_size, self.max_answer_length, self.tokenizer.basic_tokenizer,
                                             self.v2, self.null_score_diff_threshold)
        rows = []
        for example in examples:
            answer = preds[example.qas_id]
            probability = next(e["probability"] for e in nbest[example.qas_id] if e["text"] == answer)
            rows.append((example.question_text, answer or self.NO_ANSWER, float(probability)))
        return rows

    def write_predictions(self, predict, out_dir):
        preds, nbest, null_odds, _ = self.decode(predict)
        os.makedirs(out_dir, exist_ok=True)
        write_prediction_files(out_dir, preds, nbest, null_odds if self.v2 else None)
        names = ["predictions.json", "nbest_predictions.json"] + (["null_odds.json"] if self.v2 else [])
        return [os.path.join(out_dir, n) for n in names]


def _build(name, tokenizer, data_dir, max_seq_length, doc_stride=128, max_query_length=64, cache=None,
           max_eval_examples=None, **_):
    return Squad(tokenizer, version=int(name[-1]), data_dir=data_dir, name=name, max_seq_length=max_seq_length,
                 doc_stride=doc_stride, max_query_length=max_query_length, cache=cache,
                 max_eval_examples=max_eval_examples)


FAMILY = register(Family(
    name="squad", tasks={"squad1": "SQuAD v1.1", "squad2": "SQuAD v2.0"}, task_class=Squad, build=_build,
    head_type="span", data_files="train-v*.json, dev-v*.json", max_seq_length=384,
    output_names=("predictions.json", "nbest_predictions.json", "null_odds.json"), sample_data="squad_sample"))
