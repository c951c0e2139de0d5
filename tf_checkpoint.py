"""Read Google's TensorFlow BERT checkpoints without TensorFlow, under Hugging Face BERT names.

Google's BERT releases (e.g. uncased_L-12_H-768_A-12/) and the outputs of its run_pretraining.py /
run_classifier.py hold a TF "tensor bundle" checkpoint: `<prefix>.index` plus data shards
`<prefix>.data-0000N-of-0000M`. This module reads that format directly:

- `find_tf_checkpoint(path)`: the checkpoint prefix in a folder (or the prefix itself), or None.
- `TFCheckpointReader(prefix)`: names, dtypes, shapes and tensors (each read on demand, straight
  into its final buffer, so a 440 MB checkpoint is never held twice).
- `load_tf_checkpoint(prefix)`: every BERT variable as a torch tensor under Hugging Face names
  (`bert.encoder.layer.0.attention.self.query.weight`, `cls.predictions.bias`, ...), plus the
  list of skipped names (optimizer slots, `global_step`, unknown variables) for the caller to log.

Why our own reader: the only pure-Python reader on PyPI, `tensorflow-checkpoint-reader` (0.2.2,
last release 2023-02, MIT), is a machine translation of TF's C++ that pins `protobuf<3.19` (which
conflicts with current transformers/protobuf), vendors ~390 generated files, has no tests, and
whose README says it is work in progress that "might not do anything at all". The format is
small and stable, so we decode it here with the standard library and numpy.

The format (tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc}, tensor_bundle.proto,
tensorflow/core/lib/io/{format,block,table}.cc, which follow LevelDB's table format):
- `.index` is an SSTable: data blocks of key/value entries (keys prefix-compressed against the
  previous key, with restart points every 16 entries), an index block mapping to the data
  blocks, a metaindex block, and a 48-byte footer (two block handles + padding + the magic
  0xdb4775248b80fb57). Each block is followed by a 5-byte trailer: compression type and the
  masked crc32c of block + type byte (verified here).
- Key "" holds a BundleHeaderProto (num_shards, endianness, version); every other key is a
  tensor name whose value is a BundleEntryProto (dtype, shape, shard_id, offset, size, masked
  crc32c of the tensor bytes, and `slices` for partitioned variables). The protobufs are decoded
  by hand (varints and length-delimited fields; no protobuf dependency).
- Data shards hold the raw tensor bytes (little-endian for a LITTLE bundle), aligned per entry.

What is supported: float32, float16, bfloat16 (-> torch.bfloat16), float64, int8/16/32/64,
uint8/16, bool; any number of shards; uncompressed blocks. What is refused, each with a one-line
ConfigError naming the file: snappy-compressed blocks (TF's BundleWriter forces
kNoCompression on the index table since TF 1.2, see TableBuilderOptions() in tensor_bundle.cc,
so no checkpoint of the BERT era has one), big-endian bundles, string/variant/complex/quantised
tensors, partitioned variables (entries with `slices`), a wrong magic, truncated or corrupt
files, missing shards, a tensor whose byte size does not match prod(shape) * itemsize, and one whose
bytes would lie outside its data shard (a negative offset, or more bytes than the shard has): each
entry is checked before its buffer is allocated, so a corrupt index never makes the reader allocate
what it claims.

Integrity: every tensor's crc32c is verified. crc32c is computed here with numpy (many lanes of
a slicing-by-4 table CRC, combined with GF(2) shift operators; about 170 MB/s on one core here,
2.6 s for a 440 MB BERT-base), so it is on by default and needs no extra package;
`verify_crc=False` skips it.

Checked on: the checkpoints in tests/fixtures (written by TF 2.21, single file and 2 shards), and
the real bert_model.ckpt.index of Google's Chinese BERT-base (206 tensors, every one mapped, shapes
as its bert_config.json implies; its 411 MB data file was not available).
"""
import functools
import logging
import math
import os
import re

