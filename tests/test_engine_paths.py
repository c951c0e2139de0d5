"""The engine's GPU-path logic, checked on the CPU (docs/engine.md): fp16 steps the GradScaler
skips (the LR schedule and the Gradient Vaccine's targets must not move), gradient surgery on the
Gram matrix of the task gradients (against the float64 reference it replaced, and the memory it
no longer takes), a plain multi-task sum without per-task gradients, launcher and GPU checks of
setup_env with the CUDA queries monkeypatched, prefetching (bit-identical weights, exact resume),
step losses read back only at sync points, and the CPU thread count.

Tiny random BERTs (hidden 32, 2 layers), one torch thread."""
import copy
import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import file_utils
import multitask as mt
import training
from file_utils import ConfigError
from test_training_helpers import (
    ROOT,
    engine_options,
    reference_gradvac,
    reference_pcgrad,
    single_thread,
    state_dict_max_diff,
    synthetic_features,
    write_tiny_model,
)

pytestmark = pytest.mark.usefixtures(single_thread.__name__)  # tiny models: one thread


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), dropout=0.0)


def _setup(model_dir, out, *flags, tasks=(2,)):
    args = engine_options(model_dir, str(out), *flags)
    env = training.setup_env(args)
    return args, env, training.load_model(args, list(tasks))


def _fp16_on_cpu(args, env):
    """--fp16 is refused without CUDA, but torch.amp runs fp16 autocast + GradScaler on the CPU: enough
    for the engine's scaler logic."""
    env.amp_dtype = torch.float16
    return dataclasses.replace(args, precision="fp16")


def _two_task_stream(args, env, combiner=None, n=(12, 9)):
    """Every step trains both tasks (the gradient-surgery path): MultiTaskStream, tasks_per_step 2."""
    streams = [training.make_stream(args, env, synthetic_features(count, seed=20 + t, num_labels=2 + t),
                                    task_id=t, seed=args.seed + t) for t, count in enumerate(n)]
    sampler = mt.TaskSampler(list(n), "prop", 1, args.seed)
    return mt.MultiTaskStream(streams, sampler, steps_per_epoch=4, tasks_per_step=2, combiner=combiner)


# ----------------------------------------------------------------------------------------------
# fp16: a skipped step moves neither the schedule nor the Gradient Vaccine
# ----------------------------------------------------------------------------------------------

def test_vaccine_ignores_a_non_finite_gradient():
    comb = mt.GradientCombiner("vaccine", num_tasks=3, seed=5, beta=0.5)
    comb.phi_hat[:] = [[0.0, 0.3, 0.1], [0.3, 0.0, 0.2], [0.1, 0.2, 0.0]]
    before, rng = comb.phi_hat.copy(), copy.deepcopy(comb.rng.bit_generator.state)
    good = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([-1.0, 1.0, 0.0])]
    for bad in (float("inf"), float("nan")):
        out = comb([good[0], torch.tensor([bad, 1.0, 0.0])], task_ids=[0, 2])
        assert not torch.isfinite(out).all()  # the plain sum: the GradScaler sees the overflow and skips
        assert np.array_equal(comb.phi_hat, before) and comb.calls == 0
        assert comb.rng.bit_generator.state == rng
    comb(good, task_ids=[0, 2])
    assert comb.calls == 1 and comb.phi_hat[0, 2] != before[0, 2] and np.isfinite(comb.phi_hat).all()


class _Overflow:
    """A gradient hook on one shared parameter: inf in the backward passes of the chosen steps (an fp16
    overflow under dynamic loss scaling, as it happens in the first steps of most runs)."""

    def __init__(self, trainer, steps):
        self.trainer, self.steps, self.seen = trainer, set(steps), []

    def __call__(self, grad):
        step = self.trainer.global_step + 1
        self.seen.append(step)
        return grad * float("inf") if step in self.steps else grad


