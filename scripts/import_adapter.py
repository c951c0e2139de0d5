"""Add an exported task (scripts/export_adapter.py) to a model with the same base encoder.

    python scripts/import_adapter.py runs/other/best rte_adapter/ --output_dir runs/other_plus_rte

The model may be a fine-tuned multi-task model (the task becomes its last task; its task modules
must be of the same kind) or the plain BERT the adapter was trained on with --freeze (the encoder
is then unchanged). A different base (its shared encoder weights differ from those the adapter
was exported from) is refused. A PEFT LoRA or (IA)^3 adapter folder (adapter_config.json) is
imported too, as task --task, onto the base it was trained on (PEFT records no fingerprint).
The output is a normal model folder: run_multi_task.py --no_train and --predict take it as
--bert_model.
"""
import argparse
import os

import multitask as mt
import tasks
import tokenization
from file_utils import ConfigError, replace_dir_atomically, resolve_model_dir, run_cli
from tasks import glue, swag


def _own_labels(task):
    """A GLUE task's label names (the adapter's head is matched to them by name), else None: other
    tasks' labels come from their data, so the adapter's become theirs."""
    try:
        return list(glue.get_task(task).labels or []) or None
    except ConfigError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="the model to add the task to (multi-task folder or plain BERT)")
    parser.add_argument("adapter_dir", help="a folder written by export_adapter.py")
    parser.add_argument("--output_dir", required=True, help="a new folder for the model with the added task")
    parser.add_argument("--task", help="the task name of a PEFT adapter folder (it names none)")
    args = parser.parse_args(argv)
    model_dir = resolve_model_dir(args.model_dir)
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir):
        raise ConfigError(f"{args.output_dir} exists and is not empty; write the model into a new folder")
    task = args.task and args.task.strip().lower()
    model, info = mt.import_task_adapter(model_dir, args.adapter_dir, task, own_labels=_own_labels,
                                         num_choices=swag.NUM_CHOICES)  # SWAG: the one multiple-choice family
    names = model.config.task_names
    labels = {k: v for k, v in tasks.saved_labels(model_dir).items() if k in names}
    if info.get("labels") is not None:
        labels[info["task"]] = list(info["labels"])
    tokenizer = tokenization.BertTokenizer.from_pretrained(
        model_dir, do_lower_case=tokenization.guess_do_lower_case(model_dir))
    replace_dir_atomically(args.output_dir, lambda tmp: mt.save_with_task_labels(model, tmp, tokenizer, [], labels))
    print(f"{info['task']} added as task {len(names) - 1} ({info['num_parameters']:,} parameters); "
          f"{args.output_dir} serves {', '.join(names)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
