"""Fine-tune and evaluate BERT (optionally with PALs/adapters) on ONE GLUE task.

The command line of the 2019 pytorch-pretrained-BERT `run_classifier.py`, on top of the shared
engine (training/). This file only holds flags and wiring: reading, metrics and submission files
come from tasks/glue.py (`Glue`, the task interface), the model from modeling.py, the loop from
training/.

    python run_classifier.py --task_name mrpc --data_dir glue_data --bert_model minilm-l6 \
        --do_train --do_eval --output_dir out/mrpc

Outputs in --output_dir: the fine-tuned model (config.json with its head, model.safetensors,
vocab.txt), results.json (the GLUE results format shared with run_multi_task.py:
{eval set: metrics}), eval_results.txt (`key = value`, sorted; MNLI adds the mismatched dev numbers
with an `mm_` prefix, as the 2019 keys), GLUE submission files with --do_predict (MNLI: MNLI-m.tsv,
MNLI-mm.tsv and AX.tsv when the diagnostic set is present), run_config.json, TensorBoard logs in
runs/, and a resumable checkpoint/.
"""
import logging
import os
from dataclasses import dataclass

import file_utils  # noqa: F401 - before torch: sets OMP_WAIT_POLICY (file_utils)
import training
from file_utils import ConfigError, atomic_write_json, make_parser, run_cli
from flags import add_flags, flag
from tasks import glue
from tasks.base import RUNNER_OUTPUT_NAMES

logger = logging.getLogger("run_classifier")

TASK_NAMES = ("cola", "sst-2", "mrpc", "sts-b", "qqp", "mnli", "mnli-mm", "qnli", "rte", "wnli")


@dataclass(frozen=True)
class ClassifierFlags:
    """This runner's own flags (flags.py); the engine's come from training.add_engine_args."""
    task_name: str = flag(help=f"GLUE task: {', '.join(TASK_NAMES)} (case-insensitive)", required=True, type=str.lower)
    data_dir: str = flag(help="GLUE data folder (<data_dir>/<TASK>/train.tsv ...) or the task folder itself",
                         required=True)
    do_train: bool = flag(False, "fine-tune on train.tsv")
    do_eval: bool = flag(False, "evaluate on the dev set -> eval_results.txt")
    do_predict: bool = flag(False, "predict the test set -> GLUE submission file(s)")


def build_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    add_flags(parser, ClassifierFlags)
    training.add_engine_args(parser)
    return parser


def find_task_id(model, dataset):
    """Head to use: the task's own entry in a multi-task model, else the single head."""
    names = list(getattr(model.config, "task_names", None) or [])
    for name in (dataset.name, dataset.head_task):
        if name and name in names:
            return names.index(name)
    if len(model.task_num_labels) == 1:
        return 0
    raise ConfigError(f"the model has {len(names or model.task_num_labels)} task heads "
                      f"({', '.join(names) or 'unnamed'}) and none is {dataset.name}")


def flat_results(task, results):
    """The 2019 eval_results.txt keys: the task's metrics, `eval_loss`, and MNLI-mm's with `mm_`."""
    flat = {}
    for eval_name, metrics in results.items():
        prefix = "mm_" if eval_name == "mnli-mm" and task.name == "mnli" else ""
        for key, value in metrics.items():
            flat[prefix + ("eval_loss" if key == "loss" else key)] = value
    return flat


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not (args.do_train or args.do_eval or args.do_predict):
        raise ConfigError("nothing to do: pass at least one of --do_train, --do_eval, --do_predict")
    if args.task_name not in TASK_NAMES:
        raise ConfigError(f"unknown --task_name '{args.task_name}' (known: {', '.join(TASK_NAMES)})")
    opts = training.EngineOptions.from_args(args).with_run_flags(task=args.task_name,
                                                                  data=os.path.abspath(args.data_dir))
    env = training.setup_env(opts)
    training.check_output_dir(opts, training=args.do_train)
    tokenizer = training.load_tokenizer(opts)
    cache = (lambda key, build: training.cached_features(opts.cache_dir, key, build)) if opts.cache_dir else None
    task = glue.Glue(args.task_name, args.data_dir, tokenizer, opts.max_seq_length, cache=cache)
    # Every input file is read and checked before training: a bad dev row must not cost the run.
    task.prepare(train=args.do_train, dev=args.do_eval or opts.eval_steps > 0, test=args.do_predict)
    if args.do_train:
        model = training.load_model(opts, [task.num_labels], [task.head_type], [task.train_dataset.name])
    else:
        model = training.load_model(opts)  # a fine-tuned folder: heads from its config
    task_id = find_task_id(model, task.dataset)
    if model.task_types[task_id] == "pretraining":
        raise ConfigError(f"{opts.model_dir} holds a masked-LM/next-sentence model, no classifier head: "
                          "add --do_train to fine-tune one for this task")
    head_labels = model.task_num_labels[task_id]
    if head_labels != task.num_labels:
        names = getattr(model.config, "task_names", None) or []
        was = f" (fine-tuned for {names[task_id]})" if task_id < len(names) else ""
        raise ConfigError(f"the model's head {task_id}{was} has {head_labels} outputs, "
                          f"{task.dataset.display} needs {task.num_labels}")
    training.prepare_output_dir(opts, env, training=args.do_train, output_names=RUNNER_OUTPUT_NAMES + task.output_names)
    results, train_summary = {"global_step": 0}, None
    trainer = None
    if args.do_train:
        training.write_run_config(args, opts.output_dir, env)
        trainer, summary = training.train_and_save(opts, env, model, task.train_features, tokenizer,
                                                   labels=task.labels if task.labels is not None else ["score"],
                                                   evaluate=training.dev_evaluator(task, task_id),
                                                   padding=task.padding)
        train_summary = training.run_summary(summary)
        results.update({k: v for k, v in train_summary.items() if k != "eval_history"})
    predict = training.predictor(opts, env, model, task_id, padding=task.padding)
    if args.do_eval:
        eval_results = task.evaluate(predict)
        results.update(flat_results(task, eval_results))
        if env.is_main:
            training.write_eval_results(os.path.join(opts.output_dir, "eval_results.txt"), results)
            atomic_write_json(os.path.join(opts.output_dir, "results.json"), {
                "kind": "single_task", "task": task.name, "results": eval_results,
                "global_step": results["global_step"], "train": train_summary})
            for key in sorted(results):
                logger.info("  %s = %s", key, results[key])
        if trainer is not None and not opts.eval_steps:  # with --eval_steps the series already holds these
            for eval_name, metrics in eval_results.items():
                trainer.log_scalars(f"eval/{eval_name}", metrics)
    if args.do_predict:
        with training.output_dir_of_rank(env, opts.output_dir) as out_dir:
            for path in task.write_predictions(predict, out_dir):
                logger.info("wrote %s", path)
    if trainer is not None:
        trainer.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
