"""Benchmark: dynamic, length-grouped batching vs fixed padding, and the engine vs a plain loop.

Measured in ONE run on the bundled MiniLM (6 layers, hidden 384), on a GLUE-like length
distribution (lognormal lengths, median ~25 word pieces, clipped to [4, 128]):

1. one training epoch through the engine with the default batching (pad to the longest
   sequence of a length-grouped batch) vs `--pad_to_max_length` (every batch padded to 128);
2. engine training throughput vs a plain Hugging Face `transformers.BertForSequenceClassification`
   training loop on the SAME weights and the SAME (dynamically padded) batches, both with
   torch.optim.AdamW and global gradient clipping.

Timings cover the optimizer steps only (model loading and checkpoints are excluded); each side
gets one warm-up step first, and the three epochs are interleaved step by step (rotating which goes
first) so that a change in machine load affects them alike. Prints the timings and the ratios.

    python bench/bench_batching.py [--examples 512] [--batch_size 32] [--threads 1]
"""
import argparse
import tempfile
import time

import numpy as np
import torch

import training
from file_utils import resolve_model_dir


def glue_like_features(n, seed, max_len=128, median=25, sigma=0.6, vocab=(1000, 30000)):
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 4, max_len).astype(int)
    feats = []
    for length in lengths:
        body = rng.integers(vocab[0], vocab[1], length - 2).tolist()
        feats.append({"input_ids": [101] + body + [102], "token_type_ids": [0] * int(length),
                      "labels": int(rng.integers(0, 2))})
    return feats, lengths


def engine_options(output_dir, *extra):
    parser = argparse.ArgumentParser()
    training.add_engine_args(parser)
    return training.EngineOptions.from_args(parser.parse_args(
        ["--bert_model", "minilm-l6", "--output_dir", output_dir, "--cache_dir", "none", "--optimizer", "adamw",
         "--logging_steps", "100000", *extra]))


def engine_trainer(feats, batch_size, *extra):
    """A Trainer on MiniLM and the list of steps of one epoch (batches collated up front)."""
    out = tempfile.mkdtemp(prefix="bench-")
    args = engine_options(out, "--train_batch_size", str(batch_size), *extra)
    env = training.setup_env(args)
    model = training.load_model(args, [2])
    stream = training.make_stream(args, env, feats)
    trainer = training.Trainer(args, env, model, stream.steps_per_epoch)
    # Time the forward+backward part of each step separately from the whole step (the rest is the
    # optimizer update, clipping and bookkeeping: a per-step cost that padding does not change).
    trainer.fwd_bwd_seconds = 0.0
    inner = trainer._step_microbatches

    def timed(micro):
        start = time.perf_counter()
        try:
            return inner(micro)
        finally:
            trainer.fwd_bwd_seconds += time.perf_counter() - start

    trainer._step_microbatches = timed
    steps = [stream.next_step() for _ in range(stream.steps_per_epoch)]
    padded = sum(b["input_ids"].numel() for step in steps for _, b in step)
    return trainer, steps, padded


def hf_step_fn(our_model, max_grad_norm=1.0, lr=5e-5):
    """One optimizer step of a plain loop on transformers.BertForSequenceClassification with the
    same weights as the engine's model (encoder from the same checkpoint, head copied) and the
    same optimizer kind (torch AdamW, same groups/eps, global clipping)."""
    from transformers import BertForSequenceClassification
    hf = BertForSequenceClassification.from_pretrained(resolve_model_dir("minilm-l6"), num_labels=2)
    hf.classifier.load_state_dict(our_model.heads[0].classifier.state_dict())
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

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch default). 1 by default: on a small shared CPU, "
                             "OpenMP threads competing with other jobs made every step up to 10x slower and noisy")
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
    dyn, dyn_steps, dyn_tokens = engine_trainer(feats, opts.batch_size)
    fix, fix_steps, fix_tokens = engine_trainer(feats, opts.batch_size, "--pad_to_max_length")
    hf_step = hf_step_fn(dyn.model)
    runs = [("dyn", lambda i: dyn.training_step(dyn_steps[i])),
            ("fix", lambda i: fix.training_step(fix_steps[i])),
            ("hf", lambda i: hf_step(dyn_steps[i]))]
    for _, run in runs:  # warm-up step (allocator, kernels), not timed
        run(0)
    dyn.fwd_bwd_seconds = fix.fwd_bwd_seconds = 0.0
    # The three epochs are interleaved step by step, so a change in machine load hits all alike.
    seconds = {name: 0.0 for name, _ in runs}
    for i in range(len(dyn_steps)):
        for name, run in runs[i % 3:] + runs[:i % 3]:  # rotate who goes first (cache effects)
            start = time.perf_counter()
            run(i)
            seconds[name] += time.perf_counter() - start
    dyn_s, fix_s, hf_s = seconds["dyn"], seconds["fix"], seconds["hf"]
    n = opts.examples
    print(f"engine, default batching (dynamic, length-grouped): {dyn_s:7.2f} s/epoch  {n / dyn_s:7.1f} ex/s  "
          f"{dyn_tokens} padded tokens")
    print(f"engine, --pad_to_max_length:                        {fix_s:7.2f} s/epoch  {n / fix_s:7.1f} ex/s  "
          f"{fix_tokens} padded tokens")
    print(f"HF BertForSequenceClassification, same batches:     {hf_s:7.2f} s/epoch  {n / hf_s:7.1f} ex/s")
    print(f"  of which forward+backward: default {dyn.fwd_bwd_seconds:.2f} s, fixed {fix.fwd_bwd_seconds:.2f} s "
          f"({fix.fwd_bwd_seconds / dyn.fwd_bwd_seconds:.2f}x); optimizer update + rest per step: "
          f"{(dyn_s - dyn.fwd_bwd_seconds) / len(dyn_steps):.2f} s / "
          f"{(fix_s - fix.fwd_bwd_seconds) / len(fix_steps):.2f} s")
    print(f"speed-up of default batching over fixed padding: {fix_s / dyn_s:.2f}x")
    print(f"engine throughput / HF plain-loop throughput:     {hf_s / dyn_s:.2f}")


if __name__ == "__main__":
    main()
