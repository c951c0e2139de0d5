"""The single training engine shared by every runner (run_*.py, lm_finetuning/*.py).

A package in parts (docs/engine.md#layout): options (flags -> EngineOptions), environment (device,
distributed, threads, model loading), outputs (the output folder), data (cache, collate, batches,
streams), features (FeatureTable: features as array columns), prediction, checkpoints, trainer (the
Trainer) and single_task (the single-task runners' block).
Everything is re-exported here: `import training; training.Trainer`.

A runner parses its flags (most of them from `add_engine_args`), builds features with its task
module, and hands them to this package, which owns everything between the features and the
tensors:

- environment: device choice, torchrun / `--local_rank` distributed init (NCCL on GPU, gloo on
  CPU), seeding (`setup_env`);
- data: feature cache on disk (`cached_features`), dynamic padding (`collate`), length-grouped,
  deterministic, rank-sharded batches (`make_batches`) and the step stream over one task's
  training set (`EpochStream`);
- the loop (`Trainer`): optimizer + LR schedule, gradient accumulation, mixed precision with
  torch.amp (fp16 + GradScaler, or bf16), DDP, optional gradient surgery across tasks
  (`grad_combiner`), non-finite loss detection, tqdm, TensorBoard, atomic checkpoints and exact
  resume, distributed prediction (`Trainer.predict`).

Batch-size convention: `--train_batch_size` is the EFFECTIVE GLOBAL batch of one optimizer
step. It is split into `--gradient_accumulation_steps` micro-batches, and every micro-batch is
split across the distributed ranks (each rank gets a strided slice). The loss of every
micro-batch is weighted by its share of the step's examples, so one optimizer step always sees
the mean over the global batch: single-process, accumulated and multi-process runs compute the
same update (exactly for per-example losses; token-level losses are weighted per example).

The engine knows nothing about any one task: a batch is a dict of tensors passed to
`model(**batch, task_id=...)`, and the model returns a dict with `loss` (training) and any
outputs (prediction).
"""
from file_utils import ConfigError, DataError, UserError
from training.checkpoints import (
                              CHECKPOINT_DIR,
                              CHECKPOINT_FORMAT,
                              CHECKPOINT_META,
                              CHECKPOINT_MODEL,
                              CHECKPOINT_STATE,
                              _rng_state,
                              _set_rng_state,
                              find_checkpoint,
                              read_checkpoint,
                              read_state,
                              write_state,
)
from training.data import (
                              DEFAULT_PADDING,
                              IGNORE_INDEX,
                              EpochStream,
                              FeatureList,
                              cached_features,
                              collate,
                              collate_at,
                              feature_length,
                              feature_lengths,
                              is_number,
                              make_batches,
                              make_stream,
                              num_training_steps,
                              pad_values,
)
from training.environment import (
                              Env,
                              _cgroup_cpu_quota,
                              auto_threads,
                              configure_threads,
                              cpu_has_native_bf16,
                              load_model,
                              load_tokenizer,
                              set_seed,
                              setup_env,
                              usable_cores,
)
from training.features import FeatureTable
from training.options import (
                              ENGINE,
                              PROTOCOL_2019,
                              REFERENCE_PARTS,
                              REFERENCE_VALUES,
                              EngineOptions,
                              add_engine_args,
                              default_cache_dir,
                              protocol_line,
)
from training.outputs import (
                              EVAL_HISTORY,
                              OUTPUT_NAMES,
                              check_output_dir,
                              output_dir_of_rank,
                              prepare_output_dir,
                              save_model,
                              write_eval_results,
                              write_run_config,
)
from training.prediction import _autocast, _move, predict, predictor
from training.single_task import dev_evaluator, log_freeze, run_summary, train_and_save
from training.trainer import (
                              GRAM_CHUNK,
                              MAX_CONSECUTIVE_SKIPPED_STEPS,
                              TENSORBOARD_DIR,
                              NonFiniteLossError,
                              Prefetcher,
                              Trainer,
                              compile_model,
                              gram_matrix,
                              loss_count,
                              prefetches,
                              weighted_rows_into,
)

__all__ = ['CHECKPOINT_DIR', 'CHECKPOINT_FORMAT', 'CHECKPOINT_META', 'CHECKPOINT_MODEL', 'CHECKPOINT_STATE',
           'ConfigError', 'DEFAULT_PADDING', 'DataError', 'ENGINE', 'EVAL_HISTORY', 'EngineOptions', 'Env',
           'EpochStream', 'FeatureList', 'GRAM_CHUNK', 'IGNORE_INDEX', 'MAX_CONSECUTIVE_SKIPPED_STEPS',
           'NonFiniteLossError', 'OUTPUT_NAMES', 'PROTOCOL_2019', 'Prefetcher', 'REFERENCE_PARTS', 'REFERENCE_VALUES',
           'TENSORBOARD_DIR', 'Trainer', 'UserError', '_autocast', '_cgroup_cpu_quota', '_move',
           '_rng_state', '_set_rng_state', 'add_engine_args', 'auto_threads', 'cached_features',
           'collate_at', 'feature_lengths', 'FeatureTable', 'check_output_dir',
           'collate', 'compile_model', 'configure_threads', 'cpu_has_native_bf16', 'default_cache_dir',
           'dev_evaluator', 'feature_length', 'find_checkpoint', 'gram_matrix', 'loss_count', 'is_number', 'load_model',
           'load_tokenizer', 'make_batches', 'make_stream', 'num_training_steps', 'output_dir_of_rank', 'pad_values',
           'predict', 'predictor', 'prefetches', 'prepare_output_dir', 'protocol_line', 'read_checkpoint',
           'log_freeze', 'read_state', 'run_summary', 'save_model', 'set_seed', 'setup_env', 'train_and_save',
           'usable_cores',
           'weighted_rows_into', 'write_eval_results', 'write_run_config', 'write_state']
