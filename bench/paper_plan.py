"""The paper's table planned on paper: model FLOPs, wall time at an assumed MFU, memory (docs/reproducing.md#the-plan).

    python bench/paper_plan.py          # prints the two markdown tables docs/reproducing.md holds

FLOPs are counted, not typed: torch.utils.flop_counter.FlopCounterMode runs one forward pass of the
row's model (configs/bert_base_config.json + the row's adapter config, the 8 GLUE heads) on the
meta device (no memory, no arithmetic), for one batch at the full padded length. It counts 2 m n k
per matrix product (linear layers, QK^T and AV), nothing for element-wise work. For plain BERT that is

    forward = 2 * N_mm * T + 4 * L * S * H * T  (+ pooler and head: 2 * H * (H + C) per sequence)

(N_mm the encoder's matrix weights, 12 x (4 H^2 + 2 H * 4H), T = B * S tokens, L layers, hidden H);
tests/test_paper_plan.py checks the count against that formula worked out by hand. A training step
is 3 forwards (backward = 2 x forward), the usual "model FLOPs" of MFU. One task per step, so one
task's adapters run. Evaluation (each epoch's dev sets) and the final test predictions are forward
passes. Every count is at the full length (128 or the run's --max_seq_length); the runners pad a
batch only to its longest example, so real work is lower: these are upper bounds.

Time = FLOPs / (peak x MFU). The MFUs are ASSUMPTIONS until bench/gpu_check.sh measures them
(ASSUMED_MFU); the peaks are the H100 SXM datasheet's dense rates (gpu_check.PEAK_TFLOPS).
"""
import functools
import math
import os

import torch

import model_io
import modeling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = 60_000            # 25 epochs x 2400 steps (docs/reproducing.md)
BATCH, SEQ = 32, 128
GLUE_LABELS = {"cola": 2, "mrpc": 2, "mnli": 3, "rte": 2, "sts-b": 1, "sst-2": 2, "qqp": 2, "qnli": 2}
# GLUE sizes (the current Hub release; QNLI v2): train, dev (MNLI: matched + mismatched), test (+ AX for MNLI)
TRAIN = {"cola": 8551, "sst-2": 67349, "mrpc": 3668, "sts-b": 5749, "qqp": 363846, "mnli": 392702,
         "qnli": 104743, "rte": 2490}
DEV = {"cola": 1043, "sst-2": 872, "mrpc": 408, "sts-b": 1500, "qqp": 40430, "mnli": 9815 + 9832,
       "qnli": 5463, "rte": 277}
TEST = {"cola": 1063, "sst-2": 1821, "mrpc": 1725, "sts-b": 1379, "qqp": 390965, "mnli": 9796 + 9847 + 1104,
        "qnli": 5463, "rte": 3000}
ROWS = [("Shared encoder + heads only", "none"), ("Top Proj. Attn. (204, 6 blocks)", "top_attn"),
        ("Low-rank (100, unshared)", "low_rank"), ("PALs (204, 6 heads)", "pals"),
        ("Houlsby-style (2 x 50)", "houlsby"), ("Houlsby + PALs (156 / 50)", "houlsby_plus_pals"),
        ("Top BERT layer", "top_bert_layer")]
PEAK = {"fp32": 66.9e12, "bf16": 989.4e12}             # H100 SXM dense, FLOP/s (fp32: TF32 off)
# ASSUMED, one GPU, batch 32 x 128: bert-base at that size is bound by kernel launches and the optimizer
# step as much as by matrix work, so bf16 reaches a small share of the tensor cores' peak; fp32 (no
# tensor cores with TF32 off, the engine's default) a larger share of a much lower peak.
ASSUMED_MFU = {"fp32": 0.50, "bf16": 0.20}
ASSUMED_DDP_MFU_FACTOR = 0.35  # ASSUMED: 8-way DDP at global batch 32 = 4 sequences per GPU runs each GPU at 35%
#                                of its single-GPU MFU (small matrices, all-reduce of ~0.5 GB per step)


def bert_base(adapter=None):
    config = modeling.BertConfig.from_json_file(os.path.join(ROOT, "configs", "bert_base_config.json"))
    if adapter not in (None, "none"):
        adapter_config = modeling.BertConfig.from_json_file(os.path.join(ROOT, "configs", f"{adapter}_config.json"))
        config = modeling.BertConfig.from_dict(model_io._merge_configs(config, adapter_config))
    return config


