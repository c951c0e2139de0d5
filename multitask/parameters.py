"""Parameter counts (total, shared, per task, against K separate BERTs; `--dry_run` builds the model on
the meta device) and which parameters train (`--add_tasks`)."""
import torch

import modeling


def parameter_report(model, task_names, count_fn):
    """Total / shared / per-task parameter counts and multipliers (`count_fn` = modeling.count_parameters).

    'one BERT' = the shared parameters (encoder + pooler, i.e. what one fine-tuned BERT without its head
    has); K separate fine-tuned BERTs = K x (one BERT + that task's head only).
    """
    total = count_fn(model)
    shared = _count_unique(model.shared_parameters())
    per_task = [_count_unique(model.task_parameters(t)) for t in range(len(task_names))]
    heads = [_count_unique(model.heads[t].parameters()) for t in range(len(task_names))]
    separate = sum(shared + h for h in heads)
    return {"total": int(total), "shared": int(shared), "per_task": dict(zip(task_names, map(int, per_task))),
            "task_specific_total": int(total - shared), "one_bert": int(shared),
            "multiplier_vs_one_bert": total / shared if shared else float("nan"),
            "separate_models_total": int(separate),
            "separate_multiplier": separate / shared if shared else float("nan"),
            "fewer_than_separate": separate / total if total else float("nan")}


def _count_unique(params):
    seen, n = set(), 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def format_parameter_report(report):
    lines = ["Parameters:",
             f"  total                     {report['total']:>14,d}  ({report['multiplier_vs_one_bert']:.3f}x one BERT)",
             f"  shared encoder (one BERT) {report['shared']:>14,d}",
             f"  task-specific, all tasks  {report['task_specific_total']:>14,d}"]
    for name, n in report["per_task"].items():
        lines.append(f"    {name:<23} {n:>14,d}  (modules + head)")
    k = len(report["per_task"])
    lines.append(f"  {k} separate fine-tuned BERTs {report['separate_models_total']:>12,d}  "
                 f"({report['separate_multiplier']:.2f}x one BERT; this model is "
                 f"{report['fewer_than_separate']:.2f}x smaller)")
    return "\n".join(lines)


def task_parameter_names(model, task_id):
    """State-dict names of the parameters that belong to task `task_id` only."""
    ids = {id(p) for p in model.task_parameters(task_id)}
    return {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in ids}


def freeze_shared(model):
    """--freeze: the shared encoder (every parameter of `model.shared_parameters()`: embeddings, layers,
    LayerNorms, pooler) gets requires_grad False; task modules and heads keep theirs. Returns
    (trainable parameters, trainable task-module parameters without the heads): with no task modules
    only the heads train (a linear probe)."""
    for p in model.shared_parameters():
        p.requires_grad_(False)
    heads = {id(p) for head in model.heads for p in head.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return _count_unique(trainable), _count_unique(p for p in trainable if id(p) not in heads)


def freeze_all_but(model, task_ids):
    """Leave only the modules and heads of `task_ids` trainable (--add_tasks): the shared encoder
    (LayerNorms included) and every other task's parameters get requires_grad False, so the
    optimizer never sees them and the other tasks' outputs cannot change. Returns the number of
    trainable parameters."""
    keep = {id(p) for t in task_ids for p in model.task_parameters(t)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return _count_unique(p for p in model.parameters() if p.requires_grad)


def meta_model(name_or_path, config, task_num_labels, task_types, task_names):
    """The BertForMultiTask a run would build, on the meta device (no weights read, no memory): for
    parameter counts in --dry_run."""
    _, merged, _ = modeling.read_pretrained(name_or_path, config)
    for key in modeling.TASK_KEYS:
        merged[key] = None
    merged["num_tasks"] = len(task_num_labels)
    with torch.device("meta"):
        return modeling.BertForMultiTask(modeling.BertConfig.from_dict(merged), task_num_labels, task_types,
                                         task_names)
