"""Flags declared once (flags.py): the engine's argparse flags, EngineOptions, the resume fingerprint
and the docs/engine.md table all come from EngineOptions' fields."""
import dataclasses
import os
import re

import pytest

import file_utils
import flags
import training
from file_utils import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _options(*argv, **defaults):
    parser = file_utils.make_parser("test")
    training.add_engine_args(parser, **defaults)
    return training.EngineOptions.from_args(parser.parse_args(["--output_dir", "out", "--cache_dir", "none",
                                                               *argv]))


def test_the_fingerprint_is_todays_so_old_checkpoints_resume():
    # The keys and values the engine wrote into checkpoint.json before the flags were declared once
    # (training.py on main b7c50f9, by hand): a checkpoint of that code must compare equal.
    model_dir = file_utils.resolve_model_dir("minilm-l6")
    today = {"model_dir": os.path.abspath(model_dir), "config": None, "do_lower_case": True, "max_seq_length": 384,
             "train_batch_size": 32, "learning_rate": 5e-05, "num_train_epochs": 3.0, "warmup_proportion": 0.1,
             "weight_decay": 0.01, "max_grad_norm": 1.0, "optimizer": "adamw", "schedule": "warmup_linear",
             "seed": 42, "gradient_accumulation_steps": 1, "precision": "fp32", "loss_scale": 0,
             "pad_to_max_length": False, "group_by_length": True, "allow_random_init": False, "max_steps": 0,
             "per_parameter_schedule": False, "zero_grad_in_place": False, "dropout_off_after_eval": False,
             "replay_batch_cycle": False}
    assert _options(max_seq_length=384).fingerprint() == today
    # Flags that are not run-defining leave it alone; conditional keys appear only when they act.
    assert _options("--eval_batch_size", "3", "--logging_steps", "7", "--threads", "1",
                    max_seq_length=384).fingerprint() == today
    compiled = _options("--compile", "--bf16", "--no_group_by_length", max_seq_length=384).fingerprint()
    assert compiled == dict(today, pad_multiple=8, precision="bf16", group_by_length=False)
    assert _options("--freeze", max_seq_length=384).fingerprint() == dict(today, freeze=True)  # only when set
    reference = _options("--reference_protocol", "--gradient_accumulation_steps", "2", max_seq_length=384)
    assert reference.fingerprint() == dict(
        today, optimizer="bertadam", schedule="warmup_linear_legacy", group_by_length=False,
        per_parameter_schedule=True, zero_grad_in_place=True, dropout_off_after_eval=True, replay_batch_cycle=True,
        gradient_accumulation_steps=2, reference_accumulation=True)


def test_the_docs_table_is_the_declaration():
    text = open(os.path.join(ROOT, "docs", "engine.md"), encoding="utf-8").read()
    table = re.search(r"<!-- flag table:[^\n]*-->\n(.*?)<!-- end of flag table -->", text, re.S)
    assert table, "docs/engine.md has no generated flag table"
    assert table.group(1) == flags.markdown_table(training.EngineOptions), (
        "docs/engine.md's flag table differs from training.EngineOptions: regenerate it with "
        "flags.markdown_table(training.EngineOptions)")
    for name in ("--bert_model", "--no_lower_case", "--fp16", "--bf16", "--no_cuda", "--no_group_by_length",
                 "--reference_accumulation"):
        assert f"`{name}`" in table.group(1)


def test_runner_defaults_helps_and_explicit_flags():
    parser = file_utils.make_parser("test")
    training.add_engine_args(parser, helps={"max_seq_length": "my help"}, output_dir_required=False,
                             max_seq_length=384, learning_rate=3e-5)
    args = parser.parse_args(["--learning_rate", "3e-5", "--local-rank", "2"])
    assert (args.max_seq_length, args.learning_rate, args.output_dir, args.local_rank) == (384, 3e-5, None, 2)
    assert args.explicit == ["learning_rate", "local_rank"]  # given with its default value still counts
    assert "my help" in parser.format_help()
    with pytest.raises(SystemExit):
        training.add_engine_args(file_utils.make_parser("x")).parse_args([])  # --output_dir required


def test_the_helper_on_a_runner_dataclass():
    @dataclasses.dataclass(frozen=True)
    class Opts:
        name: str = flags.flag(help="the name", required=True)
        steps: int = flags.flag(3, "steps", group="g", run=True)
        rate: float = flags.flag(0.5, "rate", run=True)
        verbose: bool = flags.flag(False, "talk")
        cuda: bool = flags.flag(True, "no GPU", name="--no_gpu", negate=True)
        mode: str = flags.flag("a", "mode", switches=(("b", "mode b"), ("c", "mode c")))
        lower: bool = flags.flag(True, "lower", cli_default=None, off=("--keep_case", "keep"))
        kind: str = flags.flag("x", "kind", choices=("x", "y"))
        extra: tuple = ()

    parser = file_utils.make_parser("t")
    flags.add_flags(parser, Opts)
    args = parser.parse_args(["--name", "n", "--steps", "5", "--no_gpu", "--c", "--keep_case"])
    assert flags.values(args, Opts) == {"name": "n", "steps": 5, "rate": 0.5, "verbose": False, "cuda": False,
                                        "mode": "c", "lower": False, "kind": "x"}
    assert flags.values(parser.parse_args(["--name", "n"]), Opts)["lower"] is None  # decided at run time
    assert flags.run_defining(Opts) == ("steps", "rate")
    with pytest.raises(ConfigError, match="--b and --c are exclusive"):
        flags.values(parser.parse_args(["--name", "n", "--b", "--c"]), Opts)
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "n", "--kind", "z"])
    assert flags.markdown_table(Opts, groups=("g",)) == ("| flag | default | meaning |\n|---|---|---|\n"
                                                         "| `--steps` | 3 | steps |\n")
