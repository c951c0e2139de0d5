"""One prepared GPU check: the GPU tests, real fp16/bf16 runs and measured speed, printed as one table.

    bash bench/gpu_check.sh             # a CUDA machine: at most 5 minutes on one H100/H200
    bash bench/gpu_check.sh --smoke     # CPU: tiny sizes, 2 steps, no pytest, no MFU (checks this script)
    bash bench/gpu_check.sh --only b,h  # some checks only (letters below; 0 always runs)

On a borrowed GPU machine, run the line bench/gpu_bundle.sh prints (docs/benchmarks.md#gpu-check).
Every row is a check or a measurement; any FAIL gives exit code 1, after the whole table is printed.
Under $OUT (gpu_check.sh's default: ./gpu_check_out): gpu_check_table.txt and gpu_check.json, both
rewritten after every row (a kill at the machine's time limit keeps the finished rows), and
gpu_check.log, all output. Each check has a time budget (BUDGETS_S; the total stays under
TOTAL_BUDGET_S); one that raises or runs over it is a FAIL row with its error, and the next one runs.

0. The environment: Python, torch (FAIL below torch_compat.MIN_TORCH, the oldest torch we support),
   CUDA, cuDNN and GPU; every torch name the code uses resolves on this torch
   (torch_compat.missing_torch_names); seqeval at its pinned version; the carried bundle's files
   against its bundle.json; `minilm-l6` resolves and loads into fp32 parameters (the package, or the
   carried fp16 copy named by PALS_MINILM_L6_DIR).

a. `python -m pytest -m gpu -q tests`: every gpu-marked test passes (a skip on a GPU machine fails).
b. `run_multi_task.py` on the bundled sample data (MiniLM + PALs): rte,mrpc,sts-b, 1 epoch of 40
   steps, dev capped at 64 examples, once with --fp16 and once with --bf16: exit 0, the training loss
   logged at every step finite (and not the 0.0 the engine logs for a step without a finite loss),
   every dev metric in results.json finite, the dev table printed.
c. SDPA backends actually run (torch.profiler op names) for a padded bert-base batch: training and
   evaluation steps, BERT and PAL heads; FAIL if the math fallback or flash (which takes no mask)
   runs while docs/model.md#attention-kernels says it cannot.
d. Training-step throughput at bert-base sizes (random weights, configs/bert_base_config.json, batch
   32 x 128): ours = training.Trainer.training_step on a BertForMultiTask (forward, backward, global
   clipping, fused AdamW, zero_grad; one row with the default BertAdam) beside HF =
   transformers.BertForSequenceClassification (sdpa attention, the same fused AdamW and clipping) on
   the same batches in the same process, in fp32 (TF32 off: the engine's default), TF32 and bf16
   autocast, for full-length batches and padded ones (lengths 64..128). examples/s and MFU.
e. The PALs multi-task step (configs/pals_config.json, 8 GLUE heads, task ids cycling, as
   bench/bench_multitask_step.py) beside the shared-encoder step, bf16 and fp32, and PALs with the
   head-size padding off (modeling.SDPA_ALIGN = 1: PAL attention on the math kernel).
f. One optimizer step on bert-base parameters (bench/bench_optimizer.measure on CUDA): BertAdam loop
   vs multi-tensor, AdamW loop vs foreach vs fused.
g. Evaluation (bench/bench_eval.measure): training.predict of 2048 GLUE-like examples with bert-base
   at eval batch 8, 32, 64, 128, fp32 and bf16: examples/s and peak memory (is 8 a good default?).
h. Engine paths (docs/engine.md): a training step makes no host-device synchronisation
   (torch.cuda.set_sync_debug_mode("error") over 3 steps, losses read only at the logging step);
   prefetched batches are pinned; --compile (inductor) against eager on bert-base bf16 batches of
   32 x 128, dropout off: loss and gradient difference on the first batch, compile time, ms/step; and
   b's --bf16 run (prefetching: --num_workers 1, the default on CUDA) against one with --num_workers 0.
i. The CPU-assuming tests on this GPU machine (`pytest -q` of the engine test files, no -m gpu):
   they must force the CPU and pass where CUDA is visible.

MFU = model FLOPs per step / seconds per step / peak FLOP/s. Model FLOPs per training step = 3 x
the FLOPs of one forward pass (backward ~ 2 x forward), the forward counted by
torch.utils.flop_counter.FlopCounterMode with the head padding off (only the model's own FLOPs):
2 m n k per matrix product, i.e. 2 x parameters x tokens for every linear layer and 4 x S x d per
token, layer and head block for QK^T and AV. For plain BERT that is
    6 * N * T + 12 * L * S * H * T
(N parameters outside the embedding tables, T = B * S tokens, padding included, L layers, hidden H;
the pooler and head see one token per sequence, so the count is ~0.7% below the formula); the table
prints both. Peak: the GPU's dense bf16 / TF32 / fp32 FLOP/s from PEAK_TFLOPS, by device name (H100
SXM and H200: 989 / 495 / 67 TFLOP/s); other GPUs: "unknown GPU", no MFU.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time

import bench_eval
import bench_multitask_step
import bench_optimizer
import gpu_bundle
import torch
from gpu_report import Table, run_check, run_proc

import modeling
import optimization
import torch_compat
import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense (no sparsity) peaks in TFLOP/s from NVIDIA's datasheets: (bf16/fp16, TF32, fp32 without TF32).
# First match of the substring in torch.cuda.get_device_name() wins; NVL parts run at other clocks.
PEAK_TFLOPS = [
    ("NVL", None),
    ("H200", (989.4, 494.7, 66.9)),
    ("H100 80GB HBM3", (989.4, 494.7, 66.9)),  # the SXM5 part's name
    ("H100 SXM", (989.4, 494.7, 66.9)),
    ("H100 PCIe", (756.5, 378.0, 51.2)),
    ("A100", (312.0, 156.0, 19.5)),
]
PRECISION_INDEX = {"bf16": 0, "tf32": 1, "fp32": 2}
# Seconds per check on one H100 (estimates until measured), and for all: a borrowed machine gives
# 15 minutes with start-up, so the whole check must fit twice. --smoke (CPU) uses SMOKE_BUDGET_S each.
TOTAL_BUDGET_S = 290
BUDGETS_S = {"0": 20, "a": 45, "b": 35, "c": 10, "d": 35, "e": 15, "f": 10, "g": 20, "h": 60, "h2": 25, "i": 60}
SMOKE_BUDGET_S = 120


def peak_flops(device_name):
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            return None if peaks is None else tuple(p * 1e12 for p in peaks)
    return None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def tf32(enabled):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def sdpa_align(value):
    old = modeling.SDPA_ALIGN
    modeling.SDPA_ALIGN = value
    try:
        yield
    finally:
        modeling.SDPA_ALIGN = old


# ---------------------------------------------------------------------------------------------- a, b

def check_gpu_tests(table, smoke):
    section = "a. GPU tests"
    if smoke:
        table.add(section, "pytest -m gpu -q tests", "SKIP", "--smoke")
        return
    start = time.perf_counter()
    proc = run_proc([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests"], cwd=ROOT, timeout=300)
    summary = next((ln for ln in reversed(proc.stdout.splitlines()) if re.search(r"\d+ (passed|failed|error)", ln)),
                   "no summary")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    ok = proc.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")
    if not ok:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-3000:])
    table.add(section, "pytest -m gpu -q tests", "PASS" if ok else "FAIL", summary.strip("= "),
              f"{time.perf_counter() - start:.0f} s; a skip on a GPU machine counts as a failure")


def run_command(precision, out, smoke, workers):
    """(argv, steps, dev examples) of b's run_multi_task run (MiniLM by default: `minilm-l6`)."""
    steps, n_eval = (2, 8) if smoke else (40, 64)
    cmd = [sys.executable, "run_multi_task.py", "--tasks", "rte,mrpc,sts-b", "--num_train_epochs", "1",
           "--steps_per_epoch", str(steps), "--max_eval_examples", str(n_eval), "--logging_steps", "1",
           "--output_dir", out, "--cache_dir", "none", f"--{precision}", "--num_workers", workers]
    if smoke:
        cmd += ["--train_batch_size", "4", "--max_seq_length", "64"]
    return cmd, steps, n_eval


