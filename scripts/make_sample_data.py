"""Generate data/glue_sample/: a small SYNTHETIC stand-in for the GLUE benchmark, for demos and tests.

Every GLUE task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI matched + mismatched, QNLI, RTE, WNLI and the
AX diagnostic set) gets train/dev/test files in the exact layout of the official GLUE download
(file names, headers, column counts, label strings, unlabelled test files with an index column),
so every reader and runner path can be exercised offline. The texts come from templates with
simple rules a pretrained BERT learns in a few hundred steps:

  CoLA   acceptable = normal word order; unacceptable = a scrambled variant of the same words
  SST-2  the sentiment word (optionally negated with "not") decides the label
  MRPC   paraphrase = same facts reworded (synonyms, moved time phrase, passive); else 2 facts differ
  QQP    duplicate = same intent and slots in another wording; else another slot or another intent
  STS-B  score = 5 x fraction of the 5 content slots the two sentences share (+ small noise)
  MNLI   entailment = a fact of the premise; contradiction = negated; neutral = adds new facts
         (mismatched dev/test: other genres, nouns and premise templates, same rules)
  QNLI   entailment iff the sentence contains the kind of answer the question asks for
  RTE    entailment = restates a premise fact; not_entailment = swapped entity or negation
  WNLI   which noun "it"/"he"/"she" refers to follows from the adjective (big/small, weak/heavy)
  AX     MNLI-style pairs, unlabelled (as the official diagnostic file)

Train sizes follow the real GLUE proportions, scaled down (MNLI 2800 ... WNLI 120); the whole
folder stays under 2 MB.
Output is deterministic for a given --seed (string-seeded `random.Random` per task and split).

    python scripts/make_sample_data.py                 # rewrites data/glue_sample and the others
    python scripts/make_sample_data.py --out /tmp/x --seed 7

It also writes the samples of the other task families for the mixed multi-task demo
(`run_multi_task.py --tasks sst-2,rte,squad2,conll,swag`), in their official layouts:
  squad_sample  SQuAD v1.1 and v2.0 JSON: paragraphs of three "who did what where when why" facts;
                questions ask one slot of one fact; v2 adds questions about objects no fact mentions
  conll_sample  CoNLL-2003 columns (word POS chunk tag, -DOCSTART- lines, IOB1): names, places,
                two-word organisations and nationality adjectives in template sentences
  swag_sample   SWAG CSV: someone picks up a thing; the right ending is done with that thing
  pos_sample    Universal Dependencies CoNLL-U (UPOS tags): template sentences with "cannot" as a
                multiword token (can + not), elided verbs as empty nodes (8.1), and words that are a
                noun after "the" and a verb after "will" (paint, fish, ...)
"""
import argparse
import csv
import io
import json
import os
import random
import sys

from file_utils import atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEED = 2019
DEFAULT_OUT = os.path.join(ROOT, "data")  # gets glue_sample/, squad_sample/, conll_sample/, swag_sample/, pos_sample/

# task -> (train, dev, test) sizes; MNLI dev/test sizes are per matched/mismatched file.
SIZES = {
    "mnli": (2800, 200, 100), "qqp": (2500, 200, 100), "qnli": (1200, 150, 100),
    "sst-2": (1000, 150, 100), "cola": (600, 150, 100), "sts-b": (500, 150, 100),
    "mrpc": (400, 120, 100), "rte": (250, 100, 100), "wnli": (120, 100, 100), "ax": (0, 0, 100),
}

# ------------------------------------------------------------------------------------ word pools
NAMES_M = ["Ben", "David", "Frank", "Henry", "Jack", "Mark", "Oscar", "Sam", "Tom", "Peter", "James", "Leo"]
NAMES_F = ["Anna", "Carla", "Emma", "Grace", "Irene", "Laura", "Nina", "Paula", "Rosa", "Vera", "Lucy", "Maria"]
NAMES = NAMES_M + NAMES_F
PLACES = ["Paris", "London", "Berlin", "Rome", "Madrid", "Vienna", "Oslo", "Dublin", "Prague", "Lisbon",
          "Boston", "Chicago", "Tokyo", "Sydney", "Toronto", "Cairo"]
NOUNS = ["car", "book", "house", "lamp", "bike", "phone", "letter", "painting", "table", "guitar", "camera",
         "boat", "chair", "clock", "piano", "jacket", "ticket", "map", "radio", "desk"]
NOUN_SYN = {"car": "automobile", "house": "home", "phone": "telephone", "bike": "bicycle", "boat": "ship",
            "jacket": "coat", "painting": "picture", "desk": "writing table", "ticket": "pass", "map": "chart"}
ADJS = ["red", "old", "small", "large", "new", "blue", "green", "heavy", "cheap", "wooden"]
ADJ_SYN = {"large": "big", "small": "little", "cheap": "inexpensive", "new": "brand new", "old": "aged"}
# (base form, past tense)
VERBS = [("buy", "bought"), ("sell", "sold"), ("paint", "painted"), ("find", "found"), ("clean", "cleaned"),
         ("fix", "fixed"), ("borrow", "borrowed"), ("open", "opened"), ("carry", "carried"),
         ("describe", "described"), ("build", "built"), ("break", "broke")]
VERB_SYN = {"bought": "purchased", "fixed": "repaired", "cleaned": "washed", "found": "discovered",
            "built": "constructed", "carried": "moved", "described": "explained", "broke": "damaged",
            "sold": "traded away", "borrowed": "took out on loan", "painted": "decorated", "opened": "unlocked"}
