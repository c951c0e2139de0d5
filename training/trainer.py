"""The single training engine shared by every runner (run_*.py, lm_finetuning/*.py).

A runner parses its flags (most of them from `add_engine_args`), builds features with its task
module, and hands them to this file, which owns everything between the features and the
tensors:

- environment: device choice, torchrun / `--local_rank` distributed init (NCCL on GPU, gloo on
  CPU), seeding (`setup_env`);
- data: feature cache on disk (`cached_features`), dynamic padding (`collate`), length-grouped,
  deterministic, rank-sharded batches (`make_batches`) and the step stream over one task's
  training set (`EpochStream`);
- the loop (`Trainer`): optimizer + LR schedule, gradient accumulation, mixed precision with
  torch.amp (fp16 + GradScaler, or bf16), DDP, optional gradient surgery across tasks
  (`grad_combiner`), non-finite loss detection, tqdm, TensorBoard, atomic checkpoints and exact
  resume, distributed prediction (`Trainer.predict`).

Batch-size convention: `--train_batch_size` is the EFFECTIVE GLOBAL batch of one optimizer
step. It is split into `--gradient_accumulation_steps` micro-batches, and every micro-batch is
split across the distributed ranks (each rank gets a strided slice). The loss of every
micro-batch is weighted by its share of the step's examples, so one optimizer step always sees
the mean over the global batch: single-process, accumulated and multi-process runs compute the
same update (exactly for per-example losses; token-level losses are weighted per example).

The engine knows nothing about any one task: a batch is a dict of tensors passed to
`model(**batch, task_id=...)`, and the model returns a dict with `loss` (training) and any
outputs (prediction).
"""
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file as safetensors_load_file
from safetensors.torch import save as safetensors_save
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import file_utils
import modeling
import optimization
import tokenization
from file_utils import ConfigError, DataError, UserError, atomic_open, atomic_write_json, resolve_model_dir

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"          # <output_dir>/checkpoint: the last complete checkpoint
CHECKPOINT_MODEL = "model.safetensors"  # the model's state dict
CHECKPOINT_STATE = "trainer_state"     # .json + .safetensors: optimizer, schedule, scaler, RNG, stream, runner state
CHECKPOINT_META = "checkpoint.json"    # step, epoch and the run's fingerprint; written last
CHECKPOINT_FORMAT = 2
TENSORBOARD_DIR = "runs"
# Sequence keys padded with 0; every other per-token key (labels) is padded with -100 (ignored).
ZERO_PAD_KEYS = ("input_ids", "token_type_ids", "attention_mask", "input_mask", "segment_ids")
IGNORE_INDEX = -100
# fp16: this many optimizer steps skipped in a row by the GradScaler means the loss is broken.
MAX_CONSECUTIVE_SKIPPED_STEPS = 25


class NonFiniteLossError(UserError):
    """Training produced a NaN/inf loss (reported in one line by file_utils.run_cli)."""


# ----------------------------------------------------------------------------------------------
# Flags -> EngineOptions
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------

@dataclass
class Env:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = -1
    is_main: bool = True
    distributed: bool = False
    amp_dtype: torch.dtype = None   # torch.float16, torch.bfloat16 or None (fp32)

    def barrier(self):
        if self.distributed:
            dist.barrier()


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup_env(opts):
    """Device, distributed init (torchrun env:// or --local_rank), CPU threads, logging, seeds -> Env.

    Every flag and launcher mistake is a ConfigError before the process group is set up: a
    WORLD_SIZE > 1 without LOCAL_RANK, more processes on a node than visible GPUs, --fp16 without
    CUDA, --bf16 on a GPU that only emulates bfloat16."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", opts.local_rank))
    distributed = world_size > 1 or local_rank != -1
    use_cuda = torch.cuda.is_available() and opts.use_cuda
    if distributed:
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError("--local_rank was given but the distributed env vars (MASTER_ADDR, RANK, "
                              "WORLD_SIZE) are not set: start the runner with torchrun")
        if local_rank < 0:
            raise ConfigError(f"WORLD_SIZE={world_size} but LOCAL_RANK is not set: start the runner with torchrun "
                              "(it sets both), or pass --local_rank")
        if use_cuda:
            visible = torch.cuda.device_count()
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
            if max(local_rank + 1, local_world) > visible:
                raise ConfigError(f"{max(local_rank + 1, local_world)} processes on this node but {visible} visible "
                                  f"GPU(s): start at most {visible} (torchrun --nproc_per_node={visible}), or add "
                                  "--no_cuda")
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    else:
        device = torch.device("cuda" if use_cuda else "cpu")
    amp_dtype = _amp_dtype(opts.precision, device)
    threads, why = configure_threads(opts.threads)
    if distributed:
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            # A bounded wait: a rank that waits for rank 0 (feature cache, checkpoint) or for a dead peer
            # fails after --dist_timeout minutes instead of hanging (NCCL's watchdog enforces it on GPU).
            dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                                    timeout=datetime.timedelta(minutes=opts.dist_timeout))
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    is_main = rank == 0
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO if is_main else logging.WARNING)
    if not is_main:
        logging.getLogger().setLevel(logging.WARNING)
    set_seed(opts.seed)
    env = Env(device=device, rank=rank, world_size=world_size, local_rank=local_rank,
              is_main=is_main, distributed=distributed, amp_dtype=amp_dtype)
    logger.info("device %s, world size %d, distributed %s, amp %s, torch threads %d (%s)", device, world_size,
                distributed, {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(amp_dtype, "off (fp32)"), threads, why)
    return env


def _amp_dtype(precision, device):
    """torch.float16, torch.bfloat16 or None for --fp16/--bf16/fp32 on `device` (ConfigError if unusable)."""
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("--fp16 needs a CUDA device (torch.amp fp16 + GradScaler); use --bf16 on CPU")
        return torch.float16
    if precision == "bf16":
        # Pre-Ampere GPUs (V100, T4) run bfloat16 only emulated, slower than fp32: refuse rather than crawl.
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            major, minor = torch.cuda.get_device_capability(device)
            raise ConfigError(f"--bf16: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
                              "has no native bfloat16 (it would be emulated, slower than fp32); use --fp16")
        if device.type == "cpu" and cpu_has_native_bf16() is False:
            # Allowed (the results are valid), but measured 12x slower than fp32 on such a CPU.
            logger.warning("--bf16 on a CPU without AVX512-BF16 or AMX: bfloat16 is emulated and much slower "
                           "than fp32 (docs/benchmarks.md#cpu-bf16)")
        return torch.bfloat16
    return None


def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU has bfloat16 instructions (avx512_bf16 or amx_bf16 in cpuinfo's flags); None
    where that cannot be read (not Linux, or no x86 flags line)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def _cgroup_cpu_quota(path="/sys/fs/cgroup/cpu.max"):
    """CPUs' worth of time a cgroup v2 quota allows (a container's --cpus), or None without a quota."""
    try:
        with open(path, encoding="utf-8") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def usable_cores():
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers
    often see all of the host's cores but may use only a few)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def auto_threads():
    """--threads 0: (threads, reason). One process: the usable cores, never more than torch already
    uses (which honours OMP_NUM_THREADS and an earlier torch.set_num_threads). Under torchrun: the
    usable cores divided among the node's processes (LOCAL_WORLD_SIZE); torchrun's own default of
    OMP_NUM_THREADS=1 per process would leave the rest idle, so only a larger OMP_NUM_THREADS caps it."""
    cores = usable_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    share = max(1, cores // local)
    if local > 1:
        try:
            asked = int(os.environ.get("OMP_NUM_THREADS") or 0)
        except ValueError:
            asked = 0
        return (min(share, asked) if asked > 1 else share), f"auto: {cores} usable cores / {local} local processes"
    return min(share, torch.get_num_threads()), f"auto: {cores} usable cores"


def configure_threads(threads=0):
    """Set torch's intra-op thread count (--threads; 0 = auto_threads()); returns (threads, reason)."""
    if threads > 0:
        count, why = threads, "--threads"
    else:
        count, why = auto_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count, why


def load_tokenizer(opts):
    """BertTokenizer of the model folder; refuses a vocab longer than the model's embedding matrix."""
    tokenizer = tokenization.BertTokenizer.from_pretrained(opts.model_dir, do_lower_case=opts.do_lower_case)
    config_path = next((os.path.join(opts.model_dir, n) for n in modeling.CONFIG_NAMES
                        if os.path.isfile(os.path.join(opts.model_dir, n))), None)
    if config_path is not None:
        vocab_size = modeling.BertConfig.from_json_file(config_path).vocab_size
        if len(tokenizer) > vocab_size:
            raise ConfigError(f"{tokenizer.vocab_file}: {len(tokenizer)} tokens but the model's vocab_size is "
                              f"{vocab_size} ({config_path}): ids past {vocab_size - 1} have no embedding; "
                              "use the vocab.txt that belongs to the model")
    return tokenizer