def check_run(table, precision, tmp, smoke, cuda):
    section = "b. run_multi_task"
    name = f"--{precision}, rte,mrpc,sts-b"
    if precision == "fp16" and not cuda:
        table.add(section, name, "SKIP", "needs CUDA")
        return
    out = os.path.join(tmp, f"run_{precision}")
    cmd, steps, n_eval = run_command(precision, out, smoke, workers="1")
    start = time.perf_counter()
    proc = run_proc(cmd, cwd=ROOT, timeout=300)
    wall = time.perf_counter() - start
    problems = []
    if proc.returncode != 0:
        problems.append(f"exit code {proc.returncode}")
    if "Dev results after epoch 1" not in proc.stdout or "GLUE avg" not in proc.stdout:
        problems.append("no dev table printed")
    # With --logging_steps 1 the engine logs every step's loss; a step without a finite loss is
    # logged as 0.0 (nothing to average), which no real cross-entropy/MSE loss is.
    losses = [float(x) for x in re.findall(r"step \d+/\d+ loss (\S+)", proc.stderr)]
    if len(losses) != steps:
        problems.append(f"{len(losses)} logged losses for {steps} steps")
    if any(not math.isfinite(x) or x == 0.0 for x in losses):
        problems.append(f"non-finite step losses: {losses}")
    summary = ""
    results_path = os.path.join(out, "results.json")
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
        metrics = [v for task in results["history"][-1]["results"].values() for v in task.values()
                   if isinstance(v, (int, float))]
        if not math.isfinite(results.get("train_loss", float("nan"))) or not all(map(math.isfinite, metrics)):
            problems.append("non-finite train_loss or dev metric in results.json")
        summary = (f"train loss {results.get('train_loss', float('nan')):.4f}, GLUE avg "
                   f"{100 * (results.get('best_glue_average') or float('nan')):.2f}, ")
    else:
        problems.append("no results.json")
    if problems:
        sys.stderr.write(f"$ {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n")
    table.add(section, name, "FAIL" if problems else "PASS",
              summary + f"{len(losses)} step losses finite" if not problems else "; ".join(problems),
              f"{wall:.0f} s, {steps} steps, dev {n_eval}")


