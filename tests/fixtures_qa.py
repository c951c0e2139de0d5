"""Fixture writers for the SQuAD, CoNLL-2003 and SWAG tests: tiny files in the exact official formats.

Each writer takes a target path/folder and returns what it wrote (paths), so tests stay short
and the formats live in one place:
- SQuAD v1.1 / v2.0 JSON (`{"version", "data": [{"title", "paragraphs": [{"context", "qas"}]}]}`);
- CoNLL-2003 (`word POS chunk NER`, blank line between sentences, `-DOCSTART- -X- -X- O`);
- SWAG CSV (`,video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0..3,label`).
"""
import csv
import json
import os

# ----------------------------------------------------------------------------------------------
# SQuAD

_PARAGRAPHS = [
    ("Eiffel_Tower",
     "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
     "It is named after the engineer Gustave Eiffel, whose company designed and built the tower. "
     "It was constructed from 1887 to 1889 as the centerpiece of the 1889 World's Fair.",
     [("Who designed the tower?", "Gustave Eiffel"),
      ("In which city is the Eiffel Tower?", "Paris"),
      ("When was the construction of the tower finished?", "1889"),
      ("What is the tower made of?", "wrought-iron")]),
    ("Amazon_river",
     "The Amazon River in South America is the largest river by discharge volume of water in "
     "the world. The headwaters of the Apurimac River on Nevado Mismi had been considered for "
     "nearly a century as the Amazon's most distant source.",
     [("Where is the Amazon River?", "South America"),
      ("What was considered the most distant source?", "The headwaters of the Apurimac River"),
      ("On which mountain is the Apurimac source?", "Nevado Mismi")]),
    ("Super_Bowl_50",
     "Super Bowl 50 was an American football game to determine the champion of the National "
     "Football League (NFL) for the 2015 season. The American Football Conference (AFC) "
     "champion Denver Broncos defeated the National Football Conference (NFC) champion "
     "Carolina Panthers 24\u201310 to earn their third Super Bowl title. The game was played on "
     "February 7, 2016, at Levi's Stadium in Santa Clara, California.",
     [("Which team won Super Bowl 50?", "Denver Broncos"),
      ("Where was Super Bowl 50 played?", "Levi's Stadium"),
      ("What was the final score?", "24\u201310"),
      ("Which team lost the game?", "Carolina Panthers")]),
]


def _find(context, text):
    start = context.find(text)
    assert start >= 0, (text, context)
    return start


def squad_v1_data(multi_answer=False):
    """The `data` list of a small SQuAD v1.1 file. multi_answer: dev-style, 2 gold answers."""
    data, n = [], 0
    for title, context, qas in _PARAGRAPHS:
        items = []
        for question, answer in qas:
            answers = [{"answer_start": _find(context, answer), "text": answer}]
            if multi_answer:
                answers.append({"answer_start": _find(context, answer), "text": answer})
            items.append({"id": f"q{n:04d}", "question": question, "answers": answers})
            n += 1
        data.append({"title": title, "paragraphs": [{"context": context, "qas": items}]})
    return data


def squad_v2_data():
    """A small SQuAD v2.0 `data` list: every paragraph also has unanswerable questions."""
    data = squad_v1_data()
    unanswerable = ["Who painted the tower in 1950?", "How deep is the Apurimac River?",
                    "Who won Super Bowl 49?"]
    n = 0
    for article, question in zip(data, unanswerable):
        qas = article["paragraphs"][0]["qas"]
        for qa in qas:
            qa["is_impossible"] = False
        qas.append({"id": f"u{n:04d}", "question": question, "answers": [], "is_impossible": True,
                    "plausible_answers": []})
        n += 1
    return data


def write_squad(path, data, version="1.1"):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"version": version, "data": data}, f, indent=1, ensure_ascii=False)
    return path


# ----------------------------------------------------------------------------------------------
# CoNLL-2003

