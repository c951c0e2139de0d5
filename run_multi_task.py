"""Multi-task fine-tuning with one shared BERT, small task modules (PALs, ...) and one head per task.

The paper's main job (Stickland & Murray, ICML 2019, "BERT and PALs"): every optimizer step trains one
task drawn by `--sample` (prop, sqrt, anneal, rr); after each epoch every task's dev set is evaluated,
the model with the best average of the tasks' main scores (GLUE-only runs: the GLUE average) is kept
in <output_dir>/best/. Tasks may mix families: GLUE tasks (--data_dir) with squad1, squad2, conll and
swag (--task_data NAME=DIR). With no data flags, a short demo on the bundled sample data runs
(printed as such). Machinery: multitask/; tasks: tasks/; engine: training/; the 2019 command line:
reference_cli.py.

    python run_multi_task.py --tasks all --sample anneal                       # demo, ~minutes on CPU
    python run_multi_task.py --tasks sst-2,rte,squad2,conll,swag                # mixed demo
    python run_multi_task.py --data_dir glue_data --bert_model uncased_L-12_H-768_A-12 \
        --config pals --tasks all --sample anneal --num_train_epochs 25 --output_dir runs/pals
"""
import argparse
import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass

import file_utils  # noqa: F401 - before torch: sets OMP_WAIT_POLICY (file_utils)

# isort: split
import diagnostics
import modeling
import multitask as mt
import optimization
import reference_cli
import tasks as task_families
import training
from file_utils import ConfigError, UserError, make_parser, resolve_model_dir, run_cli
from flags import add_flags
from flags import flag as opt
from tasks.base import RUNNER_OUTPUT_NAMES, read_stdin_lines, write_readable_predictions

ROOT = os.path.dirname(os.path.abspath(__file__))
DEMO_DATA_DIR = os.path.join(ROOT, "data", "glue_sample")
# The bundled sample data of the other families (their declarations' sample_data, tasks.base.Family),
# for the demo. Read only through demo_data_dir().
DEMO_TASK_DATA = task_families.sample_data_dirs()
# Without data flags: a CPU-sized demo instead of the paper's 25 x 2400 steps at lr 2e-5.
DEMO_PROFILE = {"num_train_epochs": 3.0, "steps_per_task": 20, "learning_rate": 1e-4, "max_eval_examples": 200}
logger = logging.getLogger("run_multi_task")


MT = "multi-task"
DIAG = "diagnostics, pictures, adding tasks, predicting (docs/multitask.md)"


