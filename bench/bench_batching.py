"""Benchmark: dynamic, length-grouped batching vs fixed padding, and the engine vs a plain loop.

Measured in ONE run on the bundled MiniLM (6 layers, hidden 384), on a GLUE-like length
distribution (lognormal lengths, median ~25 word pieces, clipped to [4, 128]):

1. one training epoch through the engine with the default batching (pad to the longest
   sequence of a length-grouped batch) vs `--pad_to_max_length` (every batch padded to 128);
2. engine training throughput vs a plain Hugging Face `transformers.BertForSequenceClassification`
   training loop on the SAME weights and the SAME (dynamically padded) batches, both with
   torch.optim.AdamW and global gradient clipping.

Timings cover the optimizer steps only (model loading and the end-of-training checkpoint are
excluded); each side gets one warm-up step first. Prints the timings and the ratios.

    python bench/bench_batching.py [--examples 256] [--batch_size 32] [--threads 2]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import training  # noqa: E402
from file_utils import resolve_model_dir  # noqa: E402


def glue_like_features(n, seed, max_len=128, median=25, sigma=0.6, vocab=(1000, 30000)):
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 4, max_len).astype(int)
    feats = []
    for length in lengths:
        body = rng.integers(vocab[0], vocab[1], length - 2).tolist()
        feats.append({"input_ids": [101] + body + [102], "token_type_ids": [0] * int(length),
                      "labels": int(rng.integers(0, 2))})
    return feats, lengths


def engine_args(output_dir, *extra):
    parser = argparse.ArgumentParser()
    training.add_engine_args(parser)
    return parser.parse_args(["--bert_model", "minilm-l6", "--output_dir", output_dir, "--cache_dir", "none",
                              "--optimizer", "adamw", "--logging_steps", "100000", *extra])


def time_engine_epoch(feats, batch_size, *extra):
    """Seconds for one epoch of optimizer steps through Trainer.training_step; also the batches."""
    with tempfile.TemporaryDirectory() as out:
        args = engine_args(out, "--train_batch_size", str(batch_size), *extra)
        env = training.setup_env(args)
        model = training.load_model(args, [2])
        stream = training.make_stream(args, env, feats)
        trainer = training.Trainer(args, env, model, stream.steps_per_epoch)
        warm = training.make_stream(args, env, feats[:batch_size])
        trainer.training_step(warm.next_step())  # warm-up (allocator, kernels); not timed
        steps = [stream.next_step() for _ in range(stream.steps_per_epoch)]
        start = time.perf_counter()
        for micro in steps:
            trainer.training_step(micro)
        seconds = time.perf_counter() - start
        padded = sum(b["input_ids"].numel() for step in steps for _, b in step)
        return seconds, steps, padded, model


def time_hf_epoch(steps, our_model, max_grad_norm=1.0, lr=5e-5):
    """The same batches through transformers.BertForSequenceClassification with a plain loop."""
    from transformers import BertForSequenceClassification
    hf = BertForSequenceClassification.from_pretrained(resolve_model_dir("minilm-l6"), num_labels=2)
    # same head weights as the engine's model (the encoder comes from the same checkpoint)
    head = our_model.heads[0]
    classifier = getattr(head, "classifier", None)
    if classifier is not None:
        hf.classifier.load_state_dict(classifier.state_dict())
    hf.train()
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [{"params": [p for n, p in hf.named_parameters() if not any(k in n for k in no_decay)],
               "weight_decay": 0.01},
              {"params": [p for n, p in hf.named_parameters() if any(k in n for k in no_decay)],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, eps=1e-6)

    def step(micro):
        for _, batch in micro:
            out = hf(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                     attention_mask=batch["attention_mask"], labels=batch["labels"])
            out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(steps[0])  # warm-up
    start = time.perf_counter()
    for micro in steps:
        step(micro)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    import logging
    logging.disable(logging.INFO)
    feats, lengths = glue_like_features(opts.examples, opts.seed)
    print(f"{opts.examples} examples, length median {int(np.median(lengths))}, mean {lengths.mean():.1f}, "
          f"max {lengths.max()}; batch {opts.batch_size}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device cpu")
    dyn_s, dyn_steps, dyn_tokens, model = time_engine_epoch(feats, opts.batch_size)
    fix_s, _, fix_tokens, _ = time_engine_epoch(feats, opts.batch_size, "--pad_to_max_length")
    hf_s = time_hf_epoch(dyn_steps, model)
    n = opts.examples
    print(f"engine, default batching (dynamic, length-grouped): {dyn_s:7.2f} s/epoch  {n / dyn_s:7.1f} ex/s  "
          f"{dyn_tokens} padded tokens")
    print(f"engine, --pad_to_max_length:                        {fix_s:7.2f} s/epoch  {n / fix_s:7.1f} ex/s  "
          f"{fix_tokens} padded tokens")
    print(f"HF BertForSequenceClassification, same batches:     {hf_s:7.2f} s/epoch  {n / hf_s:7.1f} ex/s")
    print(f"speed-up of default batching over fixed padding: {fix_s / dyn_s:.2f}x")
    print(f"engine throughput / HF plain-loop throughput:     {hf_s / dyn_s:.2f}")


if __name__ == "__main__":
    main()