import numpy as np

from file_utils import ConfigError

logger = logging.getLogger(__name__)

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
HEADER_KEY = b""

# TF DataType enum (tensorflow/core/framework/types.proto) -> (name, numpy dtype, torch dtype name).
# bfloat16 has no numpy dtype: its bytes are read as uint16 and reinterpreted by torch.
_DTYPES = {
    1: ("float32", np.dtype("<f4"), "float32"),
    2: ("float64", np.dtype("<f8"), "float64"),
    3: ("int32", np.dtype("<i4"), "int32"),
    4: ("uint8", np.dtype("u1"), "uint8"),
    5: ("int16", np.dtype("<i2"), "int16"),
    6: ("int8", np.dtype("i1"), "int8"),
    9: ("int64", np.dtype("<i8"), "int64"),
    10: ("bool", np.dtype("?"), "bool"),
    14: ("bfloat16", np.dtype("<u2"), "bfloat16"),
    17: ("uint16", np.dtype("<u2"), "uint16"),
    19: ("float16", np.dtype("<f2"), "float16"),
}
_UNSUPPORTED_DTYPES = {7: "string", 8: "complex64", 11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16",
                       16: "quint16", 18: "complex128", 20: "resource", 21: "variant", 22: "uint32",
                       23: "uint64"}


# ----------------------------------------------------------------------------------------------
# crc32c (Castagnoli), vectorised with numpy
# ----------------------------------------------------------------------------------------------

_CRC_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _crc_tables():
    t0 = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t0 = np.where(t0 & 1, (t0 >> 1) ^ np.uint32(_CRC_POLY), t0 >> 1).astype(np.uint32)
    tables = [t0]
    for _ in range(3):
        prev = tables[-1]
        tables.append(((prev >> 8) ^ t0[prev & 0xFF]).astype(np.uint32))
    return tables


_T0, _T1, _T2, _T3 = _crc_tables()
_T0_LIST = _T0.tolist()


def _crc_bytes_py(reg, data):
    """Register update over `data`, one byte at a time (small inputs, where numpy overhead dominates)."""
    table = _T0_LIST
    for b in data:
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


class _Shift:
    """The linear map 'feed n zero bytes into the CRC register', as four 256-entry byte tables."""

    def __init__(self, images):
        # images[i] = the map applied to the register value 1 << i
        self.images = np.asarray(images, dtype=np.uint32)
        bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1  # [256, 8]
        self.tables = []
        for byte in range(4):
            imgs = self.images[8 * byte: 8 * byte + 8]
            table = np.zeros(256, dtype=np.uint32)
            for j in range(8):
                table ^= np.where(bits[:, j] == 1, imgs[j], np.uint32(0)).astype(np.uint32)
            self.tables.append(table)

    def __call__(self, x):
        t0, t1, t2, t3 = self.tables
        return t0[x & 0xFF] ^ t1[(x >> 8) & 0xFF] ^ t2[(x >> 16) & 0xFF] ^ t3[x >> 24]

    def then(self, other):
        """The map `other(self(x))`."""
        return _Shift(other(self.images))