# ---------------------------------------------------------------------------------------------- shared pieces

def engine(tmp, *extra):
    """(EngineOptions, Env) of the engine with the given flags (precision, optimizer)."""
    parser = training.add_engine_args(argparse.ArgumentParser())
    args = parser.parse_args(["--output_dir", os.path.join(tmp, "engine"), "--logging_steps", "100000",
                              "--cache_dir", "none", *extra])
    opts = training.EngineOptions.from_args(args)
    return opts, training.setup_env(opts)


def bert_config(smoke, **adapter_keys):
    if smoke:
        return modeling.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=128, max_position_embeddings=128, hidden_size_aug=24,
                                   pal_num_heads=6, **adapter_keys)
    config = modeling.BertConfig.from_json_file(os.path.join(ROOT, "configs", "bert_base_config.json"))
    for key, value in adapter_keys.items():
        setattr(config, key, value)
    if adapter_keys:  # validation of the adapter keys, as from_json_file would do
        config = modeling.BertConfig.from_dict(config.to_dict())
    return config


def batches(n, batch_size, seq_len, vocab, device, padded, seed=0, num_labels=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1000, vocab, (batch_size, seq_len), generator=g)
        mask = torch.ones(batch_size, seq_len, dtype=torch.long)
        if padded:  # lengths seq_len/2 .. seq_len, the first row full
            lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=g)
            lengths[0] = seq_len
            mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
            ids = ids * mask
        out.append({"input_ids": ids.to(device), "token_type_ids": torch.zeros_like(ids).to(device),
                    "attention_mask": mask.to(device),
                    "labels": torch.randint(0, num_labels, (batch_size,), generator=g).to(device)})
    return out


def forward_flops(fn):
    """FLOPs of one call of fn (a forward), counted by FlopCounterMode, head padding off."""
    from torch.utils.flop_counter import FlopCounterMode
    with sdpa_align(1), torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def time_interleaved(variants, warmup, steps, device, chunk=5):
    """{name: median seconds per step}; variants {name: (step_fn, batches)} timed in alternating
    chunks of `chunk` steps, so that drift hits all alike."""
    for fn, bs in variants.values():
        for i in range(warmup):
            fn(bs[i % len(bs)])
    per_step = {name: [] for name in variants}
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        for name, (fn, bs) in variants.items():
            sync(device)
            start = time.perf_counter()
            for i in range(done, done + n):
                fn(bs[i % len(bs)])
            sync(device)
            per_step[name].append((time.perf_counter() - start) / n)
        done += n
    return {name: statistics.median(v) for name, v in per_step.items()}


def mfu(flops, seconds, peaks, precision):
    if peaks is None or flops is None:
        return "-"
    return f"{100 * flops / seconds / peaks[PRECISION_INDEX[precision]]:.1f}%"


# ---------------------------------------------------------------------------------------------- c. SDPA backends

