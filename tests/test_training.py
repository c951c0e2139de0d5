"""Engine tests (training.py): collation, batching, streams, feature cache, and the Trainer's math
against independent expectations (a plain PyTorch loop, hand-computed gradients, per-example
forward passes). Tiny random BERTs (hidden 32, 2 layers) keep every test to a second or two."""
import copy
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import transformers

import file_utils
import tokenization
import training
from file_utils import ConfigError
from test_training_helpers import (
    assert_close_in_low_precision,
    engine_options,
    single_thread,
    state_dict_max_diff,
    synthetic_features,
    write_tiny_model,
)

pytestmark = pytest.mark.usefixtures(single_thread.__name__)  # tiny models: one thread


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), dropout=0.0)


def _setup(tiny_dir, out, *flags, tasks=(2,), cuda=False):
    args = engine_options(tiny_dir, str(out), *flags, cuda=cuda)
    env = training.setup_env(args)
    model = training.load_model(args, list(tasks))
    return args, env, model


# ----------------------------------------------------------------------------------------------
# collate / make_batches / EpochStream / cache
# ----------------------------------------------------------------------------------------------

def test_collate_pads_dynamically_and_builds_attention_mask():
    feats = [{"input_ids": [2, 7, 3], "token_type_ids": [0, 0, 0], "labels": 1, "guid": "a"},
             {"input_ids": [2, 8, 9, 10, 3], "token_type_ids": [0, 0, 1, 1, 1], "labels": 0, "guid": "b"}]
    batch = training.collate(feats)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}  # metadata dropped
    assert batch["input_ids"].tolist() == [[2, 7, 3, 0, 0], [2, 8, 9, 10, 3]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    fixed = training.collate(feats, pad_to=8)
    assert fixed["input_ids"].shape == (2, 8) and fixed["attention_mask"][1].tolist() == [1] * 5 + [0] * 3


def test_collate_token_labels_float_labels_and_multiple_choice():
    tok = training.collate([{"input_ids": [2, 5, 3], "labels": [-100, 4, -100]},
                            {"input_ids": [2, 3], "labels": [-100, -100]}])
    assert tok["labels"].tolist() == [[-100, 4, -100], [-100, -100, -100]]  # token labels pad with -100
    reg = training.collate([{"input_ids": [2, 3], "labels": 0.5}, {"input_ids": [2, 3], "labels": 1}])
    assert reg["labels"].dtype == torch.float32 and reg["labels"].tolist() == [0.5, 1.0]
    mc = training.collate([{"input_ids": [[2, 5, 3], [2, 3]], "token_type_ids": [[0, 0, 0], [0, 0]], "labels": 1}])
    assert mc["input_ids"].tolist() == [[[2, 5, 3], [2, 3, 0]]]
    assert mc["attention_mask"].tolist() == [[[1, 1, 1], [1, 1, 0]]]


def test_make_batches_is_a_deterministic_partition_grouped_by_length():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(25), 0.6, 1000).astype(int), 3, 128)
    a = training.make_batches(lengths, 16, seed=3, epoch=0)
    assert a == training.make_batches(lengths, 16, seed=3, epoch=0)
    assert a != training.make_batches(lengths, 16, seed=3, epoch=1)
    flat = sorted(i for b in a for i in b)
    assert flat == list(range(1000)) and all(len(b) <= 16 for b in a)
    # padding cost (sum over batches of batch_size x longest) falls sharply with grouping
    cost = lambda bs: sum(len(b) * max(lengths[i] for i in b) for b in bs)  # noqa: E731
    plain = training.make_batches(lengths, 16, seed=3, epoch=0, group_by_length=False)
    assert cost(a) < 0.6 * cost(plain)
    assert max(lengths[i] for i in a[0]) == lengths.max()  # the longest batch comes first
    assert training.make_batches(lengths[:5], 2, 0, 0, shuffle=False, group_by_length=False) == [[0, 1], [2, 3], [4]]


