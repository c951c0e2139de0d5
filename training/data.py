"""Features -> batches: the feature cache on disk, collation with dynamic padding, deterministic
length-grouped rank-sharded batches, and the step stream over one task's training data."""
import hashlib
import json
import logging
import math
import os

import numpy as np
import torch
import torch.distributed as dist

from file_utils import ConfigError, DataError, atomic_open
from training.features import FeatureTable

logger = logging.getLogger(__name__)

# A per-token label the loss does not score (the model's ignore_index).
IGNORE_INDEX = -100
# Padding when the caller passes none: the model's inputs with 0, any other per-token key (a label) with
# IGNORE_INDEX. A family declares its own `padding` ({feature key: pad value}, tasks.base.Task.padding) and the
# runner passes it to collate, FeatureList, EpochStream, make_stream and predict.
DEFAULT_PADDING = {"input_ids": 0, "token_type_ids": 0, "attention_mask": 0}


def cached_features(cache_dir, key_parts, build_fn):
    """Return build_fn() from an on-disk cache keyed by a hash of key_parts (built once, written atomically).

    key_parts should name everything the features depend on (vocab fingerprint, max_seq_length,
    task, file_utils.file_fingerprint(input)). build_fn returns plain data: a list of dicts (the same
    keys in each) whose values are numbers, strings, None, or (nested) lists/dicts of them. The result
    is a training.features.FeatureTable (columns of arrays), built or read; the cache file holds its
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
            features = FeatureTable.from_features(build_fn())  # as a cache read gives them
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


# 3: FeatureTable columns (lists of int lists as arrays too); 2: lists of ints only.
_CACHE_FORMAT = 3


def _write_feature_cache(path, key, table):
    arrays, layout = table.to_arrays()
    meta = {"format": _CACHE_FORMAT, "key": key, "layout": layout}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_feature_cache(path, key):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode("utf-8"))
        if meta.get("format") != _CACHE_FORMAT or meta.get("key") != key:
            raise ValueError("written for other inputs or by another version")
        return FeatureTable.from_arrays(z, meta["layout"])


def feature_lengths(features):
    """Token lengths of a FeatureTable or a list of feature dicts."""
    if isinstance(features, FeatureTable):
        return features.lengths
    return np.array([feature_length(f) for f in features], dtype=np.int64)


def collate_at(features, indices, pad_to=None, padding=None):
    """collate() of the features at `indices` (of a FeatureTable: padded straight from its arrays)."""
    if isinstance(features, FeatureTable):
        return features.collate(indices, pad_to, padding)
    return collate([features[i] for i in indices], pad_to, padding)


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


def pad_values(padding):
    """key -> pad value: `padding` ({feature key: pad value}) or, without one, DEFAULT_PADDING; a built
    attention_mask pads with 0."""
    if padding is None:
        return lambda key: DEFAULT_PADDING.get(key, IGNORE_INDEX)
    padding = dict(padding)

    def value(key):
        if key == "attention_mask":
            return padding.get(key, 0)
        if key not in padding:
            raise ValueError(f"feature key '{key}' is a per-token sequence but the padding declared for these "
                             f"features ({', '.join(sorted(padding))}) has no pad value for it")
        return padding[key]
    return value


def collate(features, pad_to=None, padding=None):
    """List of feature dicts (plain lists, unpadded) -> dict of tensors.

    Sequences are padded to the longest in the batch (or to max(pad_to, longest)) with the value
    `padding` gives each key ({feature key: pad value}, the family's declaration: a per-token key it
    does not name is a ValueError); without `padding`, DEFAULT_PADDING (the model's inputs with 0,
    any other per-token key, a label, with IGNORE_INDEX). The dtype comes from the data.
    `attention_mask` is built from the lengths when a feature has none (padded with 0).
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
    pad_value = pad_values(padding)
    batch = {}
    for key in keys:
        if key in seq_keys:
            continue
        values = [f[key] for f in features]
        is_float = any(isinstance(v, (float, np.floating)) for v in values)
        batch[key] = torch.tensor(values, dtype=torch.float32 if is_float else torch.long)
    for key in seq_keys:
        pad = pad_value(key)
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
    """One data epoch held as a list of feature dicts (plain lists) or a FeatureTable, in the data-epoch
    protocol of EpochStream: `lengths`, `batch(indices, pad_to)` (collated tensors) and `close()`."""

    def __init__(self, features, padding=None):
        self.features, self.padding = features, padding
        self.lengths = feature_lengths(features)

    def __len__(self):
        return len(self.features)

    def batch(self, indices, pad_to=None):
        return collate_at(self.features, indices, pad_to, self.padding)

    def close(self):
        pass