_CONLL_SENTENCES = [
    [("EU", "NNP", "B-NP", "B-ORG"), ("rejects", "VBZ", "B-VP", "O"), ("German", "JJ", "B-NP", "B-MISC"),
     ("call", "NN", "I-NP", "O"), ("to", "TO", "B-VP", "O"), ("boycott", "VB", "I-VP", "O"),
     ("British", "JJ", "B-NP", "B-MISC"), ("lamb", "NN", "I-NP", "O"), (".", ".", "O", "O")],
    [("Peter", "NNP", "B-NP", "B-PER"), ("Blackburn", "NNP", "I-NP", "I-PER")],
    [("BRUSSELS", "NNP", "B-NP", "B-LOC"), ("1996-08-22", "CD", "I-NP", "O")],
    [("The", "DT", "B-NP", "O"), ("European", "NNP", "I-NP", "B-ORG"), ("Commission", "NNP", "I-NP", "I-ORG"),
     ("said", "VBD", "B-VP", "O"), ("on", "IN", "B-PP", "O"), ("Thursday", "NNP", "B-NP", "O"),
     ("it", "PRP", "B-NP", "O"), ("disagreed", "VBD", "B-VP", "O"), ("with", "IN", "B-PP", "O"),
     ("German", "JJ", "B-NP", "B-MISC"), ("advice", "NN", "I-NP", "O"), (".", ".", "O", "O")],
    [("Germany", "NNP", "B-NP", "B-LOC"), ("'s", "POS", "B-NP", "O"), ("representative", "NN", "I-NP", "O"),
     ("to", "TO", "B-PP", "O"), ("the", "DT", "B-NP", "O"), ("European", "NNP", "I-NP", "B-ORG"),
     ("Union", "NNP", "I-NP", "I-ORG"), ("'s", "POS", "B-NP", "O"), ("veterinary", "JJ", "I-NP", "O"),
     ("committee", "NN", "I-NP", "O"), ("Werner", "NNP", "I-NP", "B-PER"), ("Zwingmann", "NNP", "I-NP", "I-PER"),
     ("said", "VBD", "B-VP", "O"), ("on", "IN", "B-PP", "O"), ("Wednesday", "NNP", "B-NP", "O"),
     ("consumers", "NNS", "B-NP", "O"), ("should", "MD", "B-VP", "O"), ("buy", "VB", "I-VP", "O"),
     ("sheepmeat", "NN", "B-NP", "O"), ("from", "IN", "B-PP", "O"), ("countries", "NNS", "B-NP", "O"),
     ("other", "JJ", "B-ADJP", "O"), ("than", "IN", "B-PP", "O"), ("Britain", "NNP", "B-NP", "B-LOC"),
     (".", ".", "O", "O")],
    [("Fischler", "NNP", "B-NP", "B-PER"), ("proposed", "VBD", "B-VP", "O"), ("EU-wide", "JJ", "B-NP", "B-MISC"),
     ("measures", "NNS", "I-NP", "O"), ("after", "IN", "B-PP", "O"), ("reports", "NNS", "B-NP", "O"),
     ("from", "IN", "B-PP", "O"), ("Britain", "NNP", "B-NP", "B-LOC"), ("and", "CC", "O", "O"),
     ("France", "NNP", "B-NP", "B-LOC"), (".", ".", "O", "O")],
]


def conll_sentences(iob1=False):
    """The fixture sentences; iob1=True rewrites tags to IOB1 (I- unless a chunk follows one of the same type)."""
    out = []
    for sent in _CONLL_SENTENCES:
        if not iob1:
            out.append(list(sent))
            continue
        new, prev_type = [], None
        for word, pos, chunk, tag in sent:
            if tag != "O":
                prefix, etype = tag.split("-", 1)
                if not (prefix == "B" and prev_type == etype):
                    tag = "I-" + etype
                prev_type = etype
            else:
                prev_type = None
            new.append((word, pos, chunk, tag))
        out.append(new)
    return out


def write_conll(path, sentences, docstart_every=3):
    """CoNLL-2003 layout: -DOCSTART- line + blank line opening each document."""
    with open(path, "w", encoding="utf-8") as f:
        for i, sent in enumerate(sentences):
            if docstart_every and i % docstart_every == 0:
                f.write("-DOCSTART- -X- -X- O\n\n")
            for cols in sent:
                f.write(" ".join(cols) + "\n")
            f.write("\n")
    return path