def test_fp16_overflow_skips_the_vaccine_update_the_step_and_the_schedule(tiny_dir, tmp_path):
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4, "--learning_rate", 1e-3,
                              "--save_steps", 1, tasks=(2, 3))
    args = _fp16_on_cpu(args, env)
    comb = mt.GradientCombiner("vaccine", num_tasks=2, seed=1, beta=0.5)
    comb.phi_hat[:] = [[0.0, 0.4], [0.4, 0.0]]  # targets the step would move
    trainer = training.Trainer(args, env, model, 10, grad_combiner=comb)
    stream = _two_task_stream(args, env, comb)
    hook = _Overflow(trainer, steps={1})
    model.bert.embeddings.word_embeddings.weight.register_hook(hook)
    weights = copy.deepcopy(model.state_dict())
    scale = trainer.scaler.get_scale()

    trainer.train(stream, 1)  # step 1 overflows
    assert hook.seen == [1, 1]  # both tasks' backward passes ran
    assert comb.calls == 0 and np.array_equal(comb.phi_hat, [[0.0, 0.4], [0.4, 0.0]])
    assert state_dict_max_diff(weights, model.state_dict()) == 0  # the scaler skipped the step
    assert trainer.scaler.get_scale() == scale / 2 and trainer.scheduler.last_epoch == 0
    assert trainer.consecutive_skipped == 1
    saved = training.read_checkpoint(training.find_checkpoint(args.output_dir))["state"]
    assert np.isfinite(saved["grad_combiner"]["phi_hat"]).all()

    trainer.train(stream, 3)  # steps 2 and 3 are fine
    assert comb.calls == 2 and np.isfinite(comb.phi_hat).all() and comb.phi_hat[0, 1] != 0.4
    assert trainer.scheduler.last_epoch == 2 and trainer.consecutive_skipped == 0
    saved = training.read_checkpoint(training.find_checkpoint(args.output_dir))
    assert np.allclose(saved["state"]["grad_combiner"]["phi_hat"], comb.phi_hat)
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    trainer.close()


def test_non_finite_task_gradient_outside_fp16_stops_the_run(tiny_dir, tmp_path):
    """fp32: an inf task gradient is an error at its own step (nothing skips it), and a combiner
    function never sees it."""
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4, tasks=(2, 3))
    seen = []
    trainer = training.Trainer(args, env, model, 5, grad_combiner=lambda grads: seen.append(1) or sum(grads))
    model.bert.embeddings.word_embeddings.weight.register_hook(_Overflow(trainer, steps={2}))
    with pytest.raises(training.NonFiniteLossError, match=r"non-finite gradient at step 2 \(tasks 0,1\)"):
        trainer.train(_two_task_stream(args, env), 5)
    assert seen == [1] and trainer.global_step == 1
    trainer.close()


def test_fp16_skipped_steps_do_not_advance_the_schedule(tiny_dir, tmp_path):
    """The real GradScaler (dynamic scale) on the CPU: 3 good steps, then a NaN model: 24 skipped steps
    before the 25th stops the run; the schedule took exactly the 3 applied steps."""
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4)
    args = _fp16_on_cpu(args, env)
    trainer = training.Trainer(args, env, model, 40)
    trainer.train(training.make_stream(args, env, synthetic_features(16, seed=12)), 3)
    assert trainer.scheduler.last_epoch == 3
    with torch.no_grad():
        model.heads[0].classifier.weight.fill_(float("nan"))
    with pytest.raises(training.NonFiniteLossError, match="25 optimizer steps in a row skipped"):
        trainer.train(training.make_stream(args, env, synthetic_features(16, seed=12)), 40)
    assert trainer.global_step == 27 and trainer.scheduler.last_epoch == 3
    trainer.close()


class _FakeScaler:
    """The GradScaler API the engine uses, skipping the optimizer step at chosen calls; like a scaler
    with a static loss scale, the scale never changes, so only the found-inf record tells a skip."""

    def __init__(self, skip):
        self.skip, self.calls, self.applied = set(skip), 0, 0
        self._found = {}

    def is_enabled(self):
        return True

    def scale(self, loss):
        return loss

    def unscale_(self, optimizer):
        self.calls += 1
        self._found = {"cpu": torch.tensor(1.0 if self.calls in self.skip else 0.0)}

    def _found_inf_per_device(self, optimizer):
        return self._found

    def step(self, optimizer):
        if not float(self._found["cpu"]):
            self.applied += 1
            optimizer.step()

    def update(self, new_scale=None):
        self._found = {}

    def get_scale(self):
        return 128.0

    def state_dict(self):
        return {}


