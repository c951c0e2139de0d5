"""Engine flags -> EngineOptions: the options every runner shares, resolved once per run."""
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

import file_utils
import flags
import modeling
import optimization
import task_adapters
import tokenization
from file_utils import ConfigError, resolve_model_dir
from flags import flag

logger = logging.getLogger(__name__)

# What --reference_protocol sets unless the flag itself is given (an explicit flag wins, and is logged).
REFERENCE_VALUES = {"optimizer": "bertadam", "schedule": "warmup_linear_legacy", "no_group_by_length": True}


# The engine parts of the 2019 protocol, as EngineOptions fields (--reference_protocol sets them all).
REFERENCE_PARTS = ("per_parameter_schedule", "zero_grad_in_place", "dropout_off_after_eval", "replay_batch_cycle",
                   "reference_accumulation")


def protocol_line(opts):
    """One log line at the start of training: the protocol in use and the flag for the other one."""
    parts = [name for name in REFERENCE_PARTS if getattr(opts, name)]
    if opts.optimizer == "adamw" and not parts:
        return ("training protocol: today's (AdamW with bias correction, dropout throughout, fresh batches every "
                "pass); --reference_protocol trains as the 2019 code did (docs/reproducing.md)")
    if len(parts) == len(REFERENCE_PARTS) and opts.optimizer == "bertadam":
        return ("training protocol: the 2019 code's (--reference_protocol: BertAdam, " + ", ".join(parts)
                + f", schedule {opts.schedule}); leave --reference_protocol out for today's (docs/reproducing.md)")
    return (f"training protocol: mixed (--optimizer {opts.optimizer}, 2019 parts: {', '.join(parts) or 'none'}); "
            "--reference_protocol for all of the 2019 code's, none of these flags for today's (docs/reproducing.md)")


ENGINE = "engine"
PROTOCOL_2019 = "2019 protocol (docs/reproducing.md)"


