"""Property-based fuzzing of the task readers (hypothesis): whatever bytes a file holds, reading it
gives either valid examples or a one-line `DataError` whose text starts with the file's path,
never another exception (UnicodeDecodeError, KeyError, IndexError, RecursionError, ...).

Two kinds of input per reader:
- arbitrary bytes (with and without a valid first line, so the search gets past the header);
- valid files from the fixture writers with a few random mutations: dropped or extra separators,
  replaced fields and labels, deleted/duplicated/swapped lines, inserted bytes that are not UTF-8,
  a BOM, CR line ends, truncation; for SQuAD also structural edits of the JSON tree (a node
  replaced by a value of another type, deleted, duplicated; ids copied; offsets moved) before it
  is written, so mutations reach every record, not only the first line.

"Valid examples" is checked, not assumed: labels in the label set, scores in 0..5, words and tags
of equal length, SQuAD answer positions inside the context, unique ids. Crashes found here are
fixed in the readers and pinned as regression tests in tests/test_adversarial_inputs.py.

Runs in about 15-20 s on 2 CPU cores: `max_examples` is set per test (FUZZ_SCALE multiplies it for a
longer local search, e.g. FUZZ_SCALE=20); no example database is written (`database=None`).
"""
import copy
import functools
import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import glue_fixtures
from file_utils import DataError
from fixtures_qa import conll_sentences, squad_v1_data, squad_v2_data, swag_rows, write_conll, write_swag
from tasks import conll, glue, squad, squad_eval, swag

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))


def fuzz_settings(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


BOM = b"\xef\xbb\xbf"
# Byte strings that break readers: separators, line ends, non-UTF-8 (lone continuation byte, a
# truncated sequence, an encoded surrogate), BOMs in odd places, NUL, Unicode line separators,
# labels of other tasks, numbers at and beyond the edges, 4400 digits (Python's int-parsing
# limit), deep nesting (JSON recursion).
NASTY = [b"", b"\t", b"\t\t", b"\n", b"\r", b"\r\n", b" ", b",", b'"', b"'", b'""', b"\xff", b"\xfe", b"\xc3",
         b"\xc3(", b"\xed\xa0\x80", b"\x80", BOM, b"\x00", b"\xc2\x85", b"\xe2\x80\xa8", b"\x0b", b"\x0c",
         b"\x1c", b"\xc2\xa0", b"-DOCSTART-", b"-DOCSTART- -X- -X- O", b"nan", b"inf", b"-inf", b"-1", b"1e309",
         b"5.0001", b"-0.0", b"0x1", b"B-", b"I-PER", b"E-LOC", b"X", b"O", b"0", b"1", b"2", b"3", b"4", b"10",
         b"entailment", b"not_entailment", b"neutral", b"contradiction", b"\xd9\xa3", b" 1 ", b"9" * 4400,
         b"[" * 3000, b"{", b"}", b"[", b"]", b"null", b"true", b'"id": "q0000"', b"\\", b"\\u",
         b"\\ud800"]

payloads = st.one_of(st.sampled_from(NASTY), st.binary(max_size=6),
                     st.text(max_size=6).map(lambda t: t.encode("utf-8", "surrogatepass")))
OPS = ["insert", "delete", "truncate", "drop_sep", "add_field", "set_field", "delete_line", "dup_line",
       "swap_lines", "bom", "crlf", "cr", "blank_line"]
mutations = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 1 << 20), st.integers(0, 1 << 20), payloads),
                     min_size=1, max_size=4)


