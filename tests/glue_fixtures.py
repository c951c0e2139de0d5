"""Tiny GLUE task folders in the exact layout of the official GLUE download, for tests.

`write_glue_fixture(root, tasks=None, n=12)` writes `<root>/<TASK DIR>/<split files>` for each
task (all 9 GLUE tasks + the AX diagnostic set by default): headers, column counts, label
strings and test files (no labels, an index column) as in the real release, including MNLI's
12-column train / 16-column dev rows with genre and parse fields, STS-B's 10-column rows, QQP's
6-column rows with question ids, headerless 4-column CoLA train/dev and the BOM that starts the
MRPC header. Texts carry literal double quotes, apostrophes and non-ASCII characters, which the
readers must keep as they are (no CSV quoting in GLUE files).

Used by the tests of tasks/glue.py, run_classifier.py and run_multi_task.py.
"""
import os

# Texts that break naive readers: quotes are literal text in GLUE (quotechar None), so a lone
# " must not swallow the rest of the file; apostrophes; accents, em dash, CJK, emoji-free.
_SUBJECTS = ['the "old" cat', "Zoë's café", "a naïve student", 'the man who said "hi', "São Paulo",
             "the committee", "Björk", "my neighbour's dog", "東京 station", "the 3\" pipe"]
_VERBS = ["sees", "likes", "doesn't trust", "visits", "paints", "finds", "won't leave"]
_OBJECTS = ["the river", "a résumé", "the 'blue' house", "an encyclopædia", "the garden — quietly",
            "two pounds (£2)", "the \"big\" apple", "Zürich"]

_MNLI_GENRES = ["fiction", "government", "slate", "telephone", "travel"]
_MNLI_MM_GENRES = ["facetoface", "letters", "nineeleven", "oup", "verbatim"]
_STSB_GENRES = [("main-captions", "MSRvid", "2012test"), ("main-news", "headlines", "2013"),
                ("main-forums", "answers-forums", "2015")]

# task -> (directory, label strings or None)
_TASK_DIRS = {
    "cola": "CoLA", "sst-2": "SST-2", "mrpc": "MRPC", "sts-b": "STS-B", "qqp": "QQP",
    "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI", "ax": "diagnostic",
}
ALL_FIXTURE_TASKS = list(_TASK_DIRS)


def sentence(i, salt=0):
    """A deterministic short sentence with tricky characters."""
    k = i + 7 * salt
    return (f"{_SUBJECTS[k % len(_SUBJECTS)].capitalize()} {_VERBS[(k // 2) % len(_VERBS)]} "
            f"{_OBJECTS[(k * 3 + salt) % len(_OBJECTS)]} {i}.")


