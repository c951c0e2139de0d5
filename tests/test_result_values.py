"""Lines that decide a result, checked through the runners against independent expectations.

- The task probabilities a multi-task run really samples with, per epoch (--sample anneal: the
  paper's alpha = 1 - 0.8 (e - 1) / (E - 1), p_i ~ N_i^alpha, written out here by hand).
- The values in the test-set submission files: labels are the argmax of the model's logits
  (computed by transformers for run_classifier, by the saved multi-task model for
  run_multi_task), STS-B scores are clipped to 0..5 and, in multi-task runs, scaled back by 5.
- --task_lr and --freeze: on AdamW's first step every parameter with a gradient moves by its
  group's learning rate; frozen parameters stay bit-identical.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import modeling
import multitask
import run_classifier
import run_multi_task
import tokenization
import training
from glue_fixtures import write_glue_fixture
from tasks import glue
from test_training_helpers import single_thread, write_tiny_model

pytestmark = pytest.mark.usefixtures(single_thread.__name__)  # tiny models: one thread

MNLI_LABELS = ["contradiction", "entailment", "neutral"]  # the official GLUE label strings, in our head's order


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, vocab_file):
    return write_tiny_model(str(tmp_path_factory.mktemp("values") / "tiny"), vocab_file=vocab_file,
                            max_position_embeddings=128)


def pals_config(model_dir, path):
    config = dict(json.load(open(os.path.join(model_dir, "config.json"))), hidden_size_aug=12, mult=True, pals=True)
    with open(path, "w") as f:
        json.dump(config, f)
    return str(path)


def read_submission(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[0] == "index\tprediction"
    return [line.split("\t")[1] for line in lines[1:]]


def spread_head(weights_path, key_weight, key_bias, outputs, center, half_width):
    """Rescale a head (outputs y = W h + b on the test set, [N, C]) so that each output spans
    center +- half_width: y'_c = a_c (y_c - b_c) + center'_c. A tiny random model's outputs hardly
    vary between examples; after this, clipping decides some STS-B values and the argmax differs
    between examples, so a constant or unclipped submission fails."""
    state = load_file(weights_path)
    outputs = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    weight, bias = state[key_weight].double(), state[key_bias].double()
    a = torch.tensor(2.0 * half_width / (outputs.max(0) - outputs.min(0)))
    state[key_weight] = (weight * a[:, None]).float()
    state[key_bias] = (center - a * (torch.tensor(outputs.mean(0)) - bias)).float()
    save_file(state, weights_path, metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------- sampling

def test_each_epoch_samples_with_its_annealed_probabilities(tmp_path, monkeypatch):
    model = write_tiny_model(str(tmp_path / "tiny"))  # toy vocab: the text does not matter here
    data = tmp_path / "glue"
    sizes = {"rte": 6, "mrpc": 54}
    for task, n in sizes.items():
        write_glue_fixture(str(data), tasks=[task], n=n)
    draws = []
    next_step = multitask.MultiTaskStream.next_step

    def spy(self):  # records what the real run trains; changes nothing
        epoch = self.epoch
        batches = next_step(self)
        draws.append((epoch, list(self.last_tasks)))
        return batches

    monkeypatch.setattr(multitask.MultiTaskStream, "next_step", spy)
    steps, epochs = 200, 3
    out = tmp_path / "out"
    assert run_multi_task.main([str(a) for a in (
        "--tasks", "rte,mrpc", "--data_dir", data, "--bert_model", model, "--config",
        pals_config(model, tmp_path / "pals.json"), "--output_dir", out, "--sample", "anneal", "--num_train_epochs",
        epochs, "--steps_per_epoch", steps, "--train_batch_size", 1, "--max_seq_length", 16, "--cache_dir", "none",
        "--logging_steps", 10000, "--max_eval_examples", 2)]) == 0
    names = json.load(open(out / "results.json"))["tasks"]
    n = np.array([sizes[name] for name in names], dtype=float)
    assert len(draws) == steps * epochs
    for epoch in range(1, epochs + 1):
        alpha = 1.0 - 0.8 * (epoch - 1) / (epochs - 1)
        p = n ** alpha / (n ** alpha).sum()
        counts = np.bincount([t for e, tasks in draws if e == epoch for t in tasks], minlength=len(names))
        assert counts.sum() == steps
        sigma = np.sqrt(steps * p * (1 - p))
        # 3.5 sigma: the seeded run is deterministic; neighbouring epochs' p differ by > 4 sigma here
        assert np.all(np.abs(counts - steps * p) <= 3.5 * sigma), (epoch, counts.tolist(), (steps * p).tolist())


# ---------------------------------------------------------------------------------------------- submissions

def test_run_classifier_submissions_are_the_models_argmax_and_clipped_scores(tiny, tmp_path):
    data = tmp_path / "glue"
    write_glue_fixture(str(data), tasks=["sts-b", "mnli"], n=12)
    common = ["--data_dir", str(data), "--max_seq_length", "48", "--cache_dir", "none", "--logging_steps", "1000"]
    for task, submission in (("sts-b", "STS-B.tsv"), ("mnli", "MNLI-m.tsv")):
        trained = tmp_path / task
        assert run_classifier.main(["--task_name", task, "--bert_model", tiny, "--do_train", "--max_steps", "2",
                                    "--output_dir", str(trained), *common]) == 0
        tok = transformers.AutoTokenizer.from_pretrained(str(trained))
        examples = glue.read_examples(task, str(data), "test")
        batch = tok([e.text_a for e in examples], [e.text_b for e in examples], truncation=True, max_length=48,
                    padding=True, return_tensors="pt")

        def hf_logits():
            hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(trained)).eval()
            with torch.no_grad():
                return hf(**batch).logits.numpy()

        spread_head(str(trained / "model.safetensors"), "classifier.weight", "classifier.bias", hf_logits(),
                    *((2.5, 6.0) if task == "sts-b" else (0.0, 3.0)))
        out = tmp_path / (task + "-predict")
        assert run_classifier.main(["--task_name", task, "--bert_model", str(trained), "--do_predict",
                                    "--output_dir", str(out), *common]) == 0
        got = read_submission(out / submission)
        logits = hf_logits()
        assert len(got) == len(examples)
        if task == "sts-b":
            expected = np.clip(logits[:, 0], 0.0, 5.0)
            assert (logits[:, 0] < 0).any() and (logits[:, 0] > 5).any() and ((0 < expected) & (expected < 5)).any()
            # 2e-3: the 3-decimal format plus float noise that the head's rescaling amplifies
            np.testing.assert_allclose([float(v) for v in got], expected, atol=2e-3)
        else:
            assert got == [MNLI_LABELS[i] for i in logits.argmax(-1)]
            assert len(set(got)) > 1  # not one constant label


def test_run_multi_task_submissions_are_the_models_argmax_and_scaled_clipped_scores(tiny, tmp_path):
    data = tmp_path / "glue"
    write_glue_fixture(str(data), tasks=["sts-b", "mnli"], n=12)
    out = tmp_path / "out"
    common = ["--tasks", "sts-b,mnli", "--data_dir", str(data), "--max_seq_length", "48", "--cache_dir", "none",
              "--logging_steps", "1000"]
    assert run_multi_task.main([*common, "--bert_model", tiny, "--config", pals_config(tiny, tmp_path / "p.json"),
                                "--output_dir", str(out), "--num_train_epochs", "1", "--steps_per_epoch", "2"]) == 0
    best = out / "best"
    model = modeling.BertForMultiTask.from_pretrained(str(best)).eval()
    names = model.config.task_names
    tok = tokenization.BertTokenizer.from_pretrained(str(best))

    def test_logits(task):
        feats = glue.convert_examples_to_features(glue.read_examples(task, str(data), "test"), task, tok, 48)
        return training.predict(model, feats, names.index(task), 16)["logits"]

    for task, (center, half_width) in (("sts-b", (0.5, 1.2)), ("mnli", (0.0, 3.0))):
        i = names.index(task)
        spread_head(str(best / "model.safetensors"), f"heads.{i}.classifier.weight", f"heads.{i}.classifier.bias",
                    test_logits(task), center, half_width)
    model = modeling.BertForMultiTask.from_pretrained(str(best)).eval()
    again = tmp_path / "again"
    assert run_multi_task.main([*common, "--bert_model", str(best), "--config", "none", "--no_train", "--do_predict",
                                "--output_dir", str(again)]) == 0
    for task, submission in (("sts-b", "STS-B.tsv"), ("mnli", "MNLI-m.tsv")):
        logits = test_logits(task)
        got = read_submission(again / "predictions" / submission)
        if task == "sts-b":
            # multi-task runs train STS-B on score / 5 (as the PALs code): predictions are scaled back
            raw = 5.0 * logits.reshape(-1)
            expected = np.clip(raw, 0.0, 5.0)
            assert (raw < 0).any() and (raw > 5).any()
            np.testing.assert_allclose([float(v) for v in got], expected, atol=2e-3)
        else:
            assert got == [MNLI_LABELS[i] for i in logits.argmax(-1)]
            assert len(set(got)) > 1


# ---------------------------------------------------------------------------------------------- rates

def _first_step(tiny, tmp_path, monkeypatch, *flags):
    """One optimizer step of run_multi_task; returns (weights before, weights after) by our names."""
    data = tmp_path / "glue"
    write_glue_fixture(str(data), tasks=["rte", "mrpc"], n=8)
    before = {}
    init = training.Trainer.__init__

    def spy(self, opts, env, model, *args, **kwargs):  # the weights the run starts from
        before.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        init(self, opts, env, model, *args, **kwargs)

    monkeypatch.setattr(training.Trainer, "__init__", spy)
    out = tmp_path / "out"
    assert run_multi_task.main([str(a) for a in (
        "--tasks", "rte,mrpc", "--data_dir", data, "--bert_model", tiny, "--config",
        pals_config(tiny, tmp_path / "p.json"), "--output_dir", out, "--num_train_epochs", 1, "--steps_per_epoch", 1,
        "--schedule", "constant", "--weight_decay", 0, "--warmup_proportion", 0, "--cache_dir", "none",
        "--max_seq_length", 32, *flags)]) == 0
    after = training.read_checkpoint(str(out / "checkpoint"))["model"]
    return before, after


def _is_task_parameter(name):
    return name.startswith("heads.") or ".adapters." in name or ".pal_" in name


def _max_move(before, after, task):
    moves = [float((after[k].double() - before[k].double()).abs().max()) for k in before
             if _is_task_parameter(k) == task and before[k].is_floating_point() and "position_ids" not in k]
    return max(moves)


def test_task_lr_moves_task_parameters_at_their_rate(tiny, tmp_path, monkeypatch):
    before, after = _first_step(tiny, tmp_path, monkeypatch, "--learning_rate", 1e-4, "--task_lr", 5e-3)
    # AdamW's first step is lr * g / (|g| + eps) per element: |step| = lr wherever |g| >> eps
    assert _max_move(before, after, task=False) == pytest.approx(1e-4, rel=1e-2)
    assert _max_move(before, after, task=True) == pytest.approx(5e-3, rel=1e-2)


def test_freeze_keeps_the_encoder_bit_identical(tiny, tmp_path, monkeypatch):
    before, after = _first_step(tiny, tmp_path, monkeypatch, "--learning_rate", 1e-4, "--task_lr", 5e-3, "--freeze")
    shared = [k for k in before if not _is_task_parameter(k)]
    assert shared and all(torch.equal(before[k], after[k]) for k in shared)
    assert _max_move(before, after, task=True) == pytest.approx(5e-3, rel=1e-2)
    assert math.isfinite(_max_move(before, after, task=False)) and _max_move(before, after, task=False) == 0.0