def test_make_batches_rank_slices_union_to_the_single_process_batches():
    lengths = list(range(3, 40))  # 37 examples: last global batch of 5 -> slices of 3 and 2
    single = training.make_batches(lengths, 8, seed=1, epoch=2)
    r0 = training.make_batches(lengths, 8, seed=1, epoch=2, rank=0, world_size=2)
    r1 = training.make_batches(lengths, 8, seed=1, epoch=2, rank=1, world_size=2)
    assert len(r0) == len(r1) == len(single)
    for s, a, b in zip(single, r0, r1):
        assert sorted(a + b) == sorted(s) and not set(a) & set(b) and a and b
    # a final global batch smaller than world_size is merged into the previous one
    merged = training.make_batches(list(range(9)), 4, 0, 0, shuffle=False, group_by_length=False, rank=1, world_size=2)
    assert merged == [[1, 3], [5, 7]]
    # ... also when length grouping + shuffling put the short batch anywhere (33 = 4 x 8 + 1)
    for epoch in range(5):
        parts = [training.make_batches(list(range(3, 36)), 8, 0, epoch, rank=r, world_size=2) for r in (0, 1)]
        assert all(b for part in parts for b in part) and len(parts[0]) == len(parts[1]) == 4
        assert sorted(i for part in parts for b in part for i in b) == list(range(33))


def test_epoch_stream_steps_accumulation_and_state():
    feats = synthetic_features(22, seed=0)
    stream = training.EpochStream(feats, batch_size=8, accumulation=2, seed=5)
    assert stream.micro_batch_size == 4 and stream.steps_per_epoch == 3  # micro-batches 4,4,4,4,4,2
    sizes = [[b["input_ids"].shape[0] for _, b in stream.next_step()] for _ in range(3)]
    assert sorted(sum(sizes, [])) == [2, 4, 4, 4, 4, 4]
    state = stream.state_dict()
    nxt = stream.next_step()
    other = training.EpochStream(feats, batch_size=8, accumulation=2, seed=5)
    other.load_state_dict(state)
    again = other.next_step()
    assert other.epoch == 1
    for (_, x), (_, y) in zip(nxt, again):
        assert torch.equal(x["input_ids"], y["input_ids"])
    with pytest.raises(ConfigError, match="not divisible"):
        training.EpochStream(feats, batch_size=8, accumulation=3, seed=0)
    with pytest.raises(ConfigError, match="data position"):
        training.EpochStream(feats[:10], batch_size=8, accumulation=2, seed=5).load_state_dict(state)


def test_cached_features_builds_once_and_misses_on_changed_key(tmp_path):
    calls = []

    def build(value):
        calls.append(value)
        return [{"input_ids": [2, value, 3]}]

    key = {"task": "sst-2/train", "vocab": "abc", "max_seq_length": 128}
    assert list(training.cached_features(str(tmp_path), key, lambda: build(5))) == [{"input_ids": [2, 5, 3]}]
    assert list(training.cached_features(str(tmp_path), dict(key), lambda: build(6))) == [{"input_ids": [2, 5, 3]}]
    assert calls == [5]
    assert training.cached_features(str(tmp_path), dict(key, max_seq_length=64),
                                    lambda: build(7))[0]["input_ids"][1] == 7
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all(f.endswith(".npz") and not f.startswith(".") for f in files)
    # a truncated cache file (e.g. a disk-full write by another tool) is rebuilt, not trusted
    path = os.path.join(tmp_path, files[0])
    with open(path, "r+b") as f:
        f.truncate(40)
    training.cached_features(str(tmp_path), key, lambda: build(8))
    training.cached_features(str(tmp_path), dict(key, max_seq_length=64), lambda: build(9))
    assert calls[-1] in (8, 9) and len(calls) == 3


