"""The 2019 Bert-n-Pals command line of run_multi_task.py, accepted as written: its flags (declared once,
flags.py) and their translation into ours (docs/reproducing.md). A model folder is assembled from
--bert_config_file, --vocab_file and --init_checkpoint (links in a temporary folder, nothing copied);
--h_aug, --optim, --do_eval alone, --save_checkpoints_steps and --tasks single --task_id N become the
flags that do the same."""
import json
import os
from dataclasses import dataclass

import file_utils
import modeling
import tasks as task_families
from file_utils import ConfigError
from flags import flag as opt

OLD = "2019 command lines (Bert-n-Pals run_multi_task.py), accepted as written"


@dataclass(frozen=True)
class ReferenceFlags:
    """The 2019 runner's flags that ours do not already have under the same name."""
    bert_config_file: str = opt(None, "the combined BERT + adapter config of the 2019 scripts (e.g. pals_config.json)",
                                group=OLD, type=str)
    vocab_file: str = opt(None, "the model's vocab.txt", group=OLD, type=str)
    init_checkpoint: str = opt(None, "weights: a converted pytorch_model.bin (2019 or Hugging Face names), a "
                                     "safetensors file, or a TensorFlow checkpoint prefix (.../bert_model.ckpt)",
                               group=OLD, type=str)
    multi: bool = opt(False, "accepted: adapters missing from the checkpoint always keep their fresh init", group=OLD)
    do_train: bool = opt(False, "accepted: training is the default", group=OLD)
    do_eval: bool = opt(False, "accepted: every epoch is evaluated; without --do_train it means --no_train", group=OLD)
    h_aug: int = opt(None, "the adapters' small dimension (hidden_size_aug)", group=OLD, type=int)
    optim: str = opt("normal", "'normal', or anything else for the 2019 second optimizer: lr 3e-4 for the PALs' "
                               "attention weights (--pal_attention_lr)", group=OLD)
    task_id: int = opt(1, "with --tasks single: the task's position in the paper order (0 cola, 1 mrpc, ...)",
                       group=OLD)
    save_checkpoints_steps: int = opt(None, "accepted: a checkpoint every N steps (--save_steps)", group=OLD,
                                      aliases=("--save",), type=int)


# The PAL attention weights' learning rate of the 2019 `--optim` option (hard-coded there).
REFERENCE_PAL_ATTENTION_LR = 3e-4


def apply_2019_flags(args):
    """The Bert-n-Pals command line in our terms: a model folder assembled from --bert_config_file,
    --vocab_file and --init_checkpoint (links in a temporary folder, nothing copied), --h_aug,
    --optim, --do_eval alone, --save_checkpoints_steps, --tasks single --task_id N."""
    args.single_task = False
    if args.do_eval and not args.do_train:
        args.no_train = True
    if args.save_checkpoints_steps is not None:
        args.save_steps = args.save_checkpoints_steps
    if args.optim != "normal" and args.pal_attention_lr is None:
        args.pal_attention_lr = REFERENCE_PAL_ATTENTION_LR
    if str(args.tasks).strip().lower() == "single":
        paper = task_families.glue.PAPER_TASKS
        if not 0 <= args.task_id < len(paper):
            raise ConfigError(f"--task_id must be 0..{len(paper) - 1} (the paper order: {', '.join(paper)})")
        args.tasks, args.single_task = paper[args.task_id], True
    if args.bert_config_file or args.init_checkpoint or args.vocab_file:
        args.bert_model, config = modeling.assemble_model_folder(args.bert_model, args.bert_config_file,
                                                                 args.vocab_file, args.init_checkpoint)
        if config is not None:
            if file_utils.explicit(args, "config"):
                _check_same_config(args.config, config, args.bert_model)
            args.config = config
    if args.h_aug is not None:
        args.config = modeling.with_hidden_size_aug(args.config, args.bert_model, args.h_aug)


def _check_same_config(config, bert_config_file, model_dir):
    """An explicit --config must be the --bert_config_file's config (same file or same JSON; 'none'
    for a plain BERT config, one without adapter keys)."""
    path = modeling.resolve_adapter_config(config, model_dir)
    combined = _json_or_none(bert_config_file)
    if path is None:
        same = isinstance(combined, dict) and not set(combined) & set(modeling.ADAPTER_KEYS)
    else:
        same = (os.path.realpath(path) == os.path.realpath(bert_config_file)
                or _json_or_none(path) == combined is not None)
    if not same:
        raise ConfigError(f"--config {config} ({path or 'no adapters'}) and --bert_config_file {bert_config_file} are "
                          "different configs: give one of them")


def _json_or_none(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
