"""Fine-tune BERT (optionally with PALs/adapters via --config) on SWAG multiple choice.

Flags + wiring only: reading, the four `[CLS] context [SEP] start + ending [SEP]` sequences and
accuracy live in tasks/swag.py, the training loop in training.py. Reads --data_dir/train.csv,
val.csv and test.csv (no labels). Writes the model, eval_results.txt (val accuracy) and
test_predictions.csv into --output_dir.

    python run_swag.py --bert_model minilm-l6 --data_dir swagaf/data --do_train --do_eval \
        --max_seq_length 80 --output_dir out/swag
"""
import logging
import os
from dataclasses import dataclass

import file_utils  # noqa: F401 - before torch: sets OMP_WAIT_POLICY (file_utils)
import training
from file_utils import ConfigError, make_parser, run_cli
from flags import add_flags, flag
from tasks import swag
from tasks.base import RUNNER_OUTPUT_NAMES

logger = logging.getLogger("run_swag")


@dataclass(frozen=True)
class SwagFlags:
    """This runner's own flags (flags.py); the engine's come from training.add_engine_args."""
    data_dir: str = flag(help="folder with train.csv, val.csv and (optional) test.csv", group="swag", required=True)
    do_train: bool = flag(False, "train on train.csv", group="swag")
    do_eval: bool = flag(False, "accuracy on val.csv into eval_results.txt", group="swag")
    do_predict: bool = flag(False, "predict test.csv into test_predictions.csv", group="swag")


def build_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    training.add_engine_args(parser, max_seq_length=128)
    add_flags(parser, SwagFlags)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not (args.do_train or args.do_eval or args.do_predict):
        raise ConfigError("at least one of --do_train, --do_eval or --do_predict is required")
    opts = training.EngineOptions.from_args(args).with_run_flags(data=os.path.abspath(args.data_dir))
    env = training.setup_env(opts)
    training.check_output_dir(opts, training=args.do_train)
    tokenizer = training.load_tokenizer(opts)
    cache = (lambda key, build: training.cached_features(opts.cache_dir, key, build)) if opts.cache_dir else None
    task = swag.Swag(args.data_dir, tokenizer, opts.max_seq_length, cache=cache)
    # Read every file first, so that a bad record fails before the model is loaded.
    task.prepare(train=args.do_train, dev=args.do_eval or opts.eval_steps > 0, test=args.do_predict)
    model = training.load_model(opts, task_num_labels=[swag.NUM_CHOICES], task_types=["choice"],
                                task_names=["swag"])
    training.prepare_output_dir(opts, env, training=args.do_train, output_names=RUNNER_OUTPUT_NAMES + task.output_names)
    training.write_run_config(args, opts.output_dir, env)   # after the data checks: a failed run leaves no files

    trainer = None
    if args.do_train:
        trainer, result = training.train_and_save(opts, env, model, task.train_features, tokenizer,
                                                  evaluate=training.dev_evaluator(task), padding=task.padding)
        if env.is_main:
            training.write_eval_results(os.path.join(opts.output_dir, "train_results.txt"), {
                **training.run_summary(result), "train_examples": task.train_examples})

    predict = training.predictor(opts, env, model, padding=task.padding)
    if args.do_eval:
        metrics = task.evaluate(predict)[task.name]
        if env.is_main:
            results = {"eval_accuracy": metrics["acc"], "eval_loss": metrics.get("loss"),
                       "eval_examples": len(task.examples["dev"])}
            if trainer is not None:
                results.update(global_step=trainer.global_step,
                               loss=trainer.train_loss_sum / max(1, trainer.train_loss_steps))
            training.write_eval_results(os.path.join(opts.output_dir, "eval_results.txt"), results)
            logger.info("eval: accuracy %.4f on %d examples", results["eval_accuracy"], len(task.examples["dev"]))
    if args.do_predict:
        with training.output_dir_of_rank(env, opts.output_dir) as out_dir:
            task.write_predictions(predict, out_dir)
        logger.info("wrote predictions for %d test examples", len(task.examples["test"]))
    if trainer is not None:
        trainer.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