TIMES = ["on Monday", "on Friday", "last week", "last year", "in May", "in the morning", "yesterday",
         "in winter", "in 2015", "at noon"]
REASONS = ["it was cheap", "it was raining", "a friend asked", "the shop was closing", "it looked nice",
           "there was no time left"]
JOBS = ["teacher", "doctor", "lawyer", "baker", "pilot", "nurse", "farmer", "writer", "painter", "engineer"]

# MNLI mismatched: other genres and another vocabulary (same rules).
MM_NOUNS = ["report", "statue", "bridge", "museum", "garden", "library", "speech", "contract", "engine",
            "window", "fountain", "tower"]
MM_PLACES = ["Geneva", "Kyoto", "Seattle", "Bergen", "Porto", "Denver", "Quebec", "Naples"]
GENRES_M = ["fiction", "government", "slate", "telephone", "travel"]
GENRES_MM = ["facetoface", "letters", "nineeleven", "oup", "verbatim"]

POS = ["wonderful", "brilliant", "delightful", "charming", "excellent", "moving", "beautiful", "funny",
       "clever", "superb", "touching", "engaging"]
NEG = ["terrible", "boring", "awful", "dull", "painful", "clumsy", "tedious", "weak", "bland", "horrible",
       "messy", "lifeless"]
FILMS = ["movie", "film", "story", "picture", "drama", "comedy", "thriller", "documentary"]
TOPICS = ["a family in a small town", "two old friends", "a lost dog", "the war", "a young chef",
          "a long journey", "a broken marriage", "a football team", "a city at night"]
INTENS = ["very", "truly", "rather", "quite", "remarkably", "simply", "often"]

STS_SUBJ = ["man", "woman", "boy", "girl", "dog", "cat", "child", "chef", "student", "farmer"]
STS_ADJ = ["young", "old", "tall", "small", "happy", "tired", "smiling", "busy"]
STS_VERB = ["playing with", "sitting on", "walking to", "looking at", "jumping over", "cleaning",
            "pushing", "painting"]
STS_OBJ = ["a guitar", "a ball", "a car", "a table", "a fence", "a door", "a bench", "a boat", "a bicycle"]
STS_PLACE = ["in the park", "in the kitchen", "on the street", "at the beach", "in the garden",
             "near the river", "in a field", "at the station"]


