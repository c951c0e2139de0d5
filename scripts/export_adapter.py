"""Export one task of a fine-tuned multi-task model (its modules and head) as a small file pair.

    python scripts/export_adapter.py runs/pals/best --task rte --output_dir rte_adapter/

Writes adapter.safetensors (the task's tensors, without its task index) and adapter.json (task,
head type, labels, adapter config, and the base model's identity: a sha256 of its shared encoder
weights), and prints the sizes. scripts/import_adapter.py adds it to a model with that encoder.

    python scripts/export_adapter.py runs/lora/best --task rte --format peft --output_dir rte_peft/

writes a LoRA or (IA)^3 task as a PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
A --freeze run's adapter names the run's own base model (checked: the encoder equals its weights);
otherwise the base it needs goes beside it (base_model/, our encoder and the task's head as a Hugging
Face folder): docs/multitask.md#peft-adapter-folders.
"""
import argparse
import os

import multitask as mt
import tasks
from file_utils import resolve_model_dir, run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="a fine-tuned run_multi_task.py model folder (e.g. runs/pals/best)")
    parser.add_argument("--task", required=True, help="the task to export (one of the model's task names)")
    parser.add_argument("--output_dir", required=True, help="a new folder for adapter.safetensors + adapter.json")
    parser.add_argument("--format", choices=("ours", "peft"), default="ours",
                        help="ours (any task modules) or peft (a LoRA or (IA)^3 task, for peft.PeftModel)")
    args = parser.parse_args(argv)
    model_dir = resolve_model_dir(args.model_dir)
    task = args.task.strip().lower()
    if args.format == "peft":
        return export_peft(model_dir, task, args.output_dir)
    info = mt.export_task_adapter(model_dir, task, args.output_dir, labels=tasks.saved_labels(model_dir).get(task))
    path = os.path.join(args.output_dir, mt.ADAPTER_WEIGHTS)
    fingerprint = info["base_model"]["encoder_sha256"]
    print(f"{task}: {info['num_parameters']:,} parameters (modules + head), {os.path.getsize(path) / 1e6:.2f} MB in "
          f"{path}; the base model it needs has {info['base_parameters']:,} shared parameters (encoder sha256 "
          f"{fingerprint[:16]}...)")
    return 0


def export_peft(model_dir, task, output_dir):
    model, task_id = mt.adapter_files.model_for_export(model_dir, task, output_dir)
    vocab = os.path.join(model_dir, "vocab.txt")
    base, why = mt.peft_files.frozen_base(model_dir, model)
    config = mt.peft_files.export_peft_adapter(model, task_id, output_dir, tasks.saved_labels(model_dir).get(task),
                                               vocab if os.path.isfile(vocab) else None, base_name=base)
    cls = mt.peft_files.HEADS[model.task_types[task_id]][1]
    where = base or os.path.join(output_dir, config["base_model_name_or_path"])
    print(f"{task}: {config['peft_type']} adapter in {output_dir} for transformers' {cls}; base {where} ({why})")
    if base:  # the pre-trained base has no head of this size: say so in the load
        sized = model.task_types[task_id] in ("classification", "regression", "token")
        labels = f", num_labels={model.task_num_labels[task_id]}" if sized else ""
        print(f"load: peft.PeftModel.from_pretrained(transformers.{cls}.from_pretrained({base!r}{labels}), "
              f"{output_dir!r})")
    return 0


if __name__ == "__main__":
    run_cli(main)
