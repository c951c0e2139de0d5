"""tf_checkpoint.py and scripts/convert_tf_checkpoint.py against checkpoints written by real TensorFlow.

The fixtures (tests/fixtures/tf_*; made by tests/fixtures/make_tf_checkpoint.py with TF 2.21) come
with what TensorFlow itself read back (values.npz) and a forward pass TensorFlow computed from the
variables (forward.npz): the loader must reproduce every tensor bit for bit, and a model built
from the converted folder (ours and Hugging Face's) must reproduce TensorFlow's outputs, which
checks names, transposes and head layouts end to end. No TensorFlow is needed here.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

import tf_checkpoint
from file_utils import ConfigError
from tf_checkpoint import TFCheckpointReader, crc32c, find_tf_checkpoint, load_tf_checkpoint
from tree_scripts import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TINY = os.path.join(FIXTURES, "tf_bert_tiny")
SHARDED = os.path.join(FIXTURES, "tf_bert_tiny_sharded")
DTYPES = os.path.join(FIXTURES, "tf_dtypes")
CONVERT = os.path.join(ROOT, "scripts", "convert_tf_checkpoint.py")
convert_tf_checkpoint = load_script("scripts/convert_tf_checkpoint.py")


@pytest.fixture(scope="module")
def tf_values():
    with np.load(os.path.join(TINY, "values.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tf_forward():
    with np.load(os.path.join(TINY, "forward.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("converted") / "bert")
    convert_tf_checkpoint.convert(TINY, out)
    return out


def _reference_crc32c(data):
    """Bit-at-a-time crc32c straight from the polynomial: slow, but independent of the tables."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _expected_hf_names(num_layers):
    """Google name -> (Hugging Face name, transposed?), written out by hand from google-research/bert
    modeling.py / run_pretraining.py / run_classifier.py and HF's BERT module names."""
    names = {
        "bert/embeddings/word_embeddings": ("bert.embeddings.word_embeddings.weight", False),
        "bert/embeddings/position_embeddings": ("bert.embeddings.position_embeddings.weight", False),
        "bert/embeddings/token_type_embeddings": ("bert.embeddings.token_type_embeddings.weight", False),
        "bert/embeddings/LayerNorm/gamma": ("bert.embeddings.LayerNorm.weight", False),
        "bert/embeddings/LayerNorm/beta": ("bert.embeddings.LayerNorm.bias", False),
        "bert/pooler/dense/kernel": ("bert.pooler.dense.weight", True),
        "bert/pooler/dense/bias": ("bert.pooler.dense.bias", False),
        "cls/predictions/transform/dense/kernel": ("cls.predictions.transform.dense.weight", True),
        "cls/predictions/transform/dense/bias": ("cls.predictions.transform.dense.bias", False),
        "cls/predictions/transform/LayerNorm/gamma": ("cls.predictions.transform.LayerNorm.weight", False),
        "cls/predictions/transform/LayerNorm/beta": ("cls.predictions.transform.LayerNorm.bias", False),
        "cls/predictions/output_bias": ("cls.predictions.bias", False),
        "cls/seq_relationship/output_weights": ("cls.seq_relationship.weight", False),
        "cls/seq_relationship/output_bias": ("cls.seq_relationship.bias", False),
        "output_weights": ("classifier.weight", False),
        "output_bias": ("classifier.bias", False),
    }
    for i in range(num_layers):
        tf, hf = f"bert/encoder/layer_{i}/", f"bert.encoder.layer.{i}."
        for part in ("attention/self/query", "attention/self/key", "attention/self/value",
                     "attention/output/dense", "intermediate/dense", "output/dense"):
            names[tf + part + "/kernel"] = (hf + part.replace("/", ".") + ".weight", True)
            names[tf + part + "/bias"] = (hf + part.replace("/", ".") + ".bias", False)
        for part in ("attention/output/LayerNorm", "output/LayerNorm"):
            names[tf + part + "/gamma"] = (hf + part.replace("/", ".") + ".weight", False)
            names[tf + part + "/beta"] = (hf + part.replace("/", ".") + ".bias", False)
    return names