@functools.lru_cache(maxsize=None)
def forward_flops(adapter, labels, batch, seq, task_types=None, choices=None):
    """(FLOPs of one forward pass of BertForMultiTask(bert-base + adapter, labels) on `batch` sequences
    (x `choices`) of `seq` tokens for task 0, parameter count): FlopCounterMode on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = modeling.BertForMultiTask(bert_base(adapter), list(labels), list(task_types) if task_types else None)
    shape = (batch, choices, seq) if choices else (batch, seq)
    ids = torch.zeros(shape, dtype=torch.long, device="meta")
    old = modeling.SDPA_ALIGN
    modeling.SDPA_ALIGN = 1  # only the model's own FLOPs, not the head padding's zeros
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(input_ids=ids, token_type_ids=ids, attention_mask=torch.ones_like(ids), task_id=0)
    finally:
        modeling.SDPA_ALIGN = old
    return counter.get_total_flops(), modeling.count_parameters(model)


def peak_memory_gib(params, layers, hidden, batch, seq, precision):
    """Estimated peak GPU memory of a training step: 16 bytes per parameter (fp32 weights, gradients,
    Adam's two moments; + 2 for autocast's bf16 weight copies) and the saved activations, s*b*h*34
    bytes per layer in 16-bit (Korthikanti et al. 2022, without the attention-score terms that the
    fused SDPA kernels do not store), about twice that in fp32."""
    state = params * (18 if precision == "bf16" else 16)
    activations = layers * seq * batch * hidden * (34 if precision == "bf16" else 66)
    return (state + activations) / 2**30


def fmt_hours(seconds):
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def multitask_rows():
    """Per row: FLOPs per step and per run, parameters. FLOPs are linear in the batch (every term is per
    sequence), so one example's forward is the batch's / BATCH."""
    labels = tuple(GLUE_LABELS.values())
    out = []
    eval_examples = 25 * sum(DEV.values()) + sum(TEST.values())
    for name, adapter in ROWS:
        forward, params = forward_flops(adapter, labels, BATCH, SEQ)
        config = bert_base(adapter)
        out.append(dict(name=name, step=3 * forward, total=STEPS * 3 * forward + eval_examples * forward // BATCH,
                        params=params, layers=config.num_hidden_layers, hidden=config.hidden_size))
    # 8 separate models: run_classifier.py, 3 epochs of each task, dev and test predicted once
    total = 0
    for task, n in TRAIN.items():
        forward, params = forward_flops("none", (GLUE_LABELS[task],), BATCH, SEQ)
        total += 3 * math.ceil(n / BATCH) * 3 * forward + (DEV[task] + TEST[task]) * forward // BATCH
    step = 3 * forward_flops("none", (2,), BATCH, SEQ)[0]
    out.insert(0, dict(name="BERT-base, 8 separate models (3 epochs each)", step=step, total=total,
                       params=forward_flops("none", (2,), BATCH, SEQ)[1], layers=12, hidden=768))
    return out


def multitask_table():
    rows = multitask_rows()
    lines = ["| row | TFLOP per step | PFLOP per run | 1 H100 fp32 | 1 H100 bf16 | 8 H100 DDP bf16 | "
             "peak memory fp32 / bf16 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = {p: r["total"] / (PEAK[p] * ASSUMED_MFU[p]) for p in PEAK}
        ddp = r["total"] / (8 * PEAK["bf16"] * ASSUMED_MFU["bf16"] * ASSUMED_DDP_MFU_FACTOR)
        mem = [peak_memory_gib(r["params"], r["layers"], r["hidden"], BATCH, SEQ, p) for p in ("fp32", "bf16")]
        lines.append(f"| {r['name']} | {r['step'] / 1e12:.2f} | {r['total'] / 1e15:,.0f} | {fmt_hours(t['fp32'])} | "
                     f"{fmt_hours(t['bf16'])} | {fmt_hours(ddp)} | {mem[0]:.1f} / {mem[1]:.1f} GiB |")
    parallel = max(r["total"] for r in rows) / (PEAK["bf16"] * ASSUMED_MFU["bf16"])
    lines.append("")
    lines.append(f"All {len(rows)} rows on 8 H100s, one row per GPU (bf16): {fmt_hours(parallel)}, the longest row.")
    return "\n".join(lines)


def single_task_table():
    """SQuAD v1.1 and SWAG with BERT-base, as the original documents ran them (../shared/seeds/)."""
    squad_forward = forward_flops("none", (2,), 12, 384, task_types=("span",))[0]
    squad_steps = 2 * math.ceil(88_641 / 12)  # one feature per question (a few long contexts give more)
    squad = squad_steps * 3 * squad_forward + 10_570 * squad_forward // 12
    swag_forward = forward_flops("none", (1,), 16, 80, task_types=("choice",), choices=4)[0]
    swag_steps = 3 * math.ceil(73_546 / 16)
    swag = swag_steps * 3 * swag_forward + 20_006 * swag_forward // 16
    squad_step, swag_step = 3 * squad_forward, 3 * swag_forward
    lines = ["| run | steps | TFLOP per step | PFLOP per run | 1 H100 fp32 | 1 H100 bf16 |",
             "|---|---|---|---|---|---|"]
    for name, steps, step, total in (("SQuAD v1.1", squad_steps, squad_step, squad),
                                     ("SWAG", swag_steps, swag_step, swag)):
        lines.append(f"| {name} | {steps:,} | {step / 1e12:.2f} | {total / 1e15:,.0f} | "
                     f"{fmt_hours(total / (PEAK['fp32'] * ASSUMED_MFU['fp32']))} | "
                     f"{fmt_hours(total / (PEAK['bf16'] * ASSUMED_MFU['bf16']))} |")
    return "\n".join(lines)


def main():
    print(multitask_table())
    print()
    print(single_task_table())


if __name__ == "__main__":
    main()