def check_sdpa_backends(table, smoke, device):
    section = "c. SDPA backend"
    from torch.profiler import ProfilerActivity, profile
    B, S = (4, 16) if smoke else (32, 128)
    batch = batches(1, B, S, 30522, device, padded=True)[0]
    for kw in ({}, dict(mult=True, pals=True)):
        config = bert_config(smoke, **kw)
        label = f"BERT heads {config.hidden_size // config.num_attention_heads}" + (
            f" + PAL heads {config.hidden_size_aug // config.pal_num_heads}" if kw else "")
        model = modeling.BertForMultiTask(config, [2]).to(device)
        for mode in ("train step", "eval"):
            for align in ((8, 1) if kw else (8,)):
                model.train(mode == "train step")
                with sdpa_align(align), profile(activities=[ProfilerActivity.CPU]) as prof:
                    with torch.autocast(device.type, dtype=torch.bfloat16), \
                            (contextlib.nullcontext() if mode == "train step" else torch.inference_mode()):
                        out = model(**batch, task_id=0)
                    if mode == "train step":
                        out["loss"].backward()
                ops = {}
                for evt in prof.key_averages():
                    if "_scaled_dot_product_" in evt.key and "backward" not in evt.key:
                        ops[evt.key.replace("aten::_scaled_dot_product_", "")] = evt.count
                bad = device.type == "cuda" and align == 8 and any(
                    k.startswith(("attention_math", "flash_attention")) for k in ops)
                want_math = device.type == "cuda" and align == 1
                status = "FAIL" if bad or (want_math and not any("math" in k for k in ops)) else "INFO"
                table.add(section, f"{label}, bf16 {mode}" + (", head padding off" if align == 1 else ""), status,
                          ", ".join(f"{k} x{n}" for k, n in sorted(ops.items())) or "(no SDPA op seen)",
                          "expected: math for PAL heads" if want_math else
                          ("expected: no math, no flash" if device.type == "cuda" else "CPU"))
        del model


# ---------------------------------------------------------------------------------------------- d. throughput

def check_throughput(table, tmp, smoke, device, peaks):
    section = "d. step throughput"
    from transformers import BertConfig as HFConfig
    from transformers import BertForSequenceClassification
    B, S, steps, warmup = (4, 16, 2, 1) if smoke else (32, 128, 20, 3)
    config = bert_config(smoke)
    ours = modeling.BertForMultiTask(config, [2])
    hf_config = HFConfig(**{k: v for k, v in config.to_dict().items() if k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
        "initializer_range", "layer_norm_eps")}, num_labels=2)
    hf = BertForSequenceClassification._from_config(hf_config, attn_implementation="sdpa").to(device).train()
    hf_opt = optimization.build_optimizer("adamw", optimization.param_groups(hf, 0.01, 5e-5), 5e-5)

    flops = None
    if not smoke:
        full = batches(1, B, S, config.vocab_size, device, padded=False)[0]
        counted = forward_flops(lambda: ours.to(device)(**full, task_id=0)) * 3
        n = sum(p.numel() for name, p in ours.named_parameters() if "embeddings" not in name)
        T = B * S
        formula = 6 * n * T + 12 * config.num_hidden_layers * S * config.hidden_size * T
        flops = counted
        table.add(section, "model FLOPs per step (bert-base, 32 x 128)", "INFO",
                  f"{counted / 1e12:.3f} TFLOP counted", f"6NT + 12LSHT = {formula / 1e12:.3f} TFLOP "
                  f"(N = {n / 1e6:.1f}M); counted / formula {counted / formula:.3f}")
    for padded in (False, True):
        data = batches(8, B, S, config.vocab_size, device, padded=padded)
        kind = "padded 64..128" if padded and not smoke else ("padded" if padded else "full length")
        for precision in (("fp32", "bf16") if smoke or device.type != "cuda" else ("fp32", "tf32", "bf16")):
            amp = torch.bfloat16 if precision == "bf16" else None
            flags = ["--bf16"] if precision == "bf16" else []
            args, env = engine(tmp, "--optimizer", "adamw", *flags)
            trainer = training.Trainer(args, env, ours, num_training_steps=1000)
            variants = {"ours (engine, AdamW)": (lambda b, t=trainer: t.training_step([(0, b)]), data)}
            if precision == "bf16":
                args_b, env_b = engine(tmp, *flags)
                trainer_b = training.Trainer(args_b, env_b, ours, num_training_steps=1000)
                variants["ours (engine, BertAdam)"] = (lambda b, t=trainer_b: t.training_step([(0, b)]), data)

            def hf_step(b, amp=amp):
                with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                    loss = hf(**b).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
                hf_opt.step()
                hf_opt.zero_grad(set_to_none=True)

            variants["HF BertForSequenceClassification"] = (hf_step, data)
            with tf32(precision == "tf32"):
                sec = time_interleaved(variants, warmup, steps, device)
            for name, s in sec.items():
                table.add(section, f"{name}, {precision}, {kind}", "INFO", f"{B / s:8.1f} examples/s",
                          f"{s * 1000:.1f} ms/step, MFU {mfu(flops, s, peaks, precision)}")
            ratio = sec["HF BertForSequenceClassification"] / sec["ours (engine, AdamW)"]
            table.add(section, f"ours / HF throughput, {precision}, {kind}", "INFO", f"{ratio:.2f}x", "")
            del trainer, variants
            if device.type == "cuda":
                torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- e. PALs vs shared