def test_cached_features_round_trip_every_value_kind(tmp_path):
    """Int lists, nested lists (multiple choice), ints, floats, strings, None and dicts come back equal
    and of the same types; features with other keys in a later build are not mixed up."""
    features = [{"input_ids": [2, 7, 3], "choices": [[1, 2], [3]], "labels": 1, "score": 0.25, "index": "a",
                 "meta": {"tokens": ["x"], "pairs": [[1, 2]]}, "none": None},
                {"input_ids": [2, 3], "choices": [[4], [5, 6, 7]], "labels": 0, "score": 1.5, "index": "b",
                 "meta": {"tokens": [], "pairs": []}, "none": None}]
    key = {"task": "kinds"}
    training.cached_features(str(tmp_path), key, lambda: features)
    loaded = training.cached_features(str(tmp_path), key, lambda: pytest.fail("must come from the cache"))
    assert list(loaded) == features
    assert [type(v) for v in loaded[0].values()] == [type(v) for v in features[0].values()]


def test_file_fingerprint_changes_with_the_file(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("a\n")
    first = file_utils.file_fingerprint(str(path))
    path.write_text("ab\n")
    assert file_utils.file_fingerprint(str(path)) != first


# ----------------------------------------------------------------------------------------------
# Trainer math
# ----------------------------------------------------------------------------------------------

def test_engine_with_accumulation_matches_a_plain_pytorch_loop(tiny_dir, tmp_path):
    """AdamW, constant LR, no clipping: the engine (batch 8 as 2 micro-batches of 4, uneven last
    step) must equal a hand-written loop over the same full batches with mean loss."""
    feats = synthetic_features(22, seed=1)
    flags = ("--optimizer", "adamw", "--schedule", "constant", "--max_grad_norm", 0, "--weight_decay", 0,
             "--learning_rate", 1e-3, "--train_batch_size", 8, "--gradient_accumulation_steps", 2, "--seed", 7)
    args, env, model = _setup(tiny_dir, tmp_path / "out", *flags)
    reference = copy.deepcopy(model)
    stream = training.make_stream(args, env, feats)
    steps = 2 * stream.steps_per_epoch
    trainer = training.Trainer(args, env, model, steps)
    trainer.train(stream, steps)

    opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, eps=1e-6, weight_decay=0.0)
    lengths = [len(f["input_ids"]) for f in feats]
    for epoch in range(2):
        micro = training.make_batches(lengths, 4, seed=7, epoch=epoch)
        for s in range(0, len(micro), 2):
            idx = sum(micro[s:s + 2], [])
            batch = training.collate([feats[i] for i in idx])
            opt.zero_grad()
            reference(**batch, task_id=0)["loss"].backward()
            opt.step()
    assert state_dict_max_diff(trainer.model.state_dict(), reference.state_dict()) < 1e-6
    assert trainer.global_step == steps and trainer.scheduler.last_epoch == steps
    trainer.close()


def test_default_adamw_step_matches_torch_with_global_norm_clipping(tiny_dir, tmp_path):
    """The default optimizer path (AdamW, linear warmup/decay, weight decay except biases and
    LayerNorm, clipping of the GLOBAL gradient norm) against torch.optim.AdamW +
    clip_grad_norm_ + transformers' linear schedule; the norm is set so that every step clips."""
    feats = synthetic_features(16, seed=4)
    flags = ("--max_grad_norm", 0.05, "--learning_rate", 1e-2, "--train_batch_size", 8, "--seed", 3,
             "--warmup_proportion", 0.25, "--no_group_by_length")
    args, env, model = _setup(tiny_dir, tmp_path / "out", *flags)
    assert args.optimizer == "adamw" and args.schedule == "warmup_linear" and args.weight_decay == 0.01
    reference = copy.deepcopy(model)
    stream = training.make_stream(args, env, feats)
    steps = 2 * stream.steps_per_epoch
    trainer = training.Trainer(args, env, model, steps)
    trainer.train(stream, steps)

    named = list(reference.named_parameters())
    no_decay = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-2, eps=1e-6)
    schedule = transformers.get_linear_schedule_with_warmup(opt, int(0.25 * steps), steps)
    norms = []
    for epoch in range(2):
        for idx in training.make_batches([len(f["input_ids"]) for f in feats], 8, seed=3, epoch=epoch,
                                         group_by_length=False):
            opt.zero_grad()
            reference(**training.collate([feats[i] for i in idx]), task_id=0)["loss"].backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)))
            opt.step()
            schedule.step()
    assert min(norms) > 0.05  # every step was clipped: a per-tensor or missing clip would differ
    assert state_dict_max_diff(trainer.model.state_dict(), reference.state_dict()) < 1e-6
    trainer.close()


