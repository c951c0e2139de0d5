"""Features as columns of numpy arrays: what the feature cache reads into and what the engine batches from.

A family builds its features as a list of dicts (one per example window: input ids, labels, metadata).
Kept that way, a large training set costs several Python objects per token, and every batch is padded
row by row. A FeatureTable holds each key as one column instead: lists of ints as one flat int64 array
plus offsets, lists of int lists (multiple choice) with a second level of offsets, numbers as one array,
anything else (strings, dicts) as a list of Python values. It is a read-only sequence of feature dicts
(`table[i]` builds one dict with the same Python values the family built, for the metadata readers),
has `lengths` for the batchers, and `collate(indices, pad_to, padding)` pads a batch straight from the
arrays, equal to `training.data.collate` on the same dicts (tests/test_feature_table.py); a batch it
cannot build from arrays (a numeric column that is not one of the array kinds) goes through that
collate. Memory and speed against the list form: docs/benchmarks.md#feature-tables."""
import collections.abc

import numpy as np
import torch


def _int_list(v):
    return isinstance(v, list) and all(type(x) is int for x in v)


class _Ragged:
    """A list of int lists: values[offsets[i]:offsets[i + 1]] is row i."""
    kind, depth = "ragged", 1

    def __init__(self, data, offsets):
        self.data, self.offsets = data, offsets

    @classmethod
    def of(cls, values):
        data = np.fromiter((x for v in values for x in v), dtype=np.int64)
        return cls(data, np.cumsum([0] + [len(v) for v in values], dtype=np.int64))

    def row(self, i):
        return self.data[self.offsets[i]:self.offsets[i + 1]].tolist()

    def lengths(self, indices=None):
        if indices is None:
            return np.diff(self.offsets)
        return self.offsets[indices + 1] - self.offsets[indices]

    def arrays(self):
        return {"data": self.data, "offsets": self.offsets}

    def __len__(self):
        return len(self.offsets) - 1

    def mask(self, indices, seq_len, pad):
        """1 where row i has a token, `pad` after its end: the attention mask built from its lengths."""
        return _mask(self.lengths(indices), seq_len, pad)

    def pad(self, indices, seq_len, pad):
        starts, lens = self.offsets[indices], self.lengths(indices)
        return _scatter(self.data, starts, lens, (len(indices), seq_len), pad)


class _Nested:
    """A list of lists of int lists (choices x tokens): row i is sequences outer[i]:outer[i + 1], sequence j
    is data[inner[j]:inner[j + 1]]."""
    kind, depth = "nested", 2

    def __init__(self, data, inner, outer):
        self.data, self.inner, self.outer = data, inner, outer

    @classmethod
    def of(cls, values):
        sequences = [s for v in values for s in v]
        ragged = _Ragged.of(sequences)
        return cls(ragged.data, ragged.offsets, np.cumsum([0] + [len(v) for v in values], dtype=np.int64))

    def row(self, i):
        return [self.data[self.inner[j]:self.inner[j + 1]].tolist() for j in range(self.outer[i], self.outer[i + 1])]

    def lengths(self, indices=None):
        """Per row, its longest sequence (0 for a row without sequences)."""
        if indices is not None:
            return np.array([max((self.inner[j + 1] - self.inner[j] for j in range(self.outer[i], self.outer[i + 1])),
                                 default=0) for i in indices], dtype=np.int64)
        seq_lengths = np.diff(self.inner)
        counts = np.diff(self.outer)
        out = np.zeros(len(counts), dtype=np.int64)
        full = counts > 0
        if full.any():
            out[full] = np.maximum.reduceat(seq_lengths, self.outer[:-1][full])
        return out

    def arrays(self):
        return {"data": self.data, "inner": self.inner, "outer": self.outer}

    def __len__(self):
        return len(self.outer) - 1

    def mask(self, indices, seq_len, pad):
        counts = self.choices(indices)
        k = int(counts.max()) if len(counts) else 0
        lens = np.zeros((len(indices), k), dtype=np.int64)  # a missing choice: no token
        for row, i in enumerate(indices):
            lens[row, :counts[row]] = np.diff(self.inner[self.outer[i]:self.outer[i + 1] + 1])
        return _mask(lens.reshape(-1), seq_len, pad).reshape(len(indices), k, seq_len)

    def choices(self, indices):
        return self.outer[indices + 1] - self.outer[indices]

    def pad(self, indices, seq_len, pad):
        counts = self.choices(indices)
        k = int(counts.max()) if len(counts) else 0
        # Sequence j of row i goes to flat row i * k + j of a [B * k, S] array.
        seqs = np.concatenate([np.arange(self.outer[i], self.outer[i + 1]) for i in indices]) \
            if len(indices) else np.zeros(0, dtype=np.int64)
        slots = np.concatenate([i * k + np.arange(c) for i, c in enumerate(counts)]) if len(counts) else seqs
        lens = self.inner[seqs + 1] - self.inner[seqs]
        flat = np.full((len(indices) * k, seq_len), pad, dtype=np.int64)
        flat[slots] = _scatter(self.data, self.inner[seqs], lens, (len(seqs), seq_len), pad)
        return flat.reshape(len(indices), k, seq_len)


class _Scalars:
    """One int or float per row."""
    kind, depth = "scalars", 0

    def __init__(self, values):
        self.values = values

    def __len__(self):
        return len(self.values)

    def row(self, i):
        return self.values[i].item()

    def arrays(self):
        return {"ints" if self.values.dtype == np.int64 else "floats": self.values}


class _Objects:
    """Anything else (strings, dicts, lists with None): the Python values themselves."""
    kind, depth = "objects", None

    def __init__(self, values):
        self.values = values

    def __len__(self):
        return len(self.values)

    def row(self, i):
        return self.values[i]