def mutate(data, sep, ops):  # noqa: C901
    """Apply (op, a, b, payload) edits to a file's bytes; `sep` is the field separator."""
    for op, a, b, payload in ops:
        lines = data.split(b"\n")
        i, j = a % len(lines), b % len(lines)
        if op == "insert":
            p = a % (len(data) + 1)
            data = data[:p] + payload + data[p:]
        elif op == "delete":
            p = a % (len(data) + 1)
            data = data[:p] + data[p + 1 + b % 8:]
        elif op == "truncate":
            data = data[:a % (len(data) + 1)]
        elif op in ("drop_sep", "add_field", "set_field"):
            fields = lines[i].split(sep)
            if op == "drop_sep" and len(fields) > 1:
                k = b % (len(fields) - 1)
                fields[k:k + 2] = [fields[k] + fields[k + 1]]
            elif op == "add_field":
                fields.insert(b % (len(fields) + 1), payload)
            elif op == "set_field":
                fields[b % len(fields)] = payload
            lines[i] = sep.join(fields)
            data = b"\n".join(lines)
        elif op == "delete_line":
            del lines[i]
            data = b"\n".join(lines)
        elif op == "dup_line":
            lines.insert(j, lines[i])
            data = b"\n".join(lines)
        elif op == "swap_lines":
            lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        elif op == "blank_line":
            lines.insert(i, payload if not payload.strip() else b"")
            data = b"\n".join(lines)
        elif op == "bom":
            data = BOM + data
        elif op == "crlf":
            data = data.replace(b"\n", b"\r\n")
        elif op == "cr":
            data = data.replace(b"\n", b"\r")
    return data


def attempt(path, read):
    """read(path) -> its result, or None after a clean DataError; any other exception propagates."""
    try:
        return read(path)
    except DataError as exc:
        text = str(exc)
        assert text.startswith(str(path)), text
        assert "\n" not in text and "\r" not in text, text   # one line on the terminal
        assert exc.line is None or (isinstance(exc.line, int) and exc.line >= 1), text
        return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------
# GLUE TSV

# Every task and split: headerless CoLA, header files, a BOM header (MRPC), regression (STS-B),
# QQP's row skipping, MNLI's 12/16/10-column files, unlabelled test files, the AX diagnostic file.
GLUE_CASES = [(name, split) for name, task in glue.TASKS.items() for split in task.files]


# The valid base files are plain module-level values, not fixtures: hypothesis prints every
# argument of a failing example, and a page of fixture bytes would hide the one that matters.
@functools.lru_cache(maxsize=None)
def glue_file(task, split):
    with tempfile.TemporaryDirectory() as root:
        glue_fixtures.write_glue_fixture(root, tasks=[task], n=4)
        with open(glue.task_file(task, root, split), "rb") as f:
            return f.read()


def check_glue(task, split, examples):
    task = glue.get_task(task)
    kind = task.split_kind(split)
    layout = task.layouts[kind]
    assert examples
    lines = [e.line for e in examples]
    assert lines == sorted(set(lines)) and lines[0] >= 1
    for e in examples:
        assert isinstance(e.text_a, str) and (e.text_b is None) == (layout.text_b is None)
        assert e.text_b is None or isinstance(e.text_b, str)
        if kind == "test":
            assert e.label is None
            continue
        if not task.skip_bad_rows:
            assert e.text_a.strip() and (e.text_b is None or e.text_b.strip())
        if task.is_regression:
            assert isinstance(e.label, float) and 0.0 <= e.label <= 5.0
        else:
            assert e.label in task.labels
    glue.gold_labels(task, [e for e in examples if e.label is not None])


def _glue_read(task, split):
    return lambda path: glue.read_examples(task, None, split, path=str(path))


@pytest.mark.parametrize("task,split", GLUE_CASES)
@fuzz_settings(15)
@given(ops=mutations)
def test_glue_mutated_files(workdir, task, split, ops):
    path = workdir / f"glue_{task}_{split}.tsv"
    path.write_bytes(mutate(glue_file(task, split), b"\t", ops))
    examples = attempt(path, _glue_read(task, split))
    if examples is not None:
        check_glue(task, split, examples)


@pytest.mark.parametrize("task,split", [("cola", "train"), ("mrpc", "train"), ("sts-b", "train"), ("qqp", "train"),
                                        ("mnli", "test_matched")])