@dataclass(frozen=True)
class MultiTaskFlags:
    """This runner's own flags (flags.py), declared once; the engine's come from training.add_engine_args.
    The per-task batch-size flags (--batch_size_<task>) are added by build_parser, one per known task."""
    data_dir: str = opt(None, "GLUE data (<data_dir>/<TASK>/train.tsv ...); without it and --task_data: the bundled "
                              "sample data with a short demo profile", group=MT, type=str)
    task_data: str = opt(None, f"data folders of the non-GLUE tasks: {task_families.task_data_help()}", group=MT,
                         type=str)
    tasks: str = opt("all", "'all' (the 8 paper tasks in reference order), 'glue' (+ WNLI), or a comma list of GLUE "
                            f"tasks and {', '.join(task_families.OTHER_TASKS)}; the position is the task id", group=MT)
    sample: str = opt("anneal", "task sampling: p_i ~ N_i^alpha (N_i: training examples), prop alpha=1, sqrt 0.5, "
                                "anneal 1-0.8(e-1)/(E-1); rr cycles", group=MT, choices=mt.SAMPLING_MODES)
    steps_per_epoch: int = opt(None, "optimizer steps per epoch (default 300 x number of tasks, as in the paper)",
                               group=MT, type=int)
    dry_run: bool = opt(False, "print probabilities, expected steps/passes and parameter counts, then exit without "
                               "training", group=MT)
    task_lr: float = opt(None, "learning rate of task-specific parameters", group=MT, type=float)
    task_batch_sizes: str = opt(None, "per-task effective batch sizes, e.g. cola=16,mnli=64", group=MT, type=str)
    task_max_seq_length: str = opt(None, "per-task max lengths, e.g. squad2=384,conll=128 (default: "
                                         "--max_seq_length; SQuAD 384)", group=MT, type=str)
    doc_stride: int = opt(128, "SQuAD: stride between windows over a context", group=MT)
    max_query_length: int = opt(64, "SQuAD: question word pieces kept", group=MT)
    projection: str = opt("none", "gradient surgery on the shared parameters for multi-task steps: pcgrad or "
                                  "vaccine (ours), or a TorchJD weighting jd-<name> (docs/multitask.md)", group=MT)
    tasks_per_step: int = opt(None, "tasks trained together per step (default: 1; all tasks when --projection is "
                                    "set)", group=MT, type=int)
    combine_strategy: str = opt(None, "all: every step trains every task; sampled: the step's tasks are drawn without "
                                      "replacement from the sampler's p_i (default: all if tasks_per_step = number of "
                                      "tasks)", group=MT, choices=mt.COMBINE_STRATEGIES, type=str)
    vaccine_beta: float = opt(0.01, "EMA rate of the Gradient Vaccine targets", group=MT)
    patience: int = opt(0, "stop after N epochs without a better average (0: never stop early)", group=MT)
    per_task_best: bool = opt(False, "also keep each task's modules + head at its own best epoch "
                                     "(per_task_best/<task>/)", group=MT)
    do_predict: bool = opt(False, "write every task's official test predictions (selected model) into predictions/",
                           group=MT)
    no_train: bool = opt(False, "no training: evaluate (and --do_predict) the fine-tuned multi-task --bert_model",
                         group=MT)
    allow_random_heads: bool = opt(False, "with --no_train: evaluate tasks the model has no trained head or modules "
                                          "for, with fresh random ones (else refused)", group=MT)
    max_eval_examples: int = opt(None, "evaluate on the first N dev examples only", group=MT, type=int)
    stop_after_steps: int = opt(None, "stop (as if killed) after N optimizer steps, with a checkpoint; continue with "
                                      "--resume", group=MT, type=int)
    pal_attention_lr: float = opt(None, "learning rate of the PALs' attention weights (Q/K/V), as the 2019 --optim "
                                        "option", group=MT, type=float)
    selection: str = opt(None, "model selection: average of the tasks' main scores (default), or the 2019 rule "
                               "reference_sum (sum of per-batch dev metrics, MNLI-m only; set by "
                               "--reference_protocol)",
                         group=MT, choices=mt.SELECTIONS, type=str)
    reference_layernorm_init: bool = opt(False, "2019: LayerNorms not in the checkpoint start with gamma and beta ~ "
                                                "N(0, 0.02) (set by --reference_protocol)", group=MT)
    diagnose_every: int = opt(0, "every N steps: each task's gradient on the shared parameters from one batch per "
                                 "task, cosine per task pair (overall and per layer group) to TensorBoard and "
                                 "diagnostics/epoch_E.csv; costs K forward+backward passes per diagnosis (0: off)",
                              group=DIAG)
    diagnose_pairs: str = opt(None, "task pairs drawn per layer x step at the end, e.g. rte:mrpc,cola:sst-2 "
                                    "(default: the most conflicting pairs)", group=DIAG, type=str)
    no_plots: bool = opt(False, "do not draw the PNG pictures at the end of training", group=DIAG)
    add_tasks: str = opt(None, "add these tasks (comma list, as --tasks) to the fine-tuned multi-task --bert_model: "
                               "only their new modules and heads train; the encoder and the model's tasks stay as "
                               "they are", group=DIAG, type=str)
    predict: list = opt(None, "no training: predict task TASK of the fine-tuned --bert_model for the examples in FILE "
                              "(the task's own file format, or one example per line; '-' reads stdin; lines:FILE: "
                              "every line one example; docs/multitask.md) into <output_dir>/predictions_TASK.tsv "
                              "(text, label, score); repeatable", group=DIAG, action="append", metavar="TASK=FILE")


def build_parser():
    p = make_parser(__doc__.split("\n")[0])
    # Paper hyperparameters as defaults: batch 32, lr 2e-5, length 128, warmup 0.1, seed 42.
    helps = {"output_dir": "output folder (default: runs/multi_task-<timestamp>; an existing non-empty one is "
                           "refused)",
             "config": f"adapter config: a JSON file, one of {', '.join(modeling.ADAPTER_CONFIGS)} (the configs/ "
                       "file for the model's width), or 'none' (shared encoder + heads only)",
             "max_seq_length": "max tokens per sequence (a task's own --task_max_seq_length wins; SQuAD: 384)"}
    training.add_engine_args(p, helps=helps, output_dir_required=False, learning_rate=2e-5, eval_batch_size=32,
                             config="pals")
    groups = {}
    add_flags(p, MultiTaskFlags, groups=groups)
    add_flags(p, reference_cli.ReferenceFlags)
    add_flags(p, mt.LibraryFlags)
    add_flags(p, mt.LossWeightingFlags)
    for name in task_families.glue.GLUE_TASKS + list(task_families.OTHER_TASKS):
        groups[MT].add_argument("--" + mt.batch_size_flag(name), type=int, default=None, help=f"batch size for {name}")
    return p


