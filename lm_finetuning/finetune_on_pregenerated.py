"""Fine-tune BERT with masked LM + next-sentence prediction on data from pregenerate_training_data.py.

Training epoch e reads `epoch_{e % N}.json` of the --pregenerated_data folder (N data epochs;
fewer than --epochs means data epochs are reused, with a warning). Each data epoch is turned
into fixed-shape arrays (in RAM, or with --reduce_memory in numpy memmap files on disk) and
served to the shared engine (training.py: fp16/bf16, accumulation, torchrun, --resume,
TensorBoard). The LR schedule spans the real number of optimizer steps, counted from the
sample counts in the metrics files. The output folder (config.json, model.safetensors,
vocab.txt) loads as --bert_model in run_classifier.py / run_multi_task.py.

    python lm_finetuning/finetune_on_pregenerated.py --pregenerated_data training/ \
        --bert_model minilm-l6 --do_lower_case --output_dir finetuned_lm/ --epochs 3
"""
import json
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass

import file_utils  # noqa: F401 - before torch: sets OMP_WAIT_POLICY (file_utils)
import training
from file_utils import ConfigError, make_parser, run_cli
from flags import add_flags, flag
from tasks import pretraining
from tasks.base import RUNNER_OUTPUT_NAMES

logger = logging.getLogger("finetune_on_pregenerated")

TASK_NAME = "lm"


@dataclass(frozen=True)
class PregeneratedFlags:
    """This script's own flags (flags.py); the engine's come from training.add_engine_args."""
    pregenerated_data: str = flag(help="folder with epoch_N.json + epoch_N_metrics.json from "
                                       "pregenerate_training_data.py", required=True)
    epochs: float = flag(None, "training epochs (default: --num_train_epochs, 3); may exceed the data epochs",
                         type=float)
    reduce_memory: bool = flag(False, "keep each data epoch in numpy memmap files on disk instead of RAM")
    memmap_dir: str = flag(None, "folder for the --reduce_memory files (default: a temporary folder inside "
                                 "--output_dir)", type=str)


def build_parser():
    p = make_parser(__doc__.split("\n")[0])
    add_flags(p, PregeneratedFlags)
    training.add_engine_args(p, helps={"max_seq_length": "ignored: the length is the max_seq_len of the pregenerated "
                                                         "data"}, learning_rate=3e-5)
    return p


def plan_epochs(folder, num_epochs):
    """[(epoch_file, num_samples, max_seq_len)] for each training epoch (data epochs reused cyclically)."""
    data_epochs = pretraining.find_pregenerated_epochs(folder)
    n_train = math.ceil(num_epochs)
    if len(data_epochs) < n_train:
        logger.warning("only %d data epoch(s) in %s for %d training epochs: data epochs will be reused; "
                       "pregenerate more with --epochs_to_generate for fresh masks and pairs every epoch",
                       len(data_epochs), folder, n_train)
    return [data_epochs[e % len(data_epochs)] for e in range(n_train)]


def check_pregenerate_config(folder, do_lower_case):
    """Warn when the data were made with another vocabulary setting than this run."""
    path = os.path.join(folder, "pregenerate_config.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            made = json.load(f)
    except (OSError, ValueError):
        return
    if made.get("do_lower_case") is not None and bool(made["do_lower_case"]) != bool(do_lower_case):
        logger.warning("the data were pregenerated with do_lower_case=%s but this run uses %s: use the same "
                       "case setting for both", made["do_lower_case"], do_lower_case)


def main(argv=None):
    args = build_parser().parse_args(argv)
    num_epochs = args.num_train_epochs if args.epochs is None else args.epochs
    if num_epochs <= 0:
        raise ConfigError(f"--epochs must be > 0, got {num_epochs}")
    args.num_train_epochs = num_epochs
    plan = plan_epochs(args.pregenerated_data, num_epochs)
    # The sequence length comes from the data, not from a flag (checked against the model below).
    args.max_seq_length = max(max_len for _, _, max_len in plan)
    opts = training.EngineOptions.from_args(args)
    env = training.setup_env(opts)
    training.prepare_output_dir(opts, env, output_names=RUNNER_OUTPUT_NAMES)
    tokenizer = training.load_tokenizer(opts)
    training.write_run_config(args, opts.output_dir, env)
    check_pregenerate_config(args.pregenerated_data, opts.do_lower_case)
    model = training.load_model(opts, task_num_labels=[2], task_types=["pretraining"], task_names=[TASK_NAME])

    memmap_root = None
    if args.reduce_memory:
        # A folder on the output's disk: the system temp folder may be a RAM disk.
        memmap_root = tempfile.TemporaryDirectory(prefix=".memmap_", dir=args.memmap_dir or opts.output_dir)

    def load_epoch(epoch):
        path, num, max_len = plan[epoch]
        logger.info("training epoch %d: %s (%d examples%s)", epoch, path, num,
                    ", memmap" if memmap_root else "")
        return pretraining.PregeneratedEpoch(path, num, max_len, tokenizer.vocab,
                                             memmap_dir=memmap_root.name if memmap_root else None,
                                             progress=env.is_main and sys.stderr.isatty())

    stream = training.make_stream(opts, env, load_epoch=load_epoch, epoch_sizes=[num for _, num, _ in plan])
    full = int(num_epochs)
    num_steps = sum(stream.steps[:full]) + (math.ceil((num_epochs - full) * stream.steps[full])
                                            if num_epochs > full else 0)
    logger.info("%d examples over %s epoch(s), %d optimizer steps (batch %d, accumulation %d, %d process(es))",
                sum(num for _, num, _ in plan), num_epochs, num_steps, opts.train_batch_size,
                opts.gradient_accumulation_steps, env.world_size)
    trainer = training.Trainer(opts, env, model, num_steps)
    try:
        result = trainer.train(stream, num_steps, stream.steps_per_epoch, desc="lm fine-tuning")
    finally:
        stream.close()
        if memmap_root is not None:
            memmap_root.cleanup()
        trainer.close()
    trainer.save_model(opts.output_dir, tokenizer)
    if env.is_main:
        training.write_eval_results(os.path.join(opts.output_dir, "train_results.txt"),
                                    training.run_summary(result))
        logger.info("saved to %s: global_step %d, mean loss %.4f", opts.output_dir, result["global_step"],
                    result["loss"])
    return 0


if __name__ == "__main__":
    run_cli(main)
