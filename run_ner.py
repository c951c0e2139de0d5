"""Fine-tune BERT (optionally with PALs/adapters via --config) for CoNLL-2003 style NER.

Flags + wiring only: reading, label alignment, window splitting, decoding and the entity-level
metric live in tasks/conll.py, the training loop in training.py. Reads --data_dir/train.txt,
valid.txt (or dev.txt) and test.txt. Writes the model + labels.txt, eval_results.txt (dev),
test_results.txt and test_predictions.txt (test) into --output_dir.

    python run_ner.py --bert_model minilm-l6 --data_dir conll2003 --do_train --do_eval --do_predict \
        --output_dir out/ner
"""
import logging
import os
from dataclasses import dataclass

import file_utils  # noqa: F401 - before torch: sets OMP_WAIT_POLICY (file_utils)
import tasks
import training
from file_utils import ConfigError, atomic_write_text, make_parser, run_cli
from flags import add_flags, flag
from tasks import conll
from tasks.base import RUNNER_OUTPUT_NAMES

logger = logging.getLogger("run_ner")
LABELS_FILE = conll.LABELS_FILE


@dataclass(frozen=True)
class NerFlags:
    """This runner's own flags (flags.py); the engine's come from training.add_engine_args."""
    data_dir: str = flag(help="folder with train.txt, valid.txt (or dev.txt), test.txt", group="ner", required=True)
    labels: str = flag(None, "file with one tag per line (default: labels.txt of --bert_model, else the train file's "
                             "tags)", group="ner", type=str)
    do_train: bool = flag(False, "train on train.txt", group="ner")
    do_eval: bool = flag(False, "score the dev file into eval_results.txt", group="ner")
    do_predict: bool = flag(False, "score test.txt into test_results.txt and write test_predictions.txt", group="ner")


def build_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    training.add_engine_args(parser, max_seq_length=128)
    add_flags(parser, NerFlags)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not (args.do_train or args.do_eval or args.do_predict):
        raise ConfigError("at least one of --do_train, --do_eval or --do_predict is required")
    opts = training.EngineOptions.from_args(args).with_run_flags(data=os.path.abspath(args.data_dir),
                                                                  labels=args.labels)
    env = training.setup_env(opts)
    training.check_output_dir(opts, training=args.do_train)
    tokenizer = training.load_tokenizer(opts)
    # --labels, else the model folder's labels.txt (a fine-tuned model), else the train file's tags.
    labels = conll.read_labels_file(args.labels) if args.labels else tasks.saved_labels(opts.model_dir).get("conll")
    if labels is None and not args.do_train:
        raise ConfigError(f"no label list: pass --labels, --do_train, or a --bert_model folder with {LABELS_FILE}")
    cache = (lambda key, build: training.cached_features(opts.cache_dir, key, build)) if opts.cache_dir else None
    task = conll.Conll(args.data_dir, tokenizer, opts.max_seq_length, labels=labels, name="ner", cache=cache)
    # Read every file first, so that a bad record fails before the model is loaded.
    task.prepare(train=args.do_train, dev=args.do_eval or opts.eval_steps > 0, test=args.do_predict)
    logger.info("labels: %s", " ".join(task.labels))
    model = training.load_model(opts, task_num_labels=[len(task.labels)], task_types=["token"], task_names=["ner"])
    training.prepare_output_dir(opts, env, training=args.do_train, output_names=RUNNER_OUTPUT_NAMES + task.output_names)
    training.write_run_config(args, opts.output_dir, env)   # after the data checks: a failed run leaves no files

    trainer = None
    if args.do_train:
        logger.info("training on %d sentences -> %d windows", task.train_examples, len(task.train_features))
        trainer, result = training.train_and_save(opts, env, model, task.train_features, tokenizer, labels=task.labels,
                                                  evaluate=training.dev_evaluator(task), padding=task.padding)
        if env.is_main:
            atomic_write_text(os.path.join(opts.output_dir, LABELS_FILE), "\n".join(task.labels) + "\n")
            training.write_eval_results(os.path.join(opts.output_dir, "train_results.txt"), {
                **training.run_summary(result),
                "train_sentences": task.train_examples, "train_features": len(task.train_features)})

    predict = training.predictor(opts, env, model, padding=task.padding)
    for split, results_file in (("dev", "eval_results.txt"), ("test", "test_results.txt")):
        if split not in task.sentences:
            continue
        scores, predicted, out = task.scores(predict, split)
        if not env.is_main:
            continue
        extra = {"loss": out["loss"]} if out["loss"] is not None else {}
        if trainer is not None:
            extra["global_step"] = trainer.global_step
        if split == "test":
            conll.write_predictions(os.path.join(opts.output_dir, "test_predictions.txt"), task.paths[split],
                                    predicted)
        conll.write_results(os.path.join(opts.output_dir, results_file), scores, extra)
        logger.info("%s (%s): precision %.4f recall %.4f f1 %.4f\n%s", split, task.paths[split], scores["precision"],
                    scores["recall"], scores["f1"], conll.format_report(scores))
    if trainer is not None:
        trainer.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