class EpochStream:
    """The step stream: optimizer steps over ONE task's training data, data epoch after data epoch.

    The data are either `features` (one list, the same in every epoch; the stream is endless) or
    `load_epoch(e)` with `epoch_sizes` (a data source per training epoch, e.g. the pregenerated
    MLM epochs or freshly sampled pairs; only one is held at a time; the stream ends after the
    last epoch). A data source has `lengths`, `batch(indices, pad_to)` and `close()`
    (`FeatureList`; `tasks.pretraining.PregeneratedEpoch`); `load_epoch` may also return a plain
    list of features, collated with `padding` ({feature key: pad value}, see collate).

    `batch_size` is the effective global batch of one optimizer step; a step is `accumulation`
    micro-batches of batch_size/accumulation examples (the last step of an epoch may have fewer).
    Batches come from `make_batches` with (seed, epoch), so the position (epoch, step) is the
    whole state and resume is exact; step counts depend only on example counts, so they are
    known before any data epoch is loaded."""

    def __init__(self, features=None, batch_size=32, accumulation=1, seed=0, task_id=0, group_by_length=True,
                 pad_to=None, rank=0, world_size=1, shuffle=True, load_epoch=None, epoch_sizes=None,
                 replay_first_epoch=False, pad_multiple=1, cross_pass_ends=False, padding=None):
        if batch_size % accumulation:
            raise ConfigError(f"train batch size {batch_size} is not divisible by gradient accumulation {accumulation}")
        if (features is None) == (load_epoch is None):
            raise ValueError("EpochStream needs either features or load_epoch (+ epoch_sizes)")
        if features is not None:
            if not features:
                raise ConfigError("no training features (empty training set?)")
            self._fixed = features if hasattr(features, "batch") else FeatureList(features, padding)
            self.epoch_sizes = None
        else:
            if not epoch_sizes or min(epoch_sizes) < 1:
                raise ConfigError("no training examples")
            self._fixed = None
            self.epoch_sizes = [int(n) for n in epoch_sizes]
        self.load_epoch = load_epoch
        self.padding = padding  # {feature key: pad value} of plain feature lists (collate)
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
                data = FeatureList(data, self.padding)
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
                epoch_sizes=None, pad_to=None, padding=None):
    """EpochStream configured from the options (batch size, accumulation, padding, ranks); the
    keyword arguments override the options for one task of a multi-task run. `padding`: the task
    family's {feature key: pad value} (collate)."""
    return EpochStream(features, batch_size or opts.train_batch_size, opts.gradient_accumulation_steps,
                       opts.seed if seed is None else seed, task_id=task_id, group_by_length=opts.group_by_length,
                       pad_to=pad_to or opts.pad_to, rank=env.rank, world_size=env.world_size,
                       load_epoch=load_epoch, epoch_sizes=epoch_sizes, replay_first_epoch=opts.replay_batch_cycle,
                       pad_multiple=opts.pad_multiple, cross_pass_ends=opts.reference_accumulation, padding=padding)


def num_training_steps(opts, steps_per_epoch):
    """Optimizer steps: --max_steps when given, else --num_train_epochs (fractional epochs allowed; at least 1)."""
    if opts.max_steps > 0:
        return opts.max_steps
    return max(1, math.ceil(steps_per_epoch * opts.num_train_epochs))
