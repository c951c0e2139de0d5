"""Shared helpers (no tests here) for the tests of run_multi_task.py's diagnostics, pictures, added
tasks, adapter files and predictions: a tiny random BERT (hidden 24, 2 layers, MiniLM's real
vocab so GLUE fixture text tokenizes normally), a PALs config with and without dropout, the
official-layout GLUE fixture, and `run(setup, out, *flags)` with small, fast settings."""
import json
import os

import torch

import modeling
import run_multi_task
from glue_fixtures import write_glue_fixture

HIDDEN, LAYERS, AUG = 24, 2, 12


def bert_keys(**extra):
    keys = dict(vocab_size=30522, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                intermediate_size=48, max_position_embeddings=64, type_vocab_size=2)
    keys.update(extra)
    return keys


def make_setup(base, vocab_file):
    """{"base", "model" (plain tiny BERT folder), "other_model" (another random one), "pals",
    "pals_nodrop" (adapter configs), "data" (GLUE fixture root)} under `base`."""
    base = str(base)
    setup = {"base": base, "model": os.path.join(base, "tiny"), "other_model": os.path.join(base, "tiny_other"),
             "data": os.path.join(base, "glue")}
    torch.manual_seed(0)
    modeling.BertModel(modeling.BertConfig(**bert_keys())).save_pretrained(setup["model"], vocab_file=vocab_file)
    torch.manual_seed(1)
    modeling.BertModel(modeling.BertConfig(**bert_keys())).save_pretrained(setup["other_model"],
                                                                           vocab_file=vocab_file)
    for name, extra in (("pals", {}), ("pals_nodrop", dict(hidden_dropout_prob=0.0,
                                                           attention_probs_dropout_prob=0.0))):
        setup[name] = os.path.join(base, name + ".json")
        with open(setup[name], "w") as f:
            json.dump(bert_keys(hidden_size_aug=AUG, mult=True, pals=True, **extra), f)
    write_glue_fixture(setup["data"], n=12)
    return setup


def argv(setup, out, *extra, config="pals", model=None):
    flags = ["--data_dir", setup["data"], "--bert_model", model or setup["model"], "--output_dir", str(out),
             "--max_seq_length", "32", "--train_batch_size", "4", "--eval_batch_size", "16",
             "--learning_rate", "1e-3", "--logging_steps", "1000",
             "--cache_dir", os.path.join(setup["base"], "cache")]
    if config is not None:
        flags += ["--config", setup.get(config, config)]
    return flags + [str(x) for x in extra]


def run(setup, out, *extra, config="pals", model=None):
    return run_multi_task.main(argv(setup, out, *extra, config=config, model=model))
