"""Export one task of a fine-tuned multi-task model (its modules and head) as a small file pair.

    python scripts/export_adapter.py runs/pals/best --task rte --output_dir rte_adapter/

Writes adapter.safetensors (the task's tensors, without its task index) and adapter.json (task,
head type, labels, adapter config, and the base model's identity: a sha256 of its shared encoder
weights), and prints the sizes. scripts/import_adapter.py adds it to a model with that encoder.
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
    args = parser.parse_args(argv)
    model_dir = resolve_model_dir(args.model_dir)
    task = args.task.strip().lower()
    info = mt.export_task_adapter(model_dir, task, args.output_dir, labels=tasks.saved_labels(model_dir).get(task))
    path = os.path.join(args.output_dir, mt.ADAPTER_WEIGHTS)
    fingerprint = info["base_model"]["encoder_sha256"]
    print(f"{task}: {info['num_parameters']:,} parameters (modules + head), {os.path.getsize(path) / 1e6:.2f} MB in "
          f"{path}; the base model it needs has {info['base_parameters']:,} shared parameters (encoder sha256 "
          f"{fingerprint[:16]}...)")
    return 0


if __name__ == "__main__":
    run_cli(main)