def check_pals_step(table, tmp, smoke, device, peaks):
    section = "e. PALs vs shared step"
    B, S, steps, warmup = (4, 16, 2, 1) if smoke else (32, 128, 16, 3)
    labels = bench_multitask_step.TASK_LABELS
    models = {"shared encoder": modeling.BertForMultiTask(bert_config(smoke), labels),
              "PALs": modeling.BertForMultiTask(bert_config(smoke, mult=True, pals=True), labels)}
    data = bench_multitask_step.make_batches(8, B, S, models["PALs"].config.vocab_size)
    data = [(t, {k: v.to(device) for k, v in b.items()}) for t, b in data]
    flops = {}
    if not smoke:
        for name, m in models.items():
            t0, b0 = data[0]
            flops[name] = forward_flops(lambda m=m: m.to(device)(**b0, task_id=t0)) * 3
    for precision in ("bf16", "fp32"):
        args, env = engine(tmp, *(["--bf16"] if precision == "bf16" else []))
        trainers = {name: bench_multitask_step.trainer_for(m, args, env) for name, m in models.items()}
        variants = {name: (lambda tb, t=t: t.training_step([tb]), data) for name, t in trainers.items()}

        def pals_unpadded(tb, t=trainers["PALs"]):
            with sdpa_align(1):
                t.training_step([tb])

        variants["PALs, head padding off"] = (pals_unpadded, data)
        sec = time_interleaved(variants, warmup, steps, device)
        for name, s in sec.items():
            table.add(section, f"{name}, {precision}", "INFO", f"{s * 1000:8.1f} ms/step",
                      f"{B / s:.1f} examples/s, MFU {mfu(flops.get(name.split(',')[0]), s, peaks, precision)}")
        table.add(section, f"PALs / shared, {precision}", "INFO", f"{sec['PALs'] / sec['shared encoder']:.3f}x",
                  f"target <= 1.2x; head padding off / on: {sec['PALs, head padding off'] / sec['PALs']:.2f}x")
        del trainers, variants
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- f, g

def check_optimizer(table, smoke, device):
    section = "f. optimizer step"
    config = bert_config(smoke) if smoke else None
    seconds, basis, diffs, n_params, n_tensors, _ = bench_optimizer.measure(device, 2 if smoke else 6, config)
    for name, s in seconds.items():
        table.add(section, name, "INFO", f"{s * 1000:8.2f} ms/step", f"{basis}; {n_params / 1e6:.1f}M params, "
                  f"{n_tensors} tensors")
    for (a, b), diff in diffs.items():
        # The paths compute the same update: equal up to float32 rounding (bit-equal on CPU for BertAdam).
        bad = diff > 1e-6 or (device.type == "cpu" and a.startswith("BertAdam") and diff != 0)
        table.add(section, f"{a} / {b}", "FAIL" if bad else "PASS", f"{seconds[a] / seconds[b]:.2f}x",
                  f"max parameter difference {diff:.1e}")


def check_eval(table, tmp, smoke, device):
    section = "g. evaluation"
    config = bert_config(smoke)
    model = modeling.BertForMultiTask(config, [2]).to(device).eval()
    n = 32 if smoke else 2048
    feats = bench_eval.glue_like_features(n, seed=0, max_len=16 if smoke else 128)
    sizes = [8, 16] if smoke else [8, 32, 64, 128]
    for precision in ("fp32", "bf16"):
        env = None
        if precision == "bf16":
            _, env = engine(tmp, "--bf16")
        med, peak = bench_eval.measure(model, feats, sizes, 1 if smoke else 3, device, env)
        for b in sizes:
            mem = f", peak {peak[('predict', b)] / 2**20:.0f} MiB" if ("predict", b) in peak else ""
            table.add(section, f"predict, eval batch {b}, {precision}", "INFO", f"{n / med[('predict', b)]:9.1f} ex/s",
                      f"{med[('predict', sizes[0])] / med[('predict', b)]:.2f}x batch {sizes[0]}{mem}")
        b0 = min(sizes)
        table.add(section, f"inference_mode / no_grad, batch {b0}, {precision}", "INFO",
                  f"{med[('no_grad', b0)] / med[('inference_mode', b0)]:.2f}x", "the bare forward, same batches")
    del model


# ---------------------------------------------------------------------------------------------- h, i

