"""Shared helpers (no tests here) for the engine tests (tests/test_training*.py, test_distributed.py, test_resume.py).

Builds tiny random BERT checkpoints with modeling.BertConfig (hidden 32, 2 layers, a 100-token
vocab) so engine tests run in milliseconds per step, and deterministic synthetic features whose
label is a simple function of the tokens (so a model can learn it).
"""
import argparse
import os

import numpy as np
import pytest
import torch

import modeling
import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def worker_env(**extra):
    """The environment for a worker script written to a temporary folder: this tests folder (for these
    helpers) ahead of the inherited PYTHONPATH; the project itself comes from its install, or from the
    tree root on PYTHONPATH where it is not installed (docs/testing.md#installing)."""
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **extra)


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]


def write_tiny_model(directory, dropout=0.0, seed=0, vocab_file=None, **overrides):
    """A random BertModel checkpoint folder (config.json, model.safetensors, vocab.txt).
    vocab_file: use a real vocab (e.g. MiniLM's) instead of the 100-token toy vocab."""
    os.makedirs(directory, exist_ok=True)
    tokens = TINY_VOCAB
    if vocab_file is not None:
        with open(vocab_file, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    cfg = dict(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
               max_position_embeddings=64)
    cfg.update(overrides)
    vocab = os.path.join(directory, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    torch.manual_seed(seed)
    modeling.BertModel(modeling.BertConfig(**cfg)).save_pretrained(directory, vocab_file=vocab)
    return directory


def synthetic_features(n, seed=0, num_labels=2, min_len=4, max_len=24, regression=False):
    """[CLS] w.. [SEP] features; the label depends on whether token w5..w49 dominate."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        body = [int(x) for x in rng.integers(5, len(TINY_VOCAB), length - 2)]
        low = sum(1 for x in body if x < 50)
        ids = [2] + body + [3]
        if regression:
            label = float(low) / len(body)
        else:
            label = int(low * num_labels // (len(body) + 1))
        out.append({"input_ids": ids, "token_type_ids": [0] * length, "labels": label})
    return out


def engine_options(model_dir, output_dir, *extra, cuda=False):
    """EngineOptions from engine flags, parsed as a runner would. On the CPU (--no_cuda) unless
    `cuda`: the same test must pass on a machine with a GPU (GPU tests pass cuda=True)."""
    parser = argparse.ArgumentParser()
    training.add_engine_args(parser)
    return training.EngineOptions.from_args(parser.parse_args(
        ["--bert_model", model_dir, "--output_dir", output_dir, "--max_seq_length", "32", "--cache_dir", "none",
         *([] if cuda else ["--no_cuda"]), *map(str, extra)]))


def assert_close_in_low_precision(actual, reference, dtype, ulps=4):
    """actual (computed under autocast in dtype) is within `ulps` machine epsilons of dtype, relative
    to the reference's scale: an all-zero or rescaled output fails, a bf16 rounding error does not
    (measured: ~0.6 eps on the tiny models these tests use)."""
    actual = torch.as_tensor(np.asarray(actual) if not torch.is_tensor(actual) else actual).double()
    reference = torch.as_tensor(np.asarray(reference) if not torch.is_tensor(reference) else reference).double()
    scale = float(reference.abs().max())
    assert scale > 0, "the reference is all zeros: nothing to compare"
    error = float((actual - reference).abs().max())
    bound = ulps * torch.finfo(dtype).eps * scale
    assert error <= bound, f"max |error| {error:.3g} > {ulps} eps({dtype}) x scale {scale:.3g} = {bound:.3g}"


def state_dict_max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box spinning OpenMP
    threads make them ~10x slower; restore the setting for other test modules afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_pcgrad(grads, orders):
    """Gradient surgery as the engine did it before the Gram matrix (running copies, float64 dot
    products of whole gradients): the reference of tests/test_engine_paths.py and the "before" of
    bench/bench_grad_surgery.py."""
    total = torch.zeros_like(grads[0])
    for i, g in enumerate(grads):
        gi = g.clone()
        for j in orders[i]:
            gj = grads[j]
            dot = torch.dot(gi.double(), gj.double())
            if dot < 0:
                norm_sq = torch.dot(gj.double(), gj.double())
                if norm_sq > 0:
                    gi -= (dot / norm_sq).to(gi.dtype) * gj
        total += gi
    return total


def reference_gradvac(grads, phi_hat, beta, orders):
    """Gradient Vaccine, as reference_pcgrad (updates phi_hat in place)."""
    total = torch.zeros_like(grads[0])
    for i, g in enumerate(grads):
        gi = g.clone()
        for j in orders[i]:
            gj = grads[j]
            norm_i, norm_j = torch.linalg.vector_norm(gi.double()), torch.linalg.vector_norm(gj.double())
            if norm_i == 0 or norm_j == 0:
                continue
            phi = (torch.dot(gi.double(), gj.double()) / (norm_i * norm_j)).clamp(-1.0, 1.0).item()
            target = float(phi_hat[i][j])
            if phi < target:
                coef = (norm_i * (target * np.sqrt(max(0.0, 1 - phi * phi)) - phi * np.sqrt(max(0.0, 1 - target ** 2)))
                        / (norm_j * np.sqrt(max(1e-12, 1 - target ** 2))))
                gi += coef.to(gi.dtype) * gj
            phi_hat[i][j] = (1 - beta) * target + beta * phi
        total += gi
    return total