@dataclass(frozen=True)
class EngineOptions:
    """What the engine needs from the command line, typed and resolved once per run.

    Every field that is a flag is declared here once (flags.flag: default, help, group, run-defining);
    add_engine_args, from_args, FINGERPRINT and the docs/engine.md table derive from it. Runners (and
    tests) can build this object without argparse."""
    model_dir: str = flag(  # the --bert_model folder, resolved
        help="model folder (config.json + model.safetensors/pytorch_model.bin + vocab.txt) or a bundled name "
             "(minilm-l6)", group=ENGINE, run=True, name="--bert_model", cli_default="minilm-l6",
        doc="a model folder (ours, Hugging Face's, or Google's TensorFlow release), a Hub name in the local Hub "
            "cache, or the bundled name ([model.md](model.md#checkpoints-in-and-out))")
    output_dir: str = flag(help="where the model, results, checkpoints and logs go", group=ENGINE, required=True,
                           doc="model, results, `checkpoint/`, `runs/` (TensorBoard), `run_config.json`")
    config: Optional[str] = flag(  # adapter config file (short names resolved); None = plain BERT
        None, "adapter config: a JSON file or a bundled name (" + ", ".join(modeling.ADAPTER_CONFIGS)
        + ": the configs/ file for the model's width); its BERT keys must match the model's. Default: none "
        "(plain BERT)", group=ENGINE, run=True,
        doc="adapter config JSON or a bundled name ([model.md](model.md#adapters)); its BERT keys must match the "
            "model's")
    do_lower_case: bool = flag(
        True, "lower-case input (uncased models). Default: taken from the model folder's tokenizer_config.json or "
        "name, else guessed from the vocab", group=ENGINE, run=True, cli_default=None,
        off=("--no_lower_case", "keep case (cased models)"), doc_default="from the model",
        doc="read from the folder's `tokenizer_config.json`, else guessed from the vocab (uncased vocabs have no "
            "capitalised pieces)")
    max_seq_length: int = flag(128, "max tokens per sequence after word pieces", group=ENGINE, run=True)
    train_batch_size: int = flag(  # effective global batch of one optimizer step
        32, "EFFECTIVE global batch of one optimizer step (split by accumulation and ranks)", group=ENGINE,
        run=True, doc="the **effective global batch of one optimizer step** (split by accumulation and by "
                      "processes)")
    eval_batch_size: int = flag(8, "batch size for evaluation/prediction", group=ENGINE)
    learning_rate: float = flag(5e-5, "peak learning rate", group=ENGINE, run=True)
    num_train_epochs: float = flag(3.0, "passes over the training data (may be fractional)", group=ENGINE,
                                   run=True)
    warmup_proportion: float = flag(0.1, "fraction of steps of linear warmup", group=ENGINE, run=True)
    weight_decay: float = flag(0.01, "decoupled weight decay (not on bias/LayerNorm)", group=ENGINE, run=True)
    max_grad_norm: float = flag(
        1.0, "gradient clipping: per tensor inside BertAdam, global norm for AdamW; <=0 disables", group=ENGINE,
        run=True)
    optimizer: str = flag(
        "adamw", "adamw: bias-corrected AdamW with global-norm clipping (better results, docs/engine.md); "
        "bertadam: the 2019 update (no bias correction, per-tensor clipping)", group=ENGINE, run=True,
        choices=optimization.OPTIMIZERS,
        doc="`adamw` (torch AdamW with bias correction, global-norm clipping in the engine) or `bertadam` (the "
            "2019 update, per-tensor clipping inside; [why not the default](benchmarks.md#adamw-vs-bertadam))")
    schedule: str = flag(
        "warmup_linear", "learning-rate schedule over the real number of optimizer steps", group=ENGINE, run=True,
        choices=tuple(optimization.SCHEDULES),
        doc="also `warmup_linear_legacy`, `warmup_constant`, `warmup_cosine`, `warmup_cosine_hard_restarts`, "
            "`constant` ([schedules](#schedules))")
    seed: int = flag(42, "seeds python, numpy, torch (+cuda) and the batch order", group=ENGINE, run=True)
    gradient_accumulation_steps: int = flag(
        1, "micro-batches per optimizer step (train_batch_size must be divisible by it)", group=ENGINE, run=True)
    precision: str = flag(  # fp32, fp16 or bf16
        "fp32", "mixed precision", group=ENGINE, run=True,
        switches=(("fp16", "mixed precision fp16 (torch.amp + GradScaler; CUDA only)"),
                  ("bf16", "mixed precision bfloat16 (torch.amp autocast): GPUs with native bf16 (Ampere and "
                           "later); on CPUs without AVX512-BF16/AMX far slower than fp32 "
                           "(docs/benchmarks.md#cpu-bf16)")),
        doc="`--fp16`: torch.amp fp16 + GradScaler (CUDA only); `--bf16`: torch.amp bfloat16 autocast, no scaler, "
            "CPU and GPU ([Mixed precision](#mixed-precision))")
    loss_scale: float = flag(0.0, "fp16 only: 0 = dynamic loss scaling, >0 = this static scale", group=ENGINE,
                             run=True, cli_default=0, type=float)
    use_cuda: bool = flag(True, "do not use CUDA even when it is available", group=ENGINE, name="--no_cuda",
                          negate=True)
    local_rank: int = flag(-1, "set by torch.distributed.launch; with torchrun the LOCAL_RANK env var is used",
                           group=ENGINE, aliases=("--local-rank",),
                           doc="torchrun sets `LOCAL_RANK`; `--local_rank` is still accepted")
    save_steps: int = flag(0, "write a resumable checkpoint every N optimizer steps (0: only at the end)",
                           group=ENGINE)
    resume: bool = flag(
        False, "continue from <output_dir>/checkpoint (exactly: weights, optimizer, schedule, RNG, data order)",
        group=ENGINE, doc="continue exactly from `<output_dir>/checkpoint` (no checkpoint: start fresh); refused "
                          "when a run-defining flag differs from the checkpoint's")
    pad_to_max_length: bool = flag(
        False, "pad every batch to max_seq_length (default: pad to the longest sequence in the batch)", group=ENGINE,
        run=True)
    group_by_length: bool = flag(
        True, "do not group examples of similar length into the same training batch", group=ENGINE, run=True,
        name="--no_group_by_length", negate=True)
    logging_steps: int = flag(50, "log loss/lr to TensorBoard every N steps", group=ENGINE)
    overwrite_output_dir: bool = flag(False, "allow a non-empty --output_dir", group=ENGINE,
                                      doc="reuse a non-empty output dir: the previous run's outputs are removed "
                                          "first")
    cache_dir: Optional[str] = flag(  # feature cache; None = no cache
        None, "feature cache folder (default: $BERT_PALS_CACHE, else $XDG_CACHE_HOME/bert-pals/features, else "
        "~/.cache/bert-pals/features: yours, shared by your runs); 'none' disables", group=ENGINE, type=str,
        doc_default="your cache folder")
    num_workers: Optional[int] = flag(  # 1: collate the next step in a background thread; None: on CUDA
        None, "1: a background thread collates the next step's batches while the current step runs (pinned "
        "memory on CUDA); 0: collate in the main thread, between steps; default: 1 on CUDA, 0 on CPU (where the "
        "thread only competes with the step: docs/benchmarks.md#demo-run)", group=ENGINE, type=int,
        doc_default="1 on CUDA, 0 on CPU")
    threads: int = flag(  # torch intra-op threads; 0 = auto (configure_threads)
        0, "torch intra-op CPU threads; 0 = the cores this process may use (CPU affinity, cgroup quota), divided "
        "among the node's processes under torchrun (docs/engine.md#threads)", group=ENGINE)
    dist_timeout: float = flag(  # minutes a collective may wait (init_process_group timeout)
        30.0, "torchrun: minutes a rank waits in a collective (e.g. for rank 0's feature cache or checkpoint) "
        "before the run fails instead of hanging", group=ENGINE)
    compile: bool = flag(  # torch.compile the training forward; lengths rounded up to 8 (fingerprint: pad_multiple)
        False, "torch.compile the model for training; padded lengths are rounded up to a multiple of 8 to bound "
        "recompilation (docs/engine.md#torchcompile)", group=ENGINE)
    allow_random_init: bool = flag(
        False, "accept a checkpoint that lacks encoder weights and train those from scratch (default: such a "
        "checkpoint is refused)", group=ENGINE, run=True)
    max_steps: int = flag(  # > 0: the number of optimizer steps, whatever the epochs
        0, "train this many optimizer steps (> 0: replaces --num_train_epochs)", group=ENGINE, run=True)
    freeze: bool = flag(  # the fingerprint has it only when set (old checkpoints resume)
        False, "train only the task modules (adapters) and heads; the shared encoder (embeddings, layers, "
        "LayerNorms, pooler) stays as loaded. With a config without task modules only the heads train",
        group=ENGINE, doc="train only the task modules (adapters, PALs, LoRA, ...) and heads; the shared encoder "
        "(embeddings, every layer, LayerNorms, pooler) stays bit-identical to the loaded one; without task modules "
        "(no `--config`) only the heads train, a linear probe ([model.md](model.md#adapters))")
    eval_steps: int = flag(  # single-task runners: dev evaluation + best model every N steps
        0, "single-task runners: evaluate the dev set every N steps, keep the best model in <output_dir>/best/ "
        "and use it for --do_eval/--do_predict (0: no evaluation while training)", group=ENGINE)
    discard_checkpoint: bool = flag(
        False, "remove <output_dir>/checkpoint (about 3x the model's size) after a successful run; the run can "
        "then not be resumed or extended", group=ENGINE)
    # The 2019 training protocol, part by part (--reference_protocol sets them all: REFERENCE_PARTS)
    reference_protocol: bool = flag(
        False, "train as the 2019 scripts did: BertAdam with each parameter's own warmup_linear (1 - x) schedule, "
        "unsampled tasks' modules moved by stale optimizer state, dropout off after the first evaluation, each "
        "task's batches replayed in a fixed cycle, no length grouping, accumulation across pass ends "
        "(run_multi_task adds the 2019 model selection and LayerNorm init); an explicit --optimizer/--schedule "
        "wins", group=PROTOCOL_2019,
        doc="the 2019 training: `--optimizer bertadam --schedule warmup_linear_legacy --per_parameter_schedule "
            "--zero_grad_in_place --dropout_off_after_eval --replay_batch_cycle --reference_accumulation "
            "--no_group_by_length`, each also a flag of its own ([reproducing.md](reproducing.md#the-2019-protocol)); "
            "an `--optimizer` or `--schedule` given explicitly wins over its value here, and the log says so (with "
            "another optimizer than BertAdam, `--per_parameter_schedule` is not set)")
    per_parameter_schedule: bool = flag(  # BertAdam's internal schedule at each parameter's own step count
        False, "2019: BertAdam applies the schedule itself, at each parameter's own step count",
        group=PROTOCOL_2019, run=True)
    zero_grad_in_place: bool = flag(  # zeroed, not freed, gradients: stale optimizer updates
        False, "2019 (PyTorch 0.4): gradients are zeroed, not freed, so modules without a gradient this step "
        "still move through their stale optimizer state", group=PROTOCOL_2019, run=True)
    dropout_off_after_eval: bool = flag(  # eval mode sticks after the first evaluation
        False, "2019: the model stays in eval mode after the first evaluation (no dropout from epoch 2)",
        group=PROTOCOL_2019, run=True)
    replay_batch_cycle: bool = flag(  # every epoch reuses the first epoch's batch order
        False, "2019: every epoch replays the first epoch's batches in the same order", group=PROTOCOL_2019,
        run=True)
    reference_accumulation: bool = flag(  # N micro-batches per step across pass ends, each loss / N
        False, "2019: with --gradient_accumulation_steps N every step draws N full micro-batches (a step may cross "
        "the end of a data pass) and divides each loss by N", group=PROTOCOL_2019,
        doc="the 2019 part g: with `--gradient_accumulation_steps N` every step is N full micro-batches, drawn "
            "across the end of a data pass, each loss divided by N (default: a pass ends with a short step and "
            "micro-batches count by their examples); a step of several tasks (`--tasks_per_step`, which 2019 did "
            "not have) sums the tasks' losses so weighted; with pregenerated LM epochs only the very last step may "
            "be short")
    # the rate of task modules and heads from the config's method (task_adapters.method_task_lr) when neither
    # --learning_rate nor --task_lr is given; None: they train at --learning_rate (or run_multi_task's --task_lr)
    method_lr: Optional[float] = None
    run_flags: tuple = ()                   # a runner's own run-defining flags, as (name, value) pairs
    notes: tuple = ()                       # lines for the log: explicit flags that won over --reference_protocol

    def __post_init__(self):
        self.check()

    def check(self):
        """Values and combinations that cannot work: ConfigError (one line, exit 2)."""
        self._check_sizes_and_rates()
        self._check_steps_and_processes()

    def _check_sizes_and_rates(self):
        if self.gradient_accumulation_steps < 1:
            raise ConfigError(f"--gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.train_batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("--train_batch_size and --eval_batch_size must be >= 1")
        if self.train_batch_size % self.gradient_accumulation_steps:
            raise ConfigError(f"--train_batch_size {self.train_batch_size} is not divisible by "
                              f"--gradient_accumulation_steps {self.gradient_accumulation_steps}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"unknown precision {self.precision!r}")
        if self.loss_scale < 0:
            raise ConfigError(f"--loss_scale must be >= 0 (0 = dynamic), got {self.loss_scale}")
        if self.max_seq_length < 2:
            raise ConfigError(f"--max_seq_length must be >= 2, got {self.max_seq_length}")
        if not (self.num_train_epochs > 0 and math.isfinite(self.num_train_epochs)):
            raise ConfigError(f"--num_train_epochs must be > 0, got {self.num_train_epochs}")
        if not 0.0 <= self.warmup_proportion < 1.0:
            raise ConfigError(f"--warmup_proportion must be in [0, 1), got {self.warmup_proportion}")
        if not (self.learning_rate >= 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"--learning_rate must be >= 0, got {self.learning_rate}")
        if self.weight_decay < 0 or not math.isfinite(self.max_grad_norm):
            raise ConfigError("--weight_decay must be >= 0 and --max_grad_norm a number")
        if not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"--seed must be in [0, 2^32), got {self.seed}")

    def _check_steps_and_processes(self):
        if self.max_steps < 0 or self.eval_steps < 0:
            raise ConfigError("--max_steps and --eval_steps must be >= 0")
        if self.save_steps < 0 or self.logging_steps < 1:
            raise ConfigError("--save_steps must be >= 0, --logging_steps >= 1")
        if self.num_workers not in (None, 0, 1):
            raise ConfigError(f"--num_workers must be 0 (collate in the main thread) or 1 (a background thread "
                              f"one step ahead), got {self.num_workers}: collating a step costs far less than "
                              "running it, so more workers would wait")
        if self.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0 = auto), got {self.threads}")
        if not (self.dist_timeout > 0 and math.isfinite(self.dist_timeout)):
            raise ConfigError(f"--dist_timeout must be a positive number of minutes, got {self.dist_timeout}")
        if self.per_parameter_schedule and self.optimizer != "bertadam":
            raise ConfigError("--per_parameter_schedule is BertAdam's own schedule: use it with --optimizer bertadam")

    @classmethod
    def from_args(cls, args):
        """Options from the flags of add_engine_args: resolves the model folder, the adapter
        config name, the casing (from the folder unless given) and the feature-cache folder."""
        given = flags.values(args, cls)  # first: --fp16 with --bf16 is refused before anything else
        notes = _apply_reference_protocol(args)
        given = flags.values(args, cls)  # again: --reference_protocol set some flags' values
        reference = given["reference_protocol"]
        model_dir = resolve_model_dir(given["model_dir"])
        if given["do_lower_case"] is None:
            given["do_lower_case"] = tokenization.guess_do_lower_case(model_dir)
            logger.info("do_lower_case=%s (from the model folder)", given["do_lower_case"])
        cache_dir = given["cache_dir"]
        if cache_dir is not None:
            cache_dir = None if cache_dir.lower() == "none" else cache_dir
        else:
            cache_dir = default_cache_dir()
        given.update(
            model_dir=model_dir, config=modeling.resolve_adapter_config(given["config"], model_dir),
            cache_dir=cache_dir,
            per_parameter_schedule=(reference and given["optimizer"] == "bertadam") or given["per_parameter_schedule"],
            notes=tuple(notes))
        for part in REFERENCE_PARTS[1:]:
            given[part] = reference or given[part]
        if not {"learning_rate", "task_lr"} & set(getattr(args, "explicit", ()) or ()):
            given["method_lr"] = _method_lr(model_dir, given["config"])
        return cls(**given)

    @property
    def pad_to(self):
        """Length every batch is padded to (None: the longest sequence of the batch)."""
        return self.max_seq_length if self.pad_to_max_length else None

    @property
    def pad_multiple(self):
        """Training batches' padded length is rounded up to this (8 with --compile: at most S/8 shapes)."""
        return 8 if self.compile else 1

    def with_run_flags(self, **flags):
        """These options plus a runner's own run-defining flags (part of the checkpoint fingerprint)."""
        return dataclasses.replace(self, run_flags=tuple(sorted(flags.items())))

    def fingerprint(self):
        """{name: value} of everything that defines the run (checked on --resume)."""
        values = {name: getattr(self, name) for name in self.FINGERPRINT}
        values["model_dir"] = os.path.abspath(self.model_dir)
        if self.pad_multiple != 1:  # other padded lengths: other rounding; only then a key (old checkpoints resume)
            values["pad_multiple"] = self.pad_multiple
        if self.reference_accumulation and self.gradient_accumulation_steps > 1:  # likewise: a key only when it acts
            values["reference_accumulation"] = True
        if self.method_lr is not None:  # likewise
            values["method_lr"] = self.method_lr
        if self.freeze:  # likewise (run_multi_task.py's own fingerprint always had it)
            values["freeze"] = True
        values.update(dict(self.run_flags))
        return json.loads(json.dumps(values, default=str))


