"""Benchmark: tasks/squad.py read_squad_examples, one word split per paragraph vs one per question.

Writes a synthetic SQuAD v1.1 training file of SQuAD's size (default 20,000 paragraphs x 5
questions; contexts of 60-200 random words, ~120 on average, like SQuAD's ~735 characters; each
answer a 1-4 word span with its character offset) and reads it with the current reader (the
paragraph is split into words once, shared by its questions) and with the previous reader, kept
here only (`read_per_question`: the same loop, splitting the context again for every question).
In ONE process, runs alternating: the time (wall and process) of each read, then, in separate
runs under tracemalloc, the peak of Python memory during the read and what the returned examples
keep. Checks that both readers return equal examples.

    python bench/bench_squad_reader.py [--paragraphs 20000] [--questions 5] [--repeats 2]
"""
import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc

from file_utils import DataError
from tasks import squad


def read_per_question(path, is_training, version_2_with_negative=False):
    """read_squad_examples as it was before (commit 3bd3d8d): the context split for every question."""
    data, raw, version = squad.load_squad_json(path)
    examples, dropped = [], []
    for where, context, qa in squad._iter_qas(path, data, raw):
        doc_tokens, char_to_word_offset = squad._split_context(context)  # once per question, as before

        qas_id = str(qa["id"])
        start_position = end_position = orig_answer_text = None
        is_impossible = False
        if is_training:
            answers = qa.get("answers", [])
            if version_2_with_negative:
                is_impossible = qa.get("is_impossible", len(answers) == 0)
            if len(answers) != 1 and not is_impossible:
                raise DataError(path, squad._line_of(raw, qa["id"]), f"{where}: needs exactly 1 answer")
            if not is_impossible:
                answer = answers[0]
                orig_answer_text = answer["text"]
                answer_offset = answer["answer_start"]
                start_position = char_to_word_offset[answer_offset]
                end_position = char_to_word_offset[answer_offset + len(orig_answer_text) - 1]
                actual_text = " ".join(doc_tokens[start_position:end_position + 1])
                cleaned_answer_text = " ".join(squad.whitespace_tokenize(orig_answer_text))
                if actual_text.find(cleaned_answer_text) == -1:
                    dropped.append(qas_id)
                    continue
            else:
                start_position = end_position = -1
                orig_answer_text = ""
        examples.append(squad.SquadExample(qas_id, qa["question"], doc_tokens, orig_answer_text,
                                           start_position, end_position, is_impossible))
    return examples, dropped


def synthetic_squad(path, paragraphs, questions, seed=0):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(30000)]
    data, qid = [], 0
    for p in range(paragraphs):
        words = [rng.choice(vocab) + ("," if rng.random() < 0.08 else "") for _ in range(rng.randint(60, 200))]
        context = " ".join(words) + "."
        starts, pos = [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        qas = []
        for _ in range(questions):
            i = rng.randrange(len(words) - 4)
            text = " ".join(words[i:i + rng.randint(1, 4)])
            qas.append({"id": f"{qid:08x}", "question": " ".join(rng.choice(vocab) for _ in range(8)) + "?",
                        "answers": [{"answer_start": starts[i], "text": text}]})
            qid += 1
        data.append({"title": f"article_{p}", "paragraphs": [{"context": context, "qas": qas}]})
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"version": "1.1", "data": data}, f)
    return qid


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paragraphs", type=int, default=20000)
    p.add_argument("--questions", type=int, default=5, help="questions per paragraph")
    p.add_argument("--repeats", type=int, default=2, help="timed reads of each reader")
    a = p.parse_args(argv)
    readers = {"per question (before)": read_per_question, "per paragraph (now)": squad.read_squad_examples}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train-v1.1.json")
        n = synthetic_squad(path, a.paragraphs, a.questions)
        print(f"synthetic SQuAD v1.1 train: {a.paragraphs} paragraphs x {a.questions} questions = {n} questions, "
              f"{os.path.getsize(path) / 2**20:.1f} MiB; python {sys.version.split()[0]}")
        first = {name: fn(path, True) for name, fn in readers.items()}
        (old_ex, old_dropped), (new_ex, new_dropped) = first.values()
        assert old_ex == new_ex and old_dropped == new_dropped and len(new_ex) == n, "readers disagree"
        words = len({id(e.doc_tokens) for e in new_ex})
        print(f"examples equal: yes ({len(new_ex)} examples, {len(old_dropped)} dropped); distinct word lists: "
              f"{len({id(e.doc_tokens) for e in old_ex})} before, {words} now")
        del first, old_ex, new_ex
        gc.collect()
        wall = {name: [] for name in readers}
        cpu = {name: [] for name in readers}
        for r in range(a.repeats):
            for name in (list(readers) if r % 2 == 0 else list(readers)[::-1]):
                gc.collect()
                start, cpu_start = time.perf_counter(), time.process_time()
                result = readers[name](path, True)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
                del result
        peak, kept = {}, {}
        for name, fn in readers.items():
            gc.collect()
            tracemalloc.start()
            result = fn(path, True)
            kept[name], peak[name] = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            del result
        for name in readers:
            print(f"{name:22s} wall {statistics.median(wall[name]):6.2f} s | process "
                  f"{statistics.median(cpu[name]):6.2f} s | peak Python memory {peak[name] / 2**30:5.2f} GiB | "
                  f"kept by the examples {kept[name] / 2**30:5.2f} GiB")
        old, new = readers
        print(f"before / now: time {statistics.median(cpu[old]) / statistics.median(cpu[new]):.2f}x (process), "
              f"{statistics.median(wall[old]) / statistics.median(wall[new]):.2f}x (wall); peak memory "
              f"{peak[old] / peak[new]:.2f}x ({(peak[old] - peak[new]) / 2**30:.2f} GiB less); kept "
              f"{kept[old] / kept[new]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