def _write(path, rows, header=None, bom=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if header is not None:
            f.write(("\ufeff" if bom else "") + "\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(c) for c in row) + "\n")
    return path


def _parse(text):
    # The binary-parse / parse columns of MNLI: content does not matter to the readers.
    words = text.rstrip(".").split()
    return "( " + " ".join(words) + " )", "(ROOT (S " + " ".join(f"(NN {w})" for w in words) + "))"


def _cola(d, n):
    paths = {}
    for split, salt in (("train", 0), ("dev", 1)):
        rows = []
        for i in range(n):
            label = i % 2
            rows.append([f"src{i % 3}", label, "" if label else "*", sentence(i, salt)])
        paths[split] = _write(os.path.join(d, f"{split}.tsv"), rows)
    paths["test"] = _write(os.path.join(d, "test.tsv"), [[i, sentence(i, 2)] for i in range(n)],
                           header=["index", "sentence"])
    return paths


def _sst(d, n):
    paths = {}
    for split, salt in (("train", 0), ("dev", 1)):
        rows = [[sentence(i, salt).lower().rstrip("."), i % 2] for i in range(n)]
        paths[split] = _write(os.path.join(d, f"{split}.tsv"), rows, header=["sentence", "label"])
    paths["test"] = _write(os.path.join(d, "test.tsv"), [[i, sentence(i, 2)] for i in range(n)],
                           header=["index", "sentence"])
    return paths


def _mrpc(d, n):
    paths = {}
    for split, salt in (("train", 0), ("dev", 1)):
        rows = [[i % 2, 1000 + i, 2000 + i, sentence(i, salt), sentence(i, salt + 3)] for i in range(n)]
        paths[split] = _write(os.path.join(d, f"{split}.tsv"), rows,
                              header=["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], bom=True)
    rows = [[i, 3000 + i, 4000 + i, sentence(i, 2), sentence(i, 5)] for i in range(n)]
    paths["test"] = _write(os.path.join(d, "test.tsv"), rows,
                           header=["index", "#1 ID", "#2 ID", "#1 String", "#2 String"])
    return paths


def _stsb(d, n):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
    paths = {}
    for split, salt in (("train", 0), ("dev", 1), ("test", 2)):
        rows = []
        for i in range(n):
            genre, fname, year = _STSB_GENRES[i % len(_STSB_GENRES)]
            row = [i, genre, fname, year, f"{i:04d}", "none", "none", sentence(i, salt), sentence(i, salt + 1)]
            if split != "test":
                row.append(f"{(i * 1.37) % 5:.3f}")
            rows.append(row)
        paths[split] = _write(os.path.join(d, f"{split}.tsv"), rows,
                              header=header + (["score"] if split != "test" else []))
    return paths


def _qqp(d, n):
    paths = {}
    for split, salt in (("train", 0), ("dev", 1)):
        rows = [[i, 2 * i + 1, 2 * i + 2, sentence(i, salt).rstrip(".") + "?", sentence(i, salt + 2).rstrip(".") + "?",
                 i % 2] for i in range(n)]
        paths[split] = _write(os.path.join(d, f"{split}.tsv"), rows,
                              header=["id", "qid1", "qid2", "question1", "question2", "is_duplicate"])
    rows = [[i, sentence(i, 2).rstrip(".") + "?", sentence(i, 4).rstrip(".") + "?"] for i in range(n)]
    paths["test"] = _write(os.path.join(d, "test.tsv"), rows, header=["id", "question1", "question2"])
    return paths


def _mnli(d, n):
    labels = ["contradiction", "entailment", "neutral"]
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    paths = {}
    specs = [("train", "train.tsv", 0, _MNLI_GENRES), ("dev_matched", "dev_matched.tsv", 1, _MNLI_GENRES),
             ("dev_mismatched", "dev_mismatched.tsv", 2, _MNLI_MM_GENRES),
             ("test_matched", "test_matched.tsv", 3, _MNLI_GENRES),
             ("test_mismatched", "test_mismatched.tsv", 4, _MNLI_MM_GENRES)]
    for split, fname, salt, genres in specs:
        rows = []
        for i in range(n):
            s1, s2 = sentence(i, salt), sentence(i, salt + 5)
            b1, p1 = _parse(s1)
            b2, p2 = _parse(s2)
            row = [i, 10000 + i, f"{10000 + i}{'enc'[i % 3]}", genres[i % len(genres)], b1, b2, p1, p2, s1, s2]
            gold = labels[i % 3]
            if split == "train":
                row += [gold, gold]                                 # label1 gold_label
            elif split.startswith("dev"):
                row += [gold, gold, labels[(i + 1) % 3], gold, gold, gold]  # label1..label5 gold_label
            rows.append(row)
        header = base + (["label1", "gold_label"] if split == "train" else
                         ["label1", "label2", "label3", "label4", "label5", "gold_label"]
                         if split.startswith("dev") else [])
        paths[split] = _write(os.path.join(d, fname), rows, header=header)
    paths["dev"], paths["test"] = paths["dev_matched"], paths["test_matched"]
    return paths


def _pair_task(d, n, labels, first_col="sentence1", second_col="sentence2"):
    paths = {}
    header = ["index", first_col, second_col]
    for split, salt in (("train", 0), ("dev", 1)):
        rows = [[i, sentence(i, salt), sentence(i, salt + 4), labels[i % len(labels)]] for i in range(n)]
        paths[split] = _write(os.path.join(d, f"{split}.tsv"), rows, header=header + ["label"])
    rows = [[i, sentence(i, 2), sentence(i, 6)] for i in range(n)]
    paths["test"] = _write(os.path.join(d, "test.tsv"), rows, header=header)
    return paths


def _ax(d, n):
    rows = [[i, sentence(i, 8), sentence(i, 9)] for i in range(n)]
    return {"test": _write(os.path.join(d, "diagnostic.tsv"), rows, header=["index", "sentence1", "sentence2"])}


_WRITERS = {
    "cola": _cola, "sst-2": _sst, "mrpc": _mrpc, "sts-b": _stsb, "qqp": _qqp, "mnli": _mnli,
    "qnli": lambda d, n: _pair_task(d, n, ["entailment", "not_entailment"], "question", "sentence"),
    "rte": lambda d, n: _pair_task(d, n, ["entailment", "not_entailment"]),
    "wnli": lambda d, n: _pair_task(d, n, ["0", "1"]),
    "ax": _ax,
}
_ALIASES = {"sst": "sst-2", "sst2": "sst-2", "sts": "sts-b", "stsb": "sts-b", "mnli-mm": "mnli",
            "mnli-m": "mnli", "diagnostic": "ax"}


def write_glue_fixture(root, tasks=None, n=12):
    """Write tiny official-layout GLUE folders under `root`.

    tasks: names (aliases ok; "mnli-mm" writes MNLI); None = all 9 tasks + AX.
    n: rows per file (labels cycle through the label list, so every label occurs when n >= 3).
    Returns {task name: {split: path}} (MNLI: train, dev(_matched), dev_mismatched, test(_matched),
    test_mismatched; AX: test).
    """
    names = ALL_FIXTURE_TASKS if tasks is None else [_ALIASES.get(t.lower(), t.lower()) for t in tasks]
    out = {}
    for name in names:
        if name not in _WRITERS:
            raise ValueError(f"unknown fixture task {name!r} (known: {', '.join(_WRITERS)})")
        out[name] = _WRITERS[name](os.path.join(os.fspath(root), _TASK_DIRS[name]), n)
    return out
