"""Fine-tune and evaluate BERT (optionally with PALs/adapters) on ONE GLUE task.

The command line of the 2019 pytorch-pretrained-BERT `run_classifier.py`, on top of the shared
engine (training.py). This file only holds flags and wiring: reading/metrics/submission files
come from tasks/glue.py, the model from modeling.py, the loop from training.py.

    python run_classifier.py --task_name mrpc --data_dir glue_data --bert_model minilm-l6 \
        --do_train --do_eval --output_dir out/mrpc

Outputs in --output_dir: the fine-tuned model (config.json with its head, model.safetensors,
vocab.txt), eval_results.txt (`key = value`, sorted; MNLI adds the mismatched dev numbers with
an `mm_` prefix), GLUE submission files with --do_predict (MNLI: MNLI-m.tsv, MNLI-mm.tsv and
AX.tsv when the diagnostic set is present), run_config.json, TensorBoard logs in runs/, and a
resumable checkpoint/.
"""
import logging
import os

import training
from file_utils import ConfigError, make_parser, run_cli
from tasks import glue

logger = logging.getLogger("run_classifier")

TASK_NAMES = ("cola", "sst-2", "mrpc", "sts-b", "qqp", "mnli", "mnli-mm", "qnli", "rte", "wnli")


def build_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--task_name", required=True, type=str.lower,
                        help=f"GLUE task: {', '.join(TASK_NAMES)} (case-insensitive)")
    parser.add_argument("--data_dir", required=True,
                        help="GLUE data folder (<data_dir>/<TASK>/train.tsv ...) or the task folder itself")
    parser.add_argument("--do_train", action="store_true", help="fine-tune on train.tsv")
    parser.add_argument("--do_eval", action="store_true", help="evaluate on the dev set -> eval_results.txt")
    parser.add_argument("--do_predict", action="store_true", help="predict the test set -> GLUE submission file(s)")
    training.add_engine_args(parser)
    return parser


def load_split(opts, data_dir, task, tokenizer, split):
    """Features of one split (cached); test features carry their submission `index` as metadata."""
    path = glue.task_file(task, data_dir, split)

    def build():
        examples = glue.read_examples(task, data_dir, split, path=path)
        features = glue.convert_examples_to_features(examples, task, tokenizer, opts.max_seq_length)
        if split.startswith("test"):
            for feature, example in zip(features, examples):
                feature["index"] = example.index  # a string: the collator leaves it out of batches
        return features

    key = {"task": f"glue-{task.name}-{split}", "vocab": tokenizer.vocab_fingerprint,
           "max_seq_length": opts.max_seq_length, "file": training.file_fingerprint(path), "format": 1}
    return training.cached_features(opts.cache_dir, key, build)


def find_task_id(model, task):
    """Head to use: the task's own entry in a multi-task model, else the single head."""
    names = list(getattr(model.config, "task_names", None) or [])
    for name in (task.name, task.head_task):
        if name and name in names:
            return names.index(name)
    if len(model.task_num_labels) == 1:
        return 0
    raise ConfigError(f"the model has {len(names or model.task_num_labels)} task heads "
                      f"({', '.join(names) or 'unnamed'}) and none is {task.name}")


def evaluate(opts, data_dir, env, model, task_id, task, tokenizer, split):
    features = load_split(opts, data_dir, task, tokenizer, split)
    out = training.predict(model, features, task_id, opts.eval_batch_size, env, pad_to=opts.pad_to)
    preds = glue.logits_to_predictions(task, out["logits"])
    gold = [f["labels"] for f in features]
    metrics = {k: float(v) for k, v in glue.compute_metrics(task, preds, gold).items()}
    metrics["eval_loss"] = out["loss"]
    return metrics