def write_conll_dir(folder, dev_name="valid.txt"):
    os.makedirs(folder, exist_ok=True)
    sents = conll_sentences()
    write_conll(os.path.join(folder, "train.txt"), sents)
    write_conll(os.path.join(folder, dev_name), sents[:4])
    write_conll(os.path.join(folder, "test.txt"), sents[2:])
    return folder


# ----------------------------------------------------------------------------------------------
# SWAG

SWAG_HEADER = ["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
               "ending0", "ending1", "ending2", "ending3", "label"]

# (video-id, fold-ind, sent1 = context, sent2 = start of the ending, ending0..3, label)
_SWAG_ROWS = [
    ("anetv_jkn6uvmqwh4", "3416", "Members of the procession walk down the street holding small horn "
     "brass instruments.", "A drum line", "passes by walking down the street playing their instruments.",
     "has heard approaching them.", "arrives and they're outside dancing and asleep.",
     "turns the lead singer watches the performance.", 0),
    ("lsmdc3001_21_JUMP_STREET-422", "9", "Someone lifts his fork to his mouth.", "Someone",
     "fights back his tears.", "picks up his sausage then takes a bite.", "stares at the horse.",
     "shifts his glasses.", 1),
    ("anetv_Yr0_Ye3YAeQ", "11201", "A man is standing in a kitchen.", "He",
     "is holding a glass of water.", "flies over the roof.", "swims across the ocean of milk.",
     "sleeps on the cloud.", 0),
    ("lsmdc1008_Spider-Man2-75503", "5187", "She opens the door and steps outside.", "She",
     "eats the door.", "melts into the floor.", "walks down the path towards the car.",
     "turns into a bird.", 2),
]


def swag_rows():
    """Fixture rows as dicts keyed by the SWAG header names."""
    rows = []
    for i, (video, fold, sent1, sent2, e0, e1, e2, e3, label) in enumerate(_SWAG_ROWS):
        rows.append({"": str(i), "video-id": video, "fold-ind": fold, "startphrase": f"{sent1} {sent2}",
                     "sent1": sent1, "sent2": sent2, "gold-source": "gold", "ending0": e0,
                     "ending1": e1, "ending2": e2, "ending3": e3, "label": str(label)})
    return rows


def write_swag(path, rows, with_label=True):
    """Write rows (dicts keyed by header names) as a SWAG CSV; test.csv has no label column."""
    header = SWAG_HEADER if with_label else SWAG_HEADER[:-1]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row[name] for name in header])
    return path


def write_swag_dir(folder):
    os.makedirs(folder, exist_ok=True)
    rows = swag_rows()
    write_swag(os.path.join(folder, "train.csv"), rows)
    write_swag(os.path.join(folder, "val.csv"), rows[:3])
    write_swag(os.path.join(folder, "test.csv"), rows[1:], with_label=False)
    return folder


# ----------------------------------------------------------------------------------------------


def make_tokenizer(vocab_file, do_lower_case=True):
    """The project's BertTokenizer (the bundled MiniLM vocab is uncased)."""
    from tokenization import BertTokenizer
    return BertTokenizer(vocab_file, do_lower_case=do_lower_case)


def write_squad_dir(folder, version=2):
    """A SQuAD folder with the official file names (train-v2.0.json / dev-v2.0.json, or v1.1)."""
    os.makedirs(folder, exist_ok=True)
    if version == 2:
        write_squad(os.path.join(folder, "train-v2.0.json"), squad_v2_data(), "v2.0")
        write_squad(os.path.join(folder, "dev-v2.0.json"), squad_v2_data(), "v2.0")
    else:
        write_squad(os.path.join(folder, "train-v1.1.json"), squad_v1_data())
        write_squad(os.path.join(folder, "dev-v1.1.json"), squad_v1_data(multi_answer=True))
    return folder