@functools.lru_cache(maxsize=None)
def _shift(nbytes):
    """_Shift for `nbytes` zero bytes (square-and-multiply over the one-byte map)."""
    if nbytes == 1:
        one = np.uint32(1) << np.arange(32, dtype=np.uint32)
        return _Shift(_T0[one & 0xFF] ^ (one >> 8))
    half = _shift(nbytes // 2)
    result = half.then(half)
    return result.then(_shift(1)) if nbytes % 2 else result


_MIN_VECTOR_BYTES = 1 << 12
_MAX_LANES = 1 << 14
_BLOCK_WORDS = 256


def _crc_update(reg, buf):
    """CRC register after feeding the bytes of `buf` (a uint8 numpy array) into register `reg`.

    Large inputs are cut into K equal chunks ("lanes") whose registers advance together, four
    bytes per numpy step (slicing-by-4 tables); the chunk registers are then folded pairwise with
    the zero-byte shift maps, since the register is linear in (initial register, data) over GF(2).
    """
    n = buf.size
    if n < _MIN_VECTOR_BYTES:
        return _crc_bytes_py(reg, buf.tobytes())
    words_total = n // 4
    lanes = 1 << min(int(math.log2(words_total // 16)), int(math.log2(_MAX_LANES)))
    lane_words = words_total // lanes
    main = lanes * lane_words * 4
    words = buf[:main].view("<u4").reshape(lanes, lane_words)
    regs = np.zeros(lanes, dtype=np.uint32)
    for start in range(0, lane_words, _BLOCK_WORDS):
        # transpose a block of columns so that each step reads one contiguous row of K words
        block = np.ascontiguousarray(words[:, start:start + _BLOCK_WORDS].T)
        for row in block:
            x = regs ^ row
            regs = _T3[x & 0xFF] ^ _T2[(x >> 8) & 0xFF] ^ _T1[(x >> 16) & 0xFF] ^ _T0[x >> 24]
    span = lane_words * 4
    while regs.size > 1:
        regs = _shift(span)(regs[0::2]) ^ regs[1::2]
        span *= 2
    combined = int(_shift(main)(np.array([reg], dtype=np.uint32))[0]) ^ int(regs[0])
    return _crc_update(combined, buf[main:])


def crc32c(data):
    """crc32c of bytes / a bytes-like object / a numpy array's raw bytes."""
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    return _crc_update(0xFFFFFFFF, buf) ^ 0xFFFFFFFF


def unmask_crc(masked):
    """TF/LevelDB store crc32c 'masked' (rotated + constant) so CRCs of CRCs stay well-behaved."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def mask_crc(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# Varints and protobuf messages
# ----------------------------------------------------------------------------------------------

class _Corrupt(Exception):
    """Malformed bytes; turned into a ConfigError naming the file by the caller."""


def _varint(buf, pos):
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("varint longer than 10 bytes")


def _signed64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_message(buf):
    """Decode a protobuf message into {field number: [values]} (ints, or bytes for wire type 2)."""
    fields, pos, end = {}, 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise _Corrupt("truncated fixed64 field")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Corrupt("truncated length-delimited field")
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire == 5:
            if pos + 4 > end:
                raise _Corrupt("truncated fixed32 field")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise _Corrupt(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _last(fields, number, default=0):
    values = fields.get(number)
    return values[-1] if values else default  # proto3: the last occurrence of a scalar wins


class TensorEntry:
    """One BundleEntryProto: where a tensor's bytes are and what they are."""

    __slots__ = ("name", "dtype_enum", "shape", "shard_id", "offset", "size", "crc32c", "num_slices")

    def __init__(self, name, raw):
        fields = _parse_message(raw)
        self.name = name
        self.dtype_enum = _last(fields, 1)
        shape = _parse_message(_last(fields, 2, b""))
        if _last(shape, 3):
            raise _Corrupt(f"tensor '{name}' has an unknown rank")
        self.shape = tuple(_signed64(_last(_parse_message(d), 1)) for d in shape.get(2, []))
        if any(d < 0 for d in self.shape):
            raise _Corrupt(f"tensor '{name}' has an invalid shape {list(self.shape)}")
        self.shard_id = _last(fields, 3)
        self.offset = _signed64(_last(fields, 4))
        self.size = _signed64(_last(fields, 5))
        self.crc32c = _last(fields, 6)
        self.num_slices = len(fields.get(7, []))

    @property
    def dtype(self):
        """TF dtype name ('float32', 'bfloat16', ...; 'dtype_<n>' if unknown)."""
        if self.dtype_enum in _DTYPES:
            return _DTYPES[self.dtype_enum][0]
        return _UNSUPPORTED_DTYPES.get(self.dtype_enum, f"dtype_{self.dtype_enum}")


# ----------------------------------------------------------------------------------------------
# SSTable (.index)
# ----------------------------------------------------------------------------------------------

def _block_handle(buf, pos):
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


def _read_block(data, handle, what):
    offset, size = handle
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(data):
        raise _Corrupt(f"{what} block [{offset}, {end}) runs past the end of the file ({len(data)} bytes)")
    block = data[offset:offset + size]
    kind = data[offset + size]
    stored = int.from_bytes(data[offset + size + 1:end], "little")
    if unmask_crc(stored) != crc32c(data[offset:offset + size + 1]):
        raise _Corrupt(f"{what} block at byte {offset} fails its crc32c check (corrupt file)")
    if kind == 1:
        raise _Corrupt(f"{what} block at byte {offset} is snappy-compressed, which TensorFlow has not written "
                       "since 1.2 and this reader does not support (re-save the checkpoint with TF >= 1.2)")
    if kind != 0:
        raise _Corrupt(f"{what} block at byte {offset} has unknown compression type {kind}")
    return block


def _block_entries(block, what):
    """(key, value) pairs of one block, keys restored from their shared prefixes."""
    if len(block) < 4:
        raise _Corrupt(f"{what} block too short")
    num_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts < 1 or limit < 0:
        raise _Corrupt(f"{what} block has a bad restart array")
    restarts = {int.from_bytes(block[limit + 4 * i: limit + 4 * i + 4], "little") for i in range(num_restarts)}
    pos, key = 0, b""
    while pos < limit:
        at = pos
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if (at in restarts and shared) or shared > len(key) or pos + non_shared + value_len > limit:
            raise _Corrupt(f"{what} block has a malformed entry at byte {at}")
        key = key[:shared] + bytes(block[pos:pos + non_shared])
        pos += non_shared
        yield key, block[pos:pos + value_len]
        pos += value_len


def _read_table(path):
    """All (key, value) pairs of an SSTable file, in key order."""
    try:
        with open(path, "rb") as f:
            data = memoryview(f.read())  # index files are small (KBs, even for BERT-large)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read checkpoint index: {exc.strerror or exc}") from None
    try:
        if len(data) < FOOTER_SIZE:
            raise _Corrupt(f"file is {len(data)} bytes, shorter than the {FOOTER_SIZE}-byte table footer "
                           "(truncated?)")
        footer = data[-FOOTER_SIZE:]
        magic = int.from_bytes(footer[-8:], "little")
        if magic != TABLE_MAGIC:
            raise _Corrupt(f"not a TensorFlow checkpoint index (table magic {magic:#018x}, expected "
                           f"{TABLE_MAGIC:#018x}; truncated or another file type?)")
        _, pos = _block_handle(footer, 0)  # metaindex: empty in TF tables (no filter policy)
        index_handle, _ = _block_handle(footer, pos)
        entries, previous = [], None
        for _, handle_bytes in _block_entries(_read_block(data, index_handle, "index"), "index"):
            handle, _ = _block_handle(handle_bytes, 0)
            for key, value in _block_entries(_read_block(data, handle, "data"), "data"):
                if previous is not None and key <= previous:
                    raise _Corrupt("keys are not in increasing order")
                previous = key
                entries.append((key, value))
        return entries
    except _Corrupt as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# The bundle reader
# ----------------------------------------------------------------------------------------------

def data_filename(prefix, shard_id, num_shards):
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


class TFCheckpointReader:
    """Read-only view of a TF tensor bundle. Use as a context manager (it keeps shard files open)."""

    def __init__(self, prefix):
        self.prefix = os.fspath(prefix)
        self.index_path = self.prefix + ".index"
        if not os.path.isfile(self.index_path):
            raise ConfigError(f"{self.index_path}: no such checkpoint index file")
        entries = _read_table(self.index_path)
        if not entries or entries[0][0] != HEADER_KEY:
            raise ConfigError(f"{self.index_path}: no bundle header entry (not a TF2-format checkpoint index?)")
        try:
            header = _parse_message(entries[0][1])
            self.num_shards = _last(header, 1)
            endianness = _last(header, 2)
            version = _parse_message(_last(header, 3, b""))
            self._entries = {}
            for key, value in entries[1:]:
                if key[:1] == b"\x00":
                    # Per-slice entries of partitioned variables (keys made by EncodeTensorNameSlice);
                    # the full variable has its own entry, refused when read.
                    continue
                name = key.decode("utf-8", errors="replace")
                self._entries[name] = TensorEntry(name, value)
        except _Corrupt as exc:
            raise ConfigError(f"{self.index_path}: {exc}") from None
        if endianness != 0:
            raise ConfigError(f"{self.index_path}: big-endian checkpoint; only little-endian bundles are supported")
        min_consumer = _last(version, 2)
        if min_consumer > 1 or 1 in version.get(3, []):
            raise ConfigError(f"{self.index_path}: written by a newer tensor-bundle format "
                              f"(min_consumer {min_consumer}); this reader understands version 1")
        if self.num_shards < 1:
            raise ConfigError(f"{self.index_path}: header says {self.num_shards} data shards")
        for entry in self._entries.values():
            if entry.num_slices == 0 and not 0 <= entry.shard_id < self.num_shards:
                raise ConfigError(f"{self.index_path}: tensor '{entry.name}' is in shard {entry.shard_id} "
                                  f"but the bundle has {self.num_shards}")
        self._shard_sizes = {}
        for shard in range(self.num_shards):
            path = data_filename(self.prefix, shard, self.num_shards)
            if not os.path.isfile(path):
                raise ConfigError(f"{path}: missing data shard {shard + 1} of {self.num_shards} of checkpoint "
                                  f"{self.prefix}")
            self._shard_sizes[shard] = os.path.getsize(path)
        self._files = {}

    # -- listing --------------------------------------------------------------------------------
    def names(self):
        """Tensor names, sorted (as in the index)."""
        return list(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def entry(self, name):
        if name not in self._entries:
            raise KeyError(f"no tensor '{name}' in checkpoint {self.prefix}")
        return self._entries[name]

    def shapes(self):
        """{name: (dtype name, shape)} without reading any tensor data."""
        return {n: (e.dtype, e.shape) for n, e in self._entries.items()}

    # -- reading --------------------------------------------------------------------------------
    def _file(self, shard_id):
        if shard_id not in self._files:
            path = data_filename(self.prefix, shard_id, self.num_shards)
            try:
                self._files[shard_id] = open(path, "rb")
            except OSError as exc:
                raise ConfigError(f"{path}: cannot open data shard: {exc.strerror or exc}") from None
        return self._files[shard_id]

    def check(self, name):
        """The numpy dtype of tensor `name`, once its entry is shown to be readable as it claims: a whole
        tensor of a supported dtype whose byte size fits its shape and whose bytes lie inside its data
        shard. Checked before any buffer is allocated, so an index that claims a 16 TiB tensor (or a
        negative offset) is a one-line error, not an allocation or a seek error."""
        entry = self.entry(name)
        if entry.num_slices:
            raise ConfigError(f"{self.index_path}: tensor '{name}' is saved as {entry.num_slices} slices "
                              "(a partitioned variable); only whole tensors are supported")
        if entry.dtype_enum not in _DTYPES:
            raise ConfigError(f"{self.index_path}: tensor '{name}' has dtype {entry.dtype}, which is not supported "
                              f"(supported: {', '.join(sorted(d[0] for d in _DTYPES.values()))})")
        np_dtype = _DTYPES[entry.dtype_enum][1]
        expected = math.prod(entry.shape) * np_dtype.itemsize
        if entry.size != expected:
            raise ConfigError(f"{self.index_path}: tensor '{name}' claims {entry.size} bytes but its shape "
                              f"{list(entry.shape)} of {entry.dtype} needs {expected} (corrupt index)")
        path = data_filename(self.prefix, entry.shard_id, self.num_shards)
        available = self._shard_sizes[entry.shard_id]
        if entry.offset < 0 or entry.offset + entry.size > available:
            raise ConfigError(f"{self.index_path}: tensor '{name}' (shape {list(entry.shape)}, {entry.dtype}) claims "
                              f"bytes [{entry.offset}, {entry.offset + entry.size}) of {path}, which has "
                              f"{available} bytes (corrupt index, or a truncated shard)")
        return np_dtype

    def read_numpy(self, name, verify_crc=True):
        """The tensor as a numpy array (bfloat16 comes back as its uint16 bit patterns)."""
        entry = self.entry(name)
        np_dtype = self.check(name)
        expected = entry.size
        path = data_filename(self.prefix, entry.shard_id, self.num_shards)
        array = np.empty(math.prod(entry.shape), dtype=np_dtype)
        if expected:
            f = self._file(entry.shard_id)
            f.seek(entry.offset)
            got = f.readinto(memoryview(array).cast("B"))
            if got != expected:  # the shard shrank since the reader opened
                raise ConfigError(f"{path}: tensor '{name}' needs bytes [{entry.offset}, {entry.offset + expected}) "
                                  f"but the file ends at byte {entry.offset + got} (truncated shard)")
        if verify_crc:
            actual = crc32c(array.view(np.uint8))
            if actual != unmask_crc(entry.crc32c):
                raise ConfigError(f"{path}: tensor '{name}' fails its crc32c check (corrupt data shard)")
        return array.reshape(entry.shape)

    def read(self, name, verify_crc=True):
        """The tensor as a torch tensor (sharing memory with the buffer it was read into)."""
        import torch
        entry = self.entry(name)
        array = self.read_numpy(name, verify_crc=verify_crc)
        tensor = torch.from_numpy(array)
        if _DTYPES[entry.dtype_enum][2] == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        return tensor

    def close(self):
        for f in self._files.values():
            f.close()
        self._files = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------------
# Finding a checkpoint
# ----------------------------------------------------------------------------------------------

_STATE_RE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"\s*$')


def _read_checkpoint_state(folder):
    """The prefix named by a `checkpoint` text file (CheckpointState proto, text format)."""
    path = os.path.join(folder, "checkpoint")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read checkpoint state file: {exc}") from None
    for line in lines:
        m = _STATE_RE.match(line)
        if m:
            name = re.sub(r"\\(.)", r"\1", m.group(1))
            prefix = name if os.path.isabs(name) else os.path.join(folder, name)
            if not os.path.isfile(prefix + ".index") and os.path.isabs(name):
                # a training folder copied from another machine keeps its old absolute paths
                moved = os.path.join(folder, os.path.basename(name))
                if os.path.isfile(moved + ".index"):
                    logger.info("%s names %s; using %s in the same folder", path, name, moved)
                    return moved
            if not os.path.isfile(prefix + ".index"):
                raise ConfigError(f"{path}: names checkpoint '{name}' but {prefix}.index does not exist")
            return prefix
    raise ConfigError(f"{path}: no model_checkpoint_path line")


def _check_data_files(prefix):
    """A clear error when an index has no (or an incomplete set of) data shards beside it."""
    folder, base = os.path.split(prefix)
    pattern = re.compile(re.escape(base) + r"\.data-(\d{5})-of-(\d{5})$")
    found = {}
    for name in os.listdir(folder or "."):
        m = pattern.match(name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if not found:
        raise ConfigError(f"{prefix}.index: no data file {os.path.basename(data_filename(prefix, 0, 1))} "
                          "(or other shards) beside it")
    for total, shards in found.items():
        missing = [s for s in range(total) if s not in shards]
        if missing:
            raise ConfigError(f"{data_filename(prefix, missing[0], total)}: missing data shard "
                              f"{missing[0] + 1} of {total} of checkpoint {prefix}")


def find_tf_checkpoint(path):
    """Prefix of the TF checkpoint at `path` (a folder, a prefix, or a .index file), or None.

    A folder with a `checkpoint` file uses the prefix it names; otherwise exactly one `*.index`
    must be there (several without a `checkpoint` file is a ConfigError). The data shards are
    checked to exist.
    """
    path = os.fspath(path)
    if path.endswith(".index") and os.path.isfile(path):
        path = path[:-len(".index")]
    if os.path.isfile(path + ".index"):
        _check_data_files(path)
        return path
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, "checkpoint")):
        prefix = _read_checkpoint_state(path)
        _check_data_files(prefix)
        return prefix
    candidates = sorted(n[:-len(".index")] for n in os.listdir(path)
                        if n.endswith(".index") and os.path.isfile(os.path.join(path, n)))
    if not candidates:
        return None
    if len(candidates) > 1:
        raise ConfigError(f"{path}: several TF checkpoints ({', '.join(candidates)}) and no `checkpoint` file "
                          "to say which one to use; pass the prefix (e.g. {0}/{1})".format(path, candidates[-1]))
    prefix = os.path.join(path, candidates[0])
    _check_data_files(prefix)
    return prefix


# ----------------------------------------------------------------------------------------------
# Google BERT names -> Hugging Face names
# ----------------------------------------------------------------------------------------------

_LAYER_PARTS = r"(attention/self/(?:query|key|value)|attention/output/dense|intermediate/dense|output/dense)"
_LN_PARTS = r"(attention/output/LayerNorm|output/LayerNorm)"
_PARAM = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}

# (pattern, Hugging Face name template). Dense kernels are [in, out] in TF and [out, in] in torch,
# so every `.../kernel` is transposed; `output_weights` are already [out, in] (Google multiplies
# with transpose_b=True), as are embedding tables. Checked against google-research/bert
# (modeling.py, run_pretraining.py, run_classifier.py, run_squad.py) and Hugging Face's former
# load_tf_weights_in_bert (transformers 4.x modeling_bert.py).
_NAME_RULES = [
    (r"bert/embeddings/(word|position|token_type)_embeddings", r"bert.embeddings.\1_embeddings.weight"),
    (r"bert/embeddings/LayerNorm/(gamma|beta)", r"bert.embeddings.LayerNorm.{\1}"),
    (r"bert/encoder/layer_(\d+)/" + _LAYER_PARTS + r"/(kernel|bias)", r"bert.encoder.layer.\1.{\2}.{\3}"),
    (r"bert/encoder/layer_(\d+)/" + _LN_PARTS + r"/(gamma|beta)", r"bert.encoder.layer.\1.{\2}.{\3}"),
    (r"bert/pooler/dense/(kernel|bias)", r"bert.pooler.dense.{\1}"),
    (r"cls/predictions/transform/dense/(kernel|bias)", r"cls.predictions.transform.dense.{\1}"),
    (r"cls/predictions/transform/LayerNorm/(gamma|beta)", r"cls.predictions.transform.LayerNorm.{\1}"),
    (r"cls/predictions/output_bias", "cls.predictions.bias"),
    (r"cls/seq_relationship/output_weights", "cls.seq_relationship.weight"),
    (r"cls/seq_relationship/output_bias", "cls.seq_relationship.bias"),
    (r"output_weights", "classifier.weight"),        # run_classifier.py head, [num_labels, hidden]
    (r"output_bias", "classifier.bias"),
    (r"cls/squad/output_weights", "qa_outputs.weight"),  # run_squad.py head, [2, hidden]
    (r"cls/squad/output_bias", "qa_outputs.bias"),
]
_NAME_RULES = [(re.compile(p + "$"), t) for p, t in _NAME_RULES]
_OPTIMIZER_RE = re.compile(r"(^|/)(adam_m|adam_v|Adam(_\d+)?|Momentum|AdamWeightDecayOptimizer(_\d+)?|"
                           r"LAMB(_\d+)?|beta1_power|beta2_power)(/|$)")


def optimizer_slot(tf_name):
    """The optimizer slot kind ('adam_m', 'Adam_1', 'beta1_power', ...) of a variable name, or None."""
    m = _OPTIMIZER_RE.search(tf_name)
    return m.group(2) if m else None


def hf_name(tf_name):
    """(Hugging Face name, transpose?) for a Google BERT variable name, or None if it is not one."""
    if optimizer_slot(tf_name):
        return None
    for pattern, template in _NAME_RULES:
        m = pattern.match(tf_name)
        if m:
            name = m.expand(template)
            name = re.sub(r"\{([^}]*)\}", lambda g: _PARAM.get(g.group(1), g.group(1).replace("/", ".")), name)
            return name, tf_name.endswith("/kernel")
    return None


def load_tf_checkpoint(path, verify_crc=True, expected_shapes=None, against="the config"):
    """Read a Google BERT TF checkpoint -> ({Hugging Face name: torch tensor}, [skipped TF names]).

    `path`: a checkpoint prefix (`.../bert_model.ckpt`) or a folder holding one. Dense kernels are
    transposed to torch's [out, in]; optimizer slots, `global_step` and unknown variables are not
    read, only listed in the second return value for the caller to log. Every tensor to be read is
    checked first (TFCheckpointReader.check, and its shape against `expected_shapes`, {Hugging Face
    name: shape} as `against` describes it), so a bad entry is refused before any tensor is read.
    """
    prefix = find_tf_checkpoint(path)
    if prefix is None:
        raise ConfigError(f"{path}: no TensorFlow checkpoint (no *.index file or `checkpoint` file)")
    state, skipped, plan = {}, [], []
    with TFCheckpointReader(prefix) as reader:
        for name in reader.names():
            mapped = hf_name(name)
            if mapped is None:
                skipped.append(name)
                continue
            target, transpose = mapped
            reader.check(name)
            shape = reader.entry(name).shape
            if transpose:
                if len(shape) != 2:
                    raise ConfigError(f"{reader.index_path}: '{name}' should be a 2-d kernel, has shape {list(shape)}")
                shape = shape[::-1]
            want = (expected_shapes or {}).get(target)
            if want is not None and tuple(want) != tuple(shape):
                raise ConfigError(f"{reader.index_path}: '{name}' ({target}) has shape {list(shape)} but {against} "
                                  f"implies {list(want)}")
            plan.append((name, target, transpose))
        for name, target, transpose in plan:
            tensor = reader.read(name, verify_crc=verify_crc)
            state[target] = tensor.t().contiguous() if transpose else tensor
    if not state:
        raise ConfigError(f"{prefix}.index: no Google BERT variables (bert/embeddings/..., bert/encoder/...) "
                          f"among its {len(skipped)} tensors")
    logger.info("read %d tensors from %s; skipped %d (optimizer slots, global_step, unknown)",
                len(state), prefix, len(skipped))
    return state, skipped


def expected_shapes(config):
    """{Hugging Face name: shape} of a BERT encoder as a bert_config.json describes it."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "bert.embeddings.word_embeddings.weight": (config["vocab_size"], h),
        "bert.embeddings.position_embeddings.weight": (config["max_position_embeddings"], h),
        "bert.embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
        "bert.embeddings.LayerNorm.weight": (h,), "bert.embeddings.LayerNorm.bias": (h,),
        "bert.pooler.dense.weight": (h, h), "bert.pooler.dense.bias": (h,),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h, h), (h,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (inter, h), (inter,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (h, inter), (h,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h,), (h,)
    return shapes
