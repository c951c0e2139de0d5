"""Prediction: a model over features, in length-sorted batches, outputs back in input order."""
import contextlib
import logging
import sys

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoints import all_gather_plain
from training.data import collate_at, feature_lengths

logger = logging.getLogger(__name__)

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
            desc="predict", padding=None):
    """Run `model` over features (sorted by length for speed) -> outputs in INPUT order.

    Returns {output name: numpy array} for every tensor the model returns except `loss`, plus
    `loss` = example-weighted mean loss (None when the features carry no labels). Token-level
    outputs of different batches are padded to a common length with `pad_value`. Under
    torch.distributed every rank must call this (batches are shared out and gathered): every
    rank gets the full outputs. The model's train/eval mode is restored afterwards. `padding`: the
    features' {feature key: pad value} (collate).

    Runs under torch.inference_mode() (no autograd bookkeeping at all, unlike no_grad): safe
    because nothing computed here reaches autograd later; the outputs leave as numpy arrays and
    the model keeps no tensors from its forward. The gather across ranks runs outside it."""
    device = env.device if env is not None else next(model.parameters()).device
    amp_dtype = env.amp_dtype if env is not None else None
    rank, world = (env.rank, env.world_size) if env is not None and env.distributed else (0, 1)
    was_training = model.training
    model.eval()
    n = len(features)
    lengths = feature_lengths(features)
    order = np.argsort(-lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    mine = batches[rank::world]
    outputs, loss_sum, loss_n = [], 0.0, 0
    show = (env is None or env.is_main) and sys.stderr.isatty()
    iterator = tqdm(mine, desc=desc, disable=not show, leave=False)
    with torch.inference_mode():
        for idx in iterator:
            batch = _move(collate_at(features, idx, pad_to, padding), device)
            with _autocast(device, amp_dtype):
                out = model(**batch, task_id=task_id)
            if "loss" in out and out["loss"] is not None:
                loss_sum += float(out["loss"].float()) * len(idx)
                loss_n += len(idx)
            arrays = {k: v.float().cpu().numpy() for k, v in out.items()
                      if k != "loss" and torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == len(idx)}
            outputs.append((idx, arrays))
    if world > 1:
        # as tensors, so that they travel as safetensors (all_gather_plain), not as JSON lists
        mine = [(torch.from_numpy(idx), {k: torch.from_numpy(a) for k, a in arrays.items()}) for idx, arrays in outputs]
        gathered = all_gather_plain((mine, loss_sum, loss_n), env)
        outputs = [(idx.numpy(), {k: a.numpy() for k, a in arrays.items()})
                   for part in gathered for idx, arrays in part[0]]
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


def predictor(opts, env, model, task_id=0, batch_size=None, padding=None):
    """predict(features) -> the engine's prediction dict, for one task of `model` (collective under DDP)."""
    model.to(env.device)
    return lambda features: predict(model, features, task_id, batch_size or opts.eval_batch_size, env,
                                    pad_to=opts.pad_to, padding=padding)
