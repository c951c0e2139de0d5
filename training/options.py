"""Engine flags -> EngineOptions: the options every runner shares, resolved once per run."""
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

import file_utils
import modeling
import optimization
import tokenization
from file_utils import ConfigError, resolve_model_dir

logger = logging.getLogger(__name__)

def add_engine_args(parser, helps=None, output_dir_required=True, **defaults):
    """Add the flags every runner shares. `defaults` overrides per runner, e.g.
    `add_engine_args(parser, max_seq_length=384, learning_rate=3e-5)`; `helps` replaces a flag's help
    text ({dest: text}); `output_dir_required=False` for runners that choose a default folder."""
    helps = helps or {}
    g = parser.add_argument_group("engine")
    g.add_argument("--bert_model", default="minilm-l6",
                   help="model folder (config.json + model.safetensors/pytorch_model.bin + vocab.txt) "
                        "or a bundled name (minilm-l6)")
    g.add_argument("--output_dir", required=output_dir_required,
                   help=helps.get("output_dir", "where the model, results, checkpoints and logs go"))
    g.add_argument("--config", default=None,
                   help=helps.get("config", "adapter config: a JSON file or a bundled name ("
                                  + ", ".join(modeling.ADAPTER_CONFIGS) + ": the configs/ file for the model's width); "
                                  "its BERT keys must match the model's. Default: none (plain BERT)"))
    g.add_argument("--do_lower_case", dest="do_lower_case", action="store_true", default=None,
                   help="lower-case input (uncased models). Default: taken from the model folder's "
                        "tokenizer_config.json or name, else guessed from the vocab")
    g.add_argument("--no_lower_case", dest="do_lower_case", action="store_false",
                   help="keep case (cased models)")
    g.add_argument("--max_seq_length", type=int, default=128,
                   help=helps.get("max_seq_length", "max tokens per sequence after word pieces"))
    g.add_argument("--train_batch_size", type=int, default=32,
                   help="EFFECTIVE global batch of one optimizer step (split by accumulation and ranks)")
    g.add_argument("--eval_batch_size", type=int, default=8, help="batch size for evaluation/prediction")
    g.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    g.add_argument("--num_train_epochs", type=float, default=3.0,
                   help="passes over the training data (may be fractional)")
    g.add_argument("--warmup_proportion", type=float, default=0.1, help="fraction of steps of linear warmup")
    g.add_argument("--weight_decay", type=float, default=0.01, help="decoupled weight decay (not on bias/LayerNorm)")
    g.add_argument("--max_grad_norm", type=float, default=1.0,
                   help="gradient clipping: per tensor inside BertAdam, global norm for AdamW; <=0 disables")
    g.add_argument("--optimizer", choices=optimization.OPTIMIZERS, default="adamw",
                   help="adamw: bias-corrected AdamW with global-norm clipping (better results, docs/engine.md); "
                        "bertadam: the 2019 update (no bias correction, per-tensor clipping)")
    g.add_argument("--schedule", default="warmup_linear", choices=tuple(optimization.SCHEDULES),
                   help="learning-rate schedule over the real number of optimizer steps")
    g.add_argument("--seed", type=int, default=42, help="seeds python, numpy, torch (+cuda) and the batch order")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="micro-batches per optimizer step (train_batch_size must be divisible by it)")
    g.add_argument("--fp16", action="store_true", help="mixed precision fp16 (torch.amp + GradScaler; CUDA only)")
    g.add_argument("--bf16", action="store_true",
                   help="mixed precision bfloat16 (torch.amp autocast): GPUs with native bf16 (Ampere and later); "
                        "on CPUs without AVX512-BF16/AMX far slower than fp32 (docs/benchmarks.md#cpu-bf16)")
    g.add_argument("--loss_scale", type=float, default=0,
                   help="fp16 only: 0 = dynamic loss scaling, >0 = this static scale")
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1,
                   help="set by torch.distributed.launch; with torchrun the LOCAL_RANK env var is used")
    g.add_argument("--no_cuda", action="store_true", help="do not use CUDA even when it is available")
    g.add_argument("--save_steps", type=int, default=0,
                   help="write a resumable checkpoint every N optimizer steps (0: only at the end)")
    g.add_argument("--resume", action="store_true",
                   help="continue from <output_dir>/checkpoint (exactly: weights, optimizer, schedule, RNG, "
                        "data order)")
    g.add_argument("--pad_to_max_length", action="store_true",
                   help="pad every batch to max_seq_length (default: pad to the longest sequence in the batch)")
    g.add_argument("--no_group_by_length", action="store_true",
                   help="do not group examples of similar length into the same training batch")
    g.add_argument("--logging_steps", type=int, default=50, help="log loss/lr to TensorBoard every N steps")
    g.add_argument("--overwrite_output_dir", action="store_true", help="allow a non-empty --output_dir")
    g.add_argument("--cache_dir", default=None,
                   help="feature cache folder (default: $BERT_PALS_CACHE, else $XDG_CACHE_HOME/bert-pals/features, "
                        "else ~/.cache/bert-pals/features: yours, shared by your runs); 'none' disables")
    g.add_argument("--max_steps", type=int, default=0,
                   help="train this many optimizer steps (> 0: replaces --num_train_epochs)")
    g.add_argument("--eval_steps", type=int, default=0,
                   help="single-task runners: evaluate the dev set every N steps, keep the best model in "
                        "<output_dir>/best/ and use it for --do_eval/--do_predict (0: no evaluation while training)")
    g.add_argument("--discard_checkpoint", action="store_true",
                   help="remove <output_dir>/checkpoint (about 3x the model's size) after a successful run; "
                        "the run can then not be resumed or extended")
    g.add_argument("--num_workers", type=int, default=None,
                   help="1: a background thread collates the next step's batches while the current step runs "
                        "(pinned memory on CUDA); 0: collate in the main thread, between steps; default: 1 on "
                        "CUDA, 0 on CPU (where the thread only competes with the step: docs/benchmarks.md#demo-run)")
    g.add_argument("--threads", type=int, default=0,
                   help="torch intra-op CPU threads; 0 = the cores this process may use (CPU affinity, cgroup "
                        "quota), divided among the node's processes under torchrun (docs/engine.md#threads)")
    g.add_argument("--dist_timeout", type=float, default=30.0,
                   help="torchrun: minutes a rank waits in a collective (e.g. for rank 0's feature cache or "
                        "checkpoint) before the run fails instead of hanging")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model for training; padded lengths are rounded up to a multiple of 8 "
                        "to bound recompilation (docs/engine.md#torchcompile)")
    g.add_argument("--allow_random_init", action="store_true",
                   help="accept a checkpoint that lacks encoder weights and train those from scratch "
                        "(default: such a checkpoint is refused)")
    g = parser.add_argument_group("2019 protocol (docs/reproducing.md)")
    g.add_argument("--reference_protocol", action="store_true",
                   help="train as the 2019 scripts did: BertAdam with each parameter's own warmup_linear "
                        "(1 - x) schedule, unsampled tasks' modules moved by stale optimizer state, dropout off "
                        "after the first evaluation, each task's batches replayed in a fixed cycle, no length "
                        "grouping, accumulation across pass ends (run_multi_task adds the 2019 model selection and "
                        "LayerNorm init); an explicit --optimizer/--schedule wins")
    g.add_argument("--per_parameter_schedule", action="store_true",
                   help="2019: BertAdam applies the schedule itself, at each parameter's own step count")
    g.add_argument("--zero_grad_in_place", action="store_true",
                   help="2019 (PyTorch 0.4): gradients are zeroed, not freed, so modules without a gradient this "
                        "step still move through their stale optimizer state")
    g.add_argument("--dropout_off_after_eval", action="store_true",
                   help="2019: the model stays in eval mode after the first evaluation (no dropout from epoch 2)")
    g.add_argument("--replay_batch_cycle", action="store_true",
                   help="2019: every epoch replays the first epoch's batches in the same order")
    g.add_argument("--reference_accumulation", action="store_true",
                   help="2019: with --gradient_accumulation_steps N every step draws N full micro-batches (a step "
                        "may cross the end of a data pass) and divides each loss by N")
    if defaults:
        parser.set_defaults(**defaults)
    return parser


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


