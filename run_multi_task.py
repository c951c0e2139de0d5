"""Multi-task GLUE fine-tuning with one shared BERT, small task modules (PALs, ...) and one head per task.

The paper's main job (Stickland & Murray, ICML 2019, "BERT and PALs"): every optimizer step trains one
task drawn by `--sample` (prop, sqrt, anneal, rr); after each epoch every task's dev set is evaluated,
the model with the best GLUE average is kept in <output_dir>/best/. With no --data_dir, a short demo
on the bundled sample data runs (printed as such). Machinery: multitask.py; engine: training.py.

    python run_multi_task.py --tasks all --sample anneal                       # demo, ~minutes on CPU
    python run_multi_task.py --data_dir glue_data --bert_model uncased_L-12_H-768_A-12 \
        --config configs/pals_config.json --tasks all --sample anneal --num_train_epochs 25 --output_dir runs/pals
"""
import logging
import os
import sys
import time

import modeling
import multitask as mt
import optimization
import training
from file_utils import ConfigError, make_parser, run_cli
from tasks import glue

ROOT = os.path.dirname(os.path.abspath(__file__))
DEMO_DATA_DIR = os.path.join(ROOT, "data", "glue_sample")
# Without --data_dir: a CPU-sized demo instead of the paper's 25 x 2400 steps at lr 2e-5.
# AdamW, because BertAdam (no bias correction) at lr 1e-4 collapses to the majority class in so few steps.
DEMO_PROFILE = {"num_train_epochs": 3.0, "steps_per_task": 20, "learning_rate": 1e-4, "optimizer": "adamw",
                "max_eval_examples": 200}
logger = logging.getLogger("run_multi_task")


def build_parser():
    p = make_parser(__doc__.split("\n")[0])
    # Paper hyperparameters as defaults: batch 32, lr 2e-5, length 128, warmup 0.1, seed 42.
    training.add_engine_args(p, learning_rate=2e-5, eval_batch_size=32, config="pals")
    for action in p._actions:
        if action.dest == "output_dir":
            action.required, action.default = False, None
            action.help = "output folder (default: runs/multi_task-<timestamp>; an existing non-empty one is refused)"
        if action.dest == "config":
            action.help = (f"adapter config: a JSON file, one of {', '.join(modeling.ADAPTER_CONFIGS)} (the configs/ "
                           "file for the model's width), or 'none' (shared encoder + heads only)")
    g = p.add_argument_group("multi-task")
    g.add_argument("--data_dir", default=None, help="GLUE data (<data_dir>/<TASK>/train.tsv ...); default: the "
                   "bundled sample data with a short demo profile")
    g.add_argument("--tasks", default="all", help="'all' (the 8 paper tasks in reference order) or a comma list "
                   "of GLUE tasks (WNLI included)")
    g.add_argument("--sample", choices=mt.SAMPLING_MODES, default="anneal",
                   help="task sampling: p_i ~ N_i^alpha, prop alpha=1, sqrt 0.5, anneal 1-0.8(e-1)/(E-1); rr cycles")
    g.add_argument("--steps_per_epoch", type=int, default=None,
                   help="optimizer steps per epoch (default 300 x number of tasks, as in the paper)")
    g.add_argument("--dry_run", action="store_true", help="print probabilities, expected steps/passes and "
                   "parameter counts, then exit without training")
    g.add_argument("--freeze", action="store_true", help="train only task modules and heads (shared BERT frozen)")
    g.add_argument("--task_lr", type=float, default=None, help="learning rate of task-specific parameters")
    g.add_argument("--task_batch_sizes", default=None, help="per-task effective batch sizes, e.g. cola=16,mnli=64")
    for name in glue.GLUE_TASKS:
        g.add_argument("--" + mt.batch_size_flag(name), type=int, default=None, help=f"batch size for {name}")
    g.add_argument("--projection", choices=mt.PROJECTIONS, default="none",
                   help="gradient surgery on the shared parameters for multi-task steps: pcgrad or vaccine")
    g.add_argument("--tasks_per_step", type=int, default=None,
                   help="tasks trained together per step (default: 1; all tasks when --projection is set)")
    g.add_argument("--combine_strategy", choices=mt.COMBINE_STRATEGIES, default=None,
                   help="all: every step trains every task; sampled: the step's tasks are drawn without "
                   "replacement from the sampler's p_i (default: all if tasks_per_step = number of tasks)")
    g.add_argument("--vaccine_beta", type=float, default=0.01, help="EMA rate of the Gradient Vaccine targets")
    g.add_argument("--patience", type=int, default=0, help="stop after N epochs without a better GLUE average")
    g.add_argument("--per_task_best", action="store_true",
                   help="also keep each task's modules + head at its own best epoch (per_task_best/<task>/)")
    g.add_argument("--do_predict", action="store_true", help="write GLUE test submission files (selected model)")
    g.add_argument("--no_train", action="store_true",
                   help="no training: evaluate (and --do_predict) the fine-tuned multi-task --bert_model")
    g.add_argument("--max_eval_examples", type=int, default=None, help="evaluate on the first N dev examples only")
    g.add_argument("--stop_after_steps", type=int, default=None,
                   help="stop (as if killed) after N optimizer steps, with a checkpoint; continue with --resume")
    return p