# The values that define a run: a checkpoint made with others is not resumed (paths, logging, evaluation
# batch size and the like may change between the interrupted run and its resume). The keys and values are
# those of checkpoints written before the declaration (tests/test_flags.py), so old checkpoints resume.
EngineOptions.FINGERPRINT = flags.run_defining(EngineOptions)


def add_engine_args(parser, helps=None, output_dir_required=True, **defaults):
    """Add the flags every runner shares (EngineOptions' declaration). `defaults` overrides per runner, e.g.
    `add_engine_args(parser, max_seq_length=384, learning_rate=3e-5)`; `helps` replaces a flag's help
    text ({dest: text}); `output_dir_required=False` for runners that choose a default folder."""
    flags.add_flags(parser, EngineOptions, helps=helps, required={"output_dir": output_dir_required})
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def _apply_reference_protocol(args):
    """--reference_protocol: the flags of REFERENCE_VALUES not given explicitly take the 2019 values;
    returns the log lines of explicit ones that win."""
    notes = []
    if getattr(args, "reference_protocol", False):  # the 2019 scripts: BertAdam with its own (1 - x) schedule
        for dest, value in REFERENCE_VALUES.items():
            if not file_utils.explicit(args, dest):
                setattr(args, dest, value)
            elif getattr(args, dest) != value:
                notes.append(f"--reference_protocol: the explicit --{dest} {getattr(args, dest)} wins over the "
                             f"2019 protocol's {value}")
    return notes


def _method_lr(model_dir, config):
    """The config's method default rate for task modules and heads (logged), or None. A model folder
    that cannot be read gives None here: loading it fails later with its own message."""
    try:
        merged = modeling.read_pretrained(model_dir, config)[1]
    except ConfigError:
        return None
    rate, note = task_adapters.method_task_lr(merged)
    if rate is not None:
        logger.info("task modules and heads train at %g (%s; docs/model.md#adapters), the encoder at "
                    "--learning_rate; an explicit --learning_rate or --task_lr replaces it", rate, note)
    elif note:
        logger.info(note)
    return rate


def default_cache_dir():
    """The feature cache: $BERT_PALS_CACHE, else the user's cache folder. Never a folder others can
    write to by default: features are plain data, but a planted file must not change a run either."""
    if os.environ.get("BERT_PALS_CACHE"):
        return os.environ["BERT_PALS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bert-pals", "features")