def test_token_losses_with_accumulation_equal_one_big_batch(tiny_dir, tmp_path):
    """Token classification (NER): micro-batches count by their labelled tokens, so the step equals
    the token mean over the whole batch (a per-example weighting would not, with windows of
    different label counts). Same check as above, token head, labels -100 on some tokens."""
    rng = np.random.default_rng(3)
    feats = []
    for f in synthetic_features(16, seed=2, min_len=4, max_len=20):
        labels = [int(x) for x in rng.integers(0, 3, len(f["input_ids"]))]
        labels = [lab if rng.random() < 0.6 else -100 for lab in labels]
        feats.append(dict(f, labels=labels))
    flags = ("--optimizer", "adamw", "--schedule", "constant", "--max_grad_norm", 0, "--weight_decay", 0,
             "--learning_rate", 1e-3, "--train_batch_size", 8, "--gradient_accumulation_steps", 4, "--seed", 7,
             "--no_group_by_length")
    args = engine_options(tiny_dir, str(tmp_path / "out"), *flags)
    env = training.setup_env(args)
    model = training.load_model(args, [3], ["token"])
    reference = copy.deepcopy(model)
    trainer = training.Trainer(args, env, model, 2)
    trainer.train(training.make_stream(args, env, feats), 2)
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, eps=1e-6, weight_decay=0.0)
    micro = training.make_batches([len(f["input_ids"]) for f in feats], 2, seed=7, epoch=0, group_by_length=False)
    for s in range(0, len(micro), 4):
        batch = training.collate([feats[i] for i in sum(micro[s:s + 4], [])])
        opt.zero_grad()
        reference(**batch, task_id=0)["loss"].backward()
        opt.step()
    assert state_dict_max_diff(trainer.model.state_dict(), reference.state_dict()) < 1e-6
    trainer.close()


def test_loss_count_comes_from_the_head_not_the_label_shape(tiny_dir, tmp_path):
    """The engine asks the model what each task's loss is a mean over (hand-counted here): the scored
    tokens of a token head, the examples of any other head, whatever the labels look like; a model
    without `loss_count` counts examples, and a wrapped one (DDP's `.module`) is asked."""
    args = engine_options(tiny_dir, str(tmp_path / "out"))
    model = training.load_model(args, [3, 2], ["token", "classification"])
    labels = torch.tensor([[1, -100, 2, -100], [-100, -100, 0, 1], [2, 2, 2, -100]])
    batch = {"input_ids": torch.ones(3, 4, dtype=torch.long), "labels": labels}
    assert training.loss_count(model, 0, batch) == 7.0
    assert training.loss_count(model, 1, batch) == 3.0  # a [B, S] label for a sequence head is not tokens
    assert training.loss_count(torch.nn.Linear(1, 1), 0, batch) == 3.0
    wrapped = torch.nn.Module()
    wrapped.module = model
    assert training.loss_count(wrapped, 0, batch) == 7.0


