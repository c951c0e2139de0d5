"""Convert a Google TensorFlow BERT folder into a Hugging Face-style folder, without TensorFlow.

    python scripts/convert_tf_checkpoint.py uncased_L-12_H-768_A-12 bert-base-uncased [--overwrite]

DIR is Google's release folder (bert_config.json, vocab.txt, bert_model.ckpt.index + data shards)
or a training output folder with a `checkpoint` file; a checkpoint prefix (DIR/model.ckpt-1000)
also works, with bert_config.json and vocab.txt taken from its folder. OUT receives:
- config.json: bert_config.json plus "model_type": "bert" and "architectures":
  ["BertForPreTraining"], so that transformers' Auto classes and modeling.py both read it;
- model.safetensors: the BERT tensors under Hugging Face names (dense kernels transposed; see
  tf_checkpoint.py), with metadata {"format": "pt"};
- vocab.txt: copied unchanged.
Each file is written atomically. Optimizer slots and global_step are skipped (and listed).
OUT must be empty or absent unless --overwrite. The checkpoint is read once, tensor by tensor.
"""
import argparse
import json
import logging
import os
import re

import torch

from file_utils import ConfigError, atomic_open, atomic_write_json, run_cli
from tf_checkpoint import expected_shapes, find_tf_checkpoint, load_tf_checkpoint, optimizer_slot

logger = logging.getLogger("convert_tf_checkpoint")

CONFIG_NAMES = ("bert_config.json", "config.json")
REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "intermediate_size", "max_position_embeddings", "type_vocab_size")


def _summarise(names):
    """Skipped names in a few words: optimizer slots counted by kind, the rest listed with layer
    numbers collapsed (a BERT-base training checkpoint has ~400 slot variables)."""
    slots, others = {}, {}
    for name in names:
        kind = optimizer_slot(name)
        if kind:
            slots[kind] = slots.get(kind, 0) + 1
        else:
            key = re.sub(r"layer_\d+", "layer_*", name)
            others[key] = others.get(key, 0) + 1
    parts = [f"{count} optimizer slots '{kind}'" for kind, count in sorted(slots.items())]
    parts += [k if c == 1 else f"{k} (x{c})" for k, c in sorted(others.items())]
    return ", ".join(parts)


# safetensors dtype codes (https://github.com/huggingface/safetensors, format description)
_SAFETENSORS_DTYPES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "bool": "BOOL",
}


def write_safetensors(path, state, metadata):
    """Write `state` as a .safetensors file, streaming tensor by tensor into an atomic temp file.

    safetensors.torch.save() would first build the whole file as one bytes object (a second copy
    of a 440 MB model in memory), and save_file() writes to a path of its own choosing, outside
    atomic_open. The format is an 8-byte little-endian header length, a JSON header
    {name: {dtype, shape, data_offsets}} (+ "__metadata__"), padded with spaces to 8 bytes, then
    the tensors' bytes back to back in header order.
    """
    header, offset, order = {"__metadata__": metadata}, 0, sorted(state)
    for name in order:
        tensor = state[name]
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[str(tensor.dtype).replace("torch.", "")],
                        "shape": list(tensor.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with atomic_open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name in order:
            # raw bytes in memory order, written from the tensor's own buffer (no copy)
            f.write(memoryview(state[name].contiguous().reshape(-1).view(torch.uint8).numpy()))


def _read_config(folder):
    for name in CONFIG_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            break
    else:
        raise ConfigError(f"{folder}: no bert_config.json next to the checkpoint")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the BERT config: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    for key in REQUIRED_CONFIG_KEYS:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return path, config


def _check_shapes(state, config, config_path, prefix):
    """Tensors must be exactly the encoder bert_config.json describes (a clear error beats a
    model that loads with mismatched sizes or silently drops layers)."""
    expected = expected_shapes(config)
    missing = [n for n in expected if n not in state]
    if missing:
        raise ConfigError(f"{prefix}: {len(missing)} encoder tensors of the model described by {config_path} are "
                          f"not in the checkpoint (first: {missing[0]})")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ConfigError(f"{prefix}: '{name}' has shape {list(state[name].shape)} but {config_path} "
                              f"implies {list(shape)}")
    extra_layers = sorted({n for n in state if n.startswith("bert.encoder.layer.") and n not in expected})
    if extra_layers:
        raise ConfigError(f"{prefix}: has encoder tensors beyond num_hidden_layers="
                          f"{config['num_hidden_layers']} of {config_path} (first: {extra_layers[0]})")


def _read_vocab(folder, vocab_size):
    path = os.path.join(folder, "vocab.txt")
    if not os.path.isfile(path):
        raise ConfigError(f"{folder}: no vocab.txt next to the checkpoint")
    with open(path, "rb") as f:
        data = f.read()
    lines = len(data.decode("utf-8", errors="replace").splitlines())
    if lines > vocab_size:
        raise ConfigError(f"{path}: {lines} tokens but vocab_size is {vocab_size}: ids past the "
                          "embedding table would crash the model")
    if lines < vocab_size:
        logger.warning("%s: %d tokens for vocab_size %d (the extra embedding rows are never used)",
                       path, lines, vocab_size)
    return data


def convert(src, out, overwrite=False):
    """Convert; returns (number of tensors written, skipped TF names)."""
    prefix = find_tf_checkpoint(src)
    if prefix is None:
        raise ConfigError(f"{src}: no TensorFlow checkpoint (no *.index file or `checkpoint` file)")
    folder = os.path.dirname(prefix) or "."
    config_path, config = _read_config(folder)
    vocab = _read_vocab(folder, config["vocab_size"])
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"{out}: exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ConfigError(f"{out}: folder is not empty (pass --overwrite to replace its config.json, "
                          "model.safetensors and vocab.txt)")

    state, skipped = load_tf_checkpoint(prefix, expected_shapes=expected_shapes(config), against=config_path)
    _check_shapes(state, config, config_path, prefix)
    if skipped:
        logger.info("skipped %d TF variables: %s", len(skipped), _summarise(skipped))

    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), state, {"format": "pt"})
    with atomic_open(os.path.join(out, "vocab.txt"), "wb") as f:
        f.write(vocab)
    hf_config = dict(config)
    hf_config["model_type"] = "bert"
    hf_config["architectures"] = ["BertForPreTraining"]
    atomic_write_json(os.path.join(out, "config.json"), hf_config)
    return len(state), skipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", metavar="DIR", help="Google BERT folder (or checkpoint prefix)")
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    count, skipped = convert(args.src, args.out, overwrite=args.overwrite)
    print(f"wrote {count} tensors to {os.path.join(args.out, 'model.safetensors')} "
          f"(+ config.json, vocab.txt); skipped {len(skipped)} TF variables")
    return 0


if __name__ == "__main__":
    run_cli(main)
