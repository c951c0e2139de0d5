"""Quick domain fine-tuning with masked LM + next-sentence prediction straight from a corpus.

Every consecutive sentence pair inside a document is one example; with probability 0.5 the
second sentence is swapped for a random sentence of another document (next_sentence_label 1).
Each word piece is masked independently with probability 0.15 (80% [MASK], 10% random token,
10% unchanged). Pairs and masks are drawn afresh every epoch. Two sentences are usually much
shorter than --max_seq_length: for long-sequence training use pregenerate_training_data.py +
finetune_on_pregenerated.py instead. Training runs on the shared engine (training.py); the
output folder (config.json, model.safetensors, vocab.txt) loads as --bert_model elsewhere.

    python lm_finetuning/simple_lm_finetuning.py --train_corpus corpus.txt \
        --bert_model minilm-l6 --do_lower_case --output_dir finetuned_lm/ --do_train
"""
import logging
import os
import random
import sys
from dataclasses import dataclass

import file_utils  # noqa: F401 - before torch: sets OMP_WAIT_POLICY (file_utils)
import training
from file_utils import ConfigError, DataError, make_parser, run_cli
from flags import add_flags, flag
from tasks import pretraining
from tasks.base import RUNNER_OUTPUT_NAMES

logger = logging.getLogger("simple_lm_finetuning")

TASK_NAME = "lm"


@dataclass(frozen=True)
class SimpleLmFlags:
    """This script's own flags (flags.py); the engine's come from training.add_engine_args."""
    train_corpus: str = flag(help="text file: one sentence per line, blank line between documents", required=True)
    do_train: bool = flag(False, "accepted for compatibility: training is this script's only mode")
    on_memory: bool = flag(False, "accepted for compatibility: the tokenized corpus is always held in RAM (4 bytes "
                                  "per word piece); use the pregenerate path for corpora that do not fit")
    masked_lm_prob: float = flag(0.15, "probability of masking each word piece")


def build_parser():
    p = make_parser(__doc__.split("\n")[0])
    add_flags(p, SimpleLmFlags)
    training.add_engine_args(p, learning_rate=3e-5)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    opts = training.EngineOptions.from_args(args)
    env = training.setup_env(opts)
    tokenizer = training.load_tokenizer(opts)
    if opts.max_seq_length < 5:
        raise ConfigError(f"--max_seq_length must be at least 5 ([CLS] A [SEP] B [SEP]), got {opts.max_seq_length}")
    if not 0.0 < args.masked_lm_prob < 1.0:
        raise ConfigError(f"--masked_lm_prob must be in (0, 1), got {args.masked_lm_prob}")
    db = pretraining.read_corpus(args.train_corpus, tokenizer, progress=env.is_main and sys.stderr.isatty())
    num_pairs = pretraining.num_sentence_pairs(db)
    if num_pairs < 1:
        raise DataError(args.train_corpus, None, "no document has two sentences, so there is no sentence pair")
    logger.info("%d documents, %d sentences, %d sentence pairs per epoch", len(db), db.num_sentences, num_pairs)
    training.prepare_output_dir(opts, env, output_names=RUNNER_OUTPUT_NAMES)
    training.write_run_config(args, opts.output_dir, env)
    model = training.load_model(opts, task_num_labels=[2], task_types=["pretraining"], task_names=[TASK_NAME])

    special = {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id, "mask": tokenizer.mask_token_id}
    vocab_size = len(tokenizer)

    def load_epoch(epoch):
        # Pairs and masks depend only on (seed, epoch): a resumed run sees the same data.
        rng = random.Random(f"simple_lm:{opts.seed}:{epoch}")
        return pretraining.simple_lm_features(db, opts.max_seq_length, special, vocab_size, rng,
                                              mask_prob=args.masked_lm_prob)

    num_epochs = max(1, int(-(-opts.num_train_epochs // 1)))
    stream = training.make_stream(opts, env, load_epoch=load_epoch, epoch_sizes=[num_pairs] * num_epochs,
                                  padding=pretraining.PADDING)
    num_steps = training.num_training_steps(opts, stream.steps_per_epoch)
    logger.info("%d optimizer steps over %s epoch(s) (batch %d, accumulation %d)", num_steps,
                opts.num_train_epochs, opts.train_batch_size, opts.gradient_accumulation_steps)
    trainer = training.Trainer(opts, env, model, num_steps)
    try:
        result = trainer.train(stream, num_steps, stream.steps_per_epoch, desc="simple lm fine-tuning")
    finally:
        stream.close()
        db.close()
        trainer.close()
    trainer.save_model(opts.output_dir, tokenizer)
    if env.is_main:
        training.write_eval_results(os.path.join(opts.output_dir, "train_results.txt"),
                                    training.run_summary(result))
        logger.info("saved to %s: global_step %d, mean loss %.4f", opts.output_dir, result["global_step"],
                    result["loss"])
    return 0


if __name__ == "__main__":
    run_cli(main)
