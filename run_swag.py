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

import training
from file_utils import ConfigError, make_parser, run_cli
from tasks import swag

logger = logging.getLogger("run_swag")


def build_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    training.add_engine_args(parser, max_seq_length=128)
    g = parser.add_argument_group("swag")
    g.add_argument("--data_dir", required=True, help="folder with train.csv, val.csv and (optional) test.csv")
    g.add_argument("--do_train", action="store_true", help="train on train.csv")
    g.add_argument("--do_eval", action="store_true", help="accuracy on val.csv into eval_results.txt")
    g.add_argument("--do_predict", action="store_true", help="predict test.csv into test_predictions.csv")
    return parser


def _features(opts, tokenizer, path, examples):
    key = {"task": "swag-" + os.path.basename(path), "file": training.file_fingerprint(path),
           "vocab": tokenizer.vocab_fingerprint, "lower": opts.do_lower_case, "max_seq_length": opts.max_seq_length}
    return training.cached_features(opts.cache_dir, key, lambda: swag.convert_examples_to_features(
        examples, tokenizer, opts.max_seq_length)[0])


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not (args.do_train or args.do_eval or args.do_predict):
        raise ConfigError("at least one of --do_train, --do_eval or --do_predict is required")
    opts = training.EngineOptions.from_args(args)
    env = training.setup_env(opts)
    training.prepare_output_dir(opts, env, training=args.do_train)
    tokenizer = training.load_tokenizer(opts)

    # Read every file first, so that a bad record fails before the model is loaded.
    splits = {}
    if args.do_train:
        splits["train"] = (os.path.join(args.data_dir, "train.csv"), True)
    if args.do_eval:
        splits["eval"] = (os.path.join(args.data_dir, "val.csv"), True)
    if args.do_predict:
        splits["test"] = (os.path.join(args.data_dir, "test.csv"), False)
    examples = {name: swag.read_swag_examples(path, require_label=need) for name, (path, need) in splits.items()}
    features = {name: _features(opts, tokenizer, splits[name][0], examples[name]) for name in splits}
    training.write_run_config(args, opts.output_dir, env)   # after the data checks: a failed run leaves no files
    model = training.load_model(opts, task_num_labels=[swag.NUM_CHOICES], task_types=["choice"],
                                task_names=["swag"])

    trainer = None
    if args.do_train:
        stream = training.make_stream(opts, env, features["train"])
        num_steps = training.num_training_steps(opts, stream.steps_per_epoch)
        logger.info("training on %d examples, %d optimizer steps", len(features["train"]), num_steps)
        trainer = training.Trainer(opts, env, model, num_steps)
        result = trainer.train(stream, num_steps, stream.steps_per_epoch)
        trainer.save_model(opts.output_dir, tokenizer)
        if env.is_main:
            training.write_eval_results(os.path.join(opts.output_dir, "train_results.txt"), {
                "global_step": result["global_step"], "loss": result["loss"], "train_examples": len(features["train"])})

    for name in ("eval", "test"):
        if name not in splits:
            continue
        if trainer is not None:
            out = trainer.predict(features[name], task_id=0)
        else:
            out = training.predict(model.to(env.device), features[name], 0, opts.eval_batch_size, env,
                                   pad_to=opts.pad_to)
        if not env.is_main:
            continue
        if name == "eval":
            results = {"eval_accuracy": swag.accuracy(out["logits"], [e.label for e in examples[name]]),
                       "eval_loss": out["loss"], "eval_examples": len(examples[name])}
            if trainer is not None:
                results.update(global_step=trainer.global_step,
                               loss=trainer.train_loss_sum / max(1, trainer.train_loss_steps))
            training.write_eval_results(os.path.join(opts.output_dir, "eval_results.txt"), results)
            logger.info("eval: accuracy %.4f on %d examples", results["eval_accuracy"], len(examples[name]))
        else:
            swag.write_predictions(os.path.join(opts.output_dir, "test_predictions.csv"), examples[name], out["logits"])
            logger.info("wrote predictions for %d test examples", len(examples[name]))
    if trainer is not None:
        trainer.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