def _one_line_error(excinfo, path):
    message = str(excinfo.value)
    assert "\n" not in message
    assert os.fspath(path) in message, message
    return message


# ---------------------------------------------------------------------------------------------
# crc32c
# ---------------------------------------------------------------------------------------------

def test_crc32c_known_answers():
    # RFC 3720 (iSCSI) B.4 test vectors and the classic "123456789" check value.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


@pytest.mark.parametrize("size", [0, 1, 7, 4095, 4096, 4099, 9000, 70001])
def test_crc32c_vectorised_matches_bitwise_reference(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    assert crc32c(data.tobytes()) == _reference_crc32c(data.tobytes())
    assert crc32c(data) == _reference_crc32c(data.tobytes())


def test_mask_roundtrip():
    for value in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert tf_checkpoint.unmask_crc(tf_checkpoint.mask_crc(value)) == value
    assert tf_checkpoint.mask_crc(0) == 0xA282EAD8  # rotation of 0 is 0: only the constant remains


# ---------------------------------------------------------------------------------------------
# finding a checkpoint
# ---------------------------------------------------------------------------------------------

def test_find_release_folder_prefix_and_index_path():
    prefix = os.path.join(TINY, "bert_model.ckpt")
    assert find_tf_checkpoint(TINY) == prefix
    assert find_tf_checkpoint(prefix) == prefix
    assert find_tf_checkpoint(prefix + ".index") == prefix


def test_find_uses_checkpoint_file(tmp_path):
    assert find_tf_checkpoint(SHARDED) == os.path.join(SHARDED, "model.ckpt-7")
    # Several checkpoints: the `checkpoint` file picks one (here the older), relative or absolute.
    folder = tmp_path / "run"
    shutil.copytree(SHARDED, folder)
    for name in os.listdir(folder):
        if name.startswith("model.ckpt-7."):
            shutil.copy(folder / name, folder / name.replace("ckpt-7", "ckpt-3"))
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-3"\n'
                                       'all_model_checkpoint_paths: "model.ckpt-3"\n')
    assert find_tf_checkpoint(folder) == str(folder / "model.ckpt-3")
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{folder / "model.ckpt-7"}"\n')
    assert find_tf_checkpoint(folder) == str(folder / "model.ckpt-7")
    # A run folder copied from another machine keeps absolute paths that no longer exist.
    (folder / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/output/model.ckpt-3"\n')
    assert find_tf_checkpoint(folder) == str(folder / "model.ckpt-3")
    # Without the `checkpoint` file two candidates are ambiguous.
    os.remove(folder / "checkpoint")
    with pytest.raises(ConfigError) as excinfo:
        find_tf_checkpoint(folder)
    message = _one_line_error(excinfo, folder)
    assert "model.ckpt-3" in message and "model.ckpt-7" in message and "checkpoint" in message


def test_find_errors_and_none(tmp_path):
    assert find_tf_checkpoint(tmp_path) is None           # nothing there: the caller tries other formats
    assert find_tf_checkpoint(tmp_path / "absent") is None
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "gone.ckpt"\n')
    with pytest.raises(ConfigError) as excinfo:
        find_tf_checkpoint(tmp_path)
    assert "gone.ckpt" in _one_line_error(excinfo, tmp_path / "checkpoint")
    (tmp_path / "checkpoint").write_text("all_model_checkpoint_paths: \"x\"\n")
    with pytest.raises(ConfigError, match="model_checkpoint_path"):
        find_tf_checkpoint(tmp_path)


def test_missing_data_shard_is_named(tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(SHARDED, folder)
    missing = folder / "model.ckpt-7.data-00001-of-00002"
    os.remove(missing)
    with pytest.raises(ConfigError) as excinfo:
        find_tf_checkpoint(folder)
    assert "shard 2 of 2" in _one_line_error(excinfo, missing)
    with pytest.raises(ConfigError) as excinfo:  # the reader checks too, from the header's shard count
        TFCheckpointReader(folder / "model.ckpt-7")
    _one_line_error(excinfo, missing)
    release = tmp_path / "release"
    shutil.copytree(TINY, release)
    os.remove(release / "bert_model.ckpt.data-00000-of-00001")
    with pytest.raises(ConfigError) as excinfo:
        find_tf_checkpoint(release)
    assert "no data file" in _one_line_error(excinfo, release / "bert_model.ckpt.index")


# ---------------------------------------------------------------------------------------------
# reading tensors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", [TINY, SHARDED])
def test_reader_reproduces_every_tensor_exactly(folder, tf_values):
    with TFCheckpointReader(find_tf_checkpoint(folder)) as reader:
        assert sorted(reader.names()) == sorted(tf_values)
        for name, expected in tf_values.items():
            got = reader.read(name)
            assert got.dtype == torch.from_numpy(expected).dtype, name
            assert tuple(got.shape) == expected.shape, name
            assert np.array_equal(got.numpy(), expected), name
        assert reader.read("global_step").item() == 7
        shards = {reader.entry(n).shard_id for n in reader.names()}
    assert shards == ({0, 1} if folder == SHARDED else {0})


def test_reader_dtypes():
    with np.load(os.path.join(DTYPES, "values.npz")) as z:
        expected = {k: z[k] for k in z.files}
    with TFCheckpointReader(os.path.join(DTYPES, "model.ckpt")) as reader:
        shapes = reader.shapes()
        assert shapes["bfloat16"] == ("bfloat16", (2, 2)) and shapes["string"] == ("string", (2,))
        for name in ("float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                     "bool", "empty"):
            got = reader.read(name)
            assert got.dtype == torch.from_numpy(expected[name]).dtype, name
            assert np.array_equal(got.numpy(), expected[name]), name
        bf16 = reader.read("bfloat16")
        assert bf16.dtype == torch.bfloat16
        assert torch.equal(bf16.float(), torch.from_numpy(expected["bfloat16"]))
        with pytest.raises(ConfigError, match="partitioned variable"):
            reader.read("partitioned")
        with pytest.raises(ConfigError, match="dtype string"):
            reader.read("string")
        # slice entries of the partitioned variable are internal, never listed as tensors
        assert all(not n.startswith("\x00") for n in reader.names())


def test_load_maps_every_variable_and_skips_optimizer_state(tf_values):
    state, skipped = load_tf_checkpoint(TINY)
    expected = _expected_hf_names(2)
    assert sorted(skipped) == sorted(n for n in tf_values if n not in expected)
    assert all(n.endswith(("/adam_m", "/adam_v")) for n in skipped if n != "global_step")
    assert "global_step" in skipped
    assert sorted(state) == sorted(hf for hf, _ in expected.values())
    for tf_name, (hf, transposed) in expected.items():
        value = tf_values[tf_name].T if transposed else tf_values[tf_name]
        assert state[hf].is_contiguous()
        assert np.array_equal(state[hf].numpy(), value), tf_name
    # The odd intermediate size makes a forgotten transpose a shape error, not a silent one.
    assert tuple(state["bert.encoder.layer.1.intermediate.dense.weight"].shape) == (37, 16)
    assert tuple(state["bert.encoder.layer.1.output.dense.weight"].shape) == (16, 37)
    assert tuple(state["cls.seq_relationship.weight"].shape) == (2, 16)


def test_sharded_checkpoint_loads_identically():
    single, skipped_single = load_tf_checkpoint(TINY)
    sharded, skipped_sharded = load_tf_checkpoint(SHARDED)
    assert sorted(skipped_single) == sorted(skipped_sharded)
    assert sorted(single) == sorted(sharded)
    for name in single:
        assert torch.equal(single[name], sharded[name]), name


def test_name_mapping_edge_cases():
    assert tf_checkpoint.hf_name("cls/squad/output_weights") == ("qa_outputs.weight", False)
    assert tf_checkpoint.hf_name("bert/encoder/layer_11/output/dense/kernel") == (
        "bert.encoder.layer.11.output.dense.weight", True)
    for name in ("bert/encoder/layer_0/output/dense/kernel/Adam", "bert/pooler/dense/bias/Adam_1",
                 "beta1_power", "global_step", "bert/encoder/layer_0/something/new", "loss/output_weights",
                 "bert/embeddings/word_embeddings/adam_m"):
        assert tf_checkpoint.hf_name(name) is None, name


# ---------------------------------------------------------------------------------------------
# corrupt files: one-line ConfigError naming the file
# ---------------------------------------------------------------------------------------------

def _copy_release(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(TINY, folder)
    return folder / "bert_model.ckpt"


def _data_block(index_bytes):
    """(offset, size) of the first data block, decoded by hand from the footer and index block."""
    def varint(buf, pos):
        result = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7
    footer = index_bytes[-48:]
    _, pos = varint(footer, 0)
    _, pos = varint(footer, pos)   # metaindex handle
    index_offset, pos = varint(footer, pos)
    index_size, _ = varint(footer, pos)
    block = index_bytes[index_offset:index_offset + index_size]
    _, pos = varint(block, 0)      # shared
    non_shared, pos = varint(block, pos)
    _, pos = varint(block, pos)    # value length
    pos += non_shared
    offset, pos = varint(block, pos)
    size, _ = varint(block, pos)
    return offset, size


def _rewrite_block(index_path, edit):
    """Apply `edit(bytearray of block + type byte)` to the first data block, then fix its checksum
    so that only the edited content (not the CRC) is wrong."""
    data = bytearray(open(index_path, "rb").read())
    offset, size = _data_block(bytes(data))
    chunk = data[offset:offset + size + 1]
    edit(chunk)
    data[offset:offset + size + 1] = chunk
    crc = _reference_crc32c(bytes(chunk))
    data[offset + size + 1:offset + size + 5] = tf_checkpoint.mask_crc(crc).to_bytes(4, "little")
    with open(index_path, "wb") as f:
        f.write(data)


def test_truncated_index(tmp_path):
    prefix = _copy_release(tmp_path)
    index = str(prefix) + ".index"
    data = open(index, "rb").read()
    for cut in (len(data) - 10, 20):
        with open(index, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(ConfigError) as excinfo:
            TFCheckpointReader(prefix)
        _one_line_error(excinfo, index)


def test_wrong_magic(tmp_path):
    prefix = _copy_release(tmp_path)
    index = str(prefix) + ".index"
    data = bytearray(open(index, "rb").read())
    data[-1] ^= 0xFF
    open(index, "wb").write(bytes(data))
    with pytest.raises(ConfigError) as excinfo:
        load_tf_checkpoint(prefix)
    assert "magic" in _one_line_error(excinfo, index)


def test_corrupt_index_block_fails_crc(tmp_path):
    prefix = _copy_release(tmp_path)
    index = str(prefix) + ".index"
    data = bytearray(open(index, "rb").read())
    data[40] ^= 0x01  # inside the first data block
    open(index, "wb").write(bytes(data))
    with pytest.raises(ConfigError) as excinfo:
        TFCheckpointReader(prefix)
    assert "crc32c" in _one_line_error(excinfo, index)


def test_snappy_block_is_refused_clearly(tmp_path):
    prefix = _copy_release(tmp_path)
    index = str(prefix) + ".index"

    def to_snappy(chunk):
        chunk[-1] = 1  # the block's compression-type byte
    _rewrite_block(index, to_snappy)
    with pytest.raises(ConfigError) as excinfo:
        TFCheckpointReader(prefix)
    assert "snappy" in _one_line_error(excinfo, index)


def test_tensor_size_not_matching_shape(tmp_path):
    prefix = _copy_release(tmp_path)
    index = str(prefix) + ".index"
    with TFCheckpointReader(prefix) as reader:
        entry = reader.entry("bert/pooler/dense/bias")
    assert entry.shape == (16,) and entry.size == 64 and entry.shard_id == 0

    def offset_varint(v):
        out = bytearray()
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not v:
                return bytes(out)
    # BundleEntryProto fields: dtype=1 (float), shape=[16], offset, size=64 -> size=60
    proto = b"\x08\x01\x12\x04\x12\x02\x08\x10" + b"\x20" + offset_varint(entry.offset) + b"\x28\x40"

    def shrink(chunk):
        at = bytes(chunk).find(proto)
        assert at >= 0 and bytes(chunk).count(proto) == 1
        chunk[at + len(proto) - 1] = 60
    _rewrite_block(index, shrink)
    with TFCheckpointReader(prefix) as reader:  # the index itself is fine; the entry is not
        with pytest.raises(ConfigError) as excinfo:
            reader.read("bert/pooler/dense/bias")
    message = _one_line_error(excinfo, index)
    assert "bert/pooler/dense/bias" in message and "60" in message and "64" in message
    with pytest.raises(ConfigError):
        load_tf_checkpoint(prefix)


def test_corrupt_and_truncated_data_shard(tmp_path):
    prefix = _copy_release(tmp_path)
    shard = str(prefix) + ".data-00000-of-00001"
    with TFCheckpointReader(prefix) as reader:
        entry = reader.entry("bert/embeddings/word_embeddings")
    data = bytearray(open(shard, "rb").read())
    data[entry.offset + 5] ^= 0x10
    open(shard, "wb").write(bytes(data))
    with TFCheckpointReader(prefix) as reader:
        with pytest.raises(ConfigError) as excinfo:
            reader.read("bert/embeddings/word_embeddings")
        assert "crc32c" in _one_line_error(excinfo, shard)
        assert reader.read("bert/embeddings/word_embeddings", verify_crc=False).shape == (20, 16)
    open(shard, "wb").write(bytes(data[:len(data) // 2]))
    with pytest.raises(ConfigError) as excinfo:
        load_tf_checkpoint(prefix)
    assert "truncated" in _one_line_error(excinfo, shard)


def test_not_a_bert_checkpoint():
    with pytest.raises(ConfigError, match="no Google BERT variables"):
        load_tf_checkpoint(os.path.join(DTYPES, "model.ckpt"))


# ---------------------------------------------------------------------------------------------
# converted folder: Hugging Face and modeling.py load it and reproduce TensorFlow's outputs
# ---------------------------------------------------------------------------------------------

def _inputs(tf_forward):
    return tuple(torch.from_numpy(tf_forward[k]).long() for k in ("input_ids", "token_type_ids", "attention_mask"))


def test_converted_folder_files(converted):
    assert sorted(os.listdir(converted)) == ["config.json", "model.safetensors", "vocab.txt"]
    with open(os.path.join(converted, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(TINY, "bert_config.json")) as f:
        original = json.load(f)
    assert config == dict(original, model_type="bert", architectures=["BertForPreTraining"])
    assert open(os.path.join(converted, "vocab.txt"), "rb").read() == open(os.path.join(TINY, "vocab.txt"), "rb").read()
    from safetensors import safe_open
    with safe_open(os.path.join(converted, "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        state, _ = load_tf_checkpoint(TINY)
        assert sorted(f.keys()) == sorted(state)
        for key in f.keys():
            assert torch.equal(f.get_tensor(key), state[key]), key


def test_transformers_loads_converted_folder_and_matches_tensorflow(converted, tf_forward):
    model, info = transformers.BertForPreTraining.from_pretrained(converted, output_loading_info=True)
    # Everything HF's BertForPreTraining has is in the file (the decoder weight is tied to the
    # word embeddings); the classifier head is extra for this architecture.
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert set(info["unexpected_keys"]) == {"classifier.weight", "classifier.bias"}
    model.eval()
    ids, types, mask = _inputs(tf_forward)
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
    np.testing.assert_allclose(out.hidden_states[-1].numpy(), tf_forward["sequence_output"], atol=1e-5)
    np.testing.assert_allclose(out.prediction_logits.numpy(), tf_forward["mlm_logits"], atol=1e-5)
    np.testing.assert_allclose(out.seq_relationship_logits.numpy(), tf_forward["nsp_logits"], atol=1e-5)


def test_modeling_from_converted_folder(converted, tf_values, tf_forward):
    import modeling
    model = modeling.BertForMultiTask.from_pretrained(converted, task_num_labels=[2])
    params = model.state_dict()
    for tf_name, (hf, transposed) in _expected_hf_names(2).items():
        if hf.startswith("bert."):
            value = tf_values[tf_name].T if transposed else tf_values[tf_name]
            assert np.array_equal(params[hf].numpy(), value), tf_name
    # run_classifier.py's output_weights [num_labels, hidden] becomes task 0's classifier as is
    assert np.array_equal(params["heads.0.classifier.weight"].numpy(), tf_values["output_weights"])
    assert np.array_equal(params["heads.0.classifier.bias"].numpy(), tf_values["output_bias"])
    model.eval()
    ids, types, mask = _inputs(tf_forward)
    with torch.no_grad():
        logits = model(ids, types, mask, task_id=0)["logits"]
        sequence_output, pooled = model.bert(ids, types, mask)
    np.testing.assert_allclose(sequence_output.numpy(), tf_forward["sequence_output"], atol=1e-5)
    np.testing.assert_allclose(pooled.numpy(), tf_forward["pooled_output"], atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), tf_forward["classifier_logits"], atol=1e-5)


@pytest.mark.parametrize("folder", [TINY, SHARDED])
def test_modeling_loads_google_folder_directly(folder, converted, tf_forward, tmp_path):
    """--bert_model <Google release folder> (or a prefix): the same weights as the converted folder,
    and TensorFlow's own outputs. The sharded copy holds the same variables as the single file."""
    import modeling
    import training
    model_dir = folder
    direct = modeling.BertForMultiTask.from_pretrained(model_dir, task_num_labels=[2]).eval()
    reference = modeling.BertForMultiTask.from_pretrained(converted, task_num_labels=[2]).state_dict()
    for name, tensor in direct.state_dict().items():
        if name.startswith("bert."):
            assert torch.equal(tensor, reference[name]), name
    with torch.no_grad():
        sequence_output, _ = direct.bert(*_inputs(tf_forward))
    np.testing.assert_allclose(sequence_output.numpy(), tf_forward["sequence_output"], atol=1e-5)
    # The engine finds the casing and the tokenizer in the same folder.
    opts = training.EngineOptions(output_dir=str(tmp_path), model_dir=model_dir, max_seq_length=32)
    assert len(training.load_tokenizer(opts)) == direct.config.vocab_size


def test_modeling_pretraining_head_from_converted_folder(converted, tf_forward):
    import modeling
    model = modeling.BertForMultiTask.from_pretrained(converted, task_num_labels=[0], task_types=["pretraining"])
    model.eval()
    with torch.no_grad():
        out = model(*_inputs(tf_forward), task_id=0)
    np.testing.assert_allclose(out["prediction_logits"].numpy(), tf_forward["mlm_logits"], atol=1e-5)
    np.testing.assert_allclose(out["seq_relationship_logits"].numpy(), tf_forward["nsp_logits"], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the script
# ---------------------------------------------------------------------------------------------

def test_convert_sharded_refuses_nonempty_out_unless_overwrite(tmp_path, converted):
    out = tmp_path / "out"
    out.mkdir()
    (out / "note.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        convert_tf_checkpoint.convert(SHARDED, str(out))
    count, skipped = convert_tf_checkpoint.convert(SHARDED, str(out), overwrite=True)
    assert count == 48 and "global_step" in skipped
    assert (out / "note.txt").read_text() == "keep me"
    with open(out / "model.safetensors", "rb") as a, open(os.path.join(converted, "model.safetensors"), "rb") as b:
        assert a.read() == b.read()


def test_convert_checks_config_and_vocab(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(TINY, src)
    config = json.loads((src / "bert_config.json").read_text())
    (src / "bert_config.json").write_text(json.dumps(dict(config, num_hidden_layers=3)))
    with pytest.raises(ConfigError) as excinfo:
        convert_tf_checkpoint.convert(str(src), str(tmp_path / "o1"))
    assert "bert.encoder.layer.2" in _one_line_error(excinfo, src / "bert_config.json")
    (src / "bert_config.json").write_text(json.dumps(dict(config, intermediate_size=38)))
    with pytest.raises(ConfigError, match="intermediate"):
        convert_tf_checkpoint.convert(str(src), str(tmp_path / "o2"))
    (src / "bert_config.json").write_text(json.dumps(config))
    with open(src / "vocab.txt", "a") as f:
        f.write("extra\n")
    with pytest.raises(ConfigError) as excinfo:
        convert_tf_checkpoint.convert(str(src), str(tmp_path / "o3"))
    assert "21 tokens" in _one_line_error(excinfo, src / "vocab.txt")
    assert not os.path.exists(tmp_path / "o1") and not os.path.exists(tmp_path / "o3")


def test_cli_exit_codes(tmp_path):
    out = tmp_path / "out"
    ok = subprocess.run([sys.executable, CONVERT, os.path.join(SHARDED, "model.ckpt-7"), str(out)],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "wrote 48 tensors" in ok.stdout and "96 optimizer slots" not in ok.stdout
    assert "48 optimizer slots 'adam_m', 48 optimizer slots 'adam_v', global_step" in ok.stderr
    bad = subprocess.run([sys.executable, CONVERT, str(tmp_path), str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no TensorFlow checkpoint" in lines[0]


# ---------------------------------------------------------------------------------------------
# an index whose entries lie: checked before any buffer is allocated or byte read (issue 19, item 9)
# ---------------------------------------------------------------------------------------------

def _pb_varint(v):
    v &= (1 << 64) - 1  # a negative int64 is written as its 10-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _entry_proto(dtype, shape, offset, size):
    """A BundleEntryProto written by hand (tensor_bundle.proto: dtype=1, shape=2 (TensorShapeProto,
    dim=2 {size=1}), shard_id=3, offset=4, size=5, crc32c=6 fixed32)."""
    dims = b"".join(b"\x12" + _pb_varint(len(d)) + d for d in (b"\x08" + _pb_varint(n) for n in shape))
    return (b"\x08" + _pb_varint(dtype) + b"\x12" + _pb_varint(len(dims)) + dims + b"\x20" + _pb_varint(offset)
            + b"\x28" + _pb_varint(size) + b"\x35" + bytes(4))


def _write_index(path, entries):
    """An SSTable (LevelDB table format) of sorted (key, value) pairs: one data block with one restart
    point, an empty metaindex block, an index block, the 48-byte footer with TF's table magic."""
    out = bytearray()

    def block(pairs):
        body = b"".join(_pb_varint(0) + _pb_varint(len(k)) + _pb_varint(len(v)) + k + v for k, v in pairs)
        body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # restart offsets [0], count 1
        offset = len(out)
        out.extend(body + b"\x00")  # compression type: none
        out.extend(tf_checkpoint.mask_crc(_reference_crc32c(body + b"\x00")).to_bytes(4, "little"))
        return _pb_varint(offset) + _pb_varint(len(body))
    data = block(entries)
    footer = block([]) + block([(entries[-1][0], data)])
    out.extend(footer + bytes(40 - len(footer)) + (0xDB4775248B80FB57).to_bytes(8, "little"))
    with open(path, "wb") as f:
        f.write(out)


def _lying_release(tmp_path, name, dtype, shape, offset, size):
    """A copy of the tiny release whose index entry for `name` is replaced by the given claim."""
    prefix = _copy_release(tmp_path)
    index = str(prefix) + ".index"
    entries = [(bytes(k), bytes(v)) for k, v in tf_checkpoint._read_table(index)]
    assert name.encode() in dict(entries)
    _write_index(index, [(k, _entry_proto(dtype, shape, offset, size) if k == name.encode() else v)
                         for k, v in entries])
    return prefix, index


@pytest.fixture
def no_big_allocation(monkeypatch):
    """Fail (instead of allocating) if numpy is asked for more than 64 MiB."""
    real = np.empty

    def guarded(shape, dtype=float, *args, **kwargs):
        if np.dtype(dtype).itemsize * math.prod(np.atleast_1d(shape).tolist()) > 1 << 26:
            pytest.fail(f"np.empty({shape}, {dtype}) allocated before the entry was checked")
        return real(shape, dtype, *args, **kwargs)
    monkeypatch.setattr(np, "empty", guarded)


def test_rewritten_index_reads_back_unchanged(tmp_path, tf_values):
    """The hand-written SSTable is a valid index: with no entry changed, every tensor reads as TF wrote it."""
    prefix = _copy_release(tmp_path)
    index = str(prefix) + ".index"
    entries = [(bytes(k), bytes(v)) for k, v in tf_checkpoint._read_table(index)]
    _write_index(index, entries)
    with TFCheckpointReader(prefix) as reader:
        for name in reader.names():
            np.testing.assert_array_equal(reader.read_numpy(name), tf_values[name])


def test_index_claiming_a_16_tib_tensor_is_refused_before_allocating(tmp_path, no_big_allocation):
    # [2^20, 2^22] float32 = 2^44 bytes (16 TiB), byte size consistent with the shape
    prefix, index = _lying_release(tmp_path, "bert/embeddings/word_embeddings", 1, (1 << 20, 1 << 22), 0, 1 << 44)
    with TFCheckpointReader(prefix) as reader:
        with pytest.raises(ConfigError) as excinfo:
            reader.read_numpy("bert/embeddings/word_embeddings")
    message = _one_line_error(excinfo, index)
    assert "bert/embeddings/word_embeddings" in message and str(1 << 44) in message
    assert str(prefix) + ".data-00000-of-00001" in message
    import modeling  # --bert_model on the release folder
    with pytest.raises(ConfigError) as excinfo:
        modeling.BertForMultiTask.from_pretrained(str(prefix.parent), task_num_labels=[2])
    _one_line_error(excinfo, index)


def test_negative_offset_is_refused(tmp_path, no_big_allocation):
    prefix, index = _lying_release(tmp_path, "bert/pooler/dense/bias", 1, (16,), -8, 64)
    with pytest.raises(ConfigError) as excinfo:
        load_tf_checkpoint(prefix)
    assert "bert/pooler/dense/bias" in _one_line_error(excinfo, index) and "[-8, 56)" in str(excinfo.value)


def test_convert_checks_shapes_against_the_config_before_reading(tmp_path, monkeypatch):
    # pooler bias claims 8 floats (bytes inside the shard), bert_config.json says hidden 16
    with TFCheckpointReader(os.path.join(TINY, "bert_model.ckpt")) as reader:
        offset = reader.entry("bert/pooler/dense/bias").offset
    prefix, index = _lying_release(tmp_path, "bert/pooler/dense/bias", 1, (8,), offset, 32)
    reads = []
    real = TFCheckpointReader.read_numpy
    monkeypatch.setattr(TFCheckpointReader, "read_numpy", lambda self, name, **kw: reads.append(name) or real(
        self, name, **kw))
    with pytest.raises(ConfigError) as excinfo:
        convert_tf_checkpoint.convert(str(prefix.parent), str(tmp_path / "out"))
    message = _one_line_error(excinfo, index)
    assert "[8]" in message and "[16]" in message and str(prefix.parent / "bert_config.json") in message
    assert reads == [] and not os.path.exists(tmp_path / "out")


def test_cli_on_a_huge_claim_is_one_line_under_a_memory_limit(tmp_path):
    """The script end to end, in a process that cannot map more than 8 GiB: a reader that allocated
    what the index claims would die of MemoryError (a traceback), not exit 2."""
    prefix, index = _lying_release(tmp_path, "bert/encoder/layer_0/output/dense/kernel", 1, (1 << 21, 1 << 21), 0,
                                   1 << 44)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)); "
    run = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    bad = subprocess.run([sys.executable, "-c", limit + run, CONVERT, str(prefix.parent), str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=tmp_path)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {index}: ") and "layer_0/output/dense/kernel" in lines[0]
    assert not os.path.exists(tmp_path / "out")
