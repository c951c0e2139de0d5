"""Fine-tune BERT (optionally with PALs/adapters via --config) on SQuAD v1.1 / v2.0 and predict.

Flags + wiring only: reading, windows, decoding and the official EM/F1 live in tasks/squad.py,
the training loop in training.py. Outputs in --output_dir: the model (config.json,
model.safetensors, vocab.txt), train_results.txt, predictions.json, nbest_predictions.json,
null_odds.json (v2) and eval_results.txt (when the predict file has gold answers).

    python run_squad.py --bert_model minilm-l6 --do_train --do_predict \
        --train_file train-v1.1.json --predict_file dev-v1.1.json --output_dir out/squad
"""
import logging
import os
from dataclasses import dataclass

import file_utils  # noqa: F401 - before torch: sets OMP_WAIT_POLICY (file_utils)
import training
from file_utils import ConfigError, make_parser, run_cli
from flags import add_flags, flag
from tasks import squad
from tasks.base import RUNNER_OUTPUT_NAMES

logger = logging.getLogger("run_squad")


@dataclass(frozen=True)
class SquadFlags:
    """This runner's own flags (flags.py); the engine's come from training.add_engine_args."""
    train_file: str = flag(None, "SQuAD JSON for training (e.g. train-v1.1.json)", group="squad", type=str)
    predict_file: str = flag(None, "SQuAD JSON to predict (e.g. dev-v1.1.json); scored if it has answers",
                             group="squad", type=str)
    do_train: bool = flag(False, "train on --train_file", group="squad")
    do_predict: bool = flag(False, "predict (and score) --predict_file", group="squad")
    doc_stride: int = flag(128, "stride between sliding windows over a context", group="squad")
    max_query_length: int = flag(64, "question word pieces kept", group="squad")
    predict_batch_size: int = flag(None, "prediction batch size; unset: --eval_batch_size", group="squad", type=int)
    n_best_size: int = flag(20, "n-best candidates kept per question", group="squad")
    max_answer_length: int = flag(30, "longest answer, in word pieces", group="squad")
    verbose_logging: bool = flag(False, "log failed answer/text alignments", group="squad")
    version_2_with_negative: bool = flag(False, "SQuAD 2.0: questions may have no answer", group="squad")
    null_score_diff_threshold: float = flag(0.0, "v2: predict no answer when null score - best span score > this",
                                            group="squad")


def build_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    training.add_engine_args(parser, max_seq_length=384)
    add_flags(parser, SquadFlags)
    return parser


def check_args(args):
    if not (args.do_train or args.do_predict):
        raise ConfigError("at least one of --do_train or --do_predict is required")
    if args.do_train and not args.train_file:
        raise ConfigError("--do_train needs --train_file")
    if args.do_predict and not args.predict_file:
        raise ConfigError("--do_predict needs --predict_file")
    if args.eval_steps and not args.predict_file:
        raise ConfigError("--eval_steps scores the --predict_file (with answers) while training: give it")
    for name in ("doc_stride", "max_query_length", "n_best_size", "max_answer_length"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1")


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    opts = training.EngineOptions.from_args(args).with_run_flags(
        train_file=args.train_file and os.path.abspath(args.train_file), doc_stride=args.doc_stride,
        max_query_length=args.max_query_length, v2=args.version_2_with_negative)
    env = training.setup_env(opts)
    training.check_output_dir(opts, training=args.do_train)
    tokenizer = training.load_tokenizer(opts)
    cache = (lambda key, build: training.cached_features(opts.cache_dir, key, build)) if opts.cache_dir else None
    task = squad.Squad(tokenizer, version=2 if args.version_2_with_negative else 1, train_file=args.train_file,
                       dev_file=args.predict_file, name="squad", max_seq_length=opts.max_seq_length,
                       doc_stride=args.doc_stride, max_query_length=args.max_query_length,
                       n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
                       null_score_diff_threshold=args.null_score_diff_threshold, cache=cache,
                       verbose_logging=args.verbose_logging)
    # Read and window the data before loading the model, so that a bad file fails fast.
    task.prepare(train=args.do_train, dev=False, test=args.do_predict or opts.eval_steps > 0)
    model = training.load_model(opts, task_num_labels=[2], task_types=["span"], task_names=["squad"])
    training.prepare_output_dir(opts, env, training=args.do_train, output_names=RUNNER_OUTPUT_NAMES + task.output_names)
    training.write_run_config(args, opts.output_dir, env)

    trainer = None
    if args.do_train:
        logger.info("training on %d questions -> %d windows (%d dropped: answer not found in context)",
                    task.train_examples, len(task.train_features), len(task.dropped))
        trainer, result = training.train_and_save(opts, env, model, task.train_features, tokenizer,
                                                  evaluate=training.dev_evaluator(task), padding=task.padding)
        if env.is_main:
            training.write_eval_results(os.path.join(opts.output_dir, "train_results.txt"), {
                **training.run_summary(result),
                "train_examples": task.train_examples, "train_features": len(task.train_features),
                "train_dropped_answers": len(task.dropped)})

    if args.do_predict:
        predict = training.predictor(opts, env, model, batch_size=args.predict_batch_size, padding=task.padding)
        preds, nbest, null_odds, _ = task.decode(predict)
        if env.is_main:
            squad.write_prediction_files(opts.output_dir, preds, nbest, null_odds if task.v2 else None)
            results = task.official_scores(preds, null_odds)
            if results is not None:
                if not task.v2:
                    if task.dev_version not in (None, "1.1"):
                        logger.warning("evaluation expects SQuAD v1.1, the file says version %s", task.dev_version)
                results.update(predict_questions=len(task.dev_examples), predict_features=len(task.dev_features))
                if trainer is not None:
                    results.update(global_step=trainer.global_step, train_dropped_answers=len(task.dropped))
                training.write_eval_results(os.path.join(opts.output_dir, "eval_results.txt"), results)
                logger.info("eval: %s", ", ".join(f"{k} = {v}" for k, v in sorted(results.items())))
            else:
                logger.info("%s has no gold answers: predictions written, nothing scored", args.predict_file)
    if trainer is not None:
        trainer.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