def predict_test(opts, data_dir, env, model, task_id, task, tokenizer):
    """Write the submission file(s) for every test split of the task (+ AX with the MNLI head)."""
    jobs = [(task, split) for split in task.submissions]
    if task.name == "mnli":
        jobs = [(task, "test_matched"), (task, "test_mismatched"), (glue.get_task("ax"), "test")]
    written = set()
    for job_task, split in jobs:
        target = job_task.submission_file(split)
        if target in written:
            continue
        if job_task.name == "ax":
            try:
                glue.task_file(job_task, data_dir, split)
            except Exception:  # AX is optional: predicted only when the diagnostic file is there
                logger.info("no AX diagnostic file under %s; skipping AX.tsv", data_dir)
                continue
        features = load_split(opts, data_dir, job_task, tokenizer, split)
        out = training.predict(model, features, task_id, opts.eval_batch_size, env)
        preds = glue.logits_to_predictions(job_task, out["logits"])
        if env.is_main:
            path = glue.write_predictions(job_task, opts.output_dir, [f.get("index") for f in features], preds, split)
            logger.info("wrote %s", path)
        written.add(target)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not (args.do_train or args.do_eval or args.do_predict):
        raise ConfigError("nothing to do: pass at least one of --do_train, --do_eval, --do_predict")
    if args.task_name not in TASK_NAMES:
        raise ConfigError(f"unknown --task_name '{args.task_name}' (known: {', '.join(TASK_NAMES)})")
    task = glue.get_task(args.task_name)
    opts = training.EngineOptions.from_args(args)
    env = training.setup_env(opts)
    tokenizer = training.load_tokenizer(opts)
    results = {}
    if args.do_train:
        training.prepare_output_dir(opts, env)
        training.write_run_config(args, opts.output_dir, env)
        train_features = load_split(opts, args.data_dir, task, tokenizer, "train")
        model = training.load_model(opts, [task.num_labels], [task.head_type], [task.head_task or task.name])
        stream = training.make_stream(opts, env, train_features)
        num_steps = training.num_training_steps(opts, stream.steps_per_epoch)
        logger.info("%d examples, %d optimizer steps of %d examples (%d per epoch)", len(train_features),
                    num_steps, opts.train_batch_size, stream.steps_per_epoch)
        trainer = training.Trainer(opts, env, model, num_steps)
        summary = trainer.train(stream, num_steps, stream.steps_per_epoch)
        trainer.save_model(opts.output_dir, tokenizer)
        results.update(global_step=summary["global_step"], loss=summary["loss"])
    else:
        model = training.load_model(opts)  # a fine-tuned folder: heads from its config
        model.to(env.device)
        trainer = None
        results["global_step"] = 0
        training.prepare_output_dir(opts, env, training=False)
    task_id = find_task_id(model, task)
    head_labels = model.task_num_labels[task_id]
    if head_labels != task.num_labels:
        names = getattr(model.config, "task_names", None) or []
        was = f" (fine-tuned for {names[task_id]})" if task_id < len(names) else ""
        raise ConfigError(f"the model's head {task_id}{was} has {head_labels} outputs, "
                          f"{task.display} needs {task.num_labels}")
    if args.do_eval:
        dev_split = "dev_mismatched" if task.name == "mnli-mm" else "dev"
        results.update(evaluate(opts, args.data_dir, env, model, task_id, task, tokenizer, dev_split))
        if task.name == "mnli":
            mm = evaluate(opts, args.data_dir, env, model, task_id, glue.get_task("mnli-mm"), tokenizer,
                          "dev_mismatched")
            results.update({f"mm_{k}": v for k, v in mm.items()})
        if env.is_main:
            training.write_eval_results(os.path.join(opts.output_dir, "eval_results.txt"), results)
            for key in sorted(results):
                logger.info("  %s = %s", key, results[key])
        if trainer is not None:
            trainer.log_scalars("eval", results)
    if args.do_predict:
        predict_test(opts, args.data_dir, env, model, task_id, task, tokenizer)
    if trainer is not None:
        trainer.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
