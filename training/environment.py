"""The process's environment: device, distributed init, threads, precision, seeds; the tokenizer and
model of the --bert_model folder."""
import datetime
import logging
import math
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import modeling
import tokenization
from file_utils import ConfigError

logger = logging.getLogger(__name__)

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


def load_model(opts, task_num_labels=None, task_types=None, task_names=None, match_tasks=None,
               reference_head_rows=None):
    """BertForMultiTask from the model folder + adapter config, with the given heads (`match_tasks`,
    `reference_head_rows`: modeling.BertForMultiTask.from_pretrained)."""
    model = modeling.BertForMultiTask.from_pretrained(
        opts.model_dir, config=opts.config, task_num_labels=task_num_labels, task_types=task_types,
        task_names=task_names, allow_random_init=opts.allow_random_init, match_tasks=match_tasks,
        reference_head_rows=reference_head_rows)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and opts.max_seq_length > max_pos:
        raise ConfigError(f"--max_seq_length {opts.max_seq_length} exceeds the model's "
                          f"max_position_embeddings {max_pos}")
    rounded = -(-opts.max_seq_length // opts.pad_multiple) * opts.pad_multiple
    if max_pos is not None and rounded > max_pos:
        raise ConfigError(f"--compile pads to multiples of {opts.pad_multiple}: --max_seq_length {opts.max_seq_length} "
                          f"would become {rounded}, past the model's max_position_embeddings {max_pos}")
    return model