def load_model(opts, task_num_labels=None, task_types=None, task_names=None, match_tasks=None):
    """BertForMultiTask from the model folder + adapter config, with the given heads (`match_tasks`:
    loaded from the checkpoint's tasks of the same names, modeling.match_saved_tasks)."""
    model = modeling.BertForMultiTask.from_pretrained(
        opts.model_dir, config=opts.config, task_num_labels=task_num_labels, task_types=task_types,
        task_names=task_names, allow_random_init=opts.allow_random_init, match_tasks=match_tasks)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and opts.max_seq_length > max_pos:
        raise ConfigError(f"--max_seq_length {opts.max_seq_length} exceeds the model's "
                          f"max_position_embeddings {max_pos}")
    rounded = -(-opts.max_seq_length // opts.pad_multiple) * opts.pad_multiple
    if max_pos is not None and rounded > max_pos:
        raise ConfigError(f"--compile pads to multiples of {opts.pad_multiple}: --max_seq_length {opts.max_seq_length} "
                          f"would become {rounded}, past the model's max_position_embeddings {max_pos}")
    return model


EVAL_HISTORY = "eval_history.json"  # --eval_steps: [{step, score, metrics}] of the single-task runners
# Files and folders our runners write into --output_dir; --overwrite_output_dir removes only these.
OUTPUT_NAMES = ("checkpoint", "checkpoint.old", "best", "best.old", "per_task_best", "predictions", "runs", "plots",
                "diagnostics", "results.json", "eval_results.txt", "test_results.txt", "train_results.txt",
                "run_config.json", "config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json",
                "special_tokens_map.json", "labels.txt", "task_labels.json", "predictions.json",
                "nbest_predictions.json", "null_odds.json", "test_predictions.txt", "test_predictions.csv",
                "selection.json", EVAL_HISTORY, "CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv",
                "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv")


def check_output_dir(opts, training=True):
    """The checks of prepare_output_dir that need no writing: run them before reading the data, so
    that a run that cannot write its outputs (or would resume another run) stops at once."""
    out = opts.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--output_dir {out} is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(out))
    existing = out if os.path.isdir(out) else next(
        (p for p in _parents(parent) if os.path.isdir(p)), parent)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output_dir {out}: {existing} is not writable")
    if not training or not os.path.isdir(out) or not os.listdir(out):
        return
    if opts.resume:
        path = find_checkpoint(out)
        if path is not None:
            meta = read_checkpoint(path)["meta"]
            changed = _fingerprint_differences(meta.get("run", {}), opts.fingerprint())
            if changed:
                raise ConfigError(f"--resume: {path} was made with other settings ({'; '.join(changed)}); resume "
                                  "with the same flags, or start a new run in another --output_dir")
        return
    if not opts.overwrite_output_dir:
        raise ConfigError(f"output directory {out} exists and is not empty; pass --overwrite_output_dir "
                          "(or --resume to continue its checkpoint)")
    inside = os.path.abspath(out) + os.sep
    if (os.path.abspath(opts.model_dir) + os.sep).startswith(inside):
        raise ConfigError(f"--overwrite_output_dir would delete the model being loaded ({opts.model_dir} is inside "
                          f"{out}); write to another --output_dir")


