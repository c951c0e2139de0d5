"""Multi-task machinery of run_multi_task.py: which task each optimizer step trains, how the tasks'
gradients are combined, how the joint model is evaluated, selected and saved.

Task-agnostic: tasks come in as objects of the `tasks.base.Task` interface (built by the runner);
nothing here imports a task module (tests/test_tasks.py checks). One module per concern, in the
order a run uses them; `import multitask as mt; mt.X` reaches every public name:
- task_values:   per-task flag values (`--task_batch_sizes cola=16,...`, `--batch_size_<task>`,
                 `--predict TASK=FILE`);
- sampling:      p_i ~ N_i^alpha schedules (prop, sqrt, anneal, rr), the checkpointed `TaskSampler`,
                 the expected steps/passes report;
- stream:        the tasks' training streams and `MultiTaskStream`, the engine's step stream over them;
- gradients:     `combination_plan` (tasks per step, strategy) and the per-task-gradient combiners
                 for `training.Trainer(grad_combiner=...)`: PCGrad and Gradient Vaccine;
- library:       TorchJD's Gram-matrix weightings as --projection jd-<name> (LibraryCombiner);
- loss_weighting: TorchJD's loss scalarizers as --loss_weighting uw|dwa|famo (LossWeighter);
- parameters:    parameter counts and multipliers (`--dry_run`), `freeze_all_but` (`--add_tasks`);
- evaluation:    `predictor` (the runner's one way to predict), every task's dev metrics -> one
                 selection score, the dev table, prediction files;
- selection:     `ModelSelector` (joint best, per-task best, patience), results.json;
- saving:        best/ with task_labels.json, per-task best modules, checks on a saved model's tasks;
- adapter_files: one task's modules and head as a file (export/import, base-encoder fingerprint);
- peft_files:    a LoRA / (IA)^3 task as a PEFT adapter folder and back (export_adapter.py --format peft);
- epoch:         the Trainer hooks `TrainLossLog` and `EpochEnd`.
"""
from .adapter_files import (
    ADAPTER_FORMAT,
    ADAPTER_INFO,
    ADAPTER_WEIGHTS,
    encoder_fingerprint,
    export_task_adapter,
    import_task_adapter,
    read_task_adapter,
)
from .epoch import EpochEnd, TrainLossLog
from .evaluation import SELECTIONS, evaluate_tasks, format_eval_table, predict_tasks, predictor
from .gradients import (
    COMBINE_STRATEGIES,
    PROJECTIONS,
    GradientCombiner,
    combination_plan,
    gradvac,
    gradvac_weights,
    pcgrad,
    pcgrad_weights,
)
from .gradients import _other_orders as _other_orders  # tests pin the random order of the projections
from .library import LibraryCombiner, LibraryFlags, library_methods
from .loss_weighting import LossWeighter, LossWeightingFlags
from .parameters import (
    format_parameter_report,
    freeze_all_but,
    freeze_shared,
    meta_model,
    parameter_report,
    task_parameter_names,
)
from .sampling import (
    SAMPLING_MODES,
    TaskSampler,
    format_schedule_report,
    inclusion_probabilities,
    sampling_alpha,
    schedule_report,
    task_probabilities,
)
from .saving import (
    TASK_LABELS_FILE,
    assemble_per_task_best,
    check_saved_tasks,
    recover_output_dirs,
    save_task_parameters,
    save_with_task_labels,
    task_labels,
    write_per_task_combined,
)
from .selection import ModelSelector, write_results
from .stream import MultiTaskStream, task_streams
from .task_values import PLAIN_PREFIX, batch_size_flag, parse_predict_specs, parse_task_batch_sizes, parse_task_values

__all__ = [
    "ADAPTER_FORMAT", "ADAPTER_INFO", "ADAPTER_WEIGHTS", "COMBINE_STRATEGIES", "PROJECTIONS", "SAMPLING_MODES",
    "SELECTIONS", "TASK_LABELS_FILE", "EpochEnd", "GradientCombiner", "ModelSelector", "MultiTaskStream",
    "TaskSampler", "TrainLossLog", "assemble_per_task_best", "batch_size_flag", "check_saved_tasks",
    "combination_plan", "encoder_fingerprint", "evaluate_tasks", "export_task_adapter", "format_eval_table",
    "format_parameter_report", "format_schedule_report", "freeze_all_but", "freeze_shared", "gradvac",
    "gradvac_weights",
    "import_task_adapter", "inclusion_probabilities", "meta_model", "parameter_report", "parse_task_batch_sizes",
    "parse_task_values", "pcgrad", "pcgrad_weights", "predict_tasks", "read_task_adapter", "recover_output_dirs",
    "sampling_alpha", "save_task_parameters", "save_with_task_labels", "schedule_report", "task_labels",
    "task_parameter_names", "task_probabilities", "write_per_task_combined", "write_results", "PLAIN_PREFIX",
    "parse_predict_specs", "predictor", "task_streams", "LibraryCombiner", "LibraryFlags", "library_methods",
    "LossWeighter", "LossWeightingFlags",
]