def test_scheduler_counts_only_the_steps_the_scaler_applied(tiny_dir, tmp_path):
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4, "--optimizer", "adamw")
    args = _fp16_on_cpu(args, env)
    trainer = training.Trainer(args, env, model, 8)
    trainer.scaler = _FakeScaler(skip={2, 5, 6})
    trainer.train(training.make_stream(args, env, synthetic_features(16, seed=3)), 8)
    assert trainer.scaler.applied == 5 and trainer.scheduler.last_epoch == 5
    assert all(int(s["step"]) == 5 for s in trainer.optimizer.state.values())  # AdamW's own count agrees
    # without the found-inf record the engine falls back to the scale: a constant one shows no skip
    trainer = training.Trainer(args, env, training.load_model(args, [2]), 8)
    trainer.scaler = _FakeScaler(skip={2})
    trainer._found_inf = lambda: None
    trainer.train(training.make_stream(args, env, synthetic_features(16, seed=3)), 3)
    assert trainer.scaler.applied == 2 and trainer.scheduler.last_epoch == 3  # (documented limit)
    trainer.close()


# ----------------------------------------------------------------------------------------------
# Gradient surgery: Gram-matrix weights vs the float64 implementation they replaced
# ----------------------------------------------------------------------------------------------



def _conflicting(k=4, n=20000, seed=0):
    """k gradients with a shared part and strong pairwise conflicts, in float32."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    return [(-1.0 if i % 2 else 1.0) * base * (i + 1) * 0.3 + torch.randn(n, generator=g) for i in range(k)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gram_projections_equal_the_float64_reference(seed):
    grads = _conflicting(seed=seed)
    orders = mt._other_orders(len(grads), np.random.default_rng(seed))
    ref = reference_pcgrad(grads, orders)
    got = mt.pcgrad(grads, orders)
    assert got.dtype == torch.float32 and not torch.allclose(ref, sum(grads), rtol=1e-2)  # projections did act
    torch.testing.assert_close(got, ref, rtol=2e-6, atol=2e-6 * float(ref.abs().max()))
    targets = np.random.default_rng(seed).uniform(-0.2, 0.6, (4, 4))
    phi_ref, phi_got = targets.copy(), targets.copy()
    ref = reference_gradvac(grads, phi_ref, 0.3, orders)
    got = mt.gradvac(grads, phi_got, 0.3, orders)
    torch.testing.assert_close(got, ref, rtol=2e-6, atol=2e-6 * float(ref.abs().max()))
    np.testing.assert_allclose(phi_got, phi_ref, rtol=1e-6, atol=1e-9)  # the reference rounds g_i' to fp32
    # scale-invariant: the loss-scaled gradients give the same weights (what the Trainer relies on)
    gram = training.gram_matrix(torch.stack(grads)).numpy()
    np.testing.assert_allclose(mt.pcgrad_weights(gram * 2.0 ** 32, orders), mt.pcgrad_weights(gram, orders),
                               rtol=1e-12)


class _Allocations(TorchDispatchMode):
    """(dtype, numel) of every tensor an op creates (outputs that do not reuse an input's storage)."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.made.append((t.dtype, t.numel()))
        return out


def test_surgery_step_takes_one_buffer_and_matches_independent_per_task_gradients(tiny_dir, tmp_path, monkeypatch):
    """Three tasks in one step through the Trainer with PCGrad: the shared gradient written back equals
    the reference PCGrad of per-task gradients from a plain PyTorch loop, and the step makes ONE
    task-gradient buffer (3 x shared size, float32) and no float64 tensor bigger than a Gram slice."""
    args, env, model = _setup(tiny_dir, tmp_path / "out", tasks=(2, 3, 2))
    feats = [synthetic_features(5, seed=30), synthetic_features(4, seed=31, num_labels=3),
             synthetic_features(3, seed=32)]
    batches = [training.collate(f) for f in feats]
    reference = copy.deepcopy(model)
    comb = mt.GradientCombiner("pcgrad", 3, seed=4)
    trainer = training.Trainer(args, env, model, 10, grad_combiner=comb)
    orders = mt._other_orders(3, np.random.default_rng(4))  # what the combiner will draw
    monkeypatch.setattr(training.trainer, "GRAM_CHUNK", 1024)
    with _Allocations() as allocations:
        trainer._step_microbatches([(t, b) for t, b in enumerate(batches)])
    shared = [n for n, _ in model.named_shared_parameters()]
    size = sum(dict(model.named_parameters())[n].numel() for n in shared)
    big = [(d, n) for d, n in allocations.made if n >= size]
    assert big == [(torch.float32, 3 * size)]
    assert max(n for d, n in allocations.made if d == torch.float64) <= 3 * 1024

    per_task = []
    params = dict(reference.named_parameters())
    for t, b in enumerate(batches):  # each task weighted by its share of the step's 12 examples
        reference.zero_grad(set_to_none=True)
        (reference(**b, task_id=t)["loss"] * len(feats[t]) / 12).backward()
        per_task.append(torch.cat([params[n].grad.reshape(-1) if params[n].grad is not None
                                   else torch.zeros(params[n].numel()) for n in shared]))
    expected = reference_pcgrad(per_task, orders)
    ours = dict(model.named_parameters())
    assert all(ours[n].grad is not None for n in shared)
    got = torch.cat([ours[n].grad.reshape(-1) for n in shared])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(expected, sum(per_task), atol=1e-6)  # PCGrad changed the sum
    trainer.close()


def test_plain_sum_over_tasks_skips_the_per_task_path(tiny_dir, tmp_path, monkeypatch):
    """--tasks_per_step 2 without a projection: the Trainer drops a "sum" combiner, never builds per-task
    gradients, and ends where the per-task path (a summing function) ends."""
    def run(combiner, out):
        args, env, model = _setup(tiny_dir, tmp_path / out, "--train_batch_size", 4, "--learning_rate", 1e-3,
                                  tasks=(2, 3))
        trainer = training.Trainer(args, env, model, 6, grad_combiner=combiner)
        trainer.train(_two_task_stream(args, env), 6)
        trainer.close()
        return trainer

    summing = run(lambda grads: grads[0] + grads[1], "per_task")
    monkeypatch.setattr(training.Trainer, "_combined_backward", lambda *a: pytest.fail("per-task gradients built"))
    plain = run(mt.GradientCombiner("sum", 2), "plain")
    assert plain.grad_combiner is None
    assert state_dict_max_diff(plain.model.state_dict(), summing.model.state_dict()) < 1e-6


# ----------------------------------------------------------------------------------------------
# setup_env: launcher mistakes, GPUs (CUDA queries monkeypatched), threads
# ----------------------------------------------------------------------------------------------

def _fake_cuda(monkeypatch, count=1, native_bf16=True, name="NVIDIA A100", capability=(8, 0)):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16 or
                        including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_bf16_is_refused_on_a_gpu_that_only_emulates_it(tiny_dir, tmp_path, monkeypatch):
    _fake_cuda(monkeypatch, native_bf16=False, name="Tesla V100-SXM2-16GB", capability=(7, 0))
    opts = engine_options(tiny_dir, str(tmp_path), "--bf16", cuda=True)
    with pytest.raises(ConfigError, match=r"Tesla V100.*compute capability 7\.0.* no native bfloat16.*--fp16"):
        training.setup_env(opts)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    env = training.setup_env(opts)  # native (Ampere and later): accepted
    assert env.device.type == "cuda" and env.amp_dtype == torch.bfloat16


def test_bf16_on_a_cpu_without_bf16_instructions_warns(tiny_dir, tmp_path, monkeypatch, caplog):
    """cpuinfo flags decide: avx512_bf16 or amx_bf16 -> native (no warning); neither -> a warning naming
    the benchmark; no flags line (not x86 Linux) -> unknown, no warning."""
    flags = {"plain": "flags\t\t: fpu sse avx avx2\n", "avx512": "flags : avx2 avx512f avx512_bf16\n",
             "amx": "flags : avx2 amx_tile amx_bf16\n", "arm": "Features : fp asimd\n"}
    files = {}
    for name, text in flags.items():
        files[name] = tmp_path / f"cpuinfo-{name}"
        files[name].write_text("processor : 0\n" + text)
    assert [training.cpu_has_native_bf16(str(files[n])) for n in flags] == [False, True, True, None]
    assert training.cpu_has_native_bf16(str(tmp_path / "absent")) is None
    opts = engine_options(tiny_dir, str(tmp_path / "out"), "--bf16")
    real = training.cpu_has_native_bf16
    for name, warned in (("plain", True), ("amx", False), ("arm", False)):
        monkeypatch.setattr(training.environment, "cpu_has_native_bf16", lambda path=str(files[name]): real(path))
        caplog.clear()
        env = training.setup_env(opts)
        assert env.amp_dtype == torch.bfloat16  # allowed either way
        said = [r.getMessage() for r in caplog.records if "AVX512-BF16" in r.getMessage()]
        assert bool(said) == warned, (name, said)


def test_checkpoint_rng_holds_only_this_process_gpu_so_a_resume_with_fewer_gpus_works(tmp_path, monkeypatch):
    """The 2019-style "every visible GPU" RNG state (get/set_rng_state_all) broke a resume on a machine
    with fewer GPUs (IndexError). The checkpoint keeps this rank's own GPU state, restored onto the
    resuming rank's GPU whatever the count. CUDA emulated: per-device generator states in a dict."""
    gpu_states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("all GPUs' states read"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("all GPUs' states set"))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: gpu_states[device.index].clone())

    def set_state(state, device):
        if device.index >= 2:  # the resuming machine has 2 GPUs
            raise IndexError(device.index)
        gpu_states[device.index] = state.clone()
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)

    saved = training._rng_state(torch.device("cuda", 5))  # rank 5 of an 8-GPU node
    assert torch.equal(saved["cuda"], torch.full((16,), 5, dtype=torch.uint8))
    training.write_state(str(tmp_path), "rng", saved)  # through the checkpoint's own format
    loaded = training.read_state(str(tmp_path), "rng")
    training._set_rng_state(loaded, torch.device("cuda", 1))  # resumed as local rank 1 of 2
    assert torch.equal(gpu_states[1], torch.full((16,), 5, dtype=torch.uint8))
    assert torch.equal(gpu_states[0], torch.zeros(16, dtype=torch.uint8))  # the other GPU untouched
    cpu_only = training._rng_state(torch.device("cpu"))
    assert "cuda" not in cpu_only
    training._set_rng_state(loaded, torch.device("cpu"))  # a GPU checkpoint resumed on CPU: no CUDA call