def check_engine_paths(table, tmp, smoke, device):
    section = "h. engine paths"
    import bench_eval
    config = bert_config(smoke)
    B, S = (4, 16) if smoke else (32, 128)
    data = batches(6, B, S, config.vocab_size, device, padded=True)
    if device.type == "cuda":
        args, env = engine(tmp, "--bf16")
        trainer = training.Trainer(args, env, modeling.BertForMultiTask(config, [2]), 1000)
        trainer.training_step([(0, data[0])])  # first-step allocations, lazy inits
        torch.cuda.synchronize()
        problem = ""
        torch.cuda.set_sync_debug_mode("error")
        try:
            for b in data[1:4]:
                trainer.training_step([(0, b)])
        except RuntimeError as exc:
            problem = str(exc).splitlines()[0][:150]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        table.add(section, "no host-device sync in 3 training steps (bf16, AdamW)", "FAIL" if problem else "PASS",
                  problem or f"{len(trainer._pending_losses)} losses still on the GPU", "set_sync_debug_mode error")
        del trainer
    else:
        table.add(section, "no host-device sync in a training step", "SKIP", "needs CUDA")
    feats = bench_eval.glue_like_features(16, seed=0, max_len=32)
    stream = training.EpochStream(feats, batch_size=4)
    feed = training.Prefetcher(stream, pin=device.type == "cuda")
    feed.start()
    micro = feed.next_step()
    feed.close()
    pinned = all(v.is_pinned() for _, b in micro for v in b.values())
    table.add(section, "prefetched batches pinned", ("PASS" if pinned else "FAIL") if device.type == "cuda" else "SKIP",
              str(pinned), "pinned only on CUDA")

    # --compile: inductor on a GPU; on CPU (--smoke) dynamo with aot_eager, to check the wiring quickly
    import functools

    from torch import _dynamo
    compile_fn = torch.compile
    if device.type != "cuda":
        torch.compile = functools.partial(compile_fn, backend="aot_eager")
    try:
        _dynamo.reset()
        flags = ["--bf16", "--optimizer", "adamw"] if device.type == "cuda" else ["--optimizer", "adamw"]
        # Dropout off: the compiled graph draws its dropout masks from the RNG differently, so with
        # dropout on the two first-batch gradients differ by the masks, not by compilation.
        nodrop = copy.deepcopy(config)
        nodrop.hidden_dropout_prob = nodrop.attention_probs_dropout_prob = 0.0
        base = modeling.BertForMultiTask(nodrop, [2])
        trainers = {}
        for name, extra in (("eager", []), ("compiled", ["--compile"])):
            args, env = engine(tmp, *flags, *extra)
            trainers[name] = training.Trainer(args, env, copy.deepcopy(base), 1000)
        first = {}
        for name, t in trainers.items():
            start = time.perf_counter()
            with training._autocast(env.device, env.amp_dtype):
                out = t.ddp_model(**data[0], task_id=0)
            out["loss"].float().backward()
            sync(device)
            grad = torch.cat([p.grad.reshape(-1).float() for p in t.model.parameters() if p.grad is not None])
            first[name] = (float(out["loss"]), grad, time.perf_counter() - start)
            t.optimizer.zero_grad(set_to_none=True)
        diff = float((first["eager"][1] - first["compiled"][1]).abs().max())
        scale = float(first["eager"][1].abs().max())
        loss_diff = abs(first["eager"][0] - first["compiled"][0])
        ok = loss_diff < 0.02 * abs(first["eager"][0]) + 1e-3 and diff < 0.05 * scale
        table.add(section, "--compile vs eager, first batch", "PASS" if ok else "FAIL",
                  f"loss {first['eager'][0]:.4f} / {first['compiled'][0]:.4f}, max grad diff {diff:.1e} "
                  f"(max grad {scale:.1e})", f"compile {first['compiled'][2]:.0f} s"
                  + ("" if device.type == "cuda" else ", aot_eager (smoke)"))
        full = batches(8, B, S, config.vocab_size, device, padded=False)
        sec = time_interleaved({name: (lambda b, t=t: t.training_step([(0, b)]), full) for name, t in trainers.items()},
                               1 if smoke else 3, 2 if smoke else 20, device)
        table.add(section, "--compile / eager step time" + (", bf16, 32 x 128" if device.type == "cuda" else ""),
                  "INFO", f"{sec['compiled'] / sec['eager']:.2f}x",
                  f"eager {sec['eager'] * 1000:.1f} ms, compiled {sec['compiled'] * 1000:.1f} ms per step")
        del trainers
    finally:
        torch.compile = compile_fn
        _dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def check_prefetch_run(table, tmp, smoke, cuda):
    """b's run_multi_task --bf16 run (prefetching, --num_workers 1) against the same with --num_workers 0:
    training samples/s from results.json (both log every step's loss, which costs both the same)."""
    section = "h. engine paths"
    if smoke:  # b's run already ran the runner; a speed ratio on a shared CPU would mean nothing
        table.add(section, "run_multi_task --bf16: prefetch / no prefetch", "SKIP", "--smoke")
        return
    with_prefetch = os.path.join(tmp, "run_bf16", "results.json")
    if not os.path.exists(with_prefetch):
        table.add(section, "run_multi_task --bf16: prefetch / no prefetch", "FAIL", "b's --bf16 run left no results")
        return
    out = os.path.join(tmp, "run_bf16_no_prefetch")
    cmd, _, _ = run_command("bf16", out, smoke, workers="0")
    proc = run_proc(cmd, cwd=ROOT, timeout=300)
    if proc.returncode != 0:
        sys.stderr.write(f"$ {' '.join(cmd)}\n{proc.stderr[-3000:]}\n")
        table.add(section, "run_multi_task --bf16 --num_workers 0", "FAIL", f"exit {proc.returncode}")
        return
    rates = {}
    for key, path in (("1", with_prefetch), ("0", os.path.join(out, "results.json"))):
        with open(path, encoding="utf-8") as f:
            rates[key] = json.load(f)["train_samples_per_second"]
    table.add(section, "run_multi_task --bf16: prefetch / no prefetch", "INFO", f"{rates['1'] / rates['0']:.2f}x",
              f"{rates['1']:.1f} vs {rates['0']:.1f} training samples/s (rte,mrpc,sts-b)")