def test_lr_schedule_spans_the_real_optimizer_steps(tiny_dir, tmp_path):
    feats = synthetic_features(20, seed=2)
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4,
                              "--gradient_accumulation_steps", 2, "--num_train_epochs", 2)
    stream = training.make_stream(args, env, feats)
    steps = training.num_training_steps(args, stream.steps_per_epoch)
    assert steps == 10  # 20 examples / 4 per step x 2 epochs (not micro-batches)
    trainer = training.Trainer(args, env, model, steps)
    lrs = []
    trainer.train(stream, steps, on_epoch_end=lambda e, t: lrs.append(t.scheduler.get_last_lr()[0]))
    import optimization
    lam = optimization.get_lr_lambda("warmup_linear", 0.1, 10)
    assert lrs == pytest.approx([5e-5 * lam(5), 5e-5 * lam(10)])
    assert lrs[-1] == 0.0
    trainer.close()


def test_grad_combiner_gradient_is_written_back(tiny_dir, tmp_path):
    """A step with micro-batches of two tasks: the shared gradient is what the combiner returned
    (here: task 0's), task-specific parameters keep their own task's gradient."""
    args, env, model = _setup(tiny_dir, tmp_path / "out", tasks=(2, 3))
    f0, f1 = synthetic_features(5, seed=3), synthetic_features(3, seed=4, num_labels=3)
    b0, b1 = training.collate(f0), training.collate(f1)
    seen = []

    def first_task(flats):
        seen.append([f.clone() for f in flats])
        return flats[0].clone()

    reference = copy.deepcopy(model)
    trainer = training.Trainer(args, env, model, 10, grad_combiner=first_task)
    trainer._step_microbatches([(0, b0), (1, b1)])
    assert len(seen) == 1 and len(seen[0]) == 2

    # independent expectation: each task's loss weighted by its share of the step's 8 examples
    (reference(**b0, task_id=0)["loss"] * 5 / 8).backward()
    shared_names = [n for n, _ in model.named_shared_parameters()]
    ref = dict(reference.named_parameters())
    expected0 = torch.cat([ref[n].grad.reshape(-1) if ref[n].grad is not None else torch.zeros(ref[n].numel())
                           for n in shared_names])
    torch.testing.assert_close(seen[0][0], expected0, atol=1e-7, rtol=1e-5)
    got = dict(model.named_parameters())
    for n in shared_names:
        if got[n].grad is not None:
            want = ref[n].grad if ref[n].grad is not None else torch.zeros_like(got[n])
            torch.testing.assert_close(got[n].grad, want, atol=1e-7, rtol=1e-5)
    reference.zero_grad(set_to_none=True)
    (reference(**b1, task_id=1)["loss"] * 3 / 8).backward()
    for n, p in model.named_parameters():
        if n.startswith("heads.1."):
            torch.testing.assert_close(p.grad, ref[n].grad, atol=1e-7, rtol=1e-5)
    trainer.close()


def test_set_to_none_leaves_unsampled_task_parameters_untouched(tiny_dir, tmp_path):
    """Steps on task 0 only: BertAdam must not move task 1's head (grads are None, not zero)."""
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4, tasks=(2, 2))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("heads.1.")}
    stream = training.make_stream(args, env, synthetic_features(12, seed=5), task_id=0)
    trainer = training.Trainer(args, env, model, 3)
    trainer.train(stream, 3)
    for n, p in model.named_parameters():
        if n.startswith("heads.1."):
            assert torch.equal(p, before[n]), n
    assert not torch.equal(model.heads[0].classifier.weight, model.heads[1].classifier.weight)
    trainer.close()


def test_non_finite_loss_stops_with_a_clear_message(tiny_dir, tmp_path):
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4)
    with torch.no_grad():
        model.heads[0].classifier.weight.fill_(float("nan"))
    trainer = training.Trainer(args, env, model, 3)
    with pytest.raises(training.NonFiniteLossError, match="non-finite training loss .*step 1"):
        trainer.train(training.make_stream(args, env, synthetic_features(8, seed=6)), 3)
    trainer.close()


