"""Benchmark: dev scores of run_classifier.py with AdamW (the default), BertAdam and the whole 2019
protocol, everything else equal (bundled MiniLM, lr 5e-5, batch 32, 3 epochs, seed 42).

BertAdam has no bias correction: for the first thousands of steps its updates are several times
larger than Adam's. This measures what that does to the dev score. Without --data_dir the data are
made by the sample-data generator (scripts/make_sample_data.py) at --train_size examples per task,
4,000 by default (the size of the measurement in the issue that made AdamW the default):
STS-B-like regression and RTE-like pairs. Synthetic data, so only the comparison means anything.

    python bench/bench_optimizers.py                      # sts-b and rte, three variants each
    python bench/bench_optimizers.py --tasks sts-b --data_dir /path/to/glue_data
"""
import argparse
import os
import sys
import tempfile
import time

import run_classifier

VARIANTS = {"adamw (default)": [], "--optimizer bertadam": ["--optimizer", "bertadam"],
            "--reference_protocol": ["--reference_protocol"]}
MAIN = {"sts-b": "corr", "rte": "acc", "mrpc": "acc_and_f1", "cola": "mcc", "sst-2": "acc"}


def generate(tasks, train_size, dev_size):
    """GLUE-layout train/dev files of `tasks` made by the sample-data generator at the given sizes."""
    from tree_modules import load_script
    sample = load_script("scripts/make_sample_data.py")
    out = tempfile.mkdtemp(prefix="bench-opt-data-")
    sample.SIZES.update({t: (train_size, dev_size, 10) for t in tasks})
    for rel, text in sample.build().items():
        if rel.split("/")[0].lower().replace("-", "") in {t.replace("-", "") for t in tasks}:
            path = os.path.join(out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="sts-b,rte")
    p.add_argument("--data_dir", default=None, help="GLUE data (default: generated, see above)")
    p.add_argument("--train_size", type=int, default=4000)
    p.add_argument("--dev_size", type=int, default=500)
    p.add_argument("--learning_rate", default="5e-5")
    p.add_argument("--epochs", default="3")
    a = p.parse_args(argv)
    if a.data_dir is None:
        a.data_dir = generate(a.tasks.split(","), a.train_size, a.dev_size)
    rows = []
    for task in a.tasks.split(","):
        for label, extra in VARIANTS.items():
            out = tempfile.mkdtemp(prefix="bench-opt-")
            start = time.time()
            run_classifier.main(["--task_name", task, "--data_dir", a.data_dir, "--do_train", "--do_eval",
                                 "--bert_model", "minilm-l6", "--output_dir", out, "--learning_rate", a.learning_rate,
                                 "--train_batch_size", "32", "--num_train_epochs", a.epochs, "--seed", "42",
                                 "--max_seq_length", "128", "--cache_dir", "none", "--logging_steps", "100000",
                                 *extra])
            with open(os.path.join(out, "eval_results.txt"), encoding="utf-8") as f:
                results = dict(line.split(" = ") for line in f.read().splitlines())
            rows.append((task, label, float(results[MAIN[task]]), time.time() - start))
    print(f"{'task':<6} | {'optimizer':<22} | dev main score | seconds")
    for task, label, score, seconds in rows:
        print(f"{task:<6} | {label:<22} | {score:14.4f} | {seconds:7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
