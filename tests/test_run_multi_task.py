"""End-to-end tests of run_multi_task.py on official-layout GLUE fixtures with a tiny random BERT.

Covers: the dry run (probabilities, expected steps, parameter counts checked against hand-computed
adapter sizes and the reference's bert-base budgets), a full tiny run (per-epoch dev table, best
model whose metrics are recomputed independently with scikit-learn, per-task best, TensorBoard
frequencies, GLUE submission files), exact resume (stopped after N steps, then --resume ==
uninterrupted, also with Gradient Vaccine steps), --freeze, the demo profile, bad flags, and
2-process DDP on CPU (torchrun) == one process.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import modeling
import run_multi_task
import training
from glue_fixtures import write_glue_fixture
from tree_scripts import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HIDDEN, LAYERS, AUG = 24, 2, 12


def _bert_keys(**extra):
    keys = dict(vocab_size=30522, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                intermediate_size=48, max_position_embeddings=64, type_vocab_size=2)
    keys.update(extra)
    return keys


@pytest.fixture(scope="module")
def setup(tmp_path_factory, vocab_file):
    base = tmp_path_factory.mktemp("mt")
    model_dir = str(base / "tiny")
    torch.manual_seed(0)
    modeling.BertModel(modeling.BertConfig(**_bert_keys())).save_pretrained(model_dir, vocab_file=vocab_file)
    pals = str(base / "tiny_pals.json")
    with open(pals, "w") as f:
        json.dump(_bert_keys(hidden_size_aug=AUG, mult=True, pals=True), f)
    # dropout 0: runs that must agree bit for bit (resume, DDP) do not depend on the dropout RNG
    pals_nodrop = str(base / "tiny_pals_nodrop.json")
    with open(pals_nodrop, "w") as f:
        json.dump(_bert_keys(hidden_size_aug=AUG, mult=True, pals=True, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0), f)
    data = str(base / "glue")
    write_glue_fixture(data, n=12)
    return {"base": base, "model": model_dir, "pals": pals, "pals_nodrop": pals_nodrop, "data": data}


def _run(setup, out, *extra, config="pals"):
    argv = ["--data_dir", setup["data"], "--bert_model", setup["model"], "--config", setup[config],
            "--output_dir", str(out), "--max_seq_length", "32", "--train_batch_size", "4",
            "--eval_batch_size", "16", "--learning_rate", "1e-3", "--logging_steps", "1000",
            "--cache_dir", str(setup["base"] / "cache"), *map(str, extra)]
    return run_multi_task.main(argv)


def _pal_task_params(num_labels):
    # shared V^E (H->A) + V^D (A->H) per task, per layer Q/K/V (A->A), head (H->C)
    return ((HIDDEN * AUG + AUG) + (AUG * HIDDEN + HIDDEN) + LAYERS * 3 * (AUG * AUG + AUG)
            + HIDDEN * num_labels + num_labels)


def _one_bert():
    emb = 30522 * HIDDEN + 64 * HIDDEN + 2 * HIDDEN + 2 * HIDDEN
    layer = 3 * (HIDDEN * HIDDEN + HIDDEN) + (HIDDEN * HIDDEN + HIDDEN) + 2 * HIDDEN \
        + (HIDDEN * 48 + 48) + (48 * HIDDEN + HIDDEN) + 2 * HIDDEN
    return emb + LAYERS * layer + HIDDEN * HIDDEN + HIDDEN


def test_dry_run_probabilities_steps_and_parameters(setup, capsys, tmp_path):
    # real sizes differ per task: cut RTE's training file to 5 rows (header + 5)
    data = tmp_path / "glue"
    shutil.copytree(setup["data"], data)
    lines = (data / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()
    (data / "RTE" / "train.tsv").write_text("\n".join(lines[:6]) + "\n", encoding="utf-8")
    argv = ["--data_dir", str(data), "--bert_model", setup["model"], "--config", setup["pals"], "--dry_run",
            "--tasks", "rte,mnli,sts-b", "--sample", "prop", "--steps_per_epoch", "34", "--num_train_epochs", "2",
            "--batch_size_mnli", "6", "--task_batch_sizes", "rte=2"]
    assert run_multi_task.main(argv) == 0
    out = capsys.readouterr().out
    # prop: p = N_i / sum N = 5/29, 12/29, 12/29
    assert f"{5 / 29:.4f}   {12 / 29:.4f}   {12 / 29:.4f}" in out
    section = out.split("Expected training per task:")[1].split("Parameters:")[0].splitlines()[2:]
    rows = {line.split()[0]: line.split() for line in section if line.strip()}
    # expected steps = 2 epochs x 34 x p; passes = steps / ceil(N / batch)
    assert float(rows["rte"][3]) == pytest.approx(68 * 5 / 29, abs=0.05)
    assert rows["rte"][2] == "2" and rows["mnli"][2] == "6" and rows["sts-b"][2] == "32"  # default --train_batch_size
    assert float(rows["mnli"][4]) == pytest.approx(68 * 12 / 29 / 2, abs=1e-3)
    per_task = {"rte": _pal_task_params(2), "mnli": _pal_task_params(3), "sts-b": _pal_task_params(1)}
    for task, n in per_task.items():
        assert f"{task:<23} {n:>14,d}" in out
    total = _one_bert() + sum(per_task.values())
    assert f"total                     {total:>14,d}  ({total / _one_bert():.3f}x one BERT)" in out
    assert not os.path.exists(tmp_path / "runs")  # nothing trained or written


def test_dry_run_bert_base_pals_budget_matches_reference(setup, tmp_path, capsys):
    # bert-base sizes on the meta device: PALs-204 = 1,819,836 per task + head, total ~124.05M (bert_n_pals.md 4.2)
    folder = tmp_path / "bert_base"
    folder.mkdir()
    shutil.copy(os.path.join(ROOT, "configs", "bert_base_config.json"), folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"")  # never read by the dry run
    argv = ["--data_dir", setup["data"], "--bert_model", str(folder), "--config", "pals", "--dry_run", "--tasks", "all"]
    assert run_multi_task.main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "shared encoder (one BERT) 109,482,240" in out
    assert f"cola {1819836 + 768 * 2 + 2:,d} (modules + head)" in out
    assert "total 124,053,232 (1.133x one BERT)" in out
    assert "this model is 7.06x smaller" in out
    assert "2400 optimizer steps" in out  # 300 x 8 tasks


# per task without head, by hand: LoRA 2 projections x layers x r x (d + d); (IA)^3 layers x (3d + d_ff);
# parallel adapter layers x (d b + b + b d + d); prefix E + W1 + W2 (2 x layers x d outputs)
@pytest.mark.parametrize("name, bert_base, minilm", [
    ("lora", 12 * 2 * 8 * 1536, 6 * 2 * 8 * 768),
    ("lora_budget", 12 * 2 * 49 * 1536, 6 * 2 * 29 * 768),
    ("ia3", 12 * (3 * 768 + 3072), 6 * (3 * 384 + 1536)),
    ("parallel_adapter", 12 * (2 * 768 * 64 + 64 + 768), 6 * (2 * 384 * 64 + 64 + 384)),
    ("parallel_adapter_budget", 12 * (2 * 768 * 98 + 98 + 768), 6 * (2 * 384 * 58 + 58 + 384)),
    ("prefix_budget", 20 * 768 + 768 * 93 + 93 + 93 * 24 * 768 + 24 * 768,
     20 * 384 + 384 * 51 + 51 + 51 * 12 * 384 + 12 * 384),
])
def test_dry_run_lora_ia3_counts_on_bert_base_and_minilm(setup, tmp_path, capsys, name, bert_base, minilm):
    folder = tmp_path / "bert_base"
    folder.mkdir()
    shutil.copy(os.path.join(ROOT, "configs", "bert_base_config.json"), folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"")  # never read by the dry run
    heads = {"cola": 2, "mnli": 3, "sts-b": 1}
    for model, width, per_task, one in ((str(folder), 768, bert_base, 109_482_240),
                                        ("minilm-l6", 384, minilm, 22_713_216)):
        argv = ["--data_dir", setup["data"], "--bert_model", model, "--config", name, "--dry_run", "--tasks", "all"]
        assert run_multi_task.main(argv) == 0
        out = " ".join(capsys.readouterr().out.split())
        for task, labels in heads.items():
            assert f"{task} {per_task + width * labels + labels:,d} (modules + head)" in out
        total = one + 8 * per_task + (width + 1) * 16  # 16 head outputs over the 8 GLUE tasks
        assert f"total {total:,d} ({total / one:.3f}x one BERT)" in out


def test_end_to_end_table_best_model_predictions(setup, capsys):
    out = setup["base"] / "e2e"
    assert _run(setup, out, "--tasks", "all", "--sample", "anneal", "--num_train_epochs", 2,
                "--steps_per_epoch", 8, "--per_task_best", "--do_predict") == 0
    text = capsys.readouterr().out
    assert text.count("Dev results after epoch") == 2
    for task in ("cola", "mrpc", "mnli", "mnli-mm", "rte", "sts-b", "sst-2", "qqp", "qnli"):
        assert any(line.startswith(task + " ") for line in text.splitlines()), task
    assert "GLUE avg" in text and "best GLUE average" in text
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "multi_task" and [h["epoch"] for h in res["history"]] == [1, 2]
    best = max(res["history"], key=lambda h: h["glue_average"])
    assert res["best_epoch"] == best["epoch"]
    assert sum(res["schedule"]["steps"]) == pytest.approx(16)
    assert "cola.mcc" in (out / "eval_results.txt").read_text()
    # the saved best model reproduces its recorded dev metrics (recomputed here with sklearn/scipy)
    from scipy.stats import spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    import tokenization
    import training
    from tasks import glue
    model = modeling.BertForMultiTask.from_pretrained(str(out / "best"))
    assert model.config.task_names == res["tasks"]
    tok = tokenization.BertTokenizer.from_pretrained(str(out / "best"))
    for task, check in (("cola", "mcc"), ("mrpc", "f1"), ("sts-b", "spearmanr")):
        examples = glue.read_examples(task, setup["data"], "dev")
        feats = glue.convert_examples_to_features(examples, task, tok, 32)
        logits = training.predict(model, feats, res["tasks"].index(task), 16)["logits"]
        if task == "cola":
            value = matthews_corrcoef([int(e.label) for e in examples], logits.argmax(-1))
        elif task == "mrpc":
            value = f1_score([int(e.label) for e in examples], logits.argmax(-1), zero_division=0)
        else:
            value = spearmanr(logits.reshape(-1), [float(e.label) for e in examples])[0]
        assert best["results"][task][check] == pytest.approx(value, abs=1e-5), task
    # per-task best: only that task's parameters, the epoch it was best at
    info = json.loads((out / "per_task_best" / "rte" / "task_info.json").read_text())
    assert info["epoch"] == res["task_best"]["rte"]["epoch"]
    saved = load_file(str(out / "per_task_best" / "rte" / "task_parameters.safetensors"))
    assert saved and all(".3." in k for k in saved)  # rte is task 3 of the paper order
    assert (out / "per_task_best" / "combined" / "model.safetensors").exists()
    # submissions: every task, MNLI-m/mm and AX, one line per test example, STS-B in 0..5
    names = sorted(os.listdir(out / "predictions"))
    assert names == sorted(["CoLA.tsv", "MRPC.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv", "RTE.tsv", "STS-B.tsv",
                            "SST-2.tsv", "QQP.tsv", "QNLI.tsv"])
    sts = (out / "predictions" / "STS-B.tsv").read_text().splitlines()
    assert sts[0] == "index\tprediction" and len(sts) == 13
    assert all(0.0 <= float(line.split("\t")[1]) <= 5.0 for line in sts[1:])
    assert set(line.split("\t")[1] for line in (out / "predictions" / "MNLI-mm.tsv").read_text().splitlines()[1:]) \
        <= {"entailment", "neutral", "contradiction"}
    # a finished model evaluates and predicts again without training (same dev numbers)
    again = setup["base"] / "e2e-no-train"
    assert run_multi_task.main(["--data_dir", setup["data"], "--bert_model", str(out / "best"), "--config", "none",
                                "--tasks", "all", "--no_train", "--do_predict", "--output_dir", str(again),
                                "--max_seq_length", "32", "--eval_batch_size", "16", "--cache_dir", "none"]) == 0
    res2 = json.loads((again / "results.json").read_text())
    for task in ("cola", "mnli-mm", "sts-b"):
        for key, value in best["results"][task].items():
            if key != "loss":
                assert res2["history"][0]["results"][task][key] == pytest.approx(value, abs=1e-6)
    assert (again / "predictions" / "QNLI.tsv").read_text() == (out / "predictions" / "QNLI.tsv").read_text()
    # TensorBoard: dev metrics and target vs realized task frequencies
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "runs"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"eval/glue_average", "eval/cola/mcc", "sampling/qnli/target", "sampling/qnli/realized"} <= set(tags)
    realized = sum(acc.Scalars(f"sampling/{t}/realized")[0].value for t in res["tasks"])
    assert realized == pytest.approx(1.0, abs=1e-5)


def test_collect_results_table(setup, tmp_path, capsys):
    """Collector on a multi-task output and two run_classifier-style single-task outputs."""
    collect_results = load_script("scripts/collect_results.py")
    runs = tmp_path / "runs"
    runs.mkdir()
    mt_run = runs / "pals"
    history = [{"epoch": 1, "glue_average": 0.5, "main": {}, "results": {
        "cola": {"mcc": 0.5}, "sst-2": {"acc": 0.9}, "mrpc": {"acc": 0.8, "f1": 0.85, "acc_and_f1": 0.825},
        "sts-b": {"pearson": 0.8, "spearmanr": 0.82, "corr": 0.81}, "qqp": {"acc": 0.9, "f1": 0.7, "acc_and_f1": 0.8},
        "mnli": {"acc": 0.84}, "mnli-mm": {"acc": 0.83}, "qnli": {"acc": 0.9}, "rte": {"acc": 0.7}}}]
    mt_run.mkdir()
    (mt_run / "results.json").write_text(json.dumps({"kind": "multi_task", "label": "PALs", "best_epoch": 1,
                                                     "history": history,
                                                     "parameters": {"total": 113, "shared": 100}}))
    # run_classifier.py's format: run_config.json {"flags": {...}}, eval_results.txt `key = value` (MNLI: mm_*)
    for task, metrics in (("rte", "acc = 0.75\n"), ("cola", "global_step = 9\nloss = 0.6\nmcc = 0.25\n"),
                          ("mnli", "acc = 0.6\nmm_acc = 0.55\n")):
        folder = runs / task
        folder.mkdir()
        (folder / "run_config.json").write_text(json.dumps({"flags": {"task_name": task}}))
        (folder / "eval_results.txt").write_text(metrics)
        from safetensors.torch import save_file
        save_file({"bert.w": torch.zeros(10, 10), "heads.0.w": torch.zeros(2, 5),
                   "bert.embeddings.position_ids": torch.zeros(3)}, str(folder / "model.safetensors"))
    assert collect_results.main([str(runs), "--output", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    pals = next(line for line in table.splitlines() if line.startswith("| PALs"))
    cells = [c.strip() for c in pals.strip("|").split("|")]
    # CoLA, SST-2, MRPC F1, MRPC acc, STS-B P, STS-B S, QQP F1, QQP acc, MNLI-m, MNLI-mm, QNLI, RTE, WNLI
    assert cells[1:14] == ["50.0", "90.0", "85.0", "80.0", "80.0", "82.0", "70.0", "90.0", "84.0", "83.0", "90.0",
                           "70.0", "-"]
    # GLUE (leaderboard rule): mean of 50, 90, 82.5, 81, 80, 83.5, 90, 70 = 78.375
    assert cells[14] == "78.4"
    assert cells[15] == f"{(50 + 90 + 85 + 82 + 70 + 84 + 83 + 90 + 70) / 9:.1f}" and cells[-1] == "1.13x"
    separate = next(line for line in table.splitlines() if "separate fine-tuned BERTs (3 models)" in line)
    cells = [c.strip() for c in separate.strip("|").split("|")]
    assert cells[1] == "25.0" and cells[12] == "75.0" and cells[9:11] == ["60.0", "55.0"]
    assert cells[-1] == "3.30x"  # 3 x (100 encoder + 10 head) / 100 params
    # the published BERT-base test average is 79.6 over the 9 paper columns
    bert = next(line for line in table.splitlines() if "Devlin" in line)
    assert [c.strip() for c in bert.strip("|").split("|")][15] == "79.6"
    assert "UNVERIFIED" in table
    with pytest.raises(SystemExit) as exc:
        from file_utils import run_cli
        run_cli(collect_results.main, [str(tmp_path / "table.md")])
    assert exc.value.code == 2


@pytest.mark.parametrize("extra", [("--sample", "anneal"),
                                   ("--sample", "rr", "--projection", "vaccine", "--tasks_per_step", "2")],
                         ids=["anneal", "vaccine"])
def test_resume_is_exact(setup, extra):
    common = ("--tasks", "rte,sts-b,mnli", "--num_train_epochs", 2, "--steps_per_epoch", 5, *extra)
    full, split = setup["base"] / f"full-{extra[1]}", setup["base"] / f"split-{extra[1]}"
    assert _run(setup, full, *common, config="pals_nodrop") == 0
    assert _run(setup, split, *common, "--stop_after_steps", 7, config="pals_nodrop") == 0
    assert not (split / "results.json").exists()
    state = training.read_checkpoint(str(split / "checkpoint"))["state"]
    assert state["global_step"] == 7 and state["extra_state"]["best_epoch"] == 1
    if "vaccine" in extra:
        assert np.abs(np.array(state["stream"]["combiner"]["phi_hat"])).sum() > 0
    assert _run(setup, split, *common, "--resume", config="pals_nodrop") == 0
    a, b = json.loads((full / "results.json").read_text()), json.loads((split / "results.json").read_text())
    assert a["history"] == b["history"] and a["realized_frequencies"] == b["realized_frequencies"]
    wa, wb = load_file(str(full / "best" / "model.safetensors")), load_file(str(split / "best" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_freeze_trains_only_task_parameters(setup):
    out = setup["base"] / "freeze"
    assert _run(setup, out, "--tasks", "rte,cola", "--num_train_epochs", 1, "--steps_per_epoch", 4, "--freeze",
                "--task_lr", "5e-3") == 0
    before = load_file(os.path.join(setup["model"], "model.safetensors"))
    after = load_file(str(out / "best" / "model.safetensors"))
    for key, value in before.items():
        if "position_ids" not in key:
            assert torch.equal(after["bert." + key if not key.startswith("bert.") else key], value), key
    trained = [k for k in after if k.startswith("heads.") or "pal_" in k]
    assert trained


def test_demo_profile_and_overrides():
    args = run_multi_task.parse_args([])
    assert args.demo and args.data_dir.endswith(os.path.join("data", "glue_sample"))
    assert (args.learning_rate, args.num_train_epochs, args.max_eval_examples, args.optimizer) == (1e-4, 3.0, 200,
                                                                                                   "adamw")
    assert "optimizer" not in run_multi_task.DEMO_PROFILE  # AdamW is everyone's default, not a demo override
    assert args.output_dir.startswith(os.path.join("runs", "multi_task-"))
    args = run_multi_task.parse_args(["--learning_rate=3e-5", "--num_train_epochs", "1"])
    assert (args.learning_rate, args.num_train_epochs, args.max_eval_examples) == (3e-5, 1.0, 200)
    args = run_multi_task.parse_args(["--data_dir", "glue"])
    assert not args.demo and (args.learning_rate, args.train_batch_size, args.max_seq_length, args.seed,
                              args.warmup_proportion, args.optimizer) == (2e-5, 32, 128, 42, 0.1, "adamw")


def test_bad_flags_one_line_exit_2(setup, capsys):
    from file_utils import run_cli
    for argv, message in ((["--tasks", "cola,squad"], "unknown task 'squad'"),
                          (["--projection", "pcgrad", "--freeze"], "--freeze"),
                          (["--tasks", "rte,cola", "--projection", "pcgrad", "--tasks_per_step", "1"], "at least 2")):
        with pytest.raises(SystemExit) as exc:
            run_cli(run_multi_task.main, ["--data_dir", setup["data"], "--bert_model", setup["model"],
                                          "--config", setup["pals"], "--dry_run", *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(setup):
    """torchrun, 2 CPU processes (gloo): same task per step on both ranks, unused task modules are
    fine, and the result equals one process with the same global batch (dropout 0); the gradient
    diagnostics, all-reduced over the ranks' halves of each batch, give the one-process cosines."""
    common = ["--tasks", "rte,sts-b,mnli", "--num_train_epochs", 1, "--steps_per_epoch", 6, "--sample", "sqrt",
              "--diagnose_every", 3, "--no_plots"]
    single = setup["base"] / "ddp-single"
    assert _run(setup, single, *common, config="pals_nodrop") == 0
    multi = setup["base"] / "ddp-two"
    argv = ["--data_dir", setup["data"], "--bert_model", setup["model"], "--config", setup["pals_nodrop"],
            "--output_dir", str(multi), "--max_seq_length", "32", "--train_batch_size", "4", "--eval_batch_size", "16",
            "--learning_rate", "1e-3", "--logging_steps", "1000", "--cache_dir", str(setup["base"] / "cache-ddp"),
            *map(str, common)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           os.path.join(ROOT, "run_multi_task.py"), *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Dev results after epoch 1") == 1  # printed by rank 0 only
    a, b = json.loads((single / "results.json").read_text()), json.loads((multi / "results.json").read_text())
    assert a["realized_frequencies"] == b["realized_frequencies"]
    wa, wb = load_file(str(single / "best" / "model.safetensors")), load_file(str(multi / "best" / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
    for task, metrics in a["history"][0]["results"].items():
        for key, value in metrics.items():
            assert b["history"][0]["results"][task][key] == pytest.approx(value, abs=1e-3), (task, key)
    rows_a, rows_b = ((single / "diagnostics" / "epoch_1.csv").read_text().splitlines(),
                      (multi / "diagnostics" / "epoch_1.csv").read_text().splitlines())
    assert len(rows_a) == len(rows_b) == 1 + 2 * 3 * 5  # steps 3 and 6, 3 pairs, 5 groups
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        ra, rb = ra.split(","), rb.split(",")
        assert ra[:4] == rb[:4] and float(ra[4]) == pytest.approx(float(rb[4]), abs=1e-4), (ra, rb)
        # gradient norms and dot products too: a cosine cannot see a gradient scaled by the number of ranks
        for col in (6, 7, 8):  # dot, norm_a, norm_b
            assert float(rb[col]) == pytest.approx(float(ra[col]), rel=1e-3, abs=1e-9), (ra, rb)


def test_patience_stops_on_glue_average(setup):
    # learning rate 0: every epoch scores the same, so epoch 2 is no improvement and patience 1 stops there
    out = setup["base"] / "patience"
    assert _run(setup, out, "--tasks", "rte,cola", "--num_train_epochs", 4, "--steps_per_epoch", 2,
                "--patience", 1, "--learning_rate", 0) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["stopped_early"] and [h["epoch"] for h in res["history"]] == [1, 2] and res["best_epoch"] == 1
    assert res["steps"] == 4


def test_vaccine_beta_reaches_the_ema(setup):
    """--vaccine_beta is the EMA rate: from phi_hat = 0, step 1 leaves phi_hat = beta * cos(g_rte, g_sts)
    with the same step-1 gradients whatever beta is (a target of 0 corrects the same), so beta 0.5
    gives exactly twice the phi_hat of beta 0.25 (the default 0.01 would give the same for both)."""
    phi = {}
    for beta in (0.5, 0.25):
        out = setup["base"] / f"vaccine-beta-{beta}"
        assert _run(setup, out, "--tasks", "rte,sts-b", "--num_train_epochs", 1, "--steps_per_epoch", 3,
                    "--projection", "vaccine", "--vaccine_beta", beta, "--stop_after_steps", 1,
                    config="pals_nodrop") == 0
        state = training.read_checkpoint(str(out / "checkpoint"))["state"]
        combiner = state.get("grad_combiner") or state["stream"]["combiner"]
        assert combiner["beta"] == beta
        phi[beta] = np.array(combiner["phi_hat"])
    assert abs(phi[0.25][0, 1]) > 1e-6
    assert phi[0.5][0, 1] == pytest.approx(2 * phi[0.25][0, 1], rel=1e-9)
    assert phi[0.5][1, 0] == pytest.approx(2 * phi[0.25][1, 0], rel=1e-9)