def test_bf16_on_cpu_trains_and_predicts_close_to_fp32(tiny_dir, tmp_path):
    feats = synthetic_features(16, seed=7)
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--bf16", "--train_batch_size", 8,
                              "--learning_rate", 1e-3)
    assert env.amp_dtype == torch.bfloat16
    trainer = training.Trainer(args, env, model, 4)
    fp32 = training.predict(model, feats, 0, 8)
    bf16 = trainer.predict(feats, 0, 8)
    assert not np.array_equal(fp32["logits"], bf16["logits"])  # autocast really ran in bf16
    assert_close_in_low_precision(bf16["logits"], fp32["logits"], torch.bfloat16)
    before = copy.deepcopy(model.state_dict())
    result = trainer.train(training.make_stream(args, env, feats), 4)
    assert np.isfinite(result["loss"]) and state_dict_max_diff(before, model.state_dict()) > 1e-4
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    trainer.close()


def test_fp16_needs_cuda(tiny_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="--fp16 needs a CUDA device"):
        training.setup_env(engine_options(tiny_dir, str(tmp_path), "--fp16"))


@pytest.mark.parametrize("loss_scale", [0, 128])
def test_fp16_scaler_logic_on_cpu(tiny_dir, tmp_path, loss_scale):
    """The runner refuses --fp16 on CPU, but torch.amp can run fp16 autocast + GradScaler on CPU:
    enough to check the engine's scaler handling (dynamic vs static scale, skipped-step limit)."""
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4, "--loss_scale", loss_scale)
    args, env.amp_dtype = dataclasses.replace(args, precision="fp16"), torch.float16
    trainer = training.Trainer(args, env, model, 40)
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == (loss_scale or 2.0 ** 16)
    result = trainer.train(training.make_stream(args, env, synthetic_features(16, seed=12)), 3)
    assert np.isfinite(result["loss"]) and trainer.consecutive_skipped == 0
    with torch.no_grad():
        model.heads[0].classifier.weight.fill_(float("nan"))
    with pytest.raises(training.NonFiniteLossError, match="25 optimizer steps in a row skipped"):
        trainer.train(training.make_stream(args, env, synthetic_features(16, seed=12)), 40)
    assert trainer.global_step == 3 + 25 - 1  # the 25th skipped step raises before it is counted
    if loss_scale:
        assert trainer.scaler.get_scale() == loss_scale  # static: skipped steps do not change it
    else:
        assert trainer.scaler.get_scale() == 2.0 ** 16 / 2 ** 25  # dynamic: halved at every skip
    trainer.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with GradScaler needs CUDA")
@pytest.mark.parametrize("loss_scale", [0, 128])
def test_fp16_on_gpu_trains(tiny_dir, tmp_path, loss_scale):
    feats = synthetic_features(16, seed=8)
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--fp16", "--loss_scale", loss_scale,
                              "--train_batch_size", 8, "--learning_rate", 1e-3, cuda=True)
    trainer = training.Trainer(args, env, model, 6)
    before = copy.deepcopy(model.state_dict())
    result = trainer.train(training.make_stream(args, env, feats), 6)
    assert np.isfinite(result["loss"]) and state_dict_max_diff(before, model.state_dict()) > 1e-4
    if loss_scale:
        assert trainer.scaler.get_scale() == loss_scale
    trainer.close()


def test_predict_returns_input_order_and_example_weighted_loss(tiny_dir, tmp_path):
    feats = synthetic_features(11, seed=9)
    args, env, model = _setup(tiny_dir, tmp_path / "out")
    out = training.predict(model, feats, 0, batch_size=4)
    model.eval()
    losses = []
    with torch.no_grad():
        for i, f in enumerate(feats):  # one example at a time: no padding at all
            single = model(**training.collate([f]), task_id=0)
            np.testing.assert_allclose(out["logits"][i], single["logits"][0].numpy(), atol=1e-5)
            losses.append(float(single["loss"]))
    assert out["loss"] == pytest.approx(np.mean(losses), abs=1e-6)
    assert training.predict(model, [{k: v for k, v in f.items() if k != "labels"} for f in feats], 0, 4)["loss"] is None