def _parents(path):
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def prepare_output_dir(opts, env, training=True):
    """Create --output_dir once the inputs are validated (so a run that fails on its inputs leaves no
    folder). A training run refuses a non-empty folder unless --resume (then stale temporaries of a
    killed save are removed and interrupted folder swaps repaired) or --overwrite_output_dir (then
    the outputs of the previous run are removed first: a new run never sits beside, or resumes,
    an old one). An evaluation-only run (training=False) may write next to a model there."""
    out = opts.output_dir
    if env.is_main:
        check_output_dir(opts, training)
        existed = os.path.isdir(out)
        if training and not (existed and os.listdir(out)):
            file_utils.remove_if_run_fails(out, existed, lambda: any(
                os.path.exists(os.path.join(out, name)) for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old", "best")))
        if training and os.path.isdir(out) and os.listdir(out):
            if opts.resume:
                for name in ("checkpoint", "best"):
                    file_utils.recover_dir(os.path.join(out, name))
                for path in file_utils.remove_stale_temporaries(out):
                    logger.info("removed %s, left by an interrupted save", path)
            else:
                for name in OUTPUT_NAMES:
                    path = os.path.join(out, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    elif os.path.lexists(path):
                        os.remove(path)
                file_utils.remove_stale_temporaries(out)
                logger.info("--overwrite_output_dir: removed the previous run's outputs from %s", out)
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--output_dir {out}: {exc.strerror}") from None
    env.barrier()
    return out


def write_run_config(args, output_dir, env=None):
    """run_config.json: the full command line and every flag value (rank 0 only)."""
    if env is not None and not env.is_main:
        return
    if env is None and dist.is_initialized() and dist.get_rank() != 0:
        return
    flags = {k: (v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v))
             for k, v in sorted(vars(args).items())}
    atomic_write_json(os.path.join(output_dir, "run_config.json"), {
        "argv": list(sys.argv), "command": " ".join(sys.argv), "flags": flags,
        "torch": torch.__version__, "world_size": dist.get_world_size() if dist.is_initialized() else 1,
    })


# ----------------------------------------------------------------------------------------------
# Features: cache, collation, batches, streams
# ----------------------------------------------------------------------------------------------

def cached_features(cache_dir, key_parts, build_fn):
    """Return build_fn() from an on-disk cache keyed by a hash of key_parts (built once, written atomically).

    key_parts should name everything the features depend on (vocab fingerprint, max_seq_length,
    task, file_utils.file_fingerprint(input)). Features must be plain data: lists of dicts whose
    values are numbers, strings, None, or (nested) lists/dicts of them. They are stored as numpy
    arrays (`.npz`, read with allow_pickle=False) plus JSON, so reading a cache never runs code.
    Under torch.distributed each node's local rank 0 builds (or reads) and writes first; the other
    ranks of that node wait and read. A cache that cannot be read is rebuilt; one that cannot be
    written only costs a warning."""
    if not cache_dir:
        return build_fn()
    blob = json.dumps(key_parts, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(key_parts.get("task", "features")))
    path = os.path.join(cache_dir, f"{name}-{digest}.npz")
    distributed = dist.is_available() and dist.is_initialized()
    # One builder per node (its local rank 0): nodes need not share a filesystem for the cache.
    is_main = not distributed or int(os.environ.get("LOCAL_RANK", dist.get_rank())) == 0
    if distributed and not is_main:
        dist.barrier()  # wait for this node's builder to build/write
    try:
        features = None
        if os.path.isfile(path):
            try:
                features = _read_feature_cache(path, blob)
                logger.info("loaded %d cached features from %s", len(features), path)
            except Exception as exc:  # a truncated, foreign or stale file: rebuild
                logger.warning("ignoring unreadable feature cache %s (%s)", path, exc)
        if features is None:
            # Other ranks only get here if their builder failed (they then hit the same error and
            # exit) or could not write the cache.
            features = build_fn()
            if is_main:
                try:
                    _write_feature_cache(path, blob, features)
                    logger.info("cached %d features in %s", len(features), path)
                except (OSError, TypeError, ValueError) as exc:
                    logger.warning("could not write feature cache %s (%s)", path, exc)
    finally:
        if distributed and is_main:
            dist.barrier()  # also on a bad input file: the waiting ranks must not hang
    return features


_CACHE_FORMAT = 2


def _int_lists(values):
    """Whether every value is a list of ints (the common case worth a numpy column)."""
    return all(isinstance(v, list) and all(type(x) is int for x in v) for v in values)


def _write_feature_cache(path, key, features):
    """Columns: a key whose values are all int lists -> flat int64 array + offsets; all ints or all
    floats -> one array; anything else (strings, nested lists, dicts) -> JSON."""
    keys = list(features[0]) if features else []
    if any(list(f) != keys for f in features):
        raise ValueError("features have different keys")
    arrays, json_columns = {}, {}
    for k, name in enumerate(keys):
        values = [f[name] for f in features]
        if _int_lists(values):
            arrays[f"c{k}_data"] = np.fromiter((x for v in values for x in v), dtype=np.int64)
            arrays[f"c{k}_offsets"] = np.cumsum([0] + [len(v) for v in values], dtype=np.int64)
        elif all(type(v) is int for v in values):
            arrays[f"c{k}_ints"] = np.asarray(values, dtype=np.int64)
        elif all(type(v) is float for v in values):
            arrays[f"c{k}_floats"] = np.asarray(values, dtype=np.float64)
        else:
            json_columns[str(k)] = values
    meta = {"format": _CACHE_FORMAT, "key": key, "keys": keys, "count": len(features), "json": json_columns}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_feature_cache(path, key):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode("utf-8"))
        if meta.get("format") != _CACHE_FORMAT or meta.get("key") != key:
            raise ValueError("written for other inputs or by another version")
        count, columns = meta["count"], {}
        for k, name in enumerate(meta["keys"]):
            if f"c{k}_data" in z:
                data, offsets = z[f"c{k}_data"].tolist(), z[f"c{k}_offsets"].tolist()
                columns[name] = [data[offsets[i]:offsets[i + 1]] for i in range(count)]
            elif f"c{k}_ints" in z:
                columns[name] = z[f"c{k}_ints"].tolist()
            elif f"c{k}_floats" in z:
                columns[name] = z[f"c{k}_floats"].tolist()
            else:
                columns[name] = meta["json"][str(k)]
    return [{name: columns[name][i] for name in meta["keys"]} for i in range(count)]


def is_number(x):
    """A Python or numpy int/float, not a bool (a feature value, a metric)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _nested_len(value):
    """Token length of a feature's input_ids ([S] or [K][S] for multiple choice)."""
    if value and isinstance(value[0], (list, tuple)):
        return max(len(v) for v in value)
    return len(value)


def feature_length(feature):
    return _nested_len(feature["input_ids"])


def _depth(value):
    d = 0
    while isinstance(value, (list, tuple)):
        if not value:
            return d + 1
        value = value[0]
        d += 1
    return d if is_number(value) else -1


def _is_token_labelled(batch):
    """A token-classification batch: per-token `labels` shaped like `input_ids` (-100 = not scored)."""
    labels = batch.get("labels")
    return labels is not None and labels.dim() == 2 and labels.shape == batch["input_ids"].shape


def collate(features, pad_to=None):
    """List of feature dicts (plain lists, unpadded) -> dict of tensors.

    Sequences are padded to the longest in the batch (or to max(pad_to, longest)): input_ids,
    token_type_ids and attention_mask with 0, every other per-token key (token labels, MLM
    labels) with -100. `attention_mask` is built from the lengths when a feature has none.
    Multiple choice (`input_ids` a list of K lists) gives [B, K, S]. Scalar keys become [B]
    tensors (float if any value is float). Keys whose values are not numbers or lists of numbers
    (metadata such as token maps or example ids) are left out."""
    if not features:
        raise ValueError("collate() got an empty batch")
    first = features[0]
    keys = [k for k in first if _depth(first[k]) >= 0]
    seq_keys = [k for k in keys if _depth(first[k]) >= 1]
    if "input_ids" in first and "attention_mask" not in first:
        seq_keys.append("attention_mask")
    longest = max(feature_length(f) for f in features) if "input_ids" in first else \
        max(_nested_len(f[seq_keys[0]]) for f in features) if seq_keys else 0
    seq_len = max(longest, pad_to or 0)
    batch = {}
    for key in keys:
        if key in seq_keys:
            continue
        values = [f[key] for f in features]
        is_float = any(isinstance(v, (float, np.floating)) for v in values)
        batch[key] = torch.tensor(values, dtype=torch.float32 if is_float else torch.long)
    for key in seq_keys:
        pad = 0 if key in ZERO_PAD_KEYS else IGNORE_INDEX
        if key == "attention_mask" and key not in first:
            rows = [[[1] * len(s) for s in f["input_ids"]] if _depth(f["input_ids"]) == 2
                    else [1] * len(f["input_ids"]) for f in features]
        else:
            rows = [f[key] for f in features]
        depth = _depth(rows[0])
        flat = [x for r in rows for x in (r if depth == 1 else [y for s in r for y in s])]
        dtype = torch.float32 if any(isinstance(x, (float, np.floating)) for x in flat) else torch.long
        if depth == 2:
            k = max(len(r) for r in rows)
            out = torch.full((len(rows), k, seq_len), pad, dtype=dtype)
            for i, r in enumerate(rows):
                for j, s in enumerate(r):
                    if s:
                        out[i, j, :len(s)] = torch.tensor(s, dtype=dtype)
        else:
            out = torch.full((len(rows), seq_len), pad, dtype=dtype)
            for i, r in enumerate(rows):
                if r:
                    out[i, :len(r)] = torch.tensor(r, dtype=dtype)
        batch[key] = out
    return batch


def make_batches(lengths, batch_size, seed, epoch, shuffle=True, group_by_length=True, rank=0,
                 world_size=1, megabatch_size=50):
    """Deterministic batches of example indices for one epoch; returns THIS rank's slices.

    Global batches of `batch_size`: shuffled with a generator seeded by (seed, epoch); with
    `group_by_length`, the shuffled order is cut into megabatches of `megabatch_size` batches,
    each sorted by length (longest first) and cut into batches, then the batch order is shuffled
    again and the batch holding the longest example is put first (an out-of-memory shows at
    once). Each global batch is split across ranks by stride (rank r gets items r, r+W, ...), so
    every rank gets a slice of every global batch and the union is the single-process batch. A
    final global batch smaller than world_size is merged into the previous one (no empty slice)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n) if shuffle else np.arange(n)
    if group_by_length and n:
        mega = max(1, megabatch_size) * batch_size
        batches = []
        for start in range(0, n, mega):
            chunk = order[start:start + mega]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
        if shuffle:
            perm = rng.permutation(len(batches))
            batches = [batches[i] for i in perm]
            longest = int(np.argmax([lengths[b].max() for b in batches]))
            batches[0], batches[longest] = batches[longest], batches[0]
    else:
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if world_size > 1:
        # The one short batch (< world_size) is merged into a neighbour. With length grouping the
        # batch order was shuffled, so it need not be the last one.
        short = [i for i, b in enumerate(batches) if len(b) < world_size]
        if len(batches) > 1 and short:
            i = short[0]
            j = i - 1 if i > 0 else 1
            batches[min(i, j)] = np.concatenate([batches[min(i, j)], batches[max(i, j)]])
            batches.pop(max(i, j))
        if batches and len(batches[-1]) < world_size:
            raise ConfigError(f"only {n} examples for {world_size} processes: every process needs at least one")
        batches = [b[rank::world_size] for b in batches]
    return [b.tolist() for b in batches]


class FeatureList:
    """One data epoch held as a list of feature dicts (plain lists), in the data-epoch protocol of
    EpochStream: `lengths`, `batch(indices, pad_to)` (collated tensors) and `close()`."""

    def __init__(self, features):
        self.features = features
        self.lengths = np.array([feature_length(f) for f in features], dtype=np.int64)

    def __len__(self):
        return len(self.features)

    def batch(self, indices, pad_to=None):
        return collate([self.features[i] for i in indices], pad_to)

    def close(self):
        pass


class EpochStream:
    """The step stream: optimizer steps over ONE task's training data, data epoch after data epoch.

    The data are either `features` (one list, the same in every epoch; the stream is endless) or
    `load_epoch(e)` with `epoch_sizes` (a data source per training epoch, e.g. the pregenerated
    MLM epochs or freshly sampled pairs; only one is held at a time; the stream ends after the
    last epoch). A data source has `lengths`, `batch(indices, pad_to)` and `close()`
    (`FeatureList`; `tasks.pretraining.PregeneratedEpoch`); `load_epoch` may also return a plain
    list of features.

    `batch_size` is the effective global batch of one optimizer step; a step is `accumulation`
    micro-batches of batch_size/accumulation examples (the last step of an epoch may have fewer).
    Batches come from `make_batches` with (seed, epoch), so the position (epoch, step) is the
    whole state and resume is exact; step counts depend only on example counts, so they are
    known before any data epoch is loaded."""

    def __init__(self, features=None, batch_size=32, accumulation=1, seed=0, task_id=0, group_by_length=True,
                 pad_to=None, rank=0, world_size=1, shuffle=True, load_epoch=None, epoch_sizes=None,
                 replay_first_epoch=False, pad_multiple=1, cross_pass_ends=False):
        if batch_size % accumulation:
            raise ConfigError(f"train batch size {batch_size} is not divisible by gradient accumulation {accumulation}")
        if (features is None) == (load_epoch is None):
            raise ValueError("EpochStream needs either features or load_epoch (+ epoch_sizes)")
        if features is not None:
            if not features:
                raise ConfigError("no training features (empty training set?)")
            self._fixed = features if hasattr(features, "batch") else FeatureList(features)
            self.epoch_sizes = None
        else:
            if not epoch_sizes or min(epoch_sizes) < 1:
                raise ConfigError("no training examples")
            self._fixed = None
            self.epoch_sizes = [int(n) for n in epoch_sizes]
        self.load_epoch = load_epoch
        self.micro_batch_size = batch_size // accumulation
        self.accumulation = accumulation
        self.seed, self.task_id = seed, task_id
        self.group_by_length, self.pad_to, self.shuffle = group_by_length, pad_to, shuffle
        self.pad_multiple = max(1, int(pad_multiple))  # --compile: padded lengths rounded up to this
        self.rank, self.world_size = rank, world_size
        # 2019 (itertools.cycle over one DataLoader pass): every epoch replays epoch 0's batches.
        self.replay_first_epoch = replay_first_epoch
        # 2019 (--reference_accumulation): a step is always `accumulation` micro-batches, drawn across the
        # end of a data pass; the position is then counted in micro-batches (step_in_epoch).
        self.cross_pass_ends = bool(cross_pass_ends) and accumulation > 1
        sizes = self.epoch_sizes or [len(self._fixed.lengths)]
        # The batch count depends only on the example count, not on the lengths.
        micro = [len(make_batches(np.ones(n), self.micro_batch_size, seed, e, False, False, rank, world_size))
                 for e, n in enumerate(sizes)]
        if self.cross_pass_ends:  # steps ending in data epoch e, micro-batches counted across epochs
            ends = np.cumsum(micro)
            self.steps = [math.ceil(end / accumulation) - math.ceil((end - m) / accumulation)
                          for end, m in zip(ends.tolist(), micro)]
        else:
            self.steps = [math.ceil(m / accumulation) for m in micro]
        # With data epochs of different sizes the engine's epoch counter (logs only) is approximate;
        # `steps` holds the exact count of every epoch.
        self.steps_per_epoch = self.steps[0]
        self.epoch, self.step_in_epoch = 0, 0
        self._data, self._data_epoch, self._batches = None, None, None

    @property
    def features(self):
        return self._fixed.features if self._fixed is not None else None

    @property
    def lengths(self):
        return self._fixed.lengths if self._fixed is not None else None

    @property
    def total_steps(self):
        """Steps of all data epochs (None for an endless stream over one feature list)."""
        return None if self.epoch_sizes is None else sum(self.steps)

    def __len__(self):
        return self.steps_per_epoch

    def _steps_in(self, epoch):
        return self.steps[0] if self.epoch_sizes is None else self.steps[epoch]

    def _ensure_epoch(self, epoch):
        if self._data_epoch == epoch:
            return
        if self._fixed is not None:
            data = self._fixed
        else:
            self.close()
            data = self.load_epoch(epoch)
            if not hasattr(data, "batch"):
                data = FeatureList(data)
            if len(data.lengths) != self.epoch_sizes[epoch]:
                raise DataError(getattr(data, "path", f"epoch {epoch}"), None,
                                f"holds {len(data.lengths)} examples, expected {self.epoch_sizes[epoch]}")
        order_epoch = 0 if self.replay_first_epoch else epoch
        self._batches = make_batches(data.lengths, self.micro_batch_size, self.seed, order_epoch, self.shuffle,
                                     self.group_by_length, self.rank, self.world_size)
        self._data, self._data_epoch = data, epoch

    def next_step(self):
        """The micro-batches of the next optimizer step: [(task_id, batch), ...]."""
        if self.cross_pass_ends:
            return self._next_step_across_passes()
        if self.step_in_epoch >= self._steps_in(self.epoch):
            if self.epoch_sizes is not None and self.epoch + 1 >= len(self.steps):
                raise ConfigError(f"the stream has only {self.total_steps} steps")
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self._ensure_epoch(self.epoch)
        start = self.step_in_epoch * self.accumulation
        chunk = self._batches[start:start + self.accumulation]
        self.step_in_epoch += 1
        return [(self.task_id, self._data.batch(idx, self._padded_length(idx))) for idx in chunk]

    def _next_step_across_passes(self):
        """`accumulation` micro-batches, continuing into the next data pass where this one ends (the
        2019 loop's next() on a cycled DataLoader); only a finite stream's very last step may be short."""
        out = []
        for _ in range(self.accumulation):
            self._ensure_epoch(self.epoch)
            if self.step_in_epoch >= len(self._batches):
                if self.epoch_sizes is not None and self.epoch + 1 >= len(self.steps):
                    if out:
                        break
                    raise ConfigError(f"the stream has only {self.total_steps} steps")
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self._ensure_epoch(self.epoch)
            idx = self._batches[self.step_in_epoch]
            self.step_in_epoch += 1
            out.append((self.task_id, self._data.batch(idx, self._padded_length(idx))))
        return out

    def _padded_length(self, indices):
        """pad_to for one micro-batch: rounded up to pad_multiple (a compiled model then sees few shapes)."""
        if self.pad_multiple == 1:
            return self.pad_to
        longest = int(np.max(self._data.lengths[indices]))
        return max(self.pad_to or 0, -(-longest // self.pad_multiple) * self.pad_multiple)

    def state_dict(self):
        state = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                 "micro_batch_size": self.micro_batch_size, "seed": self.seed}
        if self.cross_pass_ends:  # step_in_epoch counts micro-batches
            state["cross_pass_ends"] = True
        if self.epoch_sizes is None:
            state["num_features"] = len(self._fixed.lengths)
        else:
            state["epoch_sizes"] = list(self.epoch_sizes)
        return state

    def load_state_dict(self, state):
        ours = self.state_dict()
        for key in ("num_features", "epoch_sizes", "micro_batch_size", "cross_pass_ends"):
            if state.get(key) != ours.get(key):
                raise ConfigError(
                    f"checkpoint data position does not fit this run: its {key} is {state.get(key)}, this run's "
                    f"is {ours.get(key)} (the same data, epochs, batch size and accumulation are needed to resume)")
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]

    def close(self):
        if self._data is not None and self._fixed is None:
            self._data.close()
        if self._fixed is None:
            self._data, self._data_epoch, self._batches = None, None, None


def make_stream(opts, env, features=None, task_id=0, batch_size=None, seed=None, load_epoch=None,
                epoch_sizes=None, pad_to=None):
    """EpochStream configured from the options (batch size, accumulation, padding, ranks); the
    keyword arguments override the options for one task of a multi-task run."""
    return EpochStream(features, batch_size or opts.train_batch_size, opts.gradient_accumulation_steps,
                       opts.seed if seed is None else seed, task_id=task_id, group_by_length=opts.group_by_length,
                       pad_to=pad_to or opts.pad_to, rank=env.rank, world_size=env.world_size,
                       load_epoch=load_epoch, epoch_sizes=epoch_sizes, replay_first_epoch=opts.replay_batch_cycle,
                       pad_multiple=opts.pad_multiple, cross_pass_ends=opts.reference_accumulation)


def num_training_steps(opts, steps_per_epoch):
    """Optimizer steps: --max_steps when given, else --num_train_epochs (fractional epochs allowed; at least 1)."""
    if opts.max_steps > 0:
        return opts.max_steps
    return max(1, math.ceil(steps_per_epoch * opts.num_train_epochs))


def default_cache_dir():
    """The feature cache: $BERT_PALS_CACHE, else the user's cache folder. Never a folder others can
    write to by default: features are plain data, but a planted file must not change a run either."""
    if os.environ.get("BERT_PALS_CACHE"):
        return os.environ["BERT_PALS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bert-pals", "features")


# ----------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------

def _pad_cat(arrays, pad_value):
    """Concatenate [b, ...] arrays along 0, padding trailing dims to the largest shape."""
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) == 1:
        return np.concatenate(arrays, axis=0)
    ndim = max(len(s) for s in shapes)
    target = [max(a.shape[d] for a in arrays) for d in range(1, ndim + 1)]
    out = []
    for a in arrays:
        widths = [(0, 0)] + [(0, t - s) for s, t in zip(a.shape[1:], target)]
        out.append(np.pad(a, widths, constant_values=pad_value))
    return np.concatenate(out, axis=0)


def _move(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(device, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def predict(model, features, task_id, batch_size, env=None, pad_to=None, pad_value=-10000.0,
            desc="predict"):
    """Run `model` over features (sorted by length for speed) -> outputs in INPUT order.

    Returns {output name: numpy array} for every tensor the model returns except `loss`, plus
    `loss` = example-weighted mean loss (None when the features carry no labels). Token-level
    outputs of different batches are padded to a common length with `pad_value`. Under
    torch.distributed every rank must call this (batches are shared out and gathered): every
    rank gets the full outputs. The model's train/eval mode is restored afterwards.

    Runs under torch.inference_mode() (no autograd bookkeeping at all, unlike no_grad): safe
    because nothing computed here reaches autograd later; the outputs leave as numpy arrays and
    the model keeps no tensors from its forward. The gather across ranks runs outside it."""
    device = env.device if env is not None else next(model.parameters()).device
    amp_dtype = env.amp_dtype if env is not None else None
    rank, world = (env.rank, env.world_size) if env is not None and env.distributed else (0, 1)
    was_training = model.training
    model.eval()
    n = len(features)
    lengths = np.array([feature_length(f) for f in features], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    mine = batches[rank::world]
    outputs, loss_sum, loss_n = [], 0.0, 0
    show = (env is None or env.is_main) and sys.stderr.isatty()
    iterator = tqdm(mine, desc=desc, disable=not show, leave=False)
    with torch.inference_mode():
        for idx in iterator:
            batch = _move(collate([features[i] for i in idx], pad_to), device)
            with _autocast(device, amp_dtype):
                out = model(**batch, task_id=task_id)
            if "loss" in out and out["loss"] is not None:
                loss_sum += float(out["loss"].float()) * len(idx)
                loss_n += len(idx)
            arrays = {k: v.float().cpu().numpy() for k, v in out.items()
                      if k != "loss" and torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == len(idx)}
            outputs.append((idx, arrays))
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (outputs, loss_sum, loss_n))
        outputs = [o for part in gathered for o in part[0]]
        loss_sum = sum(part[1] for part in gathered)
        loss_n = sum(part[2] for part in gathered)
    if was_training:
        model.train()
    result = {}
    if outputs:
        index = np.concatenate([idx for idx, _ in outputs])
        inverse = np.empty(n, dtype=np.int64)
        inverse[index] = np.arange(n)
        for key in outputs[0][1]:
            result[key] = _pad_cat([arrays[key] for _, arrays in outputs], pad_value)[inverse]
    result["loss"] = loss_sum / loss_n if loss_n else None
    return result


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# Checkpoints: tensors in safetensors, everything else in JSON (reading one never runs code)
# ----------------------------------------------------------------------------------------------

def _encode_state(obj, tensors, path="s"):
    """Nested plain data + tensors -> JSON-able data; tensors go to `tensors` under their path.
    Tuples, non-string dict keys and numpy values are tagged so that `_decode_state` restores them."""
    if torch.is_tensor(obj):
        tensors[path] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode_state(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode_state(k, tensors, f"{path}.k{i}"), _encode_state(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {path}): keep runner state plain data")


def _decode_state(obj, tensors):
    if isinstance(obj, list):
        return [_decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        if "__tuple__" in obj:
            return tuple(_decode_state(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_decode_state(k, tensors): _decode_state(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode_state(v, tensors) for k, v in obj.items()}
    return obj


def write_state(directory, name, state):
    """`<name>.json` + `<name>.safetensors` in `directory` (each written atomically)."""
    tensors = {}
    encoded = _encode_state(state, tensors)
    with atomic_open(os.path.join(directory, name + ".safetensors"), "wb") as f:
        f.write(safetensors_save(tensors))
    atomic_write_json(os.path.join(directory, name + ".json"), encoded, indent=None)


def read_state(directory, name):
    """What write_state wrote (JSON + safetensors: nothing in these files can run code)."""
    with open(os.path.join(directory, name + ".json"), encoding="utf-8") as f:
        encoded = json.load(f)
    return _decode_state(encoded, safetensors_load_file(os.path.join(directory, name + ".safetensors")))


def _rng_state(device):
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":  # this process's own GPU only: a resume may see fewer GPUs
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_trainer_state(state, path, param_names):  # noqa: C901
    """Every field of a checkpoint's trainer_state before any is used: a hand-edited or damaged file is
    one DataError naming it and the field (the optimizer's and RNG states are checked by loading them)."""
    def bad(field, what):
        raise DataError(path, None, f"'{field}' must be {what}; the checkpoint is damaged (start a new run, "
                                    "or without --resume)")

    def is_int(v, low=0):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if not isinstance(state, dict):
        bad("(top level)", "an object")
    for field in ("optimizer", "scheduler"):
        if not isinstance(state.get(field), dict):
            bad(field, "an object")
    for field in ("global_step", "epoch"):
        if not is_int(state.get(field)):
            bad(field, "an integer >= 0")
    for field in ("consecutive_skipped", "train_loss_steps"):
        if field in state and not is_int(state[field]):
            bad(field, "an integer >= 0")
    if "train_loss_sum" in state and not (is_number(state["train_loss_sum"]) and not isinstance(
            state["train_loss_sum"], bool)):
        bad("train_loss_sum", "a number")
    for field in ("stopped_early", "model_training"):
        if field in state and not isinstance(state[field], bool):
            bad(field, "true or false")
    rng = state.get("rng")
    if not (isinstance(rng, list) and rng and all(
            isinstance(r, dict) and {"python", "numpy", "torch"} <= set(r) for r in rng)):
        bad("rng", "a non-empty list of {python, numpy, torch} generator states")
    for field in ("extra_state", "scaler"):
        if state.get(field) is not None and not isinstance(state[field], dict):
            bad(field, "an object")
    if state.get("stream") is not None and not isinstance(state["stream"], dict):
        bad("stream", "an object")
    zeroed = state.get("zeroed_grads", [])
    if not (isinstance(zeroed, list) and all(isinstance(n, str) and n in param_names for n in zeroed)):
        bad("zeroed_grads", "a list of this model's parameter names")


def find_checkpoint(output_dir):
    """Path of the last complete checkpoint folder in output_dir, or None."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        path = os.path.join(output_dir, name)
        if os.path.isfile(os.path.join(path, CHECKPOINT_META)):
            return path
    return None


def read_checkpoint(path):
    """Everything a checkpoint folder holds: {"meta", "model" (state dict), "state" (trainer state)}.
    A missing, corrupt or foreign checkpoint is a one-line ConfigError."""
    try:
        with open(os.path.join(path, CHECKPOINT_META), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT} (written by another "
                             "version of this code?)")
        model = safetensors_load_file(os.path.join(path, CHECKPOINT_MODEL))
        state = read_state(path, CHECKPOINT_STATE)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not a usable checkpoint ({reason}); start a new run in an empty --output_dir, "
                          "or without --resume") from None
    return {"meta": meta, "model": model, "state": state}


def _fingerprint_differences(saved, current):
    """'name saved -> current' for every run-defining value that differs."""
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    return [f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)]


def prefetches(opts, device):
    """Whether training collates the next step in a background thread: --num_workers 1, or by default
    on CUDA only (on a CPU that thread competes with the step for the cores and the GIL: measured
    slower, docs/benchmarks.md#demo-run)."""
    return device.type == "cuda" if opts.num_workers is None else bool(opts.num_workers)


class Prefetcher:
    """A step stream read one step ahead: `start()` has a background thread call the stream's
    next_step() (collation, and on CUDA pinning, so that the copy to the GPU can be asynchronous)
    while the current step runs; `next_step()` hands that result over.

    Only the main thread touches the stream while no fetch is running (`wait()`), and `state_dict()`
    is the stream's state from before the fetched step, so checkpoints and resume are exactly as
    without prefetching. Collation draws no random numbers: the batches are identical too."""

    def __init__(self, stream, pin=False):
        self.stream, self.pin = stream, pin
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._future, self._snapshot = None, None

    @staticmethod
    def fits(stream):
        """Prefetching needs a stream that can be put back (state_dict/load_state_dict)."""
        return hasattr(stream, "state_dict") and hasattr(stream, "load_state_dict")

    def _fetch(self):
        micro = self.stream.next_step()
        if self.pin:
            micro = [(task, {k: v.pin_memory() for k, v in batch.items()}) for task, batch in micro]
        return micro

    def start(self):
        self._snapshot = self.stream.state_dict()
        self._future = self._pool.submit(self._fetch)

    def wait(self):
        if self._future is not None:
            concurrent.futures.wait([self._future])

    def next_step(self):
        if self._future is None:
            return self._fetch()
        future, self._future, self._snapshot = self._future, None, None
        return future.result()

    def state_dict(self):
        return self._snapshot if self._future is not None else self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)

    def close(self):
        """End the thread; returns the state to go back to if a fetched step was never used, else None."""
        self.wait()
        snapshot = self._snapshot if self._future is not None else None
        self._future, self._snapshot = None, None
        self._pool.shutdown(wait=True)
        return snapshot


GRAM_CHUNK = 1 << 16  # columns per float64 slice in gram_matrix and weighted_rows_into (8 tasks: 4 MiB)


def gram_matrix(rows, chunk=None):
    """The K x K float64 matrix of dot products of the K rows of `rows` ([K, N]), on their device.

    Summed in float64 over slices of `chunk` (GRAM_CHUNK) columns: as exact as float64 dot products
    of whole rows, while holding only a [K, chunk] float64 slice besides the rows themselves."""
    k, n = rows.shape
    chunk = chunk or GRAM_CHUNK
    gram = torch.zeros(k, k, dtype=torch.float64, device=rows.device)
    for start in range(0, n, chunk):
        block = rows[:, start:start + chunk].double()
        gram.addmm_(block, block.t())
    return gram


def weighted_rows_into(out, rows, weights, offset=0, chunk=None):
    """out[:] = sum_k weights[k] rows[k, offset:offset + out.numel()] (out: a flat view, written in
    place), a slice of `chunk` (GRAM_CHUNK) columns at a time: one matrix-vector product over a
    whole transposed row block would make a temporary of out's size."""
    chunk = chunk or GRAM_CHUNK
    for start in range(0, out.numel(), chunk):
        stop = min(out.numel(), start + chunk)
        out[start:stop] = torch.mv(rows[:, offset + start:offset + stop].t(), weights)


def compile_model(module):
    """torch.compile for training (--compile). A task id is a Python int, so each task gets its own
    graph (and one more for dynamic lengths): allow enough of them for every task of a run."""
    import torch._dynamo
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))
    return torch.compile(module)


class Trainer:
    """Optimizer steps over a step stream; checkpoints; prediction. See the module docstring.

    model: the unwrapped model (BertForMultiTask or anything with the same forward contract).
    num_training_steps: optimizer steps the LR schedule spans (the real number of steps).
    param_groups: optimizer groups (default optimization.param_groups(model, weight_decay, lr)).
    grad_combiner: for steps whose micro-batches come from more than one task (PCGrad, vaccine):
      either an object with `weights(gram, task_ids) -> K floats` (the combined shared gradient is
      sum_k w_k g_k; `gram` is the K x K float64 matrix of the task gradients' dot products, e.g.
      multitask.GradientCombiner), or a function f(list of flat per-task gradients) -> flat gradient.
      One whose `method` is "sum" is not used: the plain accumulation computes the same sum.
    """

    def __init__(self, opts, env, model, num_training_steps, param_groups=None, grad_combiner=None):
        self.opts, self.env = opts, env
        self.model = model.to(env.device)
        self.num_training_steps = int(num_training_steps)
        # A plain sum needs no per-task gradients: every micro-batch accumulates into .grad as usual.
        self.grad_combiner = None if getattr(grad_combiner, "method", None) == "sum" else grad_combiner
        if env.distributed:
            # Tell DDP about unused parameters only when a step can leave some without a gradient (other
            # tasks' modules, a pooler no head reads): the search costs time and warns when there are none.
            cuda = env.device.type == "cuda"
            self.ddp_model = DistributedDataParallel(self.model, device_ids=[env.local_rank] if cuda else None,
                                                     output_device=env.local_rank if cuda else None,
                                                     find_unused_parameters=not modeling.uses_all_parameters(model))
        else:
            self.ddp_model = self.model
        if opts.compile:
            self.ddp_model = compile_model(self.ddp_model)
        if param_groups is None:
            param_groups = optimization.param_groups(self.model, opts.weight_decay, opts.learning_rate)
        schedule = {}
        if opts.per_parameter_schedule:  # 2019: BertAdam schedules each parameter at its own step count
            schedule = dict(warmup=opts.warmup_proportion, t_total=max(1, self.num_training_steps),
                            schedule=opts.schedule)
        self.optimizer = optimization.build_optimizer(opts.optimizer, param_groups, opts.learning_rate,
                                                      max_grad_norm=opts.max_grad_norm,
                                                      weight_decay=opts.weight_decay, **schedule)
        self.engine_clips = opts.optimizer != "bertadam" and opts.max_grad_norm > 0
        lr_lambda = optimization.get_lr_lambda("constant" if schedule else opts.schedule, opts.warmup_proportion,
                                               max(1, self.num_training_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        fp16 = env.amp_dtype == torch.float16
        self.static_loss_scale = float(opts.loss_scale) if fp16 and opts.loss_scale > 0 else None
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=fp16,
                                           init_scale=self.static_loss_scale or 2.0 ** 16)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self._shared_params = None
        self.global_step = 0
        self.epoch = 0
        self.extra_state = {}
        self.consecutive_skipped = 0
        self.stopped_early = False  # an on_epoch_end said stop; kept in checkpoints (resume does not go on)
        self._tb_writer = None
        self._stop_signal = None
        self.train_loss_sum, self.train_loss_steps = 0.0, 0
        self.examples_seen = 0.0   # training examples of the steps run by this process (throughput)
        # Step losses stay on the device until a sync point (logging, epoch end, checkpoint), where
        # they are read back in one transfer. On CPU reading costs nothing: every step is checked at
        # once, so a NaN stops the run before its update.
        self.sync_every_step = env.device.type != "cuda"
        self._pending_losses = []  # (step, task ids, loss tensor) not yet read back
        self._on_loss = None  # train(on_loss=...)
        self._resumed = False  # train() continued from a checkpoint
        self._resumed_mode = True  # the checkpoint's model.training, for the train() that resumes it
        self.applied_lr = 0.0  # the learning rate of the last step (logged)
        self._log_loss, self._log_n = 0.0, 0

    # -- logging ---------------------------------------------------------------------------------

    @property
    def tb_writer(self):
        """TensorBoard SummaryWriter on rank 0 (created on first use in <output_dir>/runs), else None."""
        if self._tb_writer is None and self.env.is_main:
            self._tb_writer = SummaryWriter(os.path.join(self.opts.output_dir, TENSORBOARD_DIR))
        return self._tb_writer

    def log_scalars(self, tag_prefix, values, step=None):
        """Write every finite number in `values` as TensorBoard scalar `<tag_prefix>/<key>` (rank 0)."""
        if not self.env.is_main:
            return
        step = self.global_step if step is None else step
        writer = self.tb_writer
        for key, value in values.items():
            if is_number(value) and math.isfinite(float(value)):
                writer.add_scalar(f"{tag_prefix}/{key}" if tag_prefix else key, float(value), step)
        writer.flush()

    def close(self):
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None

    # -- one optimizer step ----------------------------------------------------------------------

    def _forward_backward(self, module, task_id, batch, weight):
        """Forward + weighted backward of one micro-batch; returns the detached fp32 loss."""
        with _autocast(self.env.device, self.env.amp_dtype):
            out = module(**batch, task_id=task_id)
        loss = out["loss"].float()
        self.scaler.scale(loss * weight).backward()
        return loss.detach()

    def shared_parameters(self):
        if self._shared_params is None:
            if hasattr(self.model, "shared_parameters"):
                shared = list(self.model.shared_parameters())
            else:
                shared = list(self.model.parameters())
            ids = {id(p) for p in shared}
            self._shared_params = [p for p in self.params if id(p) in ids]
        return self._shared_params

    def _step_microbatches(self, micro):
        """Backward all micro-batches of one step (grads left in .grad); returns the global mean loss
        as a float64 tensor on the device (nothing is read back here)."""
        env = self.env
        weights = self._loss_weights(micro)  # from the host-side batches: no device read
        micro = [(tid, _move(batch, env.device)) for tid, batch in micro]
        tasks = list(dict.fromkeys(tid for tid, _ in micro))
        loss_acc = torch.zeros((), dtype=torch.float64, device=env.device)
        if self.grad_combiner is None or len(tasks) == 1:
            # DDP reduces once, on the last micro-batch; parameters used in any no_sync micro-batch
            # are reduced too (DDP records them), so micro-batches of different tasks are fine.
            for i, (tid, batch) in enumerate(micro):
                sync = not env.distributed or i == len(micro) - 1
                with contextlib.nullcontext() if sync else self.ddp_model.no_sync():
                    loss = self._forward_backward(self.ddp_model, tid, batch, weights[i])
                loss_acc += loss.double() * weights[i] / env.world_size
        else:
            loss_acc += self._combined_backward(micro, tasks, weights)
        if env.distributed:
            dist.all_reduce(loss_acc)
        return loss_acc

    def _loss_weights(self, micro):
        """Weight of each micro-batch's mean loss, so that one step's gradient is the mean over the
        global batch: exact for any accumulation and number of processes.

        Within a task a micro-batch counts by its loss denominator: its examples, or for token
        classification its labelled tokens (so NER gives the token mean of the whole batch, as one
        big batch would). Across the tasks of a gradient-surgery step each task counts by its share
        of the step's examples. x world_size because DDP averages the ranks' gradients. Under
        torchrun the counts' all-reduce also carries a stop asked for by a signal, so that every
        rank stops after the same step (sets self._stop_signal)."""
        env = self.env
        if self.opts.reference_accumulation and self.opts.gradient_accumulation_steps > 1:
            # 2019: each micro-batch's mean loss / N, whatever its size
            # (still collective under torchrun: the all-reduce carries a stop asked for by a signal)
            return self._reference_loss_weights(micro)
        # Counted on the host, in numpy (batches are still CPU tensors here): nothing waits for the device.
        examples = [float(next(iter(b.values())).shape[0]) for _, b in micro]
        denominators = [float(np.count_nonzero(b["labels"].numpy() != IGNORE_INDEX)) if _is_token_labelled(b)
                        else n for (_, b), n in zip(micro, examples)]
        signum = file_utils.stop_requested()
        local = np.array(examples + denominators + [1.0 if signum else 0.0], dtype=np.float64)
        totals = local
        if env.distributed:
            reduced = torch.tensor(local, device=env.device)  # a copy: `local` must keep this rank's counts
            dist.all_reduce(reduced)
            totals = reduced.cpu().numpy()
        # The signal that reached this rank (the others stop with it too); SIGTERM if only another rank got one.
        self._stop_signal = (signum or int(signal.SIGTERM)) if float(totals[-1]) > 0 else None
        k = len(micro)
        step_examples = float(totals[:k].sum())
        self.examples_seen += step_examples
        weights = []
        for i, (tid, _) in enumerate(micro):
            same = [j for j, (t, _) in enumerate(micro) if t == tid]
            task_share = float(totals[same].sum()) / step_examples
            task_denominator = float(totals[[k + j for j in same]].sum())
            weights.append(task_share * float(local[k + i]) / max(task_denominator, 1.0) * env.world_size)
        return weights

    def _reference_loss_weights(self, micro):
        """--reference_accumulation: 1/N per micro-batch (N = --gradient_accumulation_steps); DDP's
        average over ranks is the 2019 DataParallel mean. Sets self._stop_signal as _loss_weights."""
        env = self.env
        signum = file_utils.stop_requested()
        examples = [float(next(iter(b.values())).shape[0]) for _, b in micro]
        local = torch.tensor([sum(examples), 1.0 if signum else 0.0], dtype=torch.float64)
        if env.distributed:
            local = local.to(env.device)
            dist.all_reduce(local)
        totals = local.cpu().tolist()
        self._stop_signal = (signum or int(signal.SIGTERM)) if totals[1] > 0 else None
        self.examples_seen += totals[0]
        return [1.0 / self.opts.gradient_accumulation_steps] * len(micro)

    def _combined_backward(self, micro, tasks, weights):  # noqa: C901
        """Gradient surgery: one flat gradient of the shared parameters per task -> grad_combiner ->
        written back; task-specific parameters keep their own gradients.

        The task gradients are the rows of ONE [tasks, shared size] float32 buffer, as the loss scaler
        left them: projections are scale-invariant, so a combiner with `weights` gets their Gram
        matrix (float64, built a slice at a time) and the result sum_k w_k g_k is written straight
        into .grad; no other gradient-sized buffer is made. A non-finite gradient (an fp16 overflow,
        routine with dynamic loss scaling) skips the combiner, whose state (random order, vaccine
        targets) must not take it in: the plain sum goes to .grad and the GradScaler skips the step.
        In fp32/bf16 it is an error.

        Under DDP, every task but the last is backpropagated under no_sync and its row all-reduced
        here; the last task's final micro-batch is a normal synced backward, so DDP reduces the
        task-specific gradients and the last task's shared gradient itself and its record of used
        parameters is consumed (a manual-only reduction would leave it stale and break the next
        step). Earlier tasks' shared gradients are zeroed in place, not set to None, for the same
        reason."""
        env = self.env
        shared = self.shared_parameters()
        sizes = [p.numel() for p in shared]
        grads = torch.empty(len(tasks), sum(sizes), dtype=torch.float32, device=env.device)
        loss_acc = torch.zeros((), dtype=torch.float64, device=env.device)
        for t_index, task in enumerate(tasks):
            idxs = [i for i, (tid, _) in enumerate(micro) if tid == task]
            for k, i in enumerate(idxs):
                sync = not env.distributed or (t_index == len(tasks) - 1 and k == len(idxs) - 1)
                with contextlib.nullcontext() if sync else self.ddp_model.no_sync():
                    loss = self._forward_backward(self.ddp_model, task, micro[i][1], weights[i])
                loss_acc += loss.double() * weights[i] / env.world_size
            for p, part in zip(shared, grads[t_index].split(sizes)):
                if p.grad is None:
                    part.zero_()
                else:
                    part.copy_(p.grad.reshape(-1))
            if t_index < len(tasks) - 1:
                for p in shared:
                    if p.grad is not None:
                        p.grad.zero_()
        if env.distributed:
            for row in grads[:-1]:
                dist.all_reduce(row)
                row /= env.world_size
        gram = gram_matrix(grads).cpu().numpy()
        combined = None
        if not np.isfinite(gram).all():
            if not self.scaler.is_enabled():
                raise NonFiniteLossError(
                    f"non-finite gradient at step {self.global_step + 1} (tasks {','.join(map(str, tasks))}); "
                    "lower --learning_rate, check the input data, or try --bf16/fp32")
            coefficients = np.ones(len(tasks))  # the plain sum: the scaler sees the inf and skips this step
        elif hasattr(self.grad_combiner, "weights"):
            coefficients = np.asarray(self.grad_combiner.weights(gram, task_ids=tasks), dtype=np.float64)
        else:  # a plain function of the flat gradients: it sees them at true scale
            scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
            if scale != 1.0:
                grads.div_(scale)
            combined = self.grad_combiner(list(grads)).reshape(-1)
            if scale != 1.0:
                combined = combined * scale
        if combined is None:
            w = torch.as_tensor(coefficients, dtype=grads.dtype, device=grads.device)
        offset = 0
        for p, numel in zip(shared, sizes):
            if p.grad is not None:  # None: no task of this step used the parameter
                if combined is None:
                    weighted_rows_into(p.grad.view(-1), grads, w, offset)
                else:
                    p.grad.copy_(combined[offset:offset + numel].view_as(p.grad))
            offset += numel
        return loss_acc

    def training_step(self, micro):
        """One optimizer step over the given micro-batches; returns the step's mean loss (a float64
        tensor on the device, read back at sync points: see _flush_losses)."""
        loss = self._step_microbatches(micro)
        fp16 = self.scaler.is_enabled()
        tasks = tuple(dict.fromkeys(t for t, _ in micro))
        self._pending_losses.append((self.global_step + 1, tasks, loss))
        if self.sync_every_step:
            self._flush_losses()  # a non-finite loss stops the run before its update (fp32/bf16)
        self.applied_lr = self._learning_rate_now()
        if fp16 or self.engine_clips:
            self.scaler.unscale_(self.optimizer)
        if self.engine_clips:
            torch.nn.utils.clip_grad_norm_(self.params, self.opts.max_grad_norm)
        applied = True
        if fp16:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skips optimizer.step() when a gradient is inf/NaN
            found_inf = self._found_inf()
            self.scaler.update(self.static_loss_scale)
            applied = not (found_inf if found_inf is not None else self.scaler.get_scale() < scale)
            self.consecutive_skipped = 0 if applied else self.consecutive_skipped + 1
            if self.consecutive_skipped >= MAX_CONSECUTIVE_SKIPPED_STEPS:
                raise NonFiniteLossError(
                    f"fp16: {self.consecutive_skipped} optimizer steps in a row skipped for inf/NaN gradients "
                    f"(loss {float(loss)}, loss scale {self.scaler.get_scale():g}) at step {self.global_step + 1}; "
                    "the loss itself is probably non-finite: lower --learning_rate or use --bf16")
        else:
            self.optimizer.step()
        # PyTorch 2 frees gradients: a task's modules unused in the next step then get no update. The
        # 2019 code (PyTorch 0.4) zeroed them, so stale optimizer state kept moving them.
        self.optimizer.zero_grad(set_to_none=not self.opts.zero_grad_in_place)
        if applied:  # a step the GradScaler skipped does not advance the schedule (as in HF and accelerate)
            with warnings.catch_warnings():
                # After a skipped first fp16 step LambdaLR warns that optimizer.step() was not called.
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        return loss

    def _learning_rate_now(self):
        """The rate this step applies to the first parameter group (the shared encoder): the engine's
        schedule, or with --per_parameter_schedule BertAdam's own at that parameter's step count."""
        group = self.optimizer.param_groups[0]
        if not self.opts.per_parameter_schedule or not group["params"]:
            return group["lr"]
        p = next((p for p in group["params"] if p.grad is not None), group["params"][0])
        step = self.optimizer.state[p].get("step", 0) if p in self.optimizer.state else 0
        return group["lr"] * self.optimizer.lr_scale(group, step)

    def _found_inf(self):
        """Whether the GradScaler found an inf/NaN gradient this step (it then skipped the optimizer
        step): its per-optimizer record, filled by unscale_ (private API). None when that is gone; the
        caller then compares the loss scale before and after update (blind to a static scale)."""
        try:
            found = self.scaler._found_inf_per_device(self.optimizer)
        except (AttributeError, KeyError, TypeError):
            return None
        return any(float(v) > 0 for v in found.values())  # scaler.step already read them: no extra sync

    def _flush_losses(self):
        """Read back the step losses since the last call (one transfer) into the run's and the log's
        running sums. A non-finite loss is left out under fp16 (the scaler skipped that step) and is
        a NonFiniteLossError otherwise. Every step on CPU; at sync points on CUDA."""
        if not self._pending_losses:
            return
        pending, self._pending_losses = self._pending_losses, []
        values = torch.stack([loss.detach() for _, _, loss in pending]).tolist()
        for (step, tasks, _), value in zip(pending, values):
            if math.isfinite(value):
                self.train_loss_sum += value
                self.train_loss_steps += 1
                self._log_loss, self._log_n = self._log_loss + value, self._log_n + 1
                if self._on_loss is not None:
                    self._on_loss(self, step, tasks, value)
            elif not self.scaler.is_enabled():
                raise NonFiniteLossError(
                    f"non-finite training loss ({value}) at step {step} (task {','.join(map(str, tasks))}); "
                    "lower --learning_rate, check the input data, or try --bf16/fp32")

    # -- checkpoints -----------------------------------------------------------------------------

    def _gather_rng(self):
        state = _rng_state(self.env.device)
        if not self.env.distributed:
            return [state]
        gathered = [None] * self.env.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def save_checkpoint(self, stream):
        """Write <output_dir>/checkpoint atomically: a kill at any moment leaves the previous one intact.
        Collective under torch.distributed (RNG states of every rank are gathered); rank 0 writes.
        The grad_combiner's state is saved beside the stream's: with prefetching, the stream's state
        is the one from before the prefetched step, and a combiner it holds may be older than that."""
        self._flush_losses()  # the running loss sums go into the checkpoint (and a NaN never does)
        rng = self._gather_rng()
        if self.env.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng,
                "stream": stream.state_dict() if hasattr(stream, "state_dict") else None,
                "grad_combiner": (self.grad_combiner.state_dict() if hasattr(self.grad_combiner, "state_dict")
                                  else None),
                "global_step": self.global_step, "epoch": self.epoch, "extra_state": self.extra_state,
                "world_size": self.env.world_size, "consecutive_skipped": self.consecutive_skipped,
                "stopped_early": self.stopped_early,
                "train_loss_sum": self.train_loss_sum, "train_loss_steps": self.train_loss_steps,
                # dropout on or off (--dropout_off_after_eval), and which parameters hold a zeroed rather
                # than freed gradient (--zero_grad_in_place: they move by stale optimizer state next step)
                "model_training": self.model.training,
                "zeroed_grads": [name for name, p in self.model.named_parameters() if p.grad is not None],
            }
            model_state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.model.state_dict().items()}

            def write(tmp):
                with atomic_open(os.path.join(tmp, CHECKPOINT_MODEL), "wb") as f:
                    f.write(safetensors_save(model_state))
                write_state(tmp, CHECKPOINT_STATE, state)
                atomic_write_json(os.path.join(tmp, CHECKPOINT_META), {
                    "format": CHECKPOINT_FORMAT, "global_step": self.global_step, "epoch": self.epoch,
                    "time": time.time(), "num_training_steps": self.num_training_steps,
                    "run": self.opts.fingerprint()})

            final = os.path.join(self.opts.output_dir, CHECKPOINT_DIR)
            file_utils.replace_dir_atomically(final, write)
            logger.info("checkpoint at step %d written to %s", self.global_step, final)
        self.env.barrier()

    def load_checkpoint(self, path, stream):
        """Restore everything save_checkpoint wrote (model, optimizer, schedule, scaler, RNG, stream).
        A corrupt or foreign checkpoint, or one made with other run-defining flags, is a ConfigError."""
        ckpt = read_checkpoint(path)
        changed = _fingerprint_differences(ckpt["meta"].get("run", {}), self.opts.fingerprint())
        if changed:
            raise ConfigError(f"--resume: {path} was made with other settings ({'; '.join(changed)}); resume with "
                              "the same flags, or start a new run in another --output_dir")
        state = ckpt["state"]
        state_file = os.path.join(path, CHECKPOINT_STATE + ".json")
        _check_trainer_state(state, state_file, {name for name, _ in self.model.named_parameters()})
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ConfigError(f"{path}: the checkpoint does not fit this model/optimizer "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("stream") is not None and hasattr(stream, "load_state_dict"):
            try:
                stream.load_state_dict(state["stream"])
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise DataError(state_file, None, f"'stream' is not a data position of this run ({exc!r})") from None
        if state.get("grad_combiner") is not None and hasattr(self.grad_combiner, "load_state_dict"):
            self.grad_combiner.load_state_dict(state["grad_combiner"])  # after the stream's: this one is current
        rng = state["rng"]
        if len(rng) != self.env.world_size:
            logger.warning("checkpoint was written by %d processes, resuming with %d: dropout RNG differs",
                           len(rng), self.env.world_size)
        try:
            _set_rng_state(rng[self.env.rank] if self.env.rank < len(rng) else rng[0], self.env.device)
        except (TypeError, ValueError, RuntimeError, IndexError, KeyError, OverflowError) as exc:
            raise DataError(state_file, None, f"'rng' is not a random-generator state ({exc})") from None
        self.global_step, self.epoch = state["global_step"], state["epoch"]
        self.extra_state = state.get("extra_state") or {}
        self.consecutive_skipped = state.get("consecutive_skipped", 0)
        self.stopped_early = state.get("stopped_early", False)
        self.train_loss_sum = state.get("train_loss_sum", 0.0)
        self.train_loss_steps = state.get("train_loss_steps", 0)
        self._resumed_mode = state.get("model_training", True)
        params = dict(self.model.named_parameters())
        for name in state.get("zeroed_grads", []):  # the step that wrote the checkpoint ended with zero_grad
            params[name].grad = torch.zeros_like(params[name])
        logger.info("resumed from %s at step %d (epoch %d)", path, self.global_step, self.epoch)

    # -- the loop --------------------------------------------------------------------------------

    def train(self, stream, num_steps, steps_per_epoch=None, on_epoch_end=None, desc="train", on_step=None,
              on_loss=None):
        """Run optimizer steps from stream.next_step() until global_step == num_steps.

        After every optimizer step, on_step(trainer, loss) runs on all ranks (`loss`: the step's
        global mean loss as a device tensor: reading it is a host-device sync). Each finite step
        loss, once read back (every step on CPU, at logging steps, epoch ends and checkpoints on
        CUDA), goes to on_loss(trainer, step, task_ids, value) on all ranks. Both run before
        on_epoch_end and the checkpoint, so state they keep in trainer.extra_state is saved with
        that step. Every `steps_per_epoch` steps,
        on_epoch_end(epoch_index, trainer) runs on all ranks (after the step, before that step's
        checkpoint); returning True stops training. With --resume,
        continues from <output_dir>/checkpoint. Returns {"global_step", "loss" (mean step loss of
        the whole run), "stopped_early"}."""
        opts, env = self.opts, self.env
        steps_per_epoch = steps_per_epoch or getattr(stream, "steps_per_epoch", None) or num_steps
        for line in opts.notes + (protocol_line(opts),):
            logger.info(line)
        if opts.resume:
            path = find_checkpoint(opts.output_dir)
            if env.distributed:
                # Every rank reads the checkpoint: a node that cannot see it would start afresh while the
                # others resume. All ranks learn who lacks it and stop with the same error.
                found = torch.tensor([0.0 if path is None else 1.0], device=env.device)
                dist.all_reduce(found)
                if 0 < int(found.item()) < env.world_size:
                    raise ConfigError(f"--resume: {int(env.world_size - found.item())} of {env.world_size} "
                                      f"processes see no checkpoint in {opts.output_dir}: every node needs the "
                                      "output folder (shared, or the checkpoint/ copied to the same path)")
            if path is not None:
                self.load_checkpoint(path, stream)
                self._resumed = True
            else:
                logger.info("--resume: no checkpoint in %s, starting from scratch", opts.output_dir)
        self.ddp_model.train(self._resumed_mode)  # a resumed run's dropout state is the checkpoint's
        self._resumed_mode = True
        bar = tqdm(total=num_steps, initial=self.global_step, desc=desc,
                   disable=not (env.is_main and sys.stderr.isatty()), dynamic_ncols=True)
        saved_at = self.global_step
        self._on_loss = on_loss
        with file_utils.graceful_interrupts():
            try:
                return self._train_loop(stream, num_steps, steps_per_epoch, on_epoch_end, bar, saved_at, on_step)
            finally:
                self._on_loss = None
                bar.close()
                if self._tb_writer is not None:
                    self._tb_writer.flush()

    def _train_loop(self, stream, num_steps, steps_per_epoch, on_epoch_end, bar, saved_at, on_step=None):  # noqa: C901
        opts, env = self.opts, self.env
        self._log_loss, self._log_n = 0.0, 0
        start_time, start_step, start_examples = time.time(), self.global_step, self.examples_seen
        # A resumable stream is read one step ahead, in a background thread (--num_workers 1).
        feed = Prefetcher(stream, pin=env.device.type == "cuda") \
            if prefetches(opts, env.device) and Prefetcher.fits(stream) else None
        source = feed or stream
        try:
            while self.global_step < num_steps and not self.stopped_early:
                micro = source.next_step()
                if feed is not None and self.global_step + 1 < num_steps:
                    feed.start()  # the next step's batches are collated while this step runs
                step_loss = self.training_step(micro)
                if feed is not None:
                    feed.wait()  # the stream is idle again: callbacks and checkpoints may read it
                self.global_step += 1
                bar.update(1)
                if on_step is not None:
                    on_step(self, step_loss)
                log_now = self.global_step % max(1, opts.logging_steps) == 0 or self.global_step == num_steps
                epoch_end = self.global_step % steps_per_epoch == 0
                save_now = opts.save_steps > 0 and self.global_step % opts.save_steps == 0
                if log_now or epoch_end or save_now or self._stop_signal:
                    self._flush_losses()  # the one device read of these steps' losses (NaN check included)
                if log_now:
                    if env.is_main:
                        lr = self.applied_lr  # the rate of this step (BertAdam's own with its schedule)
                        avg = self._log_loss / max(self._log_n, 1)
                        bar.set_postfix(loss=f"{avg:.4f}", lr=f"{lr:.2e}")
                        self.log_scalars("train", {"loss": avg, "learning_rate": lr})
                        if not sys.stderr.isatty():
                            logger.info("step %d/%d loss %.4f lr %.3e", self.global_step, num_steps, avg, lr)
                    self._log_loss, self._log_n = 0.0, 0
                if epoch_end:
                    self.epoch += 1
                    if on_epoch_end is not None:
                        stop = on_epoch_end(self.epoch - 1, self)
                        # The 2019 code's evaluation left the model in eval mode: no dropout from then on.
                        self.ddp_model.train(not opts.dropout_off_after_eval)
                        if stop:
                            self.stopped_early = True
                if save_now:
                    self.save_checkpoint(source)
                    saved_at = self.global_step
                if self.stopped_early:
                    logger.info("early stop after epoch %d (step %d)", self.epoch, self.global_step)
                    break
                if self._stop_signal:
                    if saved_at != self.global_step:
                        self.save_checkpoint(source)
                    raise file_utils.Interrupted(
                        f"stopped at step {self.global_step} of {num_steps}; checkpoint in "
                        f"{os.path.join(opts.output_dir, CHECKPOINT_DIR)}: continue with --resume", self._stop_signal)
            # Decided alike on every rank (saving is collective): only rank 0's folder has the files.
            if saved_at != self.global_step or (self.global_step == start_step and not self._resumed):
                self.save_checkpoint(source)
        finally:
            if feed is not None:
                self._close_feed(feed)
        self._flush_losses()
        mean = self.train_loss_sum / self.train_loss_steps if self.train_loss_steps else float("nan")
        runtime = time.time() - start_time  # this process's part (after a resume: the resumed steps)
        return {"global_step": self.global_step, "loss": mean, "stopped_early": self.stopped_early,
                "train_runtime": runtime,
                "train_samples_per_second": (self.examples_seen - start_examples) / max(runtime, 1e-9),
                "train_steps_per_second": (self.global_step - start_step) / max(runtime, 1e-9)}

    def _close_feed(self, feed):
        """Stop the prefetch thread; a step fetched but not trained (early stop, a signal, an error)
        is given back: the stream returns to where training stopped, the combiner keeps its state."""
        snapshot = feed.close()
        if snapshot is not None:
            live = self.grad_combiner.state_dict() if hasattr(self.grad_combiner, "state_dict") else None
            feed.stream.load_state_dict(snapshot)
            if live is not None:
                self.grad_combiner.load_state_dict(live)

    # -- outputs ---------------------------------------------------------------------------------

    def predict(self, features, task_id, batch_size=None, pad_to=None):
        """See module-level predict(); collective under torch.distributed."""
        if pad_to is None:
            pad_to = self.opts.pad_to
        return predict(self.model, features, task_id, batch_size or self.opts.eval_batch_size, self.env,
                       pad_to=pad_to)

    def save_model(self, directory, tokenizer=None, labels=None):
        """Rank 0: save_model() into directory."""
        if self.env.is_main:
            save_model(self.model, directory, tokenizer, labels)
        self.env.barrier()


# ----------------------------------------------------------------------------------------------
# The block every single-task runner shares
# ----------------------------------------------------------------------------------------------

def train_and_save(opts, env, model, features, tokenizer, desc="train", labels=None, evaluate=None):
    """Train `model` on one task's features for --num_train_epochs / --max_steps (resumable) and save
    it into --output_dir (`labels`: the head's label strings, for the saved config's id2label).

    With --eval_steps N and `evaluate(trainer) -> (main score, {eval set: metrics})` (`dev_evaluator`),
    the dev set is evaluated
    every N steps (TensorBoard `eval/...`), the best model is kept in <output_dir>/best/ and loaded
    into `model` at the end, so that the runner's final evaluation and predictions use it.
    --discard_checkpoint removes checkpoint/ after a successful run. Returns (trainer, summary):
    global_step, loss, runtime and samples/s, and with --eval_steps best_step, best_score (every
    evaluation's step, main score and metrics go to <output_dir>/eval_history.json)."""
    stream = make_stream(opts, env, features)
    num_steps = num_training_steps(opts, stream.steps_per_epoch)
    logger.info("%d training features, %d optimizer steps of %d examples (%d per epoch)", len(features), num_steps,
                opts.train_batch_size, stream.steps_per_epoch)
    trainer = Trainer(opts, env, model, num_steps)
    best_dir = os.path.join(opts.output_dir, "best")
    on_eval, period = None, stream.steps_per_epoch
    if opts.eval_steps and evaluate is not None:
        period = opts.eval_steps

        def on_eval(index, t):
            score, results = evaluate(t)
            state = t.extra_state
            best = state.get("best_score")
            improved = math.isfinite(score) and (best is None or score > best)
            state.setdefault("eval_history", []).append({"step": t.global_step, "score": score, "results": results})
            for eval_set, metrics in results.items():
                t.log_scalars(f"eval/{eval_set}", metrics)
            t.log_scalars("eval", {"main": score})
            if improved:
                state["best_score"], state["best_step"] = score, t.global_step
                if env.is_main:
                    file_utils.replace_dir_atomically(best_dir, lambda tmp: save_model(t.model, tmp, tokenizer, labels))
                logger.info("step %d: dev %.4f (new best)", t.global_step, score)
            env.barrier()
            return False
    summary = trainer.train(stream, num_steps, period, on_epoch_end=on_eval, desc=desc)
    trainer.save_model(opts.output_dir, tokenizer, labels)
    if on_eval is not None and trainer.extra_state.get("best_step") is not None:
        summary.update(best_step=trainer.extra_state["best_step"], best_score=trainer.extra_state["best_score"])
        if env.is_main:
            atomic_write_json(os.path.join(opts.output_dir, EVAL_HISTORY), trainer.extra_state["eval_history"])
        best = modeling.load_state_dict_file(os.path.join(best_dir, modeling.WEIGHTS_NAMES[0]))
        model.load_state_dict({name: best[key] for name, key in _saved_names(model, best).items()})
        logger.info("using the best dev model (step %d) for evaluation and predictions", summary["best_step"])
    if opts.discard_checkpoint and env.is_main:
        shutil.rmtree(os.path.join(opts.output_dir, CHECKPOINT_DIR), ignore_errors=True)
    env.barrier()
    return trainer, summary


def dev_evaluator(task, task_id=0):
    """train_and_save's `evaluate` for a tasks/ Task: its dev results through the trainer's predict."""
    def evaluate(trainer):
        results = task.evaluate(lambda features: trainer.predict(features, task_id))
        return task.main_score(results), results
    return evaluate


def run_summary(summary):
    """The numbers of a training run every runner writes into its results file."""
    keys = ("global_step", "loss", "train_runtime", "train_samples_per_second", "train_steps_per_second",
            "best_step", "best_score")
    return {k: summary[k] for k in keys if k in summary}


def _saved_names(model, saved):
    """Our state-dict name -> the key it was saved under (write_pretrained renames one-task heads)."""
    renames = (modeling.hf_layout(model) or (None, []))[1]
    out = {}
    for name in model.state_dict():
        key = name
        for ours, theirs in renames:
            if name.startswith(ours):
                key = theirs + name[len(ours):]
        if key in saved:
            out[name] = key
    return out


def predictor(opts, env, model, task_id=0, batch_size=None):
    """predict(features) -> the engine's prediction dict, for one task of `model` (collective under DDP)."""
    model.to(env.device)
    return lambda features: predict(model, features, task_id, batch_size or opts.eval_batch_size, env,
                                    pad_to=opts.pad_to)


@contextlib.contextmanager
def output_dir_of_rank(env, out_dir):
    """`out_dir` on rank 0; a throwaway folder on the other ranks, which take part in collective
    predictions but write nothing that stays."""
    if env.is_main:
        yield out_dir
    else:
        with tempfile.TemporaryDirectory() as scratch:
            yield scratch


def save_model(model, directory, tokenizer=None, labels=None):
    """The model (modeling.write_pretrained: Hugging Face layout for a one-task model, with `labels`
    as id2label) and the tokenizer files (vocab.txt, tokenizer_config.json, special_tokens_map.json)
    into directory; each file atomic."""
    os.makedirs(directory, exist_ok=True)
    vocab_file = getattr(tokenizer, "vocab_file", None) if tokenizer is not None else None
    model.save_pretrained(directory, vocab_file=vocab_file, labels=labels)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory, model_max_length=model.config.max_position_embeddings)


def write_eval_results(path, results):
    """`key = value` lines, keys sorted (the reference eval_results.txt format), atomically."""
    lines = [f"{key} = {results[key]}" for key in sorted(results)]
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