# ------------------------------------------------------------------------------------ helpers
def _label_seq(rng, n, labels, weights=None):
    """Labels in fixed proportions (not i.i.d.), shuffled: balanced-ish by construction."""
    weights = weights or [1] * len(labels)
    total = sum(weights)
    counts = [n * w // total for w in weights]
    for i in range(n - sum(counts)):
        counts[i % len(counts)] += 1
    seq = [label for label, c in zip(labels, counts) for _ in range(c)]
    rng.shuffle(seq)
    return seq


def _other(rng, pool, *avoid):
    choices = [x for x in pool if x not in avoid]
    return rng.choice(choices)


def _cap(s):
    return s[0].upper() + s[1:]


def _tokens(text):
    out = []
    for word in text.split():
        if word[-1] in ".,?!":
            out += [word[:-1], word[-1]] if len(word) > 1 else [word]
        else:
            out.append(word)
    return out


def _parses(text):
    """Flat stand-ins for MNLI's binary-parse and parse columns (the readers never use them)."""
    toks = _tokens(text)
    return "( " + " ".join(toks) + " )", "(ROOT (S " + " ".join(toks) + "))"


def _fact(rng, nouns=NOUNS, places=PLACES):
    verb = rng.choice(VERBS)
    return {"name": rng.choice(NAMES), "base": verb[0], "past": verb[1], "adj": rng.choice(ADJS),
            "noun": rng.choice(nouns), "place": rng.choice(places), "time": rng.choice(TIMES)}


def _fact_sentence(f):
    return f"{f['name']} {f['past']} the {f['adj']} {f['noun']} in {f['place']} {f['time']}."


# ------------------------------------------------------------------------------------ task generators
# Each returns a list of (text_a, text_b or None, label) with `n` items.

def gen_cola(rng, n):
    out = []
    for label in _label_seq(rng, n, ["1", "0"], [3, 2]):
        f = _fact(rng)
        words = [f["name"], f["past"], "the", f["adj"], f["noun"]]
        if rng.random() < 0.5:
            words += ["in", f["place"]]
        if label == "1":
            if rng.random() < 0.25:  # passive: also acceptable
                words = ["The", f["adj"], f["noun"], "was", f["past"], "by", f["name"]]
            text = " ".join(words)
        else:
            kind = rng.randrange(4)
            if kind == 0:    # verb first
                words = [words[1], words[0]] + words[2:]
            elif kind == 1:  # determiner after the noun
                words = words[:2] + [words[3], words[4], "the"] + words[5:]
            elif kind == 2:  # object before the verb
                words = [words[0]] + words[2:5] + [words[1]] + words[5:]
            else:            # adjective after the noun, preposition at the end
                words = words[:3] + [words[4], words[3]] + words[6:] + words[5:6]
            text = " ".join(words)
        out.append((_cap(text) + ".", None, label))
    return out


def gen_sst(rng, n):
    out = []
    for label in _label_seq(rng, n, ["0", "1"], [1, 1]):
        negate = rng.random() < 0.12
        polar_pos = (label == "1") != negate
        word = rng.choice(POS if polar_pos else NEG)
        adv = "not" if negate else rng.choice(INTENS)
        film, topic = rng.choice(FILMS), rng.choice(TOPICS)
        template = rng.randrange(4)
        if template == 0:
            text = f"the {film} is {adv} {word}"
        elif template == 1:
            text = f"a {film} about {topic} that is {adv} {word}"
        elif template == 2:
            text = f"{topic} , and the result is {adv} {word}"
        else:
            text = f"this {film} about {topic} feels {adv} {word} from start to finish"
        out.append((text + " ", None, label))  # SST-2 sentences end with a space, as in GLUE
    return out


def _reword(f, changes):
    """Reword a fact sentence keeping its meaning: synonyms, time phrase moved, passive voice."""
    verb = VERB_SYN.get(f["past"], f["past"]) if "verb" in changes else f["past"]
    noun = NOUN_SYN.get(f["noun"], f["noun"]) if "noun" in changes else f["noun"]
    adj = ADJ_SYN.get(f["adj"], f["adj"]) if "adj" in changes else f["adj"]
    if "passive" in changes:
        core = f"the {adj} {noun} was {verb} by {f['name']} in {f['place']}"
    else:
        core = f"{f['name']} {verb} the {adj} {noun} in {f['place']}"
    if "time_front" in changes:
        return f"{_cap(f['time'])}, {core}."
    return f"{_cap(core)} {f['time']}."


def gen_mrpc(rng, n):
    out = []
    for label in _label_seq(rng, n, ["1", "0"], [3, 2]):
        f = _fact(rng)
        s1 = _fact_sentence(f)
        changes = rng.sample(["verb", "noun", "adj", "passive", "time_front"], 2)
        g = dict(f)
        if label == "0":
            for slot in rng.sample(["name", "place", "noun", "verb"], 2):
                if slot == "name":
                    g["name"] = _other(rng, NAMES, f["name"])
                elif slot == "place":
                    g["place"] = _other(rng, PLACES, f["place"])
                elif slot == "noun":
                    g["noun"] = _other(rng, NOUNS, f["noun"])
                else:
                    g["base"], g["past"] = _other(rng, VERBS, (f["base"], f["past"]))
        out.append((s1, _reword(g, changes), label))
    return out


QQP_INTENTS = [
    ["How do I {v} a {n} in {p}?", "How can I {v} a {n} in {p}?", "What is the best way to {v} a {n} in {p}?",
     "What's the easiest way to {v} a {n} in {p}?"],
    ["Where can I {v} a cheap {n} in {p}?", "Where is the cheapest place to {v} a {n} in {p}?",
     "Which shop in {p} is best to {v} a {n} for little money?"],
    ["Is it hard to {v} a {n}?", "How difficult is it to {v} a {n}?", "Is {v}ing a {n} difficult?"],
    ["Why do people in {p} {v} a {n}?", "What makes people in {p} {v} a {n}?",
     "For what reason do people living in {p} {v} a {n}?"],
]
QQP_VERBS = ["buy", "sell", "paint", "fix", "clean", "rent", "borrow", "build", "repair", "order"]


def gen_qqp(rng, n):
    out = []
    for label in _label_seq(rng, n, ["1", "0"], [2, 3]):
        intent = rng.randrange(len(QQP_INTENTS))
        t1, t2 = rng.sample(QQP_INTENTS[intent], 2)
        slots = {"v": rng.choice(QQP_VERBS), "n": rng.choice(NOUNS), "p": rng.choice(PLACES)}
        other = dict(slots)
        if label == "0":
            if rng.random() < 0.5:  # another intent, same slots
                t2 = rng.choice(QQP_INTENTS[(intent + rng.randrange(1, len(QQP_INTENTS))) % len(QQP_INTENTS)])
            else:                    # same intent, another content word
                key = rng.choice(["v", "n"] + (["p"] if "{p}" in t2 else []))
                pool = {"v": QQP_VERBS, "n": NOUNS, "p": PLACES}[key]
                other[key] = _other(rng, pool, slots[key])
        q1 = t1.format(**slots)
        q2 = t2.format(**other)
        out.append((q1, q2, label))
    return out


def _sts_sentence(s):
    return f"A {s[1]} {s[0]} is {s[2]} {s[3]} {s[4]}."


def gen_stsb(rng, n):
    pools = [STS_SUBJ, STS_ADJ, STS_VERB, STS_OBJ, STS_PLACE]
    out = []
    shared_counts = _label_seq(rng, n, [0, 1, 2, 3, 4, 5])
    for k in shared_counts:
        a = [rng.choice(p) for p in pools]
        keep = set(rng.sample(range(5), k))
        b = [a[i] if i in keep else _other(rng, pools[i], a[i]) for i in range(5)]
        score = min(5.0, max(0.0, 5.0 * k / 5 + rng.uniform(-0.25, 0.25)))
        out.append((_sts_sentence(a), _sts_sentence(b), f"{score:.3f}"))
    return out


def gen_mnli(rng, n, mismatched=False):
    nouns, places = (MM_NOUNS, MM_PLACES) if mismatched else (NOUNS, PLACES)
    out = []
    for label in _label_seq(rng, n, ["entailment", "contradiction", "neutral"]):
        f = _fact(rng, nouns, places)
        name, past, base, noun, place, adj, time = (f[k] for k in ("name", "past", "base", "noun", "place", "adj",
                                                                  "time"))
        if mismatched:
            premise = rng.choice([f"According to {name}, the {adj} {noun} in {place} was {past} {time}.",
                                  f"It was {name} who {past} the {adj} {noun} in {place} {time}, they said."])
        else:
            premise = rng.choice([_fact_sentence(f), f"In {place}, {name} {past} the {adj} {noun} {time}.",
                                  f"{_cap(time)}, {name} {past} the {adj} {noun} in {place}."])
        if label == "entailment":
            hyp = rng.choice([f"{name} {past} a {noun}.", f"Someone {past} the {noun} in {place}.",
                              f"The {noun} was {past} by {name}.", f"{name} was in {place} {time}."])
        elif label == "contradiction":
            hyp = rng.choice([f"{name} did not {base} the {noun}.", f"Nobody {past} the {noun} in {place}.",
                              f"{name} never {past} anything.", f"{name} has never been to {place}."])
        else:
            other = _other(rng, NAMES, name)
            hyp = rng.choice([f"{name} {past} the {noun} because {rng.choice(REASONS)}.",
                              f"{name} {past} the {noun} for {other}.",
                              f"{name} also {past} a {_other(rng, nouns, noun)}.",
                              f"{name} {past} the {noun} together with {other}."])
        out.append((premise, hyp, label))
    return out


def gen_qnli(rng, n):
    out = []
    for label in _label_seq(rng, n, ["entailment", "not_entailment"]):
        f = _fact(rng)
        qtype = rng.randrange(3)
        question = [f"Where did {f['name']} {f['base']} the {f['noun']}?",
                    f"When did {f['name']} {f['base']} the {f['noun']}?",
                    f"Why did {f['name']} {f['base']} the {f['noun']}?"][qtype]
        answers = [f"in {f['place']}", f['time'], f"because {rng.choice(REASONS)}"]
        fillers = ["with great care", f"for {_other(rng, NAMES, f['name'])}", "without any help",
                   f"together with {_other(rng, NAMES, f['name'])}"]
        if label == "entailment":
            extra = [answers[qtype]] + ([rng.choice(fillers)] if rng.random() < 0.5 else [])
        else:
            # other kinds of information, never the kind the question asks for
            others = [answers[i] for i in range(3) if i != qtype]
            extra = [rng.choice(others + fillers)] + ([rng.choice(fillers)] if rng.random() < 0.5 else [])
        rng.shuffle(extra)
        out.append((question, f"{f['name']} {f['past']} the {f['adj']} {f['noun']} {' '.join(extra)}.", label))
    return out


def gen_rte(rng, n):
    out = []
    for label in _label_seq(rng, n, ["entailment", "not_entailment"]):
        f = _fact(rng)
        job = rng.choice(JOBS)
        premise = (f"{f['name']}, who works as a {job} in {f['place']}, {f['past']} the {f['adj']} "
                   f"{f['noun']} {f['time']}. The papers reported it.")
        kind = rng.randrange(3)
        if label == "entailment":
            hyp = [f"{f['name']} works in {f['place']}.", f"{f['name']} is a {job}.",
                   f"{f['name']} {f['past']} a {f['noun']}."][kind]
        elif rng.random() < 0.6:     # swapped entity
            hyp = [f"{f['name']} works in {_other(rng, PLACES, f['place'])}.",
                   f"{f['name']} is a {_other(rng, JOBS, job)}.",
                   f"{_other(rng, NAMES, f['name'])} {f['past']} a {f['noun']}."][kind]
        else:                        # negation
            hyp = [f"{f['name']} does not work in {f['place']}.", f"{f['name']} is not a {job}.",
                   f"{f['name']} did not {f['base']} a {f['noun']}."][kind]
        out.append((premise, hyp, label))
    return out


WNLI_THINGS = [("trophy", "suitcase"), ("piano", "room"), ("table", "truck"), ("book", "drawer"),
               ("painting", "frame"), ("guitar", "case"), ("bike", "garage"), ("sofa", "van")]


def gen_wnli(rng, n):
    out = []
    for label in _label_seq(rng, n, ["1", "0"]):
        if rng.random() < 0.5:
            thing, box = rng.choice(WNLI_THINGS)
            adj = rng.choice(["big", "small"])
            referent = thing if adj == "big" else box
            wrong = box if adj == "big" else thing
            s1 = f"The {thing} did not fit into the {box} because it was too {adj}."
            s2 = f"The {referent if label == '1' else wrong} was too {adj}."
        else:
            a = rng.choice(NAMES_M)
            b = _other(rng, NAMES_M, a)
            adj = rng.choice(["weak", "heavy"])
            referent, wrong = (a, b) if adj == "weak" else (b, a)
            s1 = f"{a} could not lift {b} because he was too {adj}."
            s2 = f"{referent if label == '1' else wrong} was too {adj}."
        out.append((s1, s2, label))
    return out


# ------------------------------------------------------------------------------------ file writers
def _tsv(rows, header=None):
    lines = [] if header is None else ["\t".join(header)]
    lines += ["\t".join(str(c) for c in row) for row in rows]
    return "\n".join(lines) + "\n"


def _examples(task, split, seed, n, gen, **kw):
    return gen(random.Random(f"{seed}/{task}/{split}"), n, **kw)


def build(seed=SEED):
    """All files as {relative path: text}."""
    files = {}

    def ex(task, split, gen, size_index, **kw):
        return _examples(task, split, seed, SIZES[task][size_index], gen, **kw)

    # CoLA: train/dev headerless (source, label, "*" if unacceptable, sentence); test: index sentence
    for split, i in (("train", 0), ("dev", 1)):
        rows = [[f"syn{j % 7:02d}", lab, "" if lab == "1" else "*", a] for j, (a, _, lab) in
                enumerate(ex("cola", split, gen_cola, i))]
        files[f"CoLA/{split}.tsv"] = _tsv(rows)
    files["CoLA/test.tsv"] = _tsv([[j, a] for j, (a, _, _) in enumerate(ex("cola", "test", gen_cola, 2))],
                                  ["index", "sentence"])
    # SST-2
    for split, i in (("train", 0), ("dev", 1)):
        files[f"SST-2/{split}.tsv"] = _tsv([[a, lab] for a, _, lab in ex("sst-2", split, gen_sst, i)],
                                           ["sentence", "label"])
    files["SST-2/test.tsv"] = _tsv([[j, a.strip()] for j, (a, _, _) in enumerate(ex("sst-2", "test", gen_sst, 2))],
                                   ["index", "sentence"])
    # MRPC: Quality #1 ID #2 ID #1 String #2 String
    ids = random.Random(f"{seed}/mrpc/ids")
    mrpc_header = ["#1 ID", "#2 ID", "#1 String", "#2 String"]
    for split, i in (("train", 0), ("dev", 1)):
        rows = [[lab, ids.randrange(10 ** 5, 10 ** 7), ids.randrange(10 ** 5, 10 ** 7), a, b]
                for a, b, lab in ex("mrpc", split, gen_mrpc, i)]
        files[f"MRPC/{split}.tsv"] = _tsv(rows, ["Quality"] + mrpc_header)
    rows = [[j, ids.randrange(10 ** 5, 10 ** 7), ids.randrange(10 ** 5, 10 ** 7), a, b]
            for j, (a, b, _) in enumerate(ex("mrpc", "test", gen_mrpc, 2))]
    files["MRPC/test.tsv"] = _tsv(rows, ["index"] + mrpc_header)
    # STS-B: index genre filename year old_index source1 source2 sentence1 sentence2 [score]
    sts_header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
    for split, i in (("train", 0), ("dev", 1), ("test", 2)):
        rows = []
        for j, (a, b, score) in enumerate(ex("sts-b", split, gen_stsb, i)):
            row = [j, "main-captions", "synthetic", "2019", f"{j:04d}", "none", "none", a, b]
            rows.append(row + ([score] if split != "test" else []))
        files[f"STS-B/{split}.tsv"] = _tsv(rows, sts_header + (["score"] if split != "test" else []))
    # QQP: id qid1 qid2 question1 question2 is_duplicate; test: id question1 question2
    for split, i in (("train", 0), ("dev", 1)):
        rows = [[j, 2 * j + 1, 2 * j + 2, a, b, lab] for j, (a, b, lab) in enumerate(ex("qqp", split, gen_qqp, i))]
        files[f"QQP/{split}.tsv"] = _tsv(rows, ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"])
    files["QQP/test.tsv"] = _tsv([[j, a, b] for j, (a, b, _) in enumerate(ex("qqp", "test", gen_qqp, 2))],
                                 ["id", "question1", "question2"])
    # MNLI: 12 columns (train), 16 (dev), 10 (test)
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    for split, fname, mm in (("train", "train.tsv", False), ("dev_matched", "dev_matched.tsv", False),
                             ("dev_mismatched", "dev_mismatched.tsv", True),
                             ("test_matched", "test_matched.tsv", False),
                             ("test_mismatched", "test_mismatched.tsv", True)):
        size_index = 0 if split == "train" else 1 if split.startswith("dev") else 2
        examples = ex("mnli", split, gen_mnli, size_index, mismatched=mm)
        genres = GENRES_MM if mm else GENRES_M
        rows = []
        for j, (a, b, lab) in enumerate(examples):
            (ba, pa), (bb, pb) = _parses(a), _parses(b)
            # pairID ends in the label's first letter in the real train/dev files (not in test files)
            pair_id = f"{30000 + j}" + ("" if split.startswith("test") else lab[0])
            row = [j, 30000 + j, pair_id, genres[j % len(genres)], ba, bb, pa, pb, a, b]
            if split == "train":
                row += [lab, lab]
            elif split.startswith("dev"):
                row += [lab] * 5 + [lab]
            rows.append(row)
        header = base + (["label1", "gold_label"] if split == "train" else
                         [f"label{k}" for k in range(1, 6)] + ["gold_label"] if split.startswith("dev") else [])
        files[f"MNLI/{fname}"] = _tsv(rows, header)
    # QNLI / RTE / WNLI: index sentence1 sentence2 label (QNLI: question sentence)
    for task, folder, gen, cols in (("qnli", "QNLI", gen_qnli, ["question", "sentence"]),
                                    ("rte", "RTE", gen_rte, ["sentence1", "sentence2"]),
                                    ("wnli", "WNLI", gen_wnli, ["sentence1", "sentence2"])):
        for split, i in (("train", 0), ("dev", 1)):
            rows = [[j, a, b, lab] for j, (a, b, lab) in enumerate(ex(task, split, gen, i))]
            files[f"{folder}/{split}.tsv"] = _tsv(rows, ["index"] + cols + ["label"])
        files[f"{folder}/test.tsv"] = _tsv([[j, a, b] for j, (a, b, _) in enumerate(ex(task, "test", gen, 2))],
                                           ["index"] + cols)
    # AX diagnostic: index sentence1 sentence2 (unlabelled), MNLI-style pairs from both vocabularies
    pairs = ex("ax", "test_m", gen_mnli, 2)[:50] + ex("ax", "test_mm", gen_mnli, 2, mismatched=True)[:50]
    files["diagnostic/diagnostic.tsv"] = _tsv([[j, a, b] for j, (a, b, _) in enumerate(pairs)],
                                              ["index", "sentence1", "sentence2"])
    files["README.md"] = README
    return files


# ------------------------------------------------------------------------------------ other families
# SQuAD v1.1/v2.0, CoNLL-2003 and SWAG samples for the mixed multi-task demo (data/squad_sample,
# data/conll_sample, data/swag_sample), in the official layouts.

OTHER_SIZES = {"squad": (80, 25), "conll": (600, 150, 150), "swag": (800, 200, 200),  # squad: paragraphs
               "pos": (400, 100, 100)}
SQUAD_QUESTIONS = [("Who {past} the {adj} {noun}?", "name"), ("Where did {name} {base} the {noun}?", "place"),
                   ("When did {name} {base} the {noun}?", "time"), ("Why did {name} {base} the {noun}?", "reason")]


def gen_squad(rng, n_paragraphs, v2):
    """Paragraphs of 3 facts; questions ask who/where/when/why about one fact, answered by a span of
    its sentence. v2 adds, per paragraph, one question about an object no fact mentions (no answer)."""
    articles, qid = [], 0
    for p in range(n_paragraphs):
        facts, used = [], set()
        while len(facts) < 3:
            f = _fact(rng)
            if f["noun"] not in used:
                used.add(f["noun"])
                f["reason"] = rng.choice(REASONS)
                facts.append(f)
        sentences = [f"{f['name']} {f['past']} the {f['adj']} {f['noun']} in {f['place']} {f['time']} "
                     f"because {f['reason']}." for f in facts]
        context = " ".join(sentences)
        qas = []
        for f in facts:
            for template, slot in rng.sample(SQUAD_QUESTIONS, 2):
                answer = f[slot]
                sentence_start = context.index(f"{f['name']} {f['past']} the {f['adj']} {f['noun']}")
                start = context.index(answer, sentence_start)
                qa = {"id": f"syn{qid:05d}", "question": template.format(**f),
                      "answers": [{"answer_start": start, "text": answer}]}
                if v2:
                    qa["is_impossible"] = False
                qas.append(qa)
                qid += 1
        if v2:
            f = dict(facts[0], noun=_other(rng, NOUNS, *used))
            template, _ = rng.choice(SQUAD_QUESTIONS)
            qas.append({"id": f"syn{qid:05d}", "question": template.format(**f), "answers": [],
                        "is_impossible": True, "plausible_answers": []})
            qid += 1
        articles.append({"title": f"Synthetic_{p:03d}", "paragraphs": [{"context": context, "qas": qas}]})
    return articles


ORGS = [("United", "Bank"), ("Acme", "Corporation"), ("Nordic", "Airlines"), ("Royal", "Museum"),
        ("Green", "Party"), ("City", "Council"), ("Blue", "Motors"), ("Star", "Records")]
NATIONALITIES = ["German", "French", "Italian", "Spanish", "Dutch", "Polish", "Swiss", "Irish"]


def gen_conll(rng, n):
    """Sentences built from entity slots: names (PER, one or two words), places (LOC), two-word
    organisations (ORG) and nationality adjectives (MISC), between plain words. IOB1 tags, as the
    CoNLL-2003 files: I- inside every entity, B- only for an entity right after one of the same type."""
    templates = [["{per}", "met", "officials", "of", "the", "{org}", "in", "{loc}", "."],
                 ["The", "{misc}", "team", "of", "{per}", "arrived", "in", "{loc}", "on", "Monday", "."],
                 ["{org}", "said", "{per}", "will", "visit", "{loc}", "next", "week", "."],
                 ["{per}", "bought", "a", "{misc}", "car", "from", "the", "{org}", "."],
                 ["In", "{loc}", ",", "{per}", "and", "{per2}", "opened", "a", "shop", "."],
                 ["The", "{org}", "hired", "a", "{misc}", "engineer", "."]]
    pos = {"met": "VBD", "said": "VBD", "bought": "VBD", "arrived": "VBD", "opened": "VBD", "hired": "VBD",
           "will": "MD", "visit": "VB", ".": ".", ",": ",", "the": "DT", "The": "DT", "a": "DT", "of": "IN",
           "in": "IN", "In": "IN", "on": "IN", "from": "IN", "and": "CC"}
    out = []
    for _ in range(n):
        template = rng.choice(templates)
        words, tags, prev_type = [], [], None
        for slot in template:
            if slot.startswith("{"):
                kind = slot[1:-1]
                if kind in ("per", "per2"):
                    entity, etype = ([rng.choice(NAMES)] + ([rng.choice(["Smith", "Meyer", "Rossi", "Novak"])]
                                     if rng.random() < 0.5 else [])), "PER"
                elif kind == "loc":
                    entity, etype = [rng.choice(PLACES)], "LOC"
                elif kind == "org":
                    entity, etype = list(rng.choice(ORGS)), "ORG"
                else:
                    entity, etype = [rng.choice(NATIONALITIES)], "MISC"
                for k, word in enumerate(entity):
                    prefix = "B" if k == 0 and prev_type == etype else "I"
                    words.append(word)
                    tags.append(f"{prefix}-{etype}")
                prev_type = etype
            else:
                words.append(slot)
                tags.append("O")
                prev_type = None
        out.append((words, tags, [pos.get(w, "NNP" if w[0].isupper() else "NN") for w in words]))
    return out


SWAG_THINGS = [("guitar", ["plays a song on it.", "tunes its strings.", "strums a few chords."]),
               ("bicycle", ["rides it down the street.", "pumps up its tyres.", "pedals up the hill."]),
               ("book", ["reads the first page.", "turns the pages slowly.", "puts it back on the shelf."]),
               ("watering can", ["waters the flowers.", "fills it at the tap.", "sprinkles the garden bed."]),
               ("ball", ["kicks it across the field.", "throws it to a friend.", "bounces it on the floor."]),
               ("cake", ["cuts a large slice.", "puts candles on it.", "eats a piece with a fork."]),
               ("camera", ["takes a photo of the view.", "zooms in on a bird.", "checks the pictures."]),
               ("broom", ["sweeps the kitchen floor.", "brushes the dust outside.", "cleans the porch."])]


def gen_swag(rng, n):
    """Context: someone picks up a thing; the right ending is an action done with that thing, the three
    wrong ones are actions of other things."""
    out = []
    for label in _label_seq(rng, n, [0, 1, 2, 3]):
        thing, actions = rng.choice(SWAG_THINGS)
        name = rng.choice(NAMES)
        pronoun = "He" if name in NAMES_M else "She"
        others = rng.sample([t for t in SWAG_THINGS if t[0] != thing], 3)
        wrong = [rng.choice(acts) for _, acts in others]
        endings = wrong[:label] + [rng.choice(actions)] + wrong[label:]
        sent1 = f"{name} picks up the {thing} {rng.choice(TIMES)}."
        out.append((sent1, pronoun, endings, label))
    return out


# UPOS of the time phrases of TIMES, word by word.
TIME_UPOS = {"on": "ADP", "Monday": "PROPN", "Friday": "PROPN", "last": "ADJ", "week": "NOUN", "year": "NOUN",
             "in": "ADP", "May": "PROPN", "the": "DET", "morning": "NOUN", "yesterday": "ADV", "winter": "NOUN",
             "2015": "NUM", "at": "ADP", "noon": "NOUN"}
# Words that are a NOUN after "the" and a VERB after "will".
POS_AMBIGUOUS = ["paint", "fish", "light", "plant", "water", "ship"]
PRONOUNS = ["He", "She", "They", "We"]


def _pos_time(rng):
    return [(w, w.lower() if TIME_UPOS[w] != "PROPN" else w, TIME_UPOS[w]) for w in rng.choice(TIMES).split()]


def gen_pos(rng, n):
    """Sentences for UPOS tagging as lists of (ID kind, form, lemma, UPOS) with kind "word", "mwt"
    (a multiword token over the next two words: "cannot" = can + not) or "empty" (an elided verb,
    an empty node after the word before it)."""
    out = []
    for _ in range(n):
        name, name2 = rng.sample(NAMES, 2)
        base, past = rng.choice(VERBS)
        noun, noun2 = rng.sample(NOUNS, 2)
        kind = rng.randrange(6)
        if kind == 0:
            words = [(name, name, "PROPN"), (past, base, "VERB"), ("the", "the", "DET"),
                     (rng.choice(ADJS), None, "ADJ"), (noun, None, "NOUN"), ("in", None, "ADP"),
                     (rng.choice(PLACES), "=", "PROPN")] + _pos_time(rng)
        elif kind == 1:
            words = [(rng.choice(PRONOUNS), None, "PRON"), ("did", "do", "AUX"), ("not", None, "PART"),
                     (base, None, "VERB"), ("the", None, "DET"), (noun, None, "NOUN")]
        elif kind == 2:
            words = [(name, "=", "PROPN"), ("cannot", "mwt", None), ("can", None, "AUX"), ("not", None, "PART"),
                     (base, None, "VERB"), ("the", None, "DET"), (noun, None, "NOUN")]
        elif kind == 3:
            words = [(name, "=", "PROPN"), (past, base, "VERB"), ("a", None, "DET"), (noun, None, "NOUN"),
                     ("and", None, "CCONJ"), (name2, "=", "PROPN"), (past, base, "empty"), ("a", None, "DET"),
                     (noun2, None, "NOUN")]
        elif kind == 4:
            word = rng.choice(POS_AMBIGUOUS)
            words = [(name, "=", "PROPN"), ("will", None, "AUX"), (word, None, "VERB"), ("the", None, "DET"),
                     (noun, None, "NOUN")] if rng.random() < 0.5 else \
                    [(name, "=", "PROPN"), (past, base, "VERB"), ("the", None, "DET"), (word, None, "NOUN")]
        else:
            number = rng.choice(["two", "three", "five", "ten"])
            words = [(rng.choice(PRONOUNS), None, "PRON"), ("have", None, "VERB"), (number, None, "NUM"),
                     (noun + "s", noun, "NOUN"), ("in", None, "ADP"), (rng.choice(PLACES), "=", "PROPN")]
        words.append((".", None, "PUNCT"))
        out.append([_pos_item(form, lemma, upos) for form, lemma, upos in words])
    return out


def _pos_item(form, lemma, upos):
    """(kind, form, lemma, UPOS): lemma None = the lower-cased form, "=" = the form as written."""
    if lemma == "mwt":
        return "mwt", form, "_", "_"
    lemma = form.lower() if lemma is None else form if lemma == "=" else lemma
    return ("empty", form, lemma, "VERB") if upos == "empty" else ("word", form, lemma, upos)


def conllu_lines(sentence, sent_id):
    """A gen_pos sentence as CoNLL-U lines (sent_id and text comments; HEAD, DEPREL ... left `_`)."""
    surface = [form for kind, form, _, _ in sentence if kind != "empty"]
    skip = {i + 1 for i, (kind, _, _, _) in enumerate(sentence) if kind == "mwt"} | \
        {i + 2 for i, (kind, _, _, _) in enumerate(sentence) if kind == "mwt"}
    text = " ".join(form for i, form in enumerate(surface) if i not in skip).replace(" .", ".")
    lines, word = [f"# sent_id = {sent_id}", f"# text = {text}"], 0
    for kind, form, lemma, upos in sentence:
        if kind == "mwt":
            lines.append(f"{word + 1}-{word + 2}\t{form}" + "\t_" * 8)
        elif kind == "empty":
            lines.append(f"{word}.1\t{form}\t{lemma}\t{upos}" + "\t_" * 6)
        else:
            word += 1
            lines.append(f"{word}\t{form}\t{lemma}\t{upos}" + "\t_" * 6)
    return lines + [""]


def build_others(seed=SEED):
    """Files of data/squad_sample, data/conll_sample, data/swag_sample and data/pos_sample as
    {relative path: text}."""
    files = {}
    for version, v2 in (("1.1", False), ("2.0", True)):
        for split, n in (("train", OTHER_SIZES["squad"][0]), ("dev", OTHER_SIZES["squad"][1])):
            data = gen_squad(random.Random(f"{seed}/squad/{version}/{split}"), n, v2)
            text = json.dumps({"version": f"v{version}" if v2 else version, "data": data}, indent=1)
            files[f"squad_sample/{split}-v{version}.json"] = text + "\n"
    for split, n in zip(("train", "valid", "test"), OTHER_SIZES["conll"]):
        lines = []
        for i, (words, tags, pos) in enumerate(gen_conll(random.Random(f"{seed}/conll/{split}"), n)):
            if i % 10 == 0:
                lines += ["-DOCSTART- -X- -X- O", ""]
            chunks = ["I-NP" if p in ("NNP", "NN", "DT") else "O" for p in pos]
            lines += [f"{w} {p} {c} {t}" for w, p, c, t in zip(words, pos, chunks, tags)] + [""]
        files[f"conll_sample/{split}.txt"] = "\n".join(lines) + "\n"
    header = ["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
              "ending0", "ending1", "ending2", "ending3", "label"]
    for split, n in zip(("train", "val", "test"), OTHER_SIZES["swag"]):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header if split != "test" else header[:-1])
        for j, (sent1, sent2, endings, label) in enumerate(gen_swag(random.Random(f"{seed}/swag/{split}"), n)):
            row = [j, f"synthetic_{j % 50:03d}", str(j), f"{sent1} {sent2}", sent1, sent2, "gold"] + endings
            writer.writerow(row + ([label] if split != "test" else []))
        files[f"swag_sample/{split}.csv"] = buffer.getvalue()
    for split, n in zip(("train", "dev", "test"), OTHER_SIZES["pos"]):
        sentences = gen_pos(random.Random(f"{seed}/pos/{split}"), n)
        lines = [line for i, sentence in enumerate(sentences) for line in conllu_lines(sentence, f"{split}-{i + 1}")]
        files[f"pos_sample/{split}.conllu"] = "\n".join(lines) + "\n"
    return files


README = """# glue_sample: SYNTHETIC GLUE-format data (demo only)

This folder is NOT the GLUE benchmark. It is a small synthetic stand-in, generated by
`scripts/make_sample_data.py` (fixed seed, deterministic), so that the runners can be tried
offline in minutes on a CPU (`python run_multi_task.py --tasks all --sample anneal`).

- Same layout as the official GLUE download: one folder per task (CoLA, SST-2, MRPC, STS-B, QQP,
  MNLI, QNLI, RTE, WNLI, diagnostic), the same file names (MNLI: dev_matched, dev_mismatched,
  test_matched, test_mismatched; diagnostic/diagnostic.tsv), headers, column counts and label
  strings; test files are unlabelled and carry an index column.
- The sentences come from templates with simple rules (e.g. SST-2: a sentiment word decides the
  label; STS-B: score = 5 x the fraction of content slots two sentences share; MNLI: negation
  means contradiction, added facts mean neutral). See the generator's docstring for every task.
- Sizes are scaled-down GLUE proportions: train MNLI 2800, QQP 2500, QNLI 1200, SST-2 1000,
  CoLA 600, STS-B 500, MRPC 400, RTE 250, WNLI 120; dev 100-200; test 100 per file.

Scores on this data say nothing about GLUE. Use the real data (GLUE's `download_glue_data.py`
layout, `--data_dir /path/to/glue_data`) for any result you report.

Regenerate with `python scripts/make_sample_data.py` (tests check the committed files are
exactly the generator's output).
"""


def write(out_dir=DEFAULT_OUT, seed=SEED):
    """<out_dir>/glue_sample, squad_sample, conll_sample, swag_sample and pos_sample; returns {path under
    out_dir: text}."""
    files = {f"glue_sample/{rel}": text for rel, text in build(seed).items()}
    files.update(build_others(seed))
    for rel, text in files.items():
        atomic_write_text(os.path.join(out_dir, rel), text)
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="folder that gets glue_sample/, squad_sample/, conll_sample/, swag_sample/, pos_sample/")
    parser.add_argument("--seed", type=int, default=SEED, help="generator seed (default %(default)s)")
    args = parser.parse_args(argv)
    files = write(args.out, args.seed)
    size = sum(len(t.encode("utf-8")) for t in files.values())
    print(f"wrote {len(files)} files ({size / 1e6:.2f} MB) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
