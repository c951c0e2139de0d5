"""Turn a plain-text corpus into BERT pretraining instances (MLM + next sentence), one file per epoch.

Input: one sentence per line, a blank line between documents. Output folder:
`epoch_N.json` (JSON Lines: tokens, segment_ids, is_random_next, masked_lm_positions,
masked_lm_labels) and `epoch_N_metrics.json` ({"num_training_examples", "max_seq_len"}) for
N = 0 .. --epochs_to_generate-1, plus `pregenerate_config.json` (the flags), written after the last
epoch: finetune_on_pregenerated.py refuses a folder without it (an interrupted run). Each epoch
draws its own A/B splits and masks. Train on the folder with finetune_on_pregenerated.py.

    python lm_finetuning/pregenerate_training_data.py --train_corpus corpus.txt \
        --bert_model minilm-l6 --do_lower_case --output_dir training/ --epochs_to_generate 3
"""
import glob
import logging
import multiprocessing
import os
import sys
from dataclasses import dataclass

from file_utils import ConfigError, atomic_write_json, make_parser, resolve_model_dir, run_cli
from flags import add_flags, flag
from tasks import pretraining
from tokenization import BertTokenizer, guess_do_lower_case

logger = logging.getLogger("pregenerate_training_data")


@dataclass(frozen=True)
class PregenerateFlags:
    """This script's flags (flags.py)."""
    train_corpus: str = flag(help="text file: one sentence per line, blank line between documents", required=True)
    output_dir: str = flag(help="folder for epoch_N.json / epoch_N_metrics.json", required=True)
    bert_model: str = flag("minilm-l6", "model folder with vocab.txt, or a bundled name (minilm-l6); only its "
                                        "vocabulary is used")
    do_lower_case: bool = flag(True, "lower-case and strip accents (uncased models). Default: as the model folder "
                                     "says (tokenizer_config.json, else guessed from the vocab), like the training "
                                     "scripts", cli_default=None, off=("--no_lower_case", "keep case (cased models)"))
    do_whole_word_mask: bool = flag(False, "mask all word pieces of a word together instead of single pieces")
    reduce_memory: bool = flag(False, "keep the tokenized corpus in a file on disk (in a temporary folder inside "
                                      "--output_dir) instead of RAM")
    epochs_to_generate: int = flag(3, "data epochs to write, each freshly sampled")
    max_seq_len: int = flag(128, "length of an instance in word pieces, specials included")
    short_seq_prob: float = flag(0.1, "probability of an instance with a random shorter target length")
    masked_lm_prob: float = flag(0.15, "share of tokens to mask")
    max_predictions_per_seq: int = flag(20, "most masked tokens per instance")
    seed: int = flag(42, "random seed (epoch N uses its own stream from it)")
    num_workers: int = flag(1, "write this many epochs in parallel (processes)")
    overwrite_output_dir: bool = flag(False, "replace pregenerated data already in --output_dir")


def build_parser():
    return add_flags(make_parser(__doc__.split("\n")[0]), PregenerateFlags)


def check_args(args):
    if args.epochs_to_generate < 1:
        raise ConfigError("--epochs_to_generate must be at least 1")
    if args.max_seq_len < 5:
        raise ConfigError(f"--max_seq_len must be at least 5 ([CLS] A [SEP] B [SEP]), got {args.max_seq_len}")
    if not 0.0 <= args.short_seq_prob <= 1.0 or not 0.0 < args.masked_lm_prob < 1.0:
        raise ConfigError("--short_seq_prob must be in [0, 1] and --masked_lm_prob in (0, 1)")
    if args.max_predictions_per_seq < 1 or args.num_workers < 1:
        raise ConfigError("--max_predictions_per_seq and --num_workers must be at least 1")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ConfigError(f"--output_dir {args.output_dir} is a file, not a folder")


def old_epochs(output_dir, overwrite):
    """Files of earlier data; refused without --overwrite_output_dir (stale epochs would be trained on)."""
    old = sorted(glob.glob(os.path.join(output_dir, "epoch_*.json")))
    if old and not overwrite:
        raise ConfigError(f"{output_dir} already holds pregenerated data ({os.path.basename(old[0])}, ...); "
                          "use --overwrite_output_dir to replace it")
    return old


def remove_files(paths):
    # The config first (it marks the folder complete), then metrics: a data epoch without its
    # metrics file is never read.
    for path in sorted(paths, key=lambda p: (not p.endswith(pretraining.CONFIG_FILE),
                                             not p.endswith("_metrics.json"))):
        os.remove(path)


_worker_state = {}


def _write_epoch(epoch):
    s = _worker_state
    return epoch, pretraining.write_epoch(s["db"], progress=s["progress"], epoch=epoch, **s["kwargs"])


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    check_args(args)
    model_dir = resolve_model_dir(args.bert_model)
    if args.do_lower_case is None:  # the training scripts' rule, so that both steps tokenize alike
        args.do_lower_case = guess_do_lower_case(model_dir)
    tokenizer = BertTokenizer.from_pretrained(model_dir, do_lower_case=args.do_lower_case)
    os.makedirs(args.output_dir, exist_ok=True)
    old = old_epochs(args.output_dir, args.overwrite_output_dir)

    db = pretraining.read_corpus(args.train_corpus, tokenizer, reduce_memory=args.reduce_memory,
                                 workdir=args.output_dir, progress=sys.stderr.isatty())
    # Only once the new corpus has been read without error. The old config goes too: left next
    # to the new epochs of a run that is then interrupted, it would make them look complete.
    config_path = os.path.join(args.output_dir, pretraining.CONFIG_FILE)
    remove_files(old + ([config_path] if os.path.exists(config_path) else []))
    with db:
        logger.info("%d documents, %d sentences, %d word pieces", len(db), db.num_sentences, db.num_tokens)
        vocab_list = list(tokenizer.vocab)  # random replacements: uniform over the whole vocab
        _worker_state.update(db=db, progress=args.num_workers == 1 and sys.stderr.isatty(), kwargs=dict(
            output_dir=args.output_dir, max_seq_len=args.max_seq_len, short_seq_prob=args.short_seq_prob,
            masked_lm_prob=args.masked_lm_prob, max_predictions_per_seq=args.max_predictions_per_seq,
            whole_word_mask=args.do_whole_word_mask, vocab_list=vocab_list, seed=args.seed))
        epochs = range(args.epochs_to_generate)
        if args.num_workers > 1:
            # fork: workers inherit the tokenized corpus instead of re-reading it.
            with multiprocessing.get_context("fork").Pool(min(args.num_workers, len(epochs))) as pool:
                results = pool.map(_write_epoch, epochs)
        else:
            results = [_write_epoch(e) for e in epochs]
    for epoch, n in results:
        logger.info("epoch %d: %d instances", epoch, n)
    # Last: its presence marks the folder complete (tasks/pretraining.find_pregenerated_epochs).
    atomic_write_json(os.path.join(args.output_dir, pretraining.CONFIG_FILE), vars(args))
    return 0


if __name__ == "__main__":
    run_cli(main)