def test_early_stop_epoch_callback_and_dropout_back_on(tmp_path):
    model_dir = write_tiny_model(str(tmp_path / "drop"), dropout=0.1)
    args, env, model = _setup(model_dir, tmp_path / "out", "--train_batch_size", 4)
    feats = synthetic_features(8, seed=10)
    trainer = training.Trainer(args, env, model, 20)
    calls = []

    def on_epoch_end(epoch, t):
        t.predict(feats, 0)  # puts the model in eval mode and must put it back
        calls.append((epoch, t.global_step, t.model.training))
        return epoch == 2

    result = trainer.train(training.make_stream(args, env, feats), 20, on_epoch_end=on_epoch_end)
    assert calls == [(0, 2, True), (1, 4, True), (2, 6, True)]
    assert result["stopped_early"] and trainer.global_step == 6 and model.training
    trainer.close()
    # --resume after an early stop does not train on
    args = dataclasses.replace(args, resume=True)
    again = training.Trainer(args, env, training.load_model(args, [2]), 20)
    assert again.train(training.make_stream(args, env, feats), 20, on_epoch_end=on_epoch_end)["stopped_early"]
    assert again.global_step == 6 and len(calls) == 3


# ----------------------------------------------------------------------------------------------
# Output dir, run config, TensorBoard, flags
# ----------------------------------------------------------------------------------------------

def test_output_dir_run_config_and_tensorboard(tiny_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    args = engine_options(tiny_dir, str(out), "--train_batch_size", 4, "--logging_steps", 1)
    env = training.setup_env(args)
    with pytest.raises(ConfigError, match="not empty"):
        training.prepare_output_dir(args, env)
    args = dataclasses.replace(args, overwrite_output_dir=True)
    training.prepare_output_dir(args, env)
    training.write_run_config(args, str(out), env)
    config = json.loads((out / "run_config.json").read_text())
    assert config["flags"]["train_batch_size"] == 4 and config["flags"]["model_dir"] == tiny_dir
    assert isinstance(config["argv"], list)
    model = training.load_model(args, [2])
    trainer = training.Trainer(args, env, model, 3)
    trainer.train(training.make_stream(args, env, synthetic_features(12, seed=11)), 3)
    trainer.log_scalars("eval", {"acc": 0.5, "name": "skip-me", "nan": float("nan")})
    trainer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / training.TENSORBOARD_DIR))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "eval/acc"} <= set(tags) and "eval/nan" not in tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert sorted(os.listdir(out / "checkpoint")) == sorted([
        training.CHECKPOINT_META, training.CHECKPOINT_MODEL, training.CHECKPOINT_STATE + ".json",
        training.CHECKPOINT_STATE + ".safetensors"])


def test_flag_checks_and_lower_case_guess(tiny_dir, tmp_path, minilm_dir):
    with pytest.raises(ConfigError, match="not divisible"):
        training.setup_env(engine_options(tiny_dir, str(tmp_path), "--train_batch_size", 10,
                                       "--gradient_accumulation_steps", 3))
    with pytest.raises(ConfigError, match="exclusive"):
        training.setup_env(engine_options(tiny_dir, str(tmp_path), "--fp16", "--bf16"))
    with pytest.raises(ConfigError, match="torchrun"):  # --local_rank without the launcher's env vars
        training.setup_env(engine_options(tiny_dir, str(tmp_path), "--local_rank", 0))
    args = engine_options(minilm_dir, str(tmp_path))  # no casing flag: read from the folder
    tok = training.load_tokenizer(args)
    assert args.do_lower_case is True and tok.tokenize("Hello") == ["hello"]
    assert tokenization.guess_do_lower_case(tiny_dir) is True
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        training.load_model(engine_options(tiny_dir, str(tmp_path), "--max_seq_length", 100), [2])