def check_cpu_tests_on_gpu_machine(table, smoke):
    section = "i. CPU tests, GPU visible"
    if smoke:
        table.add(section, "engine tests without -m gpu", "SKIP", "--smoke")
        return
    files = ["tests/test_training.py", "tests/test_engine_paths.py", "tests/test_resume.py",
             "tests/test_distributed.py"]
    start = time.perf_counter()
    proc = run_proc([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not gpu", *files], cwd=ROOT, timeout=400)
    summary = next((ln for ln in reversed(proc.stdout.splitlines()) if re.search(r"\d+ (passed|failed|error)", ln)),
                   "no summary")
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-3000:])
    table.add(section, "pytest -m 'not gpu' " + " ".join(os.path.basename(f) for f in files),
              "PASS" if proc.returncode == 0 else "FAIL", summary.strip("= "), f"{time.perf_counter() - start:.0f} s")


# ---------------------------------------------------------------------------------------------- 0, main

def check_environment(table, smoke, cuda):
    """Versions, the oldest supported torch, the torch names the code uses, and what the bundle carries."""
    import platform

    import transformers
    section = "0. environment"
    name = torch.cuda.get_device_name() if cuda else "cpu (smoke)"
    version = torch_compat.parse_version(torch.__version__)
    oldest = ".".join(map(str, torch_compat.MIN_TORCH))
    table.add(section, "torch", "PASS" if version >= torch_compat.MIN_TORCH else "FAIL", torch.__version__,
              f"oldest supported {oldest} (torch_compat.MIN_TORCH); CUDA {torch.version.cuda}, cuDNN "
              f"{torch.backends.cudnn.version() if cuda else '-'}, {name}")
    table.add(section, "python, transformers", "INFO", f"{platform.python_version()}, {transformers.__version__}",
              f"requirements-dev.txt pins transformers {gpu_bundle.pins().get('transformers')}")
    missing = torch_compat.missing_torch_names()
    table.add(section, "torch names the code uses", "FAIL" if missing else "PASS",
              f"{len(missing)} missing" if missing else f"{len(torch_compat.used_torch_names())} resolve",
              "; ".join(f"{n} ({', '.join(f)})" for n, f in missing)[:600] or "torch_compat.missing_torch_names")
    import importlib.metadata
    for package, pin in ((p, gpu_bundle.pins()[p]) for p in gpu_bundle.MISSING_THERE):
        try:
            __import__(package)
            found = importlib.metadata.version(package)
        except ImportError as exc:
            table.add(section, f"{package} importable", "FAIL", f"{type(exc).__name__}: {exc}",
                      "bench/gpu_bundle.sh carries its wheel")
            continue
        table.add(section, f"{package} importable", "PASS" if found == pin else "FAIL", found, f"pinned {pin}")
    carried = os.environ.get(gpu_bundle.MODEL_VARIABLE)
    if carried:  # the bundle's manifest: every file as bench/gpu_bundle.sh wrote it
        bundle = os.path.dirname(os.path.abspath(carried))
        with open(os.path.join(bundle, "bundle.json"), encoding="utf-8") as f:
            manifest = json.load(f)["sha256"]
        changed = [name for name, digest in manifest.items() if not os.path.isfile(os.path.join(bundle, name))
                   or gpu_bundle.sha256(os.path.join(bundle, name)) != digest]
        table.add(section, "bundle files", "FAIL" if changed else "PASS",
                  f"{len(changed)} missing or changed: {', '.join(changed)}" if changed else f"{len(manifest)} intact",
                  os.path.join(bundle, "bundle.json"))
    else:
        table.add(section, "bundle files", "SKIP", f"{gpu_bundle.MODEL_VARIABLE} not set: no carried bundle")
    from safetensors import safe_open

    from file_utils import resolve_model_dir
    folder = resolve_model_dir("minilm-l6")
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        stored = str(f.get_slice(next(iter(f.keys()))).get_dtype())
    model = modeling.BertModel.from_pretrained("minilm-l6")
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    table.add(section, "minilm-l6 loads", "PASS" if dtypes == ["torch.float32"] else "FAIL",
              f"stored {stored}, parameters {', '.join(dtypes)}", folder)
    del model