@dataclass(frozen=True)
class EngineOptions:
    """What the engine needs from the command line, typed and resolved once per run.

    `from_args` is the only place that knows the engine's flag names; everything below takes
    this object, so runners (and tests) can build it without argparse."""
    output_dir: str
    model_dir: str                          # the --bert_model folder, resolved
    config: Optional[str] = None            # adapter config file (short names resolved); None = plain BERT
    do_lower_case: bool = True
    max_seq_length: int = 128
    train_batch_size: int = 32              # effective global batch of one optimizer step
    eval_batch_size: int = 8
    learning_rate: float = 5e-5
    num_train_epochs: float = 3.0
    warmup_proportion: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    schedule: str = "warmup_linear"
    seed: int = 42
    gradient_accumulation_steps: int = 1
    precision: str = "fp32"                 # fp32, fp16 or bf16
    loss_scale: float = 0.0                 # fp16: 0 = dynamic
    use_cuda: bool = True                   # when a GPU is visible
    local_rank: int = -1
    save_steps: int = 0
    resume: bool = False
    pad_to_max_length: bool = False
    group_by_length: bool = True
    logging_steps: int = 50
    overwrite_output_dir: bool = False
    cache_dir: Optional[str] = None         # feature cache; None = no cache
    num_workers: Optional[int] = None       # 1: collate the next step in a background thread; None: on CUDA
    threads: int = 0                        # torch intra-op threads; 0 = auto (configure_threads)
    dist_timeout: float = 30.0              # minutes a collective may wait (init_process_group timeout)
    compile: bool = False                   # torch.compile the training forward; lengths rounded up to 8
    allow_random_init: bool = False
    max_steps: int = 0                      # > 0: the number of optimizer steps, whatever the epochs
    eval_steps: int = 0                     # single-task runners: dev evaluation + best model every N steps
    discard_checkpoint: bool = False        # remove checkpoint/ after a successful run
    # The 2019 training protocol, part by part (--reference_protocol sets them all: REFERENCE_PARTS)
    per_parameter_schedule: bool = False    # BertAdam's internal schedule at each parameter's own step count
    zero_grad_in_place: bool = False        # zeroed, not freed, gradients: stale optimizer updates
    dropout_off_after_eval: bool = False    # eval mode sticks after the first evaluation
    replay_batch_cycle: bool = False        # every epoch reuses the first epoch's batch order
    reference_accumulation: bool = False    # N micro-batches per step across pass ends, each loss / N
    run_flags: tuple = ()                   # a runner's own run-defining flags, as (name, value) pairs
    notes: tuple = ()                       # lines for the log: explicit flags that won over --reference_protocol

    # The values that define a run: a checkpoint made with others is not resumed (paths, logging,
    # evaluation batch size and the like may change between the interrupted run and its resume).
    FINGERPRINT = ("model_dir", "config", "do_lower_case", "max_seq_length", "train_batch_size", "learning_rate",
                   "num_train_epochs", "warmup_proportion", "weight_decay", "max_grad_norm", "optimizer", "schedule",
                   "seed", "gradient_accumulation_steps", "precision", "loss_scale", "pad_to_max_length",
                   "group_by_length", "allow_random_init", "max_steps", "per_parameter_schedule", "zero_grad_in_place",
                   "dropout_off_after_eval", "replay_batch_cycle")

    def __post_init__(self):
        self.check()

    def check(self):  # noqa: C901
        """Values and combinations that cannot work: ConfigError (one line, exit 2)."""
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
        if args.fp16 and args.bf16:
            raise ConfigError("--fp16 and --bf16 are exclusive; pick one")
        reference = getattr(args, "reference_protocol", False)
        notes = []
        if reference:  # the 2019 scripts: BertAdam with its own (1 - x) schedule, random batches
            for dest, value in REFERENCE_VALUES.items():
                if not file_utils.explicit(args, dest):
                    setattr(args, dest, value)
                elif getattr(args, dest) != value:
                    notes.append(f"--reference_protocol: the explicit --{dest} {getattr(args, dest)} wins over the "
                                 f"2019 protocol's {value}")
        model_dir = resolve_model_dir(args.bert_model)
        do_lower_case = args.do_lower_case
        if do_lower_case is None:
            do_lower_case = tokenization.guess_do_lower_case(model_dir)
            logger.info("do_lower_case=%s (from the model folder)", do_lower_case)
        if args.cache_dir is not None:
            cache_dir = None if args.cache_dir.lower() == "none" else args.cache_dir
        else:
            cache_dir = default_cache_dir()
        return cls(
            output_dir=args.output_dir, model_dir=model_dir,
            config=modeling.resolve_adapter_config(args.config, model_dir), do_lower_case=do_lower_case,
            max_seq_length=args.max_seq_length, train_batch_size=args.train_batch_size,
            eval_batch_size=args.eval_batch_size, learning_rate=args.learning_rate,
            num_train_epochs=args.num_train_epochs, warmup_proportion=args.warmup_proportion,
            weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, optimizer=args.optimizer,
            schedule=args.schedule, seed=args.seed, gradient_accumulation_steps=args.gradient_accumulation_steps,
            precision="fp16" if args.fp16 else "bf16" if args.bf16 else "fp32", loss_scale=args.loss_scale,
            use_cuda=not args.no_cuda, local_rank=args.local_rank, save_steps=args.save_steps,
            resume=args.resume, pad_to_max_length=args.pad_to_max_length,
            group_by_length=not args.no_group_by_length, logging_steps=args.logging_steps,
            overwrite_output_dir=args.overwrite_output_dir, cache_dir=cache_dir, num_workers=args.num_workers,
            threads=args.threads, dist_timeout=args.dist_timeout, compile=args.compile,
            allow_random_init=args.allow_random_init, max_steps=args.max_steps, eval_steps=args.eval_steps,
            discard_checkpoint=args.discard_checkpoint,
            per_parameter_schedule=(reference and args.optimizer == "bertadam") or args.per_parameter_schedule,
            zero_grad_in_place=reference or args.zero_grad_in_place,
            dropout_off_after_eval=reference or args.dropout_off_after_eval,
            replay_batch_cycle=reference or args.replay_batch_cycle,
            reference_accumulation=reference or getattr(args, "reference_accumulation", False),
            notes=tuple(notes))

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
        values.update(dict(self.run_flags))
        return json.loads(json.dumps(values, default=str))


def default_cache_dir():
    """The feature cache: $BERT_PALS_CACHE, else the user's cache folder. Never a folder others can
    write to by default: features are plain data, but a planted file must not change a run either."""
    if os.environ.get("BERT_PALS_CACHE"):
        return os.environ["BERT_PALS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bert-pals", "features")