@fuzz_settings(40)
@given(data=st.binary(max_size=300), keep_header=st.booleans())
def test_glue_arbitrary_bytes(workdir, task, split, data, keep_header):
    if keep_header:
        data = glue_file(task, split).split(b"\n", 1)[0] + b"\n" + data
    path = workdir / f"glue_bytes_{task}_{split}.tsv"
    path.write_bytes(data)
    examples = attempt(path, _glue_read(task, split))
    if examples is not None:
        check_glue(task, split, examples)


# ---------------------------------------------------------------------------------------------
# SQuAD JSON

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-5, 400), st.floats(allow_nan=True),
                        st.text(max_size=8), st.sampled_from(["", " ", "  Gustave", "q0000", "Paris", "\u3000"]))
json_values = st.recursive(json_leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3)), max_leaves=6)
TREE_OPS = ["replace", "delete", "duplicate", "offset", "text", "copy_id", "wrap", "stringify", "drop_impossible"]
tree_edits = st.lists(st.tuples(st.sampled_from(TREE_OPS), st.integers(0, 1 << 20), st.integers(-3, 400),
                                json_values, st.text(max_size=12)), min_size=1, max_size=4)


def _nodes(obj, parent=None, key=None):
    """Every (parent, key) slot of the JSON tree (the root has parent None)."""
    yield parent, key
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            yield from _nodes(v, obj, k)
    elif isinstance(obj, list):
        for k, v in enumerate(obj):
            yield from _nodes(v, obj, k)


def edit_tree(root, edits):
    for op, a, number, value, text in edits:
        slots = [s for s in _nodes(root) if s[0] is not None]
        if not slots:
            break
        parent, key = slots[a % len(slots)]
        if op == "replace":
            parent[key] = value
        elif op == "delete":
            del parent[key]
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op == "offset":
            parent[key] = number
        elif op == "text":
            parent[key] = text
        elif op == "copy_id":   # give this slot the id of some question: duplicate ids
            ids = [p["id"] for p, k in slots if isinstance(p, dict) and k == "id"]
            if ids:
                parent[key] = ids[number % len(ids)]
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "stringify":
            parent[key] = json.dumps(parent[key])
        elif op == "drop_impossible":
            for p, k in slots:
                if isinstance(p, dict) and "is_impossible" in p and k == "is_impossible":
                    del p["is_impossible"]
                    break
    return root


def check_squad(examples, dropped, is_training, v2):
    ids = [e.qas_id for e in examples] + list(dropped)
    assert len(ids) == len(set(ids))
    for e in examples:
        assert isinstance(e.qas_id, str) and isinstance(e.question_text, str)
        # (words are split at the reference's whitespace only, " \t\r\n" and U+202F, so a word
        # may be a no-break space: the splitting is not this reader's validation)
        assert all(isinstance(t, str) and t for t in e.doc_tokens)
        if not is_training:
            assert e.start_position is None
        elif e.is_impossible:
            assert v2 and (e.start_position, e.end_position, e.orig_answer_text) == (-1, -1, "")
        else:
            assert 0 <= e.start_position <= e.end_position < len(e.doc_tokens)
            span = " ".join(e.doc_tokens[e.start_position:e.end_position + 1])
            assert " ".join(e.orig_answer_text.split()) in span


def squad_run(path, v2):
    """What run_squad.py does with a file: read for training, read for prediction, then score
    predictions (one per question) when every question has gold answers."""
    for is_training in (True, False):
        result = attempt(path, lambda p: squad.read_squad_examples(str(p), is_training, v2))
        if result is None:
            continue
        examples, dropped = result
        check_squad(examples, dropped, is_training, v2)
        if is_training:
            continue
        data, _, _ = squad.load_squad_json(str(path))
        qas = list(squad_eval.iter_questions(data))
        if not all("answers" in qa for qa in qas):
            continue
        preds = {e.qas_id: " ".join(e.doc_tokens[:2]) for e in examples}
        if v2:
            scores = squad_eval.evaluate_v2(data, preds, {k: 0.0 for k in preds}, 0.0)
            assert 0.0 <= scores["exact"] <= scores["f1"] <= 100.0
        elif any(qa["answers"] for qa in qas):
            scores = squad_eval.evaluate_v1(data, preds, str(path))
            assert 0.0 <= scores["exact_match"] <= scores["f1"] <= 100.0
        # else: a v1.1 run on a file whose questions all have empty answer lists: evaluate_v1
        # refuses it (DataError), and run_squad.py would only find out after training.


