"""Checkpoints: tensors in safetensors, everything else in JSON (reading one never runs code)."""
import json
import logging
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file as safetensors_load_file
from safetensors.torch import save as safetensors_save

from file_utils import ConfigError, DataError, atomic_open, atomic_write_json
from training.data import is_number

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"          # <output_dir>/checkpoint: the last complete checkpoint
CHECKPOINT_MODEL = "model.safetensors"  # the model's state dict
CHECKPOINT_STATE = "trainer_state"     # .json + .safetensors: optimizer, schedule, scaler, RNG, stream, runner state
CHECKPOINT_META = "checkpoint.json"    # step, epoch and the run's fingerprint; written last
CHECKPOINT_FORMAT = 2


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


def all_gather_plain(obj, env):
    """Every rank's `obj` (plain data and tensors), in rank order: dist.all_gather_object without its
    pickle, which would run whatever a peer sent. Each rank's part travels as a checkpoint stores it
    (JSON + safetensors bytes) in one uint8 tensor on the run's device."""
    tensors = {}
    header = json.dumps(_encode_state(obj, tensors)).encode("utf-8")
    payload = torch.frombuffer(bytearray(len(header).to_bytes(8, "little") + header + safetensors_save(tensors)),
                               dtype=torch.uint8)
    device = env.device
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(env.world_size)]
    dist.all_gather(sizes, torch.tensor([payload.numel()], dtype=torch.int64, device=device))
    longest = max(int(size) for size in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:payload.numel()] = payload.to(device)
    parts = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    gathered = []
    for part, size in zip(parts, sizes):
        data = part[:int(size)].cpu().numpy().tobytes()
        n = int.from_bytes(data[:8], "little")
        gathered.append(_decode_state(json.loads(data[8:8 + n].decode("utf-8")), safetensors_load(data[8 + n:])))
    return gathered


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


def _bad_state(path, field, what):
    raise DataError(path, None, f"'{field}' must be {what}; the checkpoint is damaged (start a new run, "
                                "or without --resume)")


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_trainer_state(state, path, param_names):
    """Every field of a checkpoint's trainer_state before any is used: a hand-edited or damaged file is
    one DataError naming it and the field (the optimizer's and RNG states are checked by loading them)."""
    if not isinstance(state, dict):
        _bad_state(path, "(top level)", "an object")
    _check_state_numbers(state, path)
    _check_state_parts(state, path, param_names)


def _check_state_numbers(state, path):
    def bad(field, what):
        _bad_state(path, field, what)

    is_int = _is_count
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


def _check_state_parts(state, path, param_names):
    def bad(field, what):
        _bad_state(path, field, what)

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