def parse_args(argv):
    """Parse flags; without --data_dir and --task_data apply the demo profile to every flag not given
    explicitly."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    explicit = set(args.explicit)  # sorted by the parser: run_config.json is the same for the same flags
    reference_cli.apply_2019_flags(args)
    args.demo = args.data_dir is None and args.task_data is None
    if args.demo:
        args.data_dir = DEMO_DATA_DIR
        for key, value in DEMO_PROFILE.items():
            if key != "steps_per_task" and key not in explicit:
                setattr(args, key, value)
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", "multi_task-" + time.strftime("%Y%m%d-%H%M%S"))
    return args


# Diagnostic streams use seeds this far from the training streams' (seed + task index).
DIAGNOSIS_SEED_OFFSET = 100_000
def task_max_lengths(args, names):
    """Each task's max sequence length: --task_max_seq_length, else its family's default (SQuAD 384),
    else --max_seq_length."""
    lengths = mt.parse_task_values(args.task_max_seq_length, names, "--task_max_seq_length",
                                   check=lambda v: "must be >= 3" if v < 3 else None)
    return [lengths.get(n, task_families.DEFAULT_MAX_SEQ_LENGTH.get(n, args.max_seq_length)) for n in names]


# ----------------------------------------------------------------------------------------------
# Phase 1, the plan: the flags resolved into the run's tasks and their settings (no data read yet)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """The run's tasks and their per-task settings, resolved from the flags and checked (`from_args`).

    Lists hold one entry per task this run trains, in task-id order after the `carried` tasks
    (--add_tasks: the model's own tasks, which the run keeps as they are)."""
    names: list
    batch_sizes: list
    max_lengths: list
    data_dirs: list
    steps_per_epoch: int
    num_epochs: int
    tasks_per_step: int
    strategy: str            # --combine_strategy resolved: all or sampled
    method: str              # how a step's task gradients combine: sum, pcgrad or vaccine
    selection: str           # average (of the main scores) or reference_sum (2019)
    diagnose_pairs: list = None
    carried: list = dataclasses.field(default_factory=list)
    carried_num_labels: list = dataclasses.field(default_factory=list)
    carried_types: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        per_task = (self.batch_sizes, self.max_lengths, self.data_dirs)
        if any(len(values) != len(self.names) for values in per_task):
            raise ValueError("Plan: one batch size, max length and data folder per task")
        if len(self.carried) != len(self.carried_num_labels) or len(self.carried) != len(self.carried_types):
            raise ValueError("Plan: one label count and head type per carried task")
        if self.steps_per_epoch < 1 or self.num_epochs < 1 or not 1 <= self.tasks_per_step <= len(self.names):
            raise ValueError(f"Plan: steps_per_epoch {self.steps_per_epoch}, num_epochs {self.num_epochs}, "
                             f"tasks_per_step {self.tasks_per_step}")
        if self.selection not in mt.SELECTIONS:
            raise ValueError(f"Plan: selection {self.selection!r}")

    @classmethod
    def from_args(cls, args):
        """The plan of these flags, every combination checked (ConfigError). What it resolves is written
        back into `args` (--steps_per_epoch's default; --config 'none' under --add_tasks, whose modules come
        from the model folder), so run_config.json records what ran."""
        carried = carried_tasks(args) if args.add_tasks else ([], [], [])
        names = task_families.parse_task_names(args.add_tasks or args.tasks)
        for name in names:
            if name in carried[0]:
                raise ConfigError(f"--add_tasks: '{name}' is already a task of {args.bert_model} "
                                  f"({', '.join(carried[0])})")
        args.steps_per_epoch = default_steps_per_epoch(args, names)
        for flag in ("steps_per_epoch", "doc_stride", "max_query_length"):
            if getattr(args, flag) < 1:
                raise ConfigError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
        batch_sizes, max_lengths = task_batch_sizes(args, names), task_max_lengths(args, names)
        data_dirs = task_data_dirs(args, names)
        tasks_per_step, strategy, method = mt.combination_plan(len(names), args.projection, args.tasks_per_step,
                                                               args.combine_strategy)
        mt.loss_weighting.check(args, strategy)
        selection = args.selection or ("reference_sum" if args.reference_protocol else "average")
        check_flags(args, names, selection)
        check_diagnostics(args, adds_tasks=bool(carried[0]))
        return cls(names=names, batch_sizes=batch_sizes, max_lengths=max_lengths, data_dirs=data_dirs,
                   steps_per_epoch=args.steps_per_epoch, num_epochs=max(1, int(-(-args.num_train_epochs // 1))),
                   tasks_per_step=tasks_per_step, strategy=strategy, method=method, selection=selection,
                   diagnose_pairs=diagnostics.parse_pairs(args.diagnose_pairs, names),
                   carried=carried[0], carried_num_labels=carried[1], carried_types=carried[2])

    @property
    def task_ids(self):
        """The model's task id of each task this run trains (--add_tasks: after the carried tasks)."""
        return [len(self.carried) + i for i in range(len(self.names))]

    @property
    def all_names(self):
        """Every task of the model this run trains or carries, in task-id order."""
        return self.carried + self.names

    @property
    def glue_only(self):
        return all(task_families.is_glue(n) for n in self.names)

    @property
    def average_key(self):
        """The selection score's name in results, logs and best/selection.json."""
        if self.selection == "reference_sum":
            return "reference_sum"
        return "glue_average" if self.glue_only else "average"

    @property
    def average_label(self):
        if self.selection == "reference_sum":
            return "2019 sum"
        return "GLUE avg" if self.glue_only else "average"

    def run_flags(self, args):
        """This runner's flags that define a run (part of the checkpoint fingerprint)."""
        return dict(tasks=self.names, sample=args.sample, steps_per_epoch=self.steps_per_epoch,
                    batch_sizes=self.batch_sizes, max_lengths=self.max_lengths, projection=args.projection,
                    tasks_per_step=self.tasks_per_step, combine_strategy=self.strategy,
                    vaccine_beta=args.vaccine_beta, freeze=args.freeze, task_lr=args.task_lr, patience=args.patience,
                    doc_stride=args.doc_stride, max_query_length=args.max_query_length,
                    max_eval_examples=args.max_eval_examples, selection=self.selection,
                    pal_attention_lr=args.pal_attention_lr,
                    reference_layernorm_init=args.reference_layernorm_init or args.reference_protocol,
                    data=[os.path.abspath(d) for d in self.data_dirs],
                    **mt.library.method_flags(args.projection, args),  # a jd-* method's own flags
                    **mt.loss_weighting.run_flags(args),
                    # only when adding tasks: checkpoints of other runs keep their fingerprint
                    **({"carried_tasks": self.carried} if self.carried else {}))

    def build_tasks(self, args, opts, tokenizer):
        """Task objects (nothing read yet); a model folder's task_labels.json gives NER tag lists."""
        saved = task_families.saved_labels(opts.model_dir)
        cache = (lambda key, build: training.cached_features(opts.cache_dir, key, build)) if opts.cache_dir else None
        return [task_families.build_task(name, tokenizer, data_dir, max_len, cache=cache,
                                         max_eval_examples=args.max_eval_examples, labels=saved.get(name),
                                         doc_stride=args.doc_stride, max_query_length=args.max_query_length,
                                         reference_selection=self.selection == "reference_sum")
                for name, data_dir, max_len in zip(self.names, self.data_dirs, self.max_lengths)]


def check_flags(args, names, selection):
    """Flag combinations that cannot run (checked in this order, after the task list)."""
    if args.freeze and args.projection != "none":
        raise ConfigError("--freeze trains no shared parameter, so --projection has nothing to act on")
    if selection == "reference_sum" and not all(task_families.is_glue(n) for n in names):
        raise ConfigError("the 2019 selection rule (--reference_protocol / --selection reference_sum) sums "
                          "GLUE metrics: use it with GLUE tasks only")
    if args.allow_random_heads and not args.no_train:
        raise ConfigError("--allow_random_heads is for --no_train (training always starts new heads fresh)")
    if not 0.0 < args.vaccine_beta <= 1.0:
        raise ConfigError(f"--vaccine_beta must be in (0, 1], got {args.vaccine_beta}")
    if mt.library.is_library(args.projection):
        mt.library.make_weighting(args.projection, args)  # a missing flag or solver package: exit 2 now
    if args.max_eval_examples is not None and args.max_eval_examples < 1:
        raise ConfigError(f"--max_eval_examples must be >= 1, got {args.max_eval_examples}")


def check_diagnostics(args, adds_tasks):
    if args.diagnose_every < 0:
        raise ConfigError(f"--diagnose_every must be >= 0 (0: off), got {args.diagnose_every}")
    if args.diagnose_every and (args.freeze or adds_tasks):
        raise ConfigError("--diagnose_every measures gradients of the shared parameters, which "
                          f"{'--freeze' if args.freeze else '--add_tasks'} does not train")
    if args.diagnose_pairs and not args.diagnose_every:
        raise ConfigError("--diagnose_pairs needs --diagnose_every N")


def carried_tasks(args):
    """--add_tasks: (names, label counts, head types) of the fine-tuned model's own tasks, which this
    run keeps as they are."""
    if args.no_train:
        raise ConfigError("--add_tasks trains the new tasks: it cannot be used with --no_train")
    if "tasks" in args.explicit:
        raise ConfigError("--add_tasks takes the model's tasks and adds its own: leave --tasks out")
    for flag, problem in (("freeze", "is implied (only the new tasks' modules and heads train)"),
                          ("per_task_best", "is not supported: best/ holds the new tasks' best epoch")):
        if getattr(args, flag):
            raise ConfigError(f"--{flag} with --add_tasks {problem}")
    if args.projection != "none":
        raise ConfigError("--projection acts on the shared parameters, which --add_tasks does not train")
    if args.config not in (None, "none") and "config" in args.explicit:
        raise ConfigError("--add_tasks gives the new tasks the modules of the model's own config: leave "
                          "--config out")
    args.config = "none"  # the adapter keys come from the model folder's config.json
    model_dir = resolve_model_dir(args.bert_model)
    _, merged, _ = modeling.read_pretrained(model_dir)
    if not merged.get("task_names"):
        raise ConfigError(f"--add_tasks: {model_dir} is not a fine-tuned multi-task model (its config.json "
                          "names no tasks); train one with run_multi_task.py first")
    return list(merged["task_names"]), list(merged["task_num_labels"]), list(merged["task_types"])


def default_steps_per_epoch(args, names):
    """--steps_per_epoch, else 300 x the number of tasks (the paper; demo: 20 x); the 2019 `--tasks
    single`: half a pass (num_train_steps / (2 x epochs), as there)."""
    if args.steps_per_epoch is not None:
        return args.steps_per_epoch
    if args.single_task:
        size = len(task_families.glue.read_examples(names[0], args.data_dir, "train"))
        num_train_steps = int(size / args.train_batch_size * args.num_train_epochs)
        return max(1, int(num_train_steps / (2.0 * args.num_train_epochs)))
    return (DEMO_PROFILE["steps_per_task"] if args.demo else 300) * len(names)


def task_batch_sizes(args, names):
    """Each task's batch size: --batch_size_<task>, else --task_batch_sizes, else --train_batch_size."""
    per_task = mt.parse_task_batch_sizes(args.task_batch_sizes, names)
    for name in names:
        flag = getattr(args, mt.batch_size_flag(name))
        if flag is not None and flag <= 0:
            raise ConfigError(f"--{mt.batch_size_flag(name)} must be positive, got {flag}")
        per_task[name] = flag if flag is not None else per_task.get(name, args.train_batch_size)
    return [per_task[n] for n in names]


def task_data_dirs(args, names):
    """Each task's data folder: --data_dir for GLUE tasks, --task_data NAME=DIR for the others (the
    demo: the bundled sample data)."""
    task_data = mt.parse_task_values(args.task_data, names, "--task_data", convert=str)
    dirs = []
    for name in names:
        if task_families.is_glue(name):
            if args.data_dir is None:
                raise ConfigError(f"GLUE task '{name}' needs --data_dir (the GLUE data folder)")
            dirs.append(args.data_dir)
        elif name in task_data:
            dirs.append(task_data[name])
        elif args.demo:
            dirs.append(demo_data_dir(name))
        else:
            raise ConfigError(f"task '{name}' needs its data folder: --task_data {name}=DIR")
    return dirs


def demo_data_dir(name):
    """The bundled sample-data folder of non-GLUE task `name` (the demo without --task_data)."""
    return DEMO_TASK_DATA[name]


# ----------------------------------------------------------------------------------------------
# main: plan, build, train (evaluating every epoch) or evaluate, predict, report
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    if args.predict:
        return predict_files(args)
    plan = Plan.from_args(args)
    if args.demo:
        print(f"DEMO PROFILE (no --data_dir / --task_data): bundled sample data under {os.path.relpath(ROOT)}/data, "
              f"{int(args.num_train_epochs)} epochs x {args.steps_per_epoch} steps, {args.optimizer} lr "
              f"{args.learning_rate:g}, dev capped at {args.max_eval_examples} examples. "
              "Explicit flags override; pass --data_dir / --task_data for real runs.", flush=True)
    opts = training.EngineOptions.from_args(args).with_run_flags(**plan.run_flags(args))
    if args.dry_run:
        return dry_run(args, opts, plan)
    run = build(args, opts, plan)
    if args.no_train:
        evaluate(run)
    elif not train(run):
        return 0
    predict(run)
    return report(run)


@dataclasses.dataclass
class Run:
    """What the build phase made, handed from phase to phase."""
    args: argparse.Namespace
    opts: training.EngineOptions
    plan: Plan
    env: object
    tokenizer: object
    tasks: list
    model: modeling.BertForMultiTask
    selector: mt.ModelSelector
    results: dict          # results.json, filled phase by phase
    trainer: training.Trainer = None

    def predict_fn(self, model=None):
        """predict(features, task_id) with `model` (default: the run's): the one way this runner predicts."""
        return mt.predictor(model or self.model, self.opts, self.env)


# ----------------------------------------------------------------------------------------------
# Phase 2, build: environment, tasks (every input read and checked), model, output folder
# ----------------------------------------------------------------------------------------------

def build(args, opts, plan):
    env = training.setup_env(opts)
    training.check_output_dir(opts, training=not args.no_train)
    tokenizer = training.load_tokenizer(opts)
    tasks = plan.build_tasks(args, opts, tokenizer)
    for task in tasks:  # every input file is read and checked before anything is written
        task.prepare(train=not args.no_train, dev=True, test=args.do_predict)
    model = build_model(args, opts, plan, tasks)
    training.prepare_output_dir(opts, env, training=not args.no_train,
                                output_names=RUNNER_OUTPUT_NAMES + tuple(n for t in tasks for n in t.output_names))
    if opts.resume and env.is_main:
        mt.recover_output_dirs(opts.output_dir)
    training.write_run_config(args, opts.output_dir, env)
    freeze(args, plan, model, env)
    report = mt.parameter_report(model, plan.all_names, modeling.count_parameters)
    if env.is_main:
        print(mt.format_parameter_report(report), flush=True)
    selector = mt.ModelSelector({}, plan.names, args.patience, average_key=plan.average_key,
                                initial_best=0.0 if plan.selection == "reference_sum" else None)
    results = {"kind": "multi_task", "label": _label(args, opts), "tasks": plan.names, "config": opts.config,
               "sample": args.sample, "parameters": report, "demo": args.demo, "projection": args.projection}
    if plan.carried:
        results["carried_tasks"] = plan.carried
    return Run(args, opts, plan, env, tokenizer, tasks, model.to(env.device), selector, results)


def build_model(args, opts, plan, tasks):
    """The model with a head per task (--no_train: the model's own, matched by task name,
    docs/multitask.md#evaluating-a-finished-model), checked against the tasks' lengths."""
    model = training.load_model(opts, plan.carried_num_labels + [t.num_labels for t in tasks],
                                plan.carried_types + [t.head_type for t in tasks], plan.all_names,
                                match_tasks=task_families.glue.PAPER_TASKS if args.no_train else None,
                                reference_head_rows=task_families.glue.reference_head_rows())
    if args.no_train:
        mt.check_saved_tasks(model, opts, tasks, task_families.saved_labels(opts.model_dir),
                             task_families.glue.PAPER_TASKS, args.allow_random_heads)
    if args.reference_layernorm_init or args.reference_protocol:
        modeling.reference_layernorm_init(model)
    longest = max(plan.max_lengths)
    if longest > model.config.max_position_embeddings:
        raise ConfigError(f"a task's max length {longest} exceeds the model's max_position_embeddings "
                          f"{model.config.max_position_embeddings} (--task_max_seq_length)")
    return model


def freeze(args, plan, model, env):
    """--freeze: the shared encoder does not train; --add_tasks: only the new tasks' modules and heads do."""
    if args.freeze:
        training.log_freeze(*mt.freeze_shared(model))
    if plan.carried:
        trainable = mt.freeze_all_but(model, plan.task_ids)
        if env.is_main:
            print(f"--add_tasks: training only {', '.join(plan.names)} ({trainable:,} parameters: their modules and "
                  f"heads); the encoder and {', '.join(plan.carried)} stay as they are", flush=True)


# ----------------------------------------------------------------------------------------------
# Phase 3, train: sampled steps over the tasks' streams, every epoch evaluated and the best kept
# ----------------------------------------------------------------------------------------------

def train(run):
    """Train; False when --stop_after_steps stopped the run (a checkpoint to --resume, no results)."""
    args, opts, plan, env, tasks = run.args, run.opts, run.plan, run.env, run.tasks
    sizes = [t.train_size for t in tasks]
    task_lr = opts.method_lr if args.task_lr is None else args.task_lr  # explicit flags win (EngineOptions)
    groups = optimization.param_groups(run.model, opts.weight_decay, opts.learning_rate, task_lr=task_lr,
                                       pal_attention_lr=args.pal_attention_lr)
    # Only a projection needs per-task gradients; a plain sum over several tasks accumulates as usual.
    combiner = None
    if mt.library.is_library(plan.method):
        combiner = mt.LibraryCombiner(plan.method, plan.names, opts.seed, args)
    elif plan.method != "sum":
        combiner = mt.GradientCombiner(plan.method, len(tasks), seed=opts.seed, beta=args.vaccine_beta,
                                       names=plan.names)
    weighter = mt.loss_weighting.loss_weighter(args, plan.names, plan.task_ids, plan.steps_per_epoch, env.device)
    if weighter is not None and weighter.param_group(args.uw_lr or opts.learning_rate):  # UW's log-variances
        groups.append(weighter.param_group(args.uw_lr or opts.learning_rate))
    sampler = mt.TaskSampler(sizes, args.sample, plan.num_epochs, opts.seed)
    stream = mt.MultiTaskStream(task_streams(run, 0), sampler, plan.steps_per_epoch, plan.tasks_per_step, combiner)
    loss_log = mt.TrainLossLog(stream, plan.task_ids)
    diagnosis = gradient_diagnostics(run)
    schedule = mt.schedule_report(plan.names, sizes, plan.batch_sizes, args.sample, plan.num_epochs,
                                  plan.steps_per_epoch, plan.tasks_per_step)
    if env.is_main:
        print(mt.format_schedule_report(schedule), flush=True)
    total_steps = training.num_training_steps(opts, plan.steps_per_epoch)
    run.trainer = trainer = training.Trainer(opts, env, run.model, total_steps, param_groups=groups,
                                             grad_combiner=combiner, loss_weighter=weighter)
    carried_labels = {k: v for k, v in task_families.saved_labels(opts.model_dir).items() if k in plan.carried}
    on_epoch_end = mt.EpochEnd(tasks, run.selector, stream, sampler, env, run.tokenizer, opts.output_dir,
                               per_task_best=args.per_task_best, average_tag=plan.average_key,
                               average_label=plan.average_label, selection=plan.selection,
                               task_ids=plan.task_ids, carried_labels=carried_labels, loss_log=loss_log,
                               predict=run.predict_fn())
    stop_at = min(total_steps, args.stop_after_steps or total_steps)
    outcome = trainer.train(stream, stop_at, plan.steps_per_epoch, on_epoch_end=on_epoch_end, desc="multi-task",
                            on_step=diagnosis, on_loss=loss_log)
    if stop_at < total_steps and not outcome["stopped_early"]:
        trainer.close()
        print(f"stopped after {trainer.global_step} steps as asked; continue with --resume", flush=True)
        return False
    run.selector.bind(trainer.extra_state)
    run.results.update(training.run_summary(outcome))
    run.results.update(schedule=schedule, steps=trainer.global_step, train_loss=outcome["loss"],
                       stopped_early=outcome["stopped_early"], combine_strategy=plan.strategy,
                       tasks_per_step=plan.tasks_per_step, realized_frequencies=stream.realized_frequencies())
    if combiner is not None:  # the mean weight each task's gradient got (1 each: the plain sum)
        run.results["task_weights"] = combiner.mean_weights()
    if weighter is not None:  # the mean multiplier of each task's loss (docs/multitask.md#loss-weighting)
        run.results.update(loss_weighting=args.loss_weighting, loss_weights=weighter.mean_weights())
    if diagnosis is not None:
        run.results["diagnostics"] = dict(diagnosis.finish(trainer), named_pairs=plan.diagnose_pairs)
    record_selection(run)
    if args.per_task_best and env.is_main:
        run.results["per_task_best_combined"] = mt.write_per_task_combined(opts.output_dir, tasks, run.tokenizer)
    return True


def task_streams(run, seed_offset):
    plan = run.plan
    return mt.task_streams(run.opts, run.env, run.tasks, plan.task_ids, plan.batch_sizes, plan.max_lengths,
                           run.opts.seed + seed_offset)


def gradient_diagnostics(run):
    """--diagnose_every N: the on_step hook measuring task-gradient conflicts, or None."""
    args, plan = run.args, run.plan
    if not args.diagnose_every:
        return None
    # Batches of their own (other seeds): the training streams' positions must not move.
    diagnosis = diagnostics.GradientDiagnostics(args.diagnose_every, plan.names,
                                                task_streams(run, DIAGNOSIS_SEED_OFFSET), run.env,
                                                run.opts.output_dir, plan.steps_per_epoch, task_ids=plan.task_ids)
    if run.env.is_main:
        print(f"gradient diagnostics every {args.diagnose_every} steps: {len(plan.names)} extra forward+backward "
              f"passes each (about {len(plan.names) / args.diagnose_every:.2f} passes per training step)", flush=True)
    return diagnosis


# ----------------------------------------------------------------------------------------------
# Phase 4, evaluate (--no_train): the finished model's dev scores, as one more epoch would be
# ----------------------------------------------------------------------------------------------

def evaluate(run):
    plan = run.plan
    results, task_scores, set_scores, average = mt.evaluate_tasks(run.tasks, run.predict_fn(), plan.selection)
    run.selector.update(0, results, task_scores, average)
    if run.env.is_main:
        print(mt.format_eval_table(0, results, set_scores, average, plan.average_label), flush=True)
    record_selection(run)


def record_selection(run):
    run.results.update(run.selector.summary())
    if run.plan.glue_only:
        run.results["best_glue_average"] = run.selector.state["best_average"]


# ----------------------------------------------------------------------------------------------
# Phase 5, predict (--do_predict): every task's official test predictions with the selected model
# ----------------------------------------------------------------------------------------------

def predict(run):
    args, opts = run.args, run.opts
    if not args.do_predict:
        return
    if not args.no_train and run.selector.state["best_epoch"] is None:
        # No epoch beat the start (e.g. every dev average NaN): best/ was never written. Predicting with
        # the last epoch's model instead would pass off an unselected model as the selected one.
        refused = (f"--do_predict: no epoch was selected (no dev {run.plan.average_label} better than the start; "
                   f"see history in {os.path.join(opts.output_dir, 'results.json')}), so there is no selected "
                   "model to predict with: no predictions written")
        run.results.update(predictions=None, predictions_refused=refused)
        return
    # --no_train: the model in memory (its heads were matched by name; a 2019 folder has no task metadata)
    selected = run.model if args.no_train else \
        modeling.BertForMultiTask.from_pretrained(os.path.join(opts.output_dir, "best")).to(run.env.device)
    written = mt.predict_tasks(run.tasks, run.predict_fn(selected), os.path.join(opts.output_dir, "predictions"),
                               run.env, task_ids=run.plan.task_ids)
    run.results["predictions"] = [os.path.relpath(p, opts.output_dir) for p in written]


def report(run):
    """results.json, the closing line, the pictures; a refused --do_predict fails the run after that."""
    if run.trainer is not None:
        run.trainer.close()
    opts, state = run.opts, run.selector.state
    if run.env.is_main:
        mt.write_results(opts.output_dir, run.results)
        best = state["best_average"]
        what = "GLUE average" if run.plan.glue_only else "average of the tasks' main scores"
        print(f"best {what} {100 * best:.2f} at epoch {state['best_epoch']}; outputs in "
              f"{opts.output_dir}" if best is not None else f"outputs in {opts.output_dir}", flush=True)
        if not run.args.no_train and not run.args.no_plots:
            draw_pictures(opts.output_dir)
    if run.results.get("predictions_refused"):
        raise UserError(run.results["predictions_refused"])
    return 0


def draw_pictures(output_dir):
    """plots.plot_run on a finished run; a failure is a warning, never a lost run (the model and
    results.json are already written)."""
    try:
        import plots  # matplotlib is imported only for the pictures
        written = plots.plot_run(output_dir)
    except Exception as exc:  # noqa: BLE001 -- any plotting failure must leave the run usable
        logger.warning("could not draw the pictures (%s: %s); draw them later with scripts/plot_run.py %s",
                       type(exc).__name__, exc, output_dir)
        return {}
    print(f"pictures: {', '.join(os.path.relpath(p, output_dir) for p in written.values())}", flush=True)
    return written


def dry_run(args, opts, plan):
    """Sizes (training examples, counted without tokenizing), probabilities and parameter counts."""
    tasks = plan.build_tasks(args, opts, tokenizer=None)
    sizes = [t.count_train_examples() for t in tasks]
    schedule = mt.schedule_report(plan.names, sizes, plan.batch_sizes, args.sample, plan.num_epochs,
                                  args.steps_per_epoch, plan.tasks_per_step)
    num_labels = [t.num_labels if t.num_labels is not None else len(t.read_labels()) for t in tasks]
    model = mt.meta_model(opts.model_dir, opts.config, plan.carried_num_labels + num_labels,
                          plan.carried_types + [t.head_type for t in tasks], plan.all_names)
    report = mt.parameter_report(model, plan.all_names, modeling.count_parameters)
    print(f"DRY RUN: {len(plan.names)} tasks, --sample {args.sample}, model {args.bert_model}, "
          f"config {opts.config or 'none (shared encoder + heads)'}")
    print(mt.format_schedule_report(schedule))
    print(mt.format_parameter_report(report))
    return 0


def predict_files(args):
    """--predict TASK=FILE (repeatable): the fine-tuned --bert_model's predictions for a user's
    examples, no training and no data folder. Every input is read and checked before the model
    loads or anything is written; then <output_dir>/predictions_TASK.tsv (text, label, score)."""
    if args.add_tasks or args.diagnose_every or args.allow_random_heads:
        raise ConfigError("--predict runs no training and uses the model's own heads: leave out --add_tasks, "
                          "--diagnose_every and --allow_random_heads")
    if args.config not in (None, "none") and "config" in args.explicit:
        raise ConfigError("--predict uses the model folder's own config: leave --config out")
    args.config = "none"
    model_dir = resolve_model_dir(args.bert_model)
    _, merged, _ = modeling.read_pretrained(model_dir)
    names = list(merged.get("task_names") or [])
    if not names:
        raise ConfigError(f"--predict: {model_dir} names no tasks (not a fine-tuned run_multi_task.py model)")
    specs = mt.parse_predict_specs(args.predict, names)
    lengths = dict(zip(names, task_max_lengths(args, names)))
    opts = training.EngineOptions.from_args(args)
    env = training.setup_env(opts)
    training.check_output_dir(opts, training=False)
    tokenizer = training.load_tokenizer(opts)
    saved = task_families.saved_labels(model_dir)
    jobs = []
    for task_name, path, plain in specs:
        max_len = min(lengths[task_name], merged["max_position_embeddings"])
        task = task_families.build_task(task_name, tokenizer, None, max_len, labels=saved.get(task_name),
                                        doc_stride=args.doc_stride, max_query_length=args.max_query_length)
        lines = read_stdin_lines() if path == "-" else None
        inputs = task.read_inputs(None if path == "-" else path, lines, plain=plain)
        jobs.append((task, names.index(task_name), path, inputs))
    model = training.load_model(opts).to(env.device)
    training.prepare_output_dir(opts, env, training=False)
    predict_fn = mt.predictor(model, opts, env)
    for task, task_id, path, inputs in jobs:
        rows = task.predict_rows(lambda f, t=task_id, p=task.padding: predict_fn(f, t, padding=p), inputs)
        if env.is_main:
            target = os.path.join(opts.output_dir, f"predictions_{task.name}.tsv")
            count = write_readable_predictions(target, rows)
            print(f"{task.name}: {count} predictions for {'stdin' if path == '-' else path} in {target}", flush=True)
    env.barrier()
    return 0


def _label(args, opts):
    config = os.path.basename(opts.config).replace("_config.json", "") if opts.config else "shared"
    return f"{config} ({args.sample}{', ' + args.projection if args.projection != 'none' else ''})"


if __name__ == "__main__":
    run_cli(main)