def parse_args(argv):
    """Parse flags; without --data_dir apply the demo profile to every flag not given explicitly."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    by_option = {o: a.dest for a in parser._actions for o in a.option_strings}
    explicit = {by_option.get(tok.split("=", 1)[0]) for tok in argv if tok.startswith("--")}
    args.demo = args.data_dir is None
    if args.demo:
        args.data_dir = DEMO_DATA_DIR
        for key, value in DEMO_PROFILE.items():
            if key != "steps_per_task" and key not in explicit:
                setattr(args, key, value)
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", "multi_task-" + time.strftime("%Y%m%d-%H%M%S"))
    return args


def main(argv=None):
    args = parse_args(argv)
    names = mt.parse_task_list(args.tasks)
    tasks = [glue.get_task(n) for n in names]
    if args.demo:
        print(f"DEMO PROFILE (no --data_dir): bundled sample data {os.path.relpath(args.data_dir)}, "
              f"{int(args.num_train_epochs)} epochs x "
              f"{args.steps_per_epoch or DEMO_PROFILE['steps_per_task'] * len(names)}"
              f" steps, {args.optimizer} lr {args.learning_rate:g}, dev capped at {args.max_eval_examples} examples. "
              "Explicit flags override; pass --data_dir for real runs.", flush=True)
    if args.steps_per_epoch is None:
        args.steps_per_epoch = (DEMO_PROFILE["steps_per_task"] if args.demo else 300) * len(names)
    num_epochs = max(1, int(-(-args.num_train_epochs // 1)))
    per_task_bs = mt.parse_task_batch_sizes(args.task_batch_sizes, names)
    for name in names:
        flag = getattr(args, mt.batch_size_flag(name))
        per_task_bs[name] = flag if flag is not None else per_task_bs.get(name, args.train_batch_size)
    batch_sizes = [per_task_bs[n] for n in names]
    tasks_per_step, strategy, method = mt.combination_plan(len(names), args.projection, args.tasks_per_step,
                                                           args.combine_strategy)
    if args.freeze and args.projection != "none":
        raise ConfigError("--freeze trains no shared parameter, so --projection has nothing to act on")
    opts = training.EngineOptions.from_args(args)
    if args.dry_run:
        return dry_run(args, opts, names, tasks, batch_sizes, num_epochs, tasks_per_step)

    env = training.setup_env(opts)
    training.prepare_output_dir(opts, env)
    if opts.resume and env.is_main:
        mt.recover_output_dirs(opts.output_dir)
    training.write_run_config(args, opts.output_dir, env)
    tokenizer = training.load_tokenizer(opts)
    data = mt.load_task_data(names, args.data_dir, tokenizer, opts, args.max_eval_examples, train=not args.no_train)
    model = training.load_model(opts, [t.num_labels for t in tasks], [t.head_type for t in tasks], names)
    if args.freeze:
        for p in model.shared_parameters():
            p.requires_grad_(False)
    report = mt.parameter_report(model, names, modeling.count_parameters)
    if env.is_main:
        print(mt.format_parameter_report(report), flush=True)
    selector = mt.ModelSelector({}, names, args.patience)
    results = {"kind": "multi_task", "label": _label(args, opts), "tasks": names, "config": opts.config,
               "sample": args.sample, "parameters": report, "demo": args.demo, "projection": args.projection}
    if args.no_train:
        trainer = training.Trainer(opts, env, model, 1)
        scores = mt.evaluate(lambda f, t: trainer.predict(f, t), data)
        selector.update(0, *scores)
        _print_table(env, 0, scores)
        best_dir = opts.model_dir
    else:
        sizes = [td.train_size for td in data]
        groups = optimization.param_groups(model, opts.weight_decay, opts.learning_rate, task_lr=args.task_lr)
        combiner = mt.GradientCombiner(method, len(names), seed=opts.seed, beta=args.vaccine_beta) \
            if tasks_per_step > 1 else None
        streams = [training.make_stream(opts, env, td.train, task_id=i, batch_size=bs, seed=opts.seed + i)
                   for i, (td, bs) in enumerate(zip(data, batch_sizes))]
        sampler = mt.TaskSampler(sizes, args.sample, num_epochs, opts.seed)
        stream = mt.MultiTaskStream(streams, sampler, args.steps_per_epoch, tasks_per_step, combiner)
        schedule = mt.schedule_report(names, sizes, batch_sizes, args.sample, num_epochs, args.steps_per_epoch,
                                      tasks_per_step)
        if env.is_main:
            print(mt.format_schedule_report(schedule), flush=True)
        total_steps = training.num_training_steps(opts, args.steps_per_epoch)
        trainer = training.Trainer(opts, env, model, total_steps, param_groups=groups, grad_combiner=combiner)
        on_epoch_end = mt.EpochEnd(data, selector, stream, sampler, env, tokenizer, opts.output_dir,
                                   per_task_best=args.per_task_best)
        stop_at = min(total_steps, args.stop_after_steps or total_steps)
        outcome = trainer.train(stream, stop_at, args.steps_per_epoch, on_epoch_end=on_epoch_end, desc="multi-task")
        if stop_at < total_steps and not outcome["stopped_early"]:
            trainer.close()
            print(f"stopped after {trainer.global_step} steps as asked; continue with --resume", flush=True)
            return 0
        selector.bind(trainer.extra_state)
        results.update(schedule=schedule, steps=trainer.global_step, train_loss=outcome["loss"],
                       stopped_early=outcome["stopped_early"], combine_strategy=strategy,
                       tasks_per_step=tasks_per_step, realized_frequencies=stream.realized_frequencies())
        best_dir = os.path.join(opts.output_dir, "best")
    results.update(history=selector.state["history"], best_epoch=selector.state["best_epoch"],
                   best_glue_average=selector.state["best_average"], task_best=selector.state["task_best"])
    if args.per_task_best and not args.no_train and env.is_main:
        results["per_task_best_combined"] = mt.write_per_task_combined(opts.output_dir, names, tokenizer)
    if args.do_predict:
        selected = modeling.BertForMultiTask.from_pretrained(best_dir).to(env.device)
        out_dir = os.path.join(opts.output_dir, "predictions")
        written = mt.predict_test_sets(lambda f, t: training.predict(selected, f, t, opts.eval_batch_size, env),
                                       data, args.data_dir, tokenizer, opts.max_seq_length, out_dir,
                                       write=env.is_main)
        results["predictions"] = [os.path.relpath(p, opts.output_dir) for p in written]
    trainer.close()
    if env.is_main:
        mt.write_results(opts.output_dir, results)
        best = selector.state["best_average"]
        print(f"best GLUE average {100 * best:.2f} at epoch {selector.state['best_epoch']}; outputs in "
              f"{opts.output_dir}" if best is not None else f"outputs in {opts.output_dir}", flush=True)
    return 0


def dry_run(args, opts, names, tasks, batch_sizes, num_epochs, tasks_per_step):
    sizes = mt.training_set_sizes(names, args.data_dir)
    schedule = mt.schedule_report(names, sizes, batch_sizes, args.sample, num_epochs, args.steps_per_epoch,
                                  tasks_per_step)
    model = mt.meta_model(opts.model_dir, opts.config, [t.num_labels for t in tasks], [t.head_type for t in tasks],
                          names)
    report = mt.parameter_report(model, names, modeling.count_parameters)
    print(f"DRY RUN: {len(names)} tasks, --sample {args.sample}, model {args.bert_model}, "
          f"config {opts.config or 'none (shared encoder + heads)'}")
    print(mt.format_schedule_report(schedule))
    print(mt.format_parameter_report(report))
    return 0


def _label(args, opts):
    config = os.path.basename(opts.config).replace("_config.json", "") if opts.config else "shared"
    return f"{config} ({args.sample}{', ' + args.projection if args.projection != 'none' else ''})"


def _print_table(env, epoch, scores):
    if env.is_main:
        results, task_scores, average = scores
        print(mt.format_eval_table(epoch, results, {k: glue.main_score(k, v) for k, v in results.items()}, average))


if __name__ == "__main__":
    run_cli(main)