def _scatter(data, starts, lens, shape, pad):
    """A `shape` int64 array of `pad` whose row r holds data[starts[r]:starts[r] + lens[r]] from column 0."""
    out = np.full(shape, pad, dtype=np.int64)
    total = int(lens.sum())
    if total:
        rows = np.repeat(np.arange(len(lens)), lens)
        cols = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        out[rows, cols] = data[np.repeat(starts, lens) + cols]
    return out


def _mask(lens, seq_len, pad):
    return np.where(np.arange(seq_len) < lens[:, None], 1, pad).astype(np.int64)


def _column(values):
    if all(_int_list(v) for v in values):
        return _Ragged.of(values)
    if all(isinstance(v, list) and all(_int_list(s) for s in v) for v in values):
        return _Nested.of(values)
    if all(type(v) is int for v in values):
        return _Scalars(np.asarray(values, dtype=np.int64))
    if all(type(v) is float for v in values):
        return _Scalars(np.asarray(values, dtype=np.float64))
    return _Objects(list(values))


class FeatureTable(collections.abc.Sequence):
    """Features as columns (see the module docstring). Build with `from_features` or `from_arrays`."""

    def __init__(self, count, columns):
        self.count, self.columns = int(count), dict(columns)
        self._lengths = None

    @classmethod
    def from_features(cls, features):
        """A list of feature dicts (every one with the same keys, in the same order) -> a table."""
        keys = list(features[0]) if features else []
        if any(list(f) != keys for f in features):
            raise ValueError("features have different keys")
        return cls(len(features), {name: _column([f[name] for f in features]) for name in keys})

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"feature {i} of {self.count}")
        return {name: column.row(i) for name, column in self.columns.items()}

    def pop_column(self, name):
        """Remove a column and return its values, one per feature (metadata the family keeps apart)."""
        column = self.columns.pop(name)
        return [column.row(i) for i in range(self.count)]

    @property
    def lengths(self):
        """Token length of each feature's input_ids (multiple choice: its longest choice)."""
        if self._lengths is None:
            self._lengths = self.columns["input_ids"].lengths() if self.count else np.zeros(0, dtype=np.int64)
        return self._lengths

    # -- the cache's arrays ----------------------------------------------------------------------

    def to_arrays(self):
        """({array name: array}, JSON-able description): what training.data writes into the cache file."""
        arrays, layout = {}, []
        for k, (name, column) in enumerate(self.columns.items()):
            if column.kind == "objects":
                layout.append({"name": name, "kind": "objects", "values": column.values})
                continue
            parts = column.arrays()
            arrays.update({f"c{k}_{part}": array for part, array in parts.items()})
            layout.append({"name": name, "kind": column.kind, "parts": sorted(parts)})
        return arrays, {"count": self.count, "columns": layout}

    @classmethod
    def from_arrays(cls, arrays, description):
        """The inverse of to_arrays (arrays: a mapping such as an open np.load)."""
        columns = {}
        for k, spec in enumerate(description["columns"]):
            kind = spec["kind"]
            if kind == "objects":
                columns[spec["name"]] = _Objects(spec["values"])
                continue
            parts = {part: np.asarray(arrays[f"c{k}_{part}"]) for part in spec["parts"]}
            if kind == "ragged":
                columns[spec["name"]] = _Ragged(parts["data"], parts["offsets"])
            elif kind == "nested":
                columns[spec["name"]] = _Nested(parts["data"], parts["inner"], parts["outer"])
            elif kind == "scalars":
                columns[spec["name"]] = _Scalars(next(iter(parts.values())))
            else:
                raise ValueError(f"unknown column kind {kind!r}")
        for name, column in columns.items():
            if len(column) != description["count"]:
                raise ValueError(f"column {name!r} has {len(column)} rows, the table {description['count']}")
        return cls(description["count"], columns)

    # -- batches ---------------------------------------------------------------------------------

    def collate(self, indices, pad_to=None, padding=None):
        """The features at `indices` as a batch of tensors: training.data.collate's result on the same
        dicts, padded from the arrays."""
        from training.data import _depth, collate, pad_values
        indices = np.asarray(indices, dtype=np.int64)
        if not len(indices):
            raise ValueError("collate() got an empty batch")
        first = int(indices[0])
        numeric = [name for name, c in self.columns.items() if c.kind != "objects" or _depth(c.row(first)) >= 0]
        if any(self.columns[n].kind == "objects" for n in numeric) or any(
                self.columns[n].kind == "nested" and (self.columns[n].choices(indices) == 0).any() for n in numeric):
            return collate([self[int(i)] for i in indices], pad_to, padding)  # not an array-kind batch
        seq = [n for n in numeric if self.columns[n].depth >= 1]
        build_mask = "input_ids" in self.columns and "attention_mask" not in self.columns
        longest = int(self.columns["input_ids"].lengths(indices).max()) if "input_ids" in self.columns else \
            int(self.columns[seq[0]].lengths(indices).max()) if seq else 0
        seq_len = max(longest, pad_to or 0)
        pad_value = pad_values(padding)
        batch = {}
        for name in numeric:
            column = self.columns[name]
            if column.depth == 0:
                values = column.values[indices]
                batch[name] = torch.from_numpy(values.astype(np.float32) if values.dtype == np.float64 else values)
        for name in seq:
            batch[name] = torch.from_numpy(self.columns[name].pad(indices, seq_len, pad_value(name)))
        if build_mask:
            mask = self.columns["input_ids"].mask(indices, seq_len, pad_value("attention_mask"))
            batch["attention_mask"] = torch.from_numpy(mask)
        return batch