CHECKS = [  # (key for --only and BUDGETS_S, section, function, arguments from the run's context)
    ("0", "0. environment", check_environment, lambda c: (c["smoke"], c["cuda"])),
    ("a", "a. GPU tests", check_gpu_tests, lambda c: (c["smoke"],)),
    ("b", "b. run_multi_task", check_run, lambda c: ("fp16", c["tmp"], c["smoke"], c["cuda"])),
    ("b", "b. run_multi_task", check_run, lambda c: ("bf16", c["tmp"], c["smoke"], c["cuda"])),
    ("c", "c. SDPA backend", check_sdpa_backends, lambda c: (c["smoke"], c["device"])),
    ("d", "d. step throughput", check_throughput, lambda c: (c["tmp"], c["smoke"], c["device"], c["peaks"])),
    ("e", "e. PALs vs shared step", check_pals_step, lambda c: (c["tmp"], c["smoke"], c["device"], c["peaks"])),
    ("f", "f. optimizer step", check_optimizer, lambda c: (c["smoke"], c["device"])),
    ("g", "g. evaluation", check_eval, lambda c: (c["tmp"], c["smoke"], c["device"])),
    ("h", "h. engine paths", check_engine_paths, lambda c: (c["tmp"], c["smoke"], c["device"])),
    ("h2", "h. engine paths", check_prefetch_run, lambda c: (c["tmp"], c["smoke"], c["cuda"])),
    ("i", "i. CPU tests, GPU visible", check_cpu_tests_on_gpu_machine, lambda c: (c["smoke"],)),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, 2 steps, no pytest, no MFU")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for the table, JSON (default $OUT; none: "
                   "print only)")
    p.add_argument("--only", default="", help="comma-separated check keys (0,a,b,...,h,h2,i); 0 always runs")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.smoke
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and not a.smoke:
        print("error: no CUDA device; run with --smoke to check this script on CPU", file=sys.stderr)
        return 2
    only = {k.strip() for k in a.only.split(",") if k.strip()}
    unknown = only - {key for key, *_ in CHECKS}
    if unknown:
        print(f"error: --only {','.join(sorted(unknown))}: no such check", file=sys.stderr)
        return 2
    if a.out:
        os.makedirs(a.out, exist_ok=True)
    import logging
    logging.disable(logging.WARNING)  # the engine's INFO/WARNING lines would bury the table
    name = torch.cuda.get_device_name() if cuda else "cpu (smoke)"
    peaks = peak_flops(name) if cuda else None
    header = (f"gpu_check {'--smoke ' if a.smoke else ''}{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {name}; torch "
              f"{torch.__version__}, CUDA {torch.version.cuda}; peak (bf16, TF32, fp32) "
              + (", ".join(f"{x / 1e12:.0f}" for x in peaks) + " TFLOP/s" if peaks else
                 ("unknown GPU: no MFU" if cuda else "n/a (smoke: no MFU)")))
    print(header, flush=True)
    table = Table(a.out, header)
    deadline = time.monotonic() + TOTAL_BUDGET_S
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        context = dict(smoke=a.smoke, cuda=cuda, device=device, peaks=peaks, tmp=tmp)
        for key, section, fn, args in CHECKS:
            if only and key != "0" and key not in only and not (key == "h2" and "h" in only):
                continue
            budget = SMOKE_BUDGET_S if a.smoke else BUDGETS_S[key]
            run_check(table, section, fn, args(context), budget, deadline if cuda else float("inf"))
    elapsed = time.monotonic() - (deadline - TOTAL_BUDGET_S)
    table.add("total", "wall time", "INFO", f"{elapsed:.0f} s", f"budget {TOTAL_BUDGET_S} s" if cuda else "smoke")
    table.finished = True
    table.save()
    table.print()
    if table.failed:
        print(f"\ngpu_check FAILED: {len(table.failed)} row(s) FAIL", file=sys.stderr)
        return 1
    print("\ngpu_check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
