"""Tokenizer throughput: our BertTokenizer vs transformers' pure-Python BertTokenizerLegacy and
its Rust-backed BertTokenizer (= BertTokenizerFast), on the same sentences, in one run.
('rust raw' = the `tokenizers` library's encode_batch alone, without transformers' wrapper.)

Each measures text -> word-piece ids (tokenize + convert_tokens_to_ids; the Rust tokenizer is
timed both per sentence and as one batch call), in sentences/second, and prints the ratios.
Ours is timed twice: a cold word cache (fresh tokenizer) and a warm one (second pass), since
feature building tokenizes whole datasets and revisits the same words.

Three corpora: 'english' (Zipf-sampled vocab words, capitals, punctuation, numbers and made-up
words: realistic GLUE-like text), 'glue_sample' (the bundled synthetic GLUE sentences:
templated, many repeats) and 'unicode' (the awkward corpus the equivalence test uses).

    python bench/bench_tokenizer.py [--n 20000] [--repeats 3]
"""
import argparse
import csv
import glob
import os
import random
import time

from file_utils import resolve_model_dir
from tokenization import BertTokenizer, load_vocab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def english_corpus(vocab_tokens, n, seed=0):
    rng = random.Random(seed)
    words = [t for t in vocab_tokens[1996:] if t.isalpha() and t.isascii()]
    weights = [1.0 / (r + 10) for r in range(len(words))]  # Zipf-like: the vocab is roughly frequency-ordered
    punct = [",", ".", ";", ":", "!", "?", "'s", "n't", "-", "(", ")", '"']
    lines = []
    for _ in range(n):
        k = rng.randint(5, 40)
        sent = rng.choices(words, weights, k=k)
        out = []
        for i, w in enumerate(sent):
            r = rng.random()
            if i == 0 or r < 0.08:
                w = w.capitalize()
            if r > 0.97:
                w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(6, 14)))
            elif r > 0.95:
                w = str(rng.randint(0, 100000))
            out.append(w)
            if rng.random() < 0.12:
                out.append(rng.choice(punct))
        lines.append(" ".join(out) + ".")
    return lines


def glue_sample_corpus(n):
    lines = []
    for path in sorted(glob.glob(os.path.join(ROOT, "data", "glue_sample", "*", "train.tsv"))):
        with open(path, encoding="utf-8") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                lines.extend(c for c in row if len(c) > 20 and not c.startswith("("))
    return (lines * (n // max(1, len(lines)) + 1))[:n]


def _utf8_ok(text):
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def timed(fn, lines, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(lines)
        best = min(best, time.perf_counter() - start)
    return len(lines) / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="sentences per corpus")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed passes")
    parser.add_argument("--bert_model", default="minilm-l6", help="folder with vocab.txt or bundled name")
    args = parser.parse_args()

    import transformers
    from tree_modules import load_script
    make_corpus = load_script("tests/test_tokenization.py").make_corpus

    vocab_file = os.path.join(resolve_model_dir(args.bert_model), "vocab.txt")
    vocab_tokens = load_vocab(vocab_file)
    legacy = transformers.BertTokenizerLegacy(vocab_file)
    fast = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(vocab_tokens)})

    corpora = {
        "english": english_corpus(vocab_tokens, args.n),
        "glue_sample": glue_sample_corpus(args.n),
        # Lone surrogates (in the test corpus) cannot be passed to the Rust tokenizer: dropped for all.
        "unicode": [x for x in make_corpus(vocab_tokens, args.n, seed=123) if _utf8_ok(x)][:args.n],
    }
    print(f"transformers {transformers.__version__}; {args.n} sentences per corpus; best of {args.repeats}")
    print(f"{'corpus':12s} {'ours cold':>10s} {'ours warm':>10s} {'legacy':>9s} {'rust/sent':>10s} "
          f"{'rust/batch':>10s} {'rust raw':>9s} | {'cold/leg':>8s} {'warm/leg':>8s} {'warm/rust1':>10s} "
          f"{'warm/rustB':>10s} {'warm/raw':>8s}  same-as-rust")
    for name, lines in corpora.items():
        def ours_cold(xs):
            tok = BertTokenizer(vocab_file)
            for x in xs:
                tok.convert_tokens_to_ids(tok.tokenize(x))

        warm_tok = BertTokenizer(vocab_file)

        def ours_warm(xs):
            for x in xs:
                warm_tok.convert_tokens_to_ids(warm_tok.tokenize(x))

        def run_legacy(xs):
            for x in xs:
                legacy.convert_tokens_to_ids(legacy.tokenize(x))

        def rust_single(xs):
            for x in xs:
                fast(x, add_special_tokens=False)["input_ids"]

        def rust_batch(xs):
            fast(xs, add_special_tokens=False)["input_ids"]

        def rust_raw(xs):
            # The tokenizers library alone, without transformers' Python wrapper around it.
            [e.ids for e in fast.backend_tokenizer.encode_batch(xs, add_special_tokens=False)]

        ours_warm(lines)  # fill the cache
        cold = timed(ours_cold, lines, args.repeats)
        warm = timed(ours_warm, lines, args.repeats)
        leg = timed(run_legacy, lines, 1)
        r1 = timed(rust_single, lines, args.repeats)
        rb = timed(rust_batch, lines, args.repeats)
        rr = timed(rust_raw, lines, args.repeats)
        ours_ids = [warm_tok.convert_tokens_to_ids(warm_tok.tokenize(x)) for x in lines]
        rust_ids = fast(lines, add_special_tokens=False)["input_ids"]
        same = sum(a == b for a, b in zip(ours_ids, rust_ids)) / len(lines)
        print(f"{name:12s} {cold:10.0f} {warm:10.0f} {leg:9.0f} {r1:10.0f} {rb:10.0f} {rr:9.0f} | "
              f"{cold / leg:8.2f} {warm / leg:8.2f} {warm / r1:10.2f} {warm / rb:10.2f} {warm / rr:8.2f}  {same:.2%}")
    print("(sentences/second; ratios > 1 mean ours is faster; same-as-rust = share of sentences whose ids "
          "equal the Rust tokenizer's)")


if __name__ == "__main__":
    main()
