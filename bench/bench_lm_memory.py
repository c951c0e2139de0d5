"""Peak resident memory of finetune_on_pregenerated.py with and without --reduce_memory.

Builds a synthetic corpus (default 200k sentences in documents of 5-40 sentences, words drawn
from the vocabulary), pregenerates ONE data epoch once, then runs a few training steps of
finetune_on_pregenerated.py twice, each in its own process, and reads that process's RSS
high-water mark from os.wait4 (ru_maxrss). With --reduce_memory the data epoch lives in numpy
memmap files that are filled by plain writes and read through a short-lived map per batch, so
the difference between the two peaks should be about the size of the data arrays. A tiny random
BERT (real 30522-token vocab) is used by default so that the model is small next to the data;
--bert_model minilm-l6 measures the bundled model instead.

    python bench/bench_lm_memory.py                      # ~200k sentences, a few minutes on 2 cores
    python bench/bench_lm_memory.py --sentences 1000000 --max_seq_len 256 --pregenerate_too
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(path, num_sentences, vocab_words, seed=0):
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < num_sentences:
            for _ in range(min(rng.randint(5, 40), num_sentences - written)):
                f.write(" ".join(rng.choices(vocab_words, k=rng.randint(8, 30))) + ".\n")
                written += 1
            f.write("\n")
    return written


def run_measured(cmd, log_path):
    """Run cmd; return (peak RSS in MiB of that process, wall seconds). Fails loudly on a non-zero exit."""
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n" + open(log_path).read()[-3000:])
    return usage.ru_maxrss / 1024.0, time.time() - start  # ru_maxrss is in KiB on Linux


TINY_MODEL = """
import sys, torch, modeling
torch.manual_seed(0)
config = modeling.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, max_position_embeddings=512)
modeling.BertModel(config).save_pretrained(sys.argv[1], vocab_file=sys.argv[2])
"""


def tiny_model(folder, vocab_file):
    # In a child process: this process must stay small, because a child's RSS high-water mark
    # starts from the size of the process it was forked from.
    subprocess.run([sys.executable, "-c", TINY_MODEL, folder, vocab_file], cwd=ROOT, check=True)
    return folder


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sentences", type=int, default=200_000)
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--bert_model", default=None, help="default: a tiny random BERT (hidden 64, 2 layers)")
    p.add_argument("--steps", type=int, default=5, help="training steps per measured run")
    p.add_argument("--batch", type=int, default=2,
                   help="train batch size (small: the [batch, seq, vocab] MLM logits are the largest transient)")
    p.add_argument("--pregenerate_too", action="store_true",
                   help="also measure pregenerate_training_data.py with and without --reduce_memory")
    p.add_argument("--work_dir", default=None, help="default: a temporary folder (removed afterwards)")
    args = p.parse_args()

    from file_utils import resolve_model_dir
    from tokenization import BertTokenizer
    vocab_file = os.path.join(resolve_model_dir("minilm-l6"), "vocab.txt")
    tok = BertTokenizer(vocab_file)
    words = [w for w in tok.vocab if w.isalpha() and w.isascii() and len(w) > 2][:8000]

    tmp = tempfile.TemporaryDirectory(prefix="bench_lm_memory_", dir=args.work_dir)
    work = tmp.name
    corpus = os.path.join(work, "corpus.txt")
    n = write_corpus(corpus, args.sentences, words)
    print(f"corpus: {n} sentences, {os.path.getsize(corpus) / 2**20:.1f} MiB")
    model = args.bert_model or tiny_model(os.path.join(work, "tiny_bert"), vocab_file)
    py = sys.executable
    pregen = [py, "lm_finetuning/pregenerate_training_data.py", "--train_corpus", corpus, "--bert_model", model,
              "--do_lower_case", "--epochs_to_generate", "1", "--max_seq_len", str(args.max_seq_len)]
    rows = []
    data = os.path.join(work, "data")
    rss, secs = run_measured(pregen + ["--output_dir", data], os.path.join(work, "pregen.log"))
    rows.append(("pregenerate", "RAM", rss, secs))
    if args.pregenerate_too:
        rss, secs = run_measured(pregen + ["--output_dir", os.path.join(work, "data_rm"), "--reduce_memory"],
                                 os.path.join(work, "pregen_rm.log"))
        rows.append(("pregenerate", "--reduce_memory", rss, secs))
    with open(os.path.join(data, "epoch_0_metrics.json")) as f:
        metrics = json.load(f)
    num, seq = metrics["num_training_examples"], metrics["max_seq_len"]
    data_bytes = num * seq * (4 + 1 + 1 + 4) + num * (1 + 4)  # PregeneratedEpoch arrays
    batch = args.batch
    epochs = args.steps * batch / num  # a fraction of an epoch: a few steps over the whole data epoch
    for mode in ("RAM", "--reduce_memory"):
        out = os.path.join(work, "ft_" + ("rm" if mode != "RAM" else "ram"))
        cmd = [py, "lm_finetuning/finetune_on_pregenerated.py", "--pregenerated_data", data, "--bert_model", model,
               "--do_lower_case", "--output_dir", out, "--epochs", repr(epochs), "--train_batch_size", str(batch)]
        if mode != "RAM":
            cmd.append("--reduce_memory")
        rss, secs = run_measured(cmd, os.path.join(work, f"ft_{mode.strip('-')}.log"))
        rows.append(("finetune_on_pregenerated", mode, rss, secs))

    print(f"data epoch: {num} instances x max_seq_len {seq}: arrays {data_bytes / 2**20:.1f} MiB "
          f"(JSON file {os.path.getsize(os.path.join(data, 'epoch_0.json')) / 2**20:.1f} MiB)")
    model = args.bert_model or "tiny random BERT (hidden 64, 2 layers, vocab 30522)"
    print(f"model: {model}; {args.steps} steps of batch {batch}")
    print(f"{'script':26s} {'mode':16s} {'peak RSS MiB':>12s} {'wall s':>8s}")
    for script, mode, rss, secs in rows:
        print(f"{script:26s} {mode:16s} {rss:12.1f} {secs:8.1f}")
    import resource
    print(f"(this driver process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB)")
    ft = {mode: rss for script, mode, rss, _ in rows if script == "finetune_on_pregenerated"}
    saved = ft["RAM"] - ft["--reduce_memory"]
    print(f"finetune peak saved by --reduce_memory: {saved:.1f} MiB = {saved / (data_bytes / 2**20):.2f} x the data "
          "arrays; "
          f"peak ratio RAM/reduce_memory {ft['RAM'] / ft['--reduce_memory']:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