@pytest.mark.parametrize("v2", [False, True], ids=["v1.1", "v2.0"])
@fuzz_settings(120)
@given(edits=tree_edits, indent=st.sampled_from([None, 1]), ascii_only=st.booleans(),
       byte_ops=st.one_of(st.just([]), mutations))
def test_squad_mutated_files(workdir, v2, edits, indent, ascii_only, byte_ops):
    data = edit_tree({"version": "2.0" if v2 else "1.1", "data": squad_v2_data() if v2 else squad_v1_data()}, edits)
    raw = json.dumps(data, indent=indent, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    path = workdir / f"squad_{v2}.json"
    path.write_bytes(mutate(raw, b",", byte_ops))
    squad_run(path, v2)


@fuzz_settings(60)
@given(data=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps({"data": v}).encode())))
def test_squad_arbitrary_bytes(workdir, data):
    path = workdir / "squad_bytes.json"
    path.write_bytes(data)
    squad_run(path, True)


# ---------------------------------------------------------------------------------------------
# CoNLL


def check_conll(path, sentences, labelled, workdir):
    for s in sentences:
        assert s.words and all(w and not any(c.isspace() for c in w) for w in s.words)
        if labelled:
            assert len(s.tags) == len(s.words) and all(conll.TAG_RE.match(t) for t in s.tags)
    # The prediction writer walks the same file: one tag per word, in order.
    tags = [["O"] * len(s.words) for s in sentences]
    out = workdir / "conll_pred.txt"
    conll.write_predictions(str(out), str(path), tags)
    token_lines = [line for line in out.read_text(encoding="utf-8").split("\n")
                   if line.strip() and not line.lstrip().startswith("-DOCSTART-")]
    assert len(token_lines) == sum(len(s.words) for s in sentences)


@functools.lru_cache(maxsize=None)
def conll_file():
    with tempfile.TemporaryDirectory() as root:
        with open(write_conll(os.path.join(root, "c.txt"), conll_sentences()[:3]), "rb") as f:
            return f.read()


@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "unlabelled"])
@fuzz_settings(80)
@given(ops=mutations)
def test_conll_mutated_files(workdir, labelled, ops):
    path = workdir / f"conll_{labelled}.txt"
    path.write_bytes(mutate(conll_file(), b" ", ops))
    sentences = attempt(path, lambda p: conll.read_conll(str(p), labelled=labelled))
    if sentences is not None:
        check_conll(path, sentences, labelled, workdir)
        if labelled:
            label_list = conll.labels_from_sentences(sentences)
            conll.check_labels(sentences, label_list, str(path))


@fuzz_settings(60)
@given(data=st.binary(max_size=200))
def test_conll_arbitrary_bytes(workdir, data):
    path = workdir / "conll_bytes.txt"
    path.write_bytes(data)
    sentences = attempt(path, lambda p: conll.read_conll(str(p)))
    if sentences is not None:
        check_conll(path, sentences, True, workdir)
    labels = attempt(path, lambda p: conll.read_labels_file(str(p)))
    if labels is not None:
        assert labels[0] == "O" or "O" in labels
        assert len(labels) == len(set(labels)) and all(conll.TAG_RE.match(t) for t in labels)


# ---------------------------------------------------------------------------------------------
# SWAG CSV


