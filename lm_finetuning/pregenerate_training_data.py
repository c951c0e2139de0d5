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

from file_utils import ConfigError, atomic_write_json, make_parser, resolve_model_dir, run_cli
from tasks import pretraining
from tokenization import BertTokenizer, guess_do_lower_case

logger = logging.getLogger("pregenerate_training_data")


def build_parser():
    p = make_parser(__doc__.split("\n")[0])
    p.add_argument("--train_corpus", required=True,
                   help="text file: one sentence per line, blank line between documents")
    p.add_argument("--output_dir", required=True, help="folder for epoch_N.json / epoch_N_metrics.json")
    p.add_argument("--bert_model", default="minilm-l6",
                   help="model folder with vocab.txt, or a bundled name (minilm-l6); only its vocabulary is used")
    p.add_argument("--do_lower_case", dest="do_lower_case", action="store_true", default=None,
                   help="lower-case and strip accents (uncased models). Default: as the model folder says "
                        "(tokenizer_config.json, else guessed from the vocab), like the training scripts")
    p.add_argument("--no_lower_case", dest="do_lower_case", action="store_false", help="keep case (cased models)")
    p.add_argument("--do_whole_word_mask", action="store_true",
                   help="mask all word pieces of a word together instead of single pieces")
    p.add_argument("--reduce_memory", action="store_true",
                   help="keep the tokenized corpus in a file on disk (in a temporary folder inside "
                        "--output_dir) instead of RAM")
    p.add_argument("--epochs_to_generate", type=int, default=3, help="data epochs to write, each freshly sampled")
    p.add_argument("--max_seq_len", type=int, default=128,
                   help="length of an instance in word pieces, specials included")
    p.add_argument("--short_seq_prob", type=float, default=0.1,
                   help="probability of an instance with a random shorter target length")
    p.add_argument("--masked_lm_prob", type=float, default=0.15, help="share of tokens to mask")
    p.add_argument("--max_predictions_per_seq", type=int, default=20, help="most masked tokens per instance")
    p.add_argument("--seed", type=int, default=42, help="random seed (epoch N uses its own stream from it)")
    p.add_argument("--num_workers", type=int, default=1, help="write this many epochs in parallel (processes)")
    p.add_argument("--overwrite_output_dir", action="store_true",
                   help="replace pregenerated data already in --output_dir")
    return p


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
