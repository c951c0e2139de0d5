"""The block every single-task runner shares: train, keep the best dev model, save."""
import logging
import math
import os
import shutil

import file_utils
import modeling
from file_utils import atomic_write_json
from multitask.parameters import freeze_shared
from training.checkpoints import CHECKPOINT_DIR
from training.data import make_stream, num_training_steps
from training.outputs import EVAL_HISTORY, save_model
from training.trainer import Trainer

logger = logging.getLogger(__name__)

def train_and_save(opts, env, model, features, tokenizer, desc="train", labels=None, evaluate=None, padding=None):
    """Train `model` on one task's features for --num_train_epochs / --max_steps (resumable) and save
    it into --output_dir (`labels`: the head's label strings, for the saved config's id2label; `padding`:
    the features' {feature key: pad value}, collate).

    With --eval_steps N and `evaluate(trainer) -> (main score, {eval set: metrics})` (`dev_evaluator`),
    the dev set is evaluated
    every N steps (TensorBoard `eval/...`), the best model is kept in <output_dir>/best/ and loaded
    into `model` at the end, so that the runner's final evaluation and predictions use it.
    --discard_checkpoint removes checkpoint/ after a successful run. --freeze trains only the task modules
    and heads (multitask.freeze_shared). Returns (trainer, summary):
    global_step, loss, runtime and samples/s, and with --eval_steps best_step, best_score (every
    evaluation's step, main score and metrics go to <output_dir>/eval_history.json)."""
    stream = make_stream(opts, env, features, padding=padding)
    num_steps = num_training_steps(opts, stream.steps_per_epoch)
    logger.info("%d training features, %d optimizer steps of %d examples (%d per epoch)", len(features), num_steps,
                opts.train_batch_size, stream.steps_per_epoch)
    if opts.freeze:
        log_freeze(*freeze_shared(model))
    trainer = Trainer(opts, env, model, num_steps)
    best_dir = os.path.join(opts.output_dir, "best")
    on_eval, period = None, stream.steps_per_epoch
    if opts.eval_steps and evaluate is not None:
        period = opts.eval_steps

        def on_eval(index, t):
            score, results = evaluate(t)
            state = t.extra_state
            best = state.get("best_score")
            improved = math.isfinite(score) and (best is None or score > best)
            state.setdefault("eval_history", []).append({"step": t.global_step, "score": score, "results": results})
            for eval_set, metrics in results.items():
                t.log_scalars(f"eval/{eval_set}", metrics)
            t.log_scalars("eval", {"main": score})
            if improved:
                state["best_score"], state["best_step"] = score, t.global_step
                if env.is_main:
                    file_utils.replace_dir_atomically(best_dir, lambda tmp: save_model(t.model, tmp, tokenizer, labels))
                logger.info("step %d: dev %.4f (new best)", t.global_step, score)
            env.barrier()
            return False
    summary = trainer.train(stream, num_steps, period, on_epoch_end=on_eval, desc=desc)
    trainer.save_model(opts.output_dir, tokenizer, labels)
    if on_eval is not None and trainer.extra_state.get("best_step") is not None:
        summary.update(best_step=trainer.extra_state["best_step"], best_score=trainer.extra_state["best_score"])
        if env.is_main:
            atomic_write_json(os.path.join(opts.output_dir, EVAL_HISTORY), trainer.extra_state["eval_history"])
        best = modeling.load_state_dict_file(os.path.join(best_dir, modeling.WEIGHTS_NAMES[0]))
        model.load_state_dict({name: best[key] for name, key in _saved_names(model, best).items()})
        logger.info("using the best dev model (step %d) for evaluation and predictions", summary["best_step"])
    if opts.discard_checkpoint and env.is_main:
        shutil.rmtree(os.path.join(opts.output_dir, CHECKPOINT_DIR), ignore_errors=True)
    env.barrier()
    return trainer, summary


def log_freeze(trainable, modules):
    """The log line of --freeze: what trains (only heads when the config has no task modules)."""
    if modules:
        logger.info("--freeze: training %s parameters (task modules %s + heads); the shared encoder stays as loaded",
                    f"{trainable:,}", f"{modules:,}")
    else:
        logger.info("--freeze: the config has no task modules, so only the heads train (%s parameters): a "
                    "linear probe of the loaded encoder", f"{trainable:,}")


def dev_evaluator(task, task_id=0):
    """train_and_save's `evaluate` for a tasks/ Task: its dev results through the trainer's predict."""
    def evaluate(trainer):
        results = task.evaluate(lambda features: trainer.predict(features, task_id, padding=task.padding))
        return task.main_score(results), results
    return evaluate


def run_summary(summary):
    """The numbers of a training run every runner writes into its results file."""
    keys = ("global_step", "loss", "train_runtime", "train_samples_per_second", "train_steps_per_second",
            "best_step", "best_score")
    return {k: summary[k] for k in keys if k in summary}


def _saved_names(model, saved):
    """Our state-dict name -> the key it was saved under (write_pretrained renames one-task heads)."""
    renames = (modeling.hf_layout(model) or (None, []))[1]
    out = {}
    for name in model.state_dict():
        key = name
        for ours, theirs in renames:
            if name.startswith(ours):
                key = theirs + name[len(ours):]
        if key in saved:
            out[name] = key
    return out