@functools.lru_cache(maxsize=None)
def swag_file():
    with tempfile.TemporaryDirectory() as root:
        with open(write_swag(os.path.join(root, "train.csv"), swag_rows()), "rb") as f:
            return f.read()


def check_swag(examples, require_label):
    for e in examples:
        assert len(e.endings) == 4 and e.context.strip() and all(x.strip() for x in e.endings)
        assert (e.label in (0, 1, 2, 3)) if require_label else (e.label is None or e.label in (0, 1, 2, 3))
        assert isinstance(e.line, int) and e.line >= 2


@pytest.mark.parametrize("require_label", [True, False], ids=["train", "test"])
@fuzz_settings(60)
@given(ops=mutations)
def test_swag_mutated_files(workdir, require_label, ops):
    path = workdir / f"swag_{require_label}.csv"
    path.write_bytes(mutate(swag_file(), b",", ops))
    examples = attempt(path, lambda p: swag.read_swag_examples(str(p), require_label))
    if examples is not None:
        check_swag(examples, require_label)


@fuzz_settings(40)
@given(data=st.binary(max_size=200))
def test_swag_arbitrary_bytes(workdir, data):
    path = workdir / "swag_bytes.csv"
    path.write_bytes(swag_file().split(b"\n", 1)[0] + b"\n" + data)
    examples = attempt(path, lambda p: swag.read_swag_examples(str(p)))
    if examples is not None:
        check_swag(examples, True)


# ---------------------------------------------------------------------------------------------
# A leading BOM changes nothing, in every reader


def _outcome(path, read):
    try:
        return "examples", read(path)
    except DataError as exc:
        return "error", exc.line


@pytest.mark.parametrize("reader", ["glue-cola-train", "glue-mrpc-train", "squad", "conll", "swag"])
@fuzz_settings(25)
@given(ops=st.one_of(st.just([]), mutations))
def test_leading_bom_changes_nothing(workdir, reader, ops):
    if reader.startswith("glue"):
        _, task, split = reader.split("-")
        base, sep, read = glue_file(task, split), b"\t", _glue_read(task, split)
    elif reader == "squad":
        base, sep = json.dumps({"version": "2.0", "data": squad_v2_data()}, indent=1).encode(), b","
        read = lambda p: squad.read_squad_examples(str(p), True, True)   # noqa: E731
    elif reader == "conll":
        base, sep, read = conll_file(), b" ", lambda p: conll.read_conll(str(p))
    else:
        base, sep, read = swag_file(), b",", lambda p: swag.read_swag_examples(str(p))
    data = mutate(base, sep, ops) if ops else base
    while data.startswith(BOM):   # MRPC's header already has one
        data = data[len(BOM):]
    # A whole file that is only the first 1-2 bytes of a BOM decodes to "" with utf-8-sig (CPython
    # waits for the rest of the BOM and never complains), but is invalid UTF-8 after a real BOM.
    assume(not (data and BOM.startswith(data)))
    path = workdir / f"bom_{reader}"
    path.write_bytes(data)
    plain = _outcome(path, read)
    path.write_bytes(BOM + data)
    assert _outcome(path, read) == plain


def test_mutator_reaches_past_the_first_line():
    """The structured mutations edit later records too (a fuzzer stuck on line 1 proves little)."""
    base = b"h1\th2\nr1a\tr1b\nr2a\tr2b\nr3a\tr3b"
    edited = {mutate(base, b"\t", [("set_field", a, 1, b"X")]) for a in range(4)}
    assert b"h1\tX\nr1a\tr1b\nr2a\tr2b\nr3a\tr3b" in edited and b"h1\th2\nr1a\tr1b\nr2a\tr2b\nr3a\tX" in edited
    tree = {"data": [{"id": "a"}, {"id": "b"}]}
    # slots: data, data[0], data[0].id, data[1], data[1].id -> copy an id into data[1].id
    assert edit_tree(tree, [("copy_id", 4, 0, None, "")]) == {"data": [{"id": "a"}, {"id": "a"}]}