def _launcher_env(monkeypatch, **values):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, str(value))


def test_launcher_mistakes_are_one_line_errors_before_any_process_group(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("group started"))
    _launcher_env(monkeypatch, WORLD_SIZE=2, RANK=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=1)
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but LOCAL_RANK is not set"):
        training.setup_env(engine_options(tiny_dir, str(tmp_path)))
    _fake_cuda(monkeypatch, count=1)
    _launcher_env(monkeypatch, WORLD_SIZE=2, RANK=1, LOCAL_RANK=1, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=1)
    with pytest.raises(ConfigError, match=r"2 processes on this node but 1 visible GPU.*--nproc_per_node=1"):
        training.setup_env(engine_options(tiny_dir, str(tmp_path), cuda=True))
    _launcher_env(monkeypatch, WORLD_SIZE=4, RANK=0, LOCAL_RANK=0, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=1)
    with pytest.raises(ConfigError, match="2 processes on this node but 1 visible GPU"):  # rank 0 sees it too
        training.setup_env(engine_options(tiny_dir, str(tmp_path), cuda=True))


def test_process_group_gets_the_dist_timeout(tiny_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    _launcher_env(monkeypatch, WORLD_SIZE=2, RANK=0, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=1)
    env = training.setup_env(engine_options(tiny_dir, str(tmp_path)))
    assert env.distributed and calls[-1]["backend"] == "gloo"
    assert calls[-1]["timeout"] == datetime.timedelta(minutes=30)  # the documented default
    training.setup_env(engine_options(tiny_dir, str(tmp_path), "--dist_timeout", 2.5))
    assert calls[-1]["timeout"] == datetime.timedelta(minutes=2.5)
    with pytest.raises(ConfigError, match="--dist_timeout"):
        engine_options(tiny_dir, str(tmp_path), "--dist_timeout", 0)


def test_thread_count_from_affinity_quota_and_local_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(training.environment, "_cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    for key in ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    assert training.auto_threads()[0] == 16
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # OMP_NUM_THREADS=3 or set_num_threads(3) before
    assert training.auto_threads()[0] == 3
    monkeypatch.setattr(training.environment, "_cgroup_cpu_quota", lambda: 2.5)  # docker --cpus 2.5
    assert training.auto_threads()[0] == 3 and training.usable_cores() == 3
    monkeypatch.setattr(training.environment, "_cgroup_cpu_quota", lambda: 1.5)
    assert training.auto_threads()[0] == 2
    # torchrun, 4 processes on this node: the 16 cores are shared out; torchrun's OMP_NUM_THREADS=1 is not a cap
    monkeypatch.setattr(training.environment, "_cgroup_cpu_quota", lambda: None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert training.auto_threads() == (4, "auto: 16 usable cores / 4 local processes")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a value the user chose
    assert training.auto_threads()[0] == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")  # more processes than cores: still one thread each
    assert training.auto_threads()[0] == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5})  # taskset -c 0,5
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert training.auto_threads()[0] == 2
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    assert training.configure_threads(5) == (5, "--threads") and set_to == [5]
    with pytest.raises(ConfigError, match="--threads"):
        engine_options("minilm-l6", "/tmp/x", "--threads", -1)


def test_cgroup_quota_file(tmp_path):
    (tmp_path / "limited").write_text("150000 100000\n")
    (tmp_path / "open").write_text("max 100000\n")
    assert training._cgroup_cpu_quota(str(tmp_path / "limited")) == 1.5
    assert training._cgroup_cpu_quota(str(tmp_path / "open")) is None
    assert training._cgroup_cpu_quota(str(tmp_path / "missing")) is None


RUNNERS = ["run_classifier.py", "run_multi_task.py", "run_squad.py", "run_ner.py", "run_swag.py",
           "lm_finetuning/simple_lm_finetuning.py", "lm_finetuning/finetune_on_pregenerated.py"]


def test_runners_set_passive_openmp_waiting_before_torch_loads():
    """libgomp reads OMP_WAIT_POLICY once, when torch loads it: every runner's first import beyond the
    standard library is file_utils, which sets it unless the user did. Checked in every runner's
    source, and by importing run_multi_task (torch among its imports) in a fresh process."""
    import ast
    for runner in RUNNERS:
        tree = ast.parse(open(os.path.join(ROOT, runner), encoding="utf-8").read())
        modules = [(n.names[0].name if isinstance(n, ast.Import) else n.module).split(".")[0]
                   for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        first = next(m for m in modules if m not in sys.stdlib_module_names)
        assert first == "file_utils", (runner, modules)
    code = ("import os, sys\n"
            "import run_multi_task\n"
            "order = list(sys.modules)\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), order.index('file_utils') < order.index('torch'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, CUDA_VISIBLE_DEVICES=""), capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.stdout.split() == ["PASSIVE", "True"], out.stderr[-2000:]


# ----------------------------------------------------------------------------------------------
# Prefetching and step losses
# ----------------------------------------------------------------------------------------------

class _Recording:
    """Wraps a stream's next_step to record which thread fetched each step."""

    def __init__(self, stream):
        self.stream, self.threads = stream, []
        self.next_step_inner = stream.next_step
        stream.next_step = self.next_step

    def next_step(self):
        self.threads.append(threading.current_thread().name)
        return self.next_step_inner()


def _run_mixed(tiny_dir, out, steps, *flags, signal_at=None, resume=False):
    """Two tasks, Gradient Vaccine every step, accumulation 2, dropout on (the RNG must line up too).
    signal_at: a SIGTERM arrives during that step (the run checkpoints after it and stops)."""
    model_dir = os.path.join(os.path.dirname(tiny_dir), "dropout")
    if not os.path.isdir(model_dir):
        write_tiny_model(model_dir, dropout=0.1)
    args, env, model = _setup(model_dir, out, "--train_batch_size", 4, "--gradient_accumulation_steps", 2,
                              "--learning_rate", 1e-3, "--save_steps", 3, *(("--resume",) if resume else ()),
                              *flags, tasks=(2, 3))
    comb = mt.GradientCombiner("vaccine", 2, seed=2, beta=0.3)
    stream = _two_task_stream(args, env, comb, n=(14, 11))
    recorder = _Recording(stream)
    trainer = training.Trainer(args, env, model, steps, grad_combiner=comb)
    if signal_at is not None:
        inner = trainer._step_microbatches

        def step(micro):
            if trainer.global_step + 1 == signal_at:
                file_utils._Interrupts.requested = signal.SIGTERM
            return inner(micro)
        trainer._step_microbatches = step
    try:
        trainer.train(stream, steps)
    except file_utils.Interrupted:
        assert signal_at is not None and trainer.global_step == signal_at
    trainer.close()
    return trainer, stream, recorder


def test_prefetch_is_bit_identical_and_resumes_exactly(tiny_dir, tmp_path):
    steps = 9
    inline, inline_stream, inline_rec = _run_mixed(tiny_dir, tmp_path / "inline", steps, "--num_workers", 0)
    ahead, ahead_stream, ahead_rec = _run_mixed(tiny_dir, tmp_path / "ahead", steps, "--num_workers", 1)
    assert set(inline_rec.threads) == {"MainThread"}
    assert ahead_rec.threads[0] == "MainThread" and ahead_rec.threads[1:] and \
        all(name.startswith("prefetch") for name in ahead_rec.threads[1:])
    assert len(ahead_rec.threads) == steps  # nothing fetched past the last step
    assert state_dict_max_diff(inline.model.state_dict(), ahead.model.state_dict()) == 0
    assert np.array_equal(inline.grad_combiner.phi_hat, ahead.grad_combiner.phi_hat)
    assert inline.train_loss_sum == ahead.train_loss_sum
    assert inline_stream.state_dict() == ahead_stream.state_dict()
    # SIGTERM in step 7 with step 8 already fetched: the checkpoint holds the position after step 7,
    # and the stream is put back there
    _, stopped, _ = _run_mixed(tiny_dir, tmp_path / "split", steps, "--num_workers", 1, signal_at=7)
    saved = training.read_checkpoint(training.find_checkpoint(str(tmp_path / "split")))["state"]
    assert saved["global_step"] == 7 and saved["stream"]["step"] == 7 and stopped.state_dict()["step"] == 7
    resumed, _, _ = _run_mixed(tiny_dir, tmp_path / "split", steps, "--num_workers", 1, resume=True)
    assert state_dict_max_diff(inline.model.state_dict(), resumed.model.state_dict()) == 0
    assert np.array_equal(inline.grad_combiner.phi_hat, resumed.grad_combiner.phi_hat)


def test_default_on_cpu_collates_in_the_main_thread(tiny_dir, tmp_path):
    _, _, rec = _run_mixed(tiny_dir, tmp_path / "default", 3)
    assert set(rec.threads) == {"MainThread"}


def test_early_stop_gives_the_prefetched_step_back(tiny_dir, tmp_path):
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4, "--num_workers", 1)
    stream = training.make_stream(args, env, synthetic_features(12, seed=8))  # 3 steps per epoch
    trainer = training.Trainer(args, env, model, 20)
    result = trainer.train(stream, 20, on_epoch_end=lambda epoch, t: epoch == 1)
    assert result["stopped_early"] and trainer.global_step == 6
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["step_in_epoch"] == 3  # not epoch 2's first
    trainer.close()


class _Reads(TorchDispatchMode):
    """Counts reads of a tensor's value into Python (item(), float(), bool(): a device sync on CUDA)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("optimizer", ["adamw", "bertadam"])
def test_steps_read_nothing_back_and_losses_are_read_at_logging_steps(tiny_dir, tmp_path, optimizer):
    """As on CUDA (sync_every_step off): a training step reads no tensor value, and the losses come
    back in one transfer per logging step, with the same sums as reading every step."""
    def trainer_for(out, eager):
        args, env, model = _setup(tiny_dir, tmp_path / out, "--train_batch_size", 4, "--logging_steps", 4,
                                  "--optimizer", optimizer)
        trainer = training.Trainer(args, env, model, 8)
        trainer.sync_every_step = eager
        return trainer, training.make_stream(args, env, synthetic_features(32, seed=5))

    trainer, stream = trainer_for("direct", False)
    steps = [stream.next_step() for _ in range(3)]
    with _Reads() as reads:
        losses = [trainer.training_step(s) for s in steps]
    assert reads.count == 0 and all(torch.is_tensor(x) for x in losses) and len(trainer._pending_losses) == 3
    trainer.close()

    lazy, stream = trainer_for("lazy", False)
    flushes, flush = [], lazy._flush_losses
    lazy._flush_losses = lambda: (flushes.append((lazy.global_step, len(lazy._pending_losses))), flush())
    lazy.train(stream, 8)
    assert [(step, n) for step, n in flushes if n] == [(4, 4), (8, 4)]
    eager, stream = trainer_for("eager", True)
    eager.train(stream, 8)
    assert lazy.train_loss_steps == eager.train_loss_steps == 8
    assert lazy.train_loss_sum == pytest.approx(eager.train_loss_sum, rel=1e-12)
    lazy.close()
    eager.close()


def test_a_nan_loss_found_at_the_next_sync_point_names_its_step(tiny_dir, tmp_path):
    args, env, model = _setup(tiny_dir, tmp_path / "out", "--train_batch_size", 4, "--logging_steps", 4,
                              "--save_steps", 100)
    trainer = training.Trainer(args, env, model, 8)
    trainer.sync_every_step = False
    stream = training.make_stream(args, env, synthetic_features(32, seed=6))
    inner = trainer._step_microbatches

    def poisoned(micro):  # NaN weights from step 2 on
        if trainer.global_step + 1 == 2:
            with torch.no_grad():
                model.heads[0].classifier.weight.fill_(float("nan"))
        return inner(micro)

    trainer._step_microbatches = poisoned
    with pytest.raises(training.NonFiniteLossError, match="non-finite training loss .* at step 2 "):
        trainer.train(stream, 8)
    assert trainer.global_step == 4  # found at the logging step, before any checkpoint of NaN weights
    assert training.find_checkpoint(args.output_dir) is None
    trainer.close()


def test_num_workers_values(tiny_dir, tmp_path):
    default = engine_options(tiny_dir, str(tmp_path))
    assert default.num_workers is None
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert [training.prefetches(default, cpu), training.prefetches(default, gpu)] == [False, True]
    for n in (0, 1):
        opts = engine_options(tiny_dir, str(tmp_path), "--num_workers", n)
        assert [training.prefetches(opts, cpu), training.prefetches(opts, gpu)] == [bool(n), bool(n)]
    assert engine_options(tiny_dir, str(tmp_path), "--num_workers", 0).num_workers == 0
    with pytest.raises(ConfigError, match="--num_workers must be 0 .* or 1 .*, got 4"):
        engine_options(tiny_dir, str(tmp_path), "--num_workers", 4)


# ----------------------------------------------------------------------------------------------
# --compile
# ----------------------------------------------------------------------------------------------

def test_compile_pads_training_batches_to_multiples_of_8(tiny_dir, tmp_path):
    args = engine_options(tiny_dir, str(tmp_path), "--compile", "--train_batch_size", 4)
    assert args.pad_multiple == 8 and args.fingerprint()["pad_multiple"] == 8
    assert "pad_multiple" not in engine_options(tiny_dir, str(tmp_path)).fingerprint()  # old checkpoints resume
    stream = training.make_stream(args, training.setup_env(args), synthetic_features(40, seed=3))
    lengths = [(b["input_ids"].shape[1], int(b["attention_mask"].sum(1).max())) for _ in range(10)
               for _, b in stream.next_step()]
    assert all(padded % 8 == 0 and padded - 8 < longest <= padded for padded, longest in lengths)
    assert len({padded for padded, _ in lengths}) > 1
    with pytest.raises(ConfigError, match="--compile pads to multiples of 8"):
        training.load_model(engine_options(write_tiny_model(str(tmp_path / "m30"), max_position_embeddings=30),
                                           str(tmp_path), "--compile", "--max_seq_length", 30), [2])


def test_compiled_training_matches_eager(tiny_dir, tmp_path, monkeypatch):
    """--compile through the engine, with the aot_eager backend (dynamo's tracing and AOT autograd,
    without code generation, which would take minutes on this CPU): the same weights as the eager
    model after the same steps."""
    import functools

    import torch._dynamo
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python/torch build")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    feats = synthetic_features(8, seed=41, min_len=9, max_len=12)  # one padded length (16): one graph
    runs = {}
    for name in ("eager", "compiled"):
        args, env, model = _setup(tiny_dir, tmp_path / name, "--compile", "--train_batch_size", 4,
                                  "--learning_rate", 1e-3)
        trainer = training.Trainer(args, env, model, 2)
        if name == "eager":
            trainer.ddp_model = trainer.model  # the same padding, no compilation
        else:
            assert isinstance(trainer.ddp_model, torch._dynamo.eval_frame.OptimizedModule)
        trainer.train(training.make_stream(args, env, feats), 2)
        runs[name] = trainer
    torch._dynamo.reset()
    assert state_dict_max_diff(runs["eager"].model.state_dict(), runs["compiled"].model.state_dict()) < 1e-5
    assert runs["compiled"].train_loss_sum == pytest.approx(runs["eager"].train_loss_sum, rel=1e-5)
