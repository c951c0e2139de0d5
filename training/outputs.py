"""The output folder's lifecycle: checks before any data is read, creation, --overwrite_output_dir,
run_config.json, the saved model and result files."""
import contextlib
import logging
import os
import shutil
import sys
import tempfile

import torch
import torch.distributed as dist

import file_utils
from file_utils import ConfigError, atomic_open, atomic_write_json
from training.checkpoints import CHECKPOINT_DIR, _fingerprint_differences, find_checkpoint, read_checkpoint

logger = logging.getLogger(__name__)

EVAL_HISTORY = "eval_history.json"  # --eval_steps: [{step, score, metrics}] of the single-task runners
# Files and folders the engine itself writes into --output_dir (checkpoints, the best model, TensorBoard logs,
# run_config.json, the saved model). --overwrite_output_dir removes only these and the `output_names` a runner
# passes to prepare_output_dir (its task families' declarations, tasks.base.Task.output_names).
OUTPUT_NAMES = ("checkpoint", "checkpoint.old", "best", "best.old", "runs", "run_config.json", "config.json",
                "model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", EVAL_HISTORY)


def check_output_dir(opts, training=True):
    """The checks of prepare_output_dir that need no writing: run them before reading the data, so
    that a run that cannot write its outputs (or would resume another run) stops at once."""
    out = opts.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--output_dir {out} is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(out))
    existing = out if os.path.isdir(out) else next(
        (p for p in _parents(parent) if os.path.isdir(p)), parent)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output_dir {out}: {existing} is not writable")
    if not training or not os.path.isdir(out) or not os.listdir(out):
        return
    if opts.resume:
        path = find_checkpoint(out)
        if path is not None:
            meta = read_checkpoint(path)["meta"]
            changed = _fingerprint_differences(meta.get("run", {}), opts.fingerprint())
            if changed:
                raise ConfigError(f"--resume: {path} was made with other settings ({'; '.join(changed)}); resume "
                                  "with the same flags, or start a new run in another --output_dir")
        return
    if not opts.overwrite_output_dir:
        raise ConfigError(f"output directory {out} exists and is not empty; pass --overwrite_output_dir "
                          "(or --resume to continue its checkpoint)")
    inside = os.path.abspath(out) + os.sep
    if (os.path.abspath(opts.model_dir) + os.sep).startswith(inside):
        raise ConfigError(f"--overwrite_output_dir would delete the model being loaded ({opts.model_dir} is inside "
                          f"{out}); write to another --output_dir")


def _parents(path):
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def prepare_output_dir(opts, env, training=True, output_names=()):
    """Create --output_dir once the inputs are validated (so a run that fails on its inputs leaves no
    folder). A training run refuses a non-empty folder unless --resume (then stale temporaries of a
    killed save are removed and interrupted folder swaps repaired) or --overwrite_output_dir (then
    the outputs of the previous run are removed first: the engine's OUTPUT_NAMES and the runner's
    `output_names`, what its task families declare; a new run never sits beside, or resumes, an old
    one). An evaluation-only run (training=False) may write next to a model there."""
    out = opts.output_dir
    if env.is_main:
        check_output_dir(opts, training)
        existed = os.path.isdir(out)
        if training and not (existed and os.listdir(out)):
            file_utils.remove_if_run_fails(out, existed, lambda: any(
                os.path.exists(os.path.join(out, name)) for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old", "best")))
        if training and os.path.isdir(out) and os.listdir(out):
            if opts.resume:
                for name in ("checkpoint", "best"):
                    file_utils.recover_dir(os.path.join(out, name))
                for path in file_utils.remove_stale_temporaries(out):
                    logger.info("removed %s, left by an interrupted save", path)
            else:
                for name in dict.fromkeys(OUTPUT_NAMES + tuple(output_names)):
                    path = os.path.join(out, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    elif os.path.lexists(path):
                        os.remove(path)
                file_utils.remove_stale_temporaries(out)
                logger.info("--overwrite_output_dir: removed the previous run's outputs from %s", out)
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--output_dir {out}: {exc.strerror}") from None
    env.barrier()
    return out


def write_run_config(args, output_dir, env=None):
    """run_config.json: the full command line and every flag value (rank 0 only)."""
    if env is not None and not env.is_main:
        return
    if env is None and dist.is_initialized() and dist.get_rank() != 0:
        return
    flags = {k: (v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v))
             for k, v in sorted(vars(args).items())}
    atomic_write_json(os.path.join(output_dir, "run_config.json"), {
        "argv": list(sys.argv), "command": " ".join(sys.argv), "flags": flags,
        "torch": torch.__version__, "world_size": dist.get_world_size() if dist.is_initialized() else 1,
    })


@contextlib.contextmanager
def output_dir_of_rank(env, out_dir):
    """`out_dir` on rank 0; a throwaway folder on the other ranks, which take part in collective
    predictions but write nothing that stays."""
    if env.is_main:
        yield out_dir
    else:
        with tempfile.TemporaryDirectory() as scratch:
            yield scratch


def save_model(model, directory, tokenizer=None, labels=None):
    """The model (modeling.write_pretrained: Hugging Face layout for a one-task model, with `labels`
    as id2label) and the tokenizer files (vocab.txt, tokenizer_config.json, special_tokens_map.json)
    into directory; each file atomic."""
    os.makedirs(directory, exist_ok=True)
    vocab_file = getattr(tokenizer, "vocab_file", None) if tokenizer is not None else None
    model.save_pretrained(directory, vocab_file=vocab_file, labels=labels)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory, model_max_length=model.config.max_position_embeddings)


def write_eval_results(path, results):
    """`key = value` lines, keys sorted (the reference eval_results.txt format), atomically."""
    lines = [f"{key} = {results[key]}" for key in sorted(results)]
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
