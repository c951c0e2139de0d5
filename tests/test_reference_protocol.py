"""The 2019 code as users have it: Bert-n-Pals checkpoints (its parameter names), its command line,
torch.distributed.launch, and the 2019 training protocol (--reference_protocol), each part checked
against a hand-computed expectation. Also: AdamW is every runner's default optimizer."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import modeling
import multitask as mt
import optimization
import reference_cli
import run_classifier
import run_multi_task
import run_ner
import run_squad
import run_swag
import training
from glue_fixtures import write_glue_fixture
from tasks import glue
from test_training_helpers import engine_options, single_thread, synthetic_features, write_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures(single_thread.__name__)
TINY = dict(vocab_size=99, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            hidden_size_aug=12, pal_num_heads=6, top_num_heads=12)


# ----------------------------------------------------------------------------------------------
# Bert-n-Pals checkpoints: its parameter names, written here from its modeling.py by hand
# ----------------------------------------------------------------------------------------------

def reference_names(ours, mode):
    """Our state-dict name -> the name the same tensor has in a Bert-n-Pals BertForMultiTask
    state_dict (modeling.py of AsaCooperStickland/Bert-n-Pals: BERTLayerNorm gamma/beta,
    multi_layers / mult_aug_dense / mult_dense / multi_lhuc, classifier.T)."""
    import re
    name = re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", ours))
    rules = [
        (r"^heads\.(\d+)\.classifier\.", r"classifier.\1."),
        (r"^bert\.encoder\.pal_encoders\.(\d+)\.", r"bert.encoder.mult_aug_dense.\1."),
        (r"^bert\.encoder\.pal_decoders\.(\d+)\.", r"bert.encoder.mult_aug_dense2.\1."),
        (r"\.adapters\.(\d+)\.attention\.", r".multi_layers.\1.attn."),
        (r"\.adapters\.(\d+)\.down\.", r".multi_layers.\1.aug_dense."),
        (r"\.adapters\.(\d+)\.up\.", r".multi_layers.\1.aug_dense2."),
        (r"\.lhuc\.(\d+)\.weight$", r".multi_lhuc.\1.lhuc"),
        (r"^bert\.encoder\.top\.(\d+)\.down\.", r"bert.encoder.mult_dense.\1."),
        (r"^bert\.encoder\.top\.(\d+)\.up\.", r"bert.encoder.mult_dense2.\1."),
        (r"^bert\.encoder\.top\.(\d+)\.blocks\.(\d+)\.", r"bert.encoder.multi_layers.\1.\2."),
        (r"^bert\.encoder\.top\.(\d+)\.", r"bert.encoder.multi_layers.\1."),
    ]
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


MODES = {"pals": dict(mult=True, pals=True), "low_rank": dict(mult=True), "houlsby": dict(houlsby=True),
         "houlsby_plus_pals": dict(houlsby=True, pals=True, extra_dim=5), "lhuc": dict(mult=True, lhuc=True),
         "top_attn": dict(top=True), "top_bert_layer": dict(top=True, bert_lay_top=True)}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("data_parallel", [False, True])
def test_bert_n_pals_checkpoint_names_load_into_our_modules(tmp_path, mode, data_parallel):
    config = modeling.BertConfig(**TINY, **MODES[mode])
    torch.manual_seed(0)
    source = modeling.BertForMultiTask(config, task_num_labels=[2, 3])
    state = {}
    for name, tensor in source.state_dict().items():
        state[("module." if data_parallel else "") + reference_names(name, mode)] = tensor.clone()
    if mode in ("pals", "houlsby_plus_pals"):  # the reference lists the shared V^E/V^D under every layer too
        slot = "" if mode == "pals" else "output."
        for t in range(2):
            for layer in range(2):
                for kind, ours in (("aug_dense", "pal_encoders"), ("aug_dense2", "pal_decoders")):
                    for p in ("weight", "bias"):
                        state[f"bert.encoder.layer.{layer}.{slot}multi_layers.{t}.{kind}.{p}"] = \
                            source.state_dict()[f"bert.encoder.{ours}.{t}.{p}"].clone()
    folder = tmp_path / "ref"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "bert_config.json").write_text(json.dumps(config.to_dict()))
    loaded = modeling.BertForMultiTask.from_pretrained(str(folder), task_num_labels=[2, 3])
    assert loaded._newly_initialised == []  # every parameter came from the 2019 checkpoint
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


# ----------------------------------------------------------------------------------------------
# The 2019 command line
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder_2019(tmp_path_factory, vocab_file):
    """Google's folder after the 2019 conversion: bert_config.json, vocab.txt, pytorch_model.bin with
    the 2019 names (no `bert.` prefix, LayerNorm gamma/beta), and pals_config.json next to them."""
    base = tmp_path_factory.mktemp("uncased_L-2_H-24_A-2")
    keys = dict(TINY, vocab_size=30522, max_position_embeddings=64)
    torch.manual_seed(1)
    encoder = modeling.BertModel(modeling.BertConfig(**{k: v for k, v in keys.items() if k not in (
        "hidden_size_aug", "pal_num_heads", "top_num_heads")}))
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in encoder.state_dict().items()}
    torch.save(old, base / "pytorch_model.bin")
    shutil.copy(vocab_file, base / "vocab.txt")
    bert_keys = {k: v for k, v in keys.items() if k not in ("hidden_size_aug", "pal_num_heads", "top_num_heads")}
    (base / "bert_config.json").write_text(json.dumps(bert_keys))
    (base / "pals_config.json").write_text(json.dumps(dict(bert_keys, hidden_size_aug=12, mult=True, pals=True)))
    glue_dir = tmp_path_factory.mktemp("glue")
    write_glue_fixture(str(glue_dir), n=12)
    return {"base": base, "glue": glue_dir, "encoder": encoder}


def readme_command(folder_2019, out):
    """The Bert-n-Pals README's command, as written there (paths filled in)."""
    base = folder_2019["base"]
    return ["--seed", "42", "--output_dir", str(out), "--tasks", "all", "--sample", "anneal", "--multi", "--do_train",
            "--do_eval", "--do_lower_case", "--data_dir", f"{folder_2019['glue']}/", "--vocab_file",
            str(base / "vocab.txt"), "--bert_config_file", str(base / "pals_config.json"), "--init_checkpoint",
            str(base / "pytorch_model.bin"), "--max_seq_length", "128", "--train_batch_size", "32",
            "--learning_rate", "2e-5", "--num_train_epochs", "25.0", "--gradient_accumulation_steps", "1"]


def test_readme_command_of_the_reference_runs(folder_2019, tmp_path, capsys):
    out = tmp_path / "pals"
    assert run_multi_task.main(readme_command(folder_2019, out) + ["--dry_run"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "8 tasks" in text and "25 epoch(s) x 2400 optimizer steps" in text  # 300 x 8 tasks, the paper's
    # one PALs adapter set per task: V^E, V^D (24 <-> 12) + per layer Q, K, V (12 x 12)
    per_task = (24 * 12 + 12) + (12 * 24 + 24) + 2 * 3 * (12 * 12 + 12)
    assert f"mrpc {per_task + 24 * 2 + 2:,d} (modules + head)" in text
    # and it trains: a short version of the same command, the encoder loaded from the 2019 names
    argv = readme_command(folder_2019, out) + ["--num_train_epochs", "1", "--steps_per_epoch", "3",
                                               "--max_seq_length", "32", "--learning_rate", "0"]
    assert run_multi_task.main(argv) == 0
    best = modeling.BertForMultiTask.from_pretrained(str(out / "best"))
    for name, tensor in folder_2019["encoder"].state_dict().items():
        assert torch.equal(best.state_dict()["bert." + name], tensor), name  # lr 0: nothing moved


def test_2019_flags_h_aug_optim_single_and_tf_checkpoint(folder_2019, tmp_path, capsys):
    base = folder_2019["base"]
    argv = readme_command(folder_2019, tmp_path / "x") + ["--dry_run", "--h_aug", "18", "--tasks", "single",
                                                          "--task_id", "3"]
    assert run_multi_task.main(argv) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "1 tasks" in text and "rte" in text
    per_task = (24 * 18 + 18) + (18 * 24 + 24) + 2 * 3 * (18 * 18 + 18)  # hidden_size_aug 18 (6 heads x 3)
    assert f"rte {per_task + 24 * 2 + 2:,d} (modules + head)" in text
    # 2019 single: an epoch is half a pass over the data: int(12 / 32 * 25) / (2 x 25) -> 1 step minimum
    assert "25 epoch(s) x 1 optimizer steps" in text
    # the PAL attention weights get their own learning rate with --optim (3e-4, hard-coded in 2019)
    model = modeling.BertForMultiTask.from_pretrained(str(base), config=str(base / "pals_config.json"),
                                                      task_num_labels=[2, 2])
    groups = optimization.param_groups(model, 0.01, 2e-5, pal_attention_lr=reference_cli.REFERENCE_PAL_ATTENTION_LR)
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == {"shared_decay": 2e-5, "shared_no_decay": 2e-5, "pal_attention_decay": 3e-4,
                     "pal_attention_no_decay": 3e-4}
    pal = {id(p) for g in groups if g["name"].startswith("pal_attention") for p in g["params"]}
    assert pal == {id(p) for n, p in model.named_parameters() if ".adapters." in n and ".attention." in n}
    # --init_checkpoint may be a TensorFlow checkpoint prefix (Google's release files)
    tf = os.path.join(ROOT, "tests", "fixtures", "tf_bert_tiny")
    argv = ["--data_dir", str(folder_2019["glue"]), "--tasks", "rte", "--dry_run", "--vocab_file",
            os.path.join(tf, "vocab.txt"), "--bert_config_file", os.path.join(tf, "bert_config.json"),
            "--init_checkpoint", os.path.join(tf, "bert_model.ckpt"), "--config", "none"]
    assert run_multi_task.main(argv) == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torch_distributed_launch_passes_local_rank(tmp_path):
    """The 2019 launcher passes --local-rank=N to every process; the runners take it (gloo, CPU)."""
    model = write_tiny_model(str(tmp_path / "model"))
    data = tmp_path / "glue"
    write_glue_fixture(str(data), tasks=["rte"], n=8)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={_free_port()}",
           os.path.join(ROOT, "run_classifier.py"), "--task_name", "rte", "--data_dir", str(data), "--bert_model",
           model, "--do_train", "--do_eval", "--output_dir", str(tmp_path / "out"), "--max_seq_length", "32",
           "--train_batch_size", "4", "--num_train_epochs", "1", "--cache_dir", "none"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2" in proc.stderr
    assert (tmp_path / "out" / "eval_results.txt").is_file()


# ----------------------------------------------------------------------------------------------
# The 2019 protocol, part by part
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), dropout=0.1)


def _two_task_stream(opts, env, order):
    """A step stream training the tasks in `order` (one task per step)."""
    feats = [synthetic_features(8, seed=1), synthetic_features(8, seed=2)]
    streams = [training.make_stream(opts, env, f, task_id=t) for t, f in enumerate(feats)]

    class Fixed:
        steps_per_epoch = len(order)

        def __init__(self):
            self.i = 0

        def next_step(self):
            task = order[self.i]
            self.i += 1
            return streams[task].next_step()
    return Fixed()


def test_a_dropout_stays_off_after_the_first_evaluation(tiny_dir, tmp_path):
    for flag, expected in ((None, [True] * 6), ("--dropout_off_after_eval", [True, True] + [False] * 4)):
        opts = engine_options(tiny_dir, str(tmp_path / str(flag)), "--train_batch_size", 4,
                              *([flag] if flag else []))
        env = training.setup_env(opts)
        model = training.load_model(opts, [2])
        modes = []
        model.register_forward_pre_hook(lambda m, args: modes.append(m.training) if torch.is_grad_enabled() else None)
        trainer = training.Trainer(opts, env, model, 6)
        trainer.train(training.make_stream(opts, env, synthetic_features(8, seed=3)), 6,
                      on_epoch_end=lambda epoch, t: t.predict(synthetic_features(4), 0) and False)
        assert modes == expected, flag  # 2 steps per epoch; evaluation after each epoch
        trainer.close()


def test_b_unsampled_task_moves_by_exactly_the_stale_bertadam_update(tiny_dir, tmp_path):
    """Step 1 trains task 0, step 2 task 1. With zeroed (not freed) gradients, task 0's head moves
    in step 2 by lr * (b1 m / (sqrt(b2 v) + e) + wd p): m, v from step 1, gradient 0."""
    for flag in (None, "--zero_grad_in_place"):
        opts = engine_options(tiny_dir, str(tmp_path / str(flag)), "--optimizer", "bertadam", "--schedule", "constant",
                              "--learning_rate", "1e-2", "--train_batch_size", 4, *([flag] if flag else []))
        env = training.setup_env(opts)
        model = training.load_model(opts, [2, 2])
        trainer = training.Trainer(opts, env, model, 2)
        stream = _two_task_stream(opts, env, [0, 1])
        trainer.train(stream, 1)
        head = model.heads[0].classifier.weight
        p1 = head.detach().clone()
        state = trainer.optimizer.state[head]
        m1, v1 = state["next_m"].clone(), state["next_v"].clone()
        trainer.train(stream, 2)
        if flag is None:
            assert torch.equal(head.detach(), p1)  # PyTorch 2: no gradient, no update at all
        else:
            b1, b2, e, wd, lr = 0.9, 0.999, 1e-6, 0.01, 1e-2
            expected = p1 - lr * (b1 * m1 / ((b2 * v1).sqrt() + e) + wd * p1)
            assert torch.allclose(head.detach(), expected, atol=1e-7, rtol=0)
            assert not torch.equal(head.detach(), p1)
        trainer.close()


def test_c_per_parameter_schedule_counts_each_parameters_own_steps(tiny_dir, tmp_path):
    """warmup_linear_legacy over t_total = 10, warmup 0.1: f(0) = 0, f(0.1) = 0.9 (the 2019 jump),
    f(0.2) = 0.8. Task 1's head first gets a gradient at global step 2: its own step count is 0
    there, so it does not move (the engine-wide schedule would move it with f(0.2))."""
    opts = engine_options(tiny_dir, str(tmp_path / "c"), "--optimizer", "bertadam", "--per_parameter_schedule",
                          "--schedule", "warmup_linear_legacy", "--warmup_proportion", "0.1",
                          "--learning_rate", "1e-2", "--train_batch_size", 4, "--weight_decay", "0")
    env = training.setup_env(opts)
    model = training.load_model(opts, [2, 2])
    trainer = training.Trainer(opts, env, model, 10)
    stream = _two_task_stream(opts, env, [0, 0, 1, 1])
    shared = model.bert.pooler.dense.bias
    head1 = model.heads[1].classifier.bias
    trainer.train(stream, 1)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-2)  # the engine's LambdaLR stays constant
    before = shared.detach().clone()
    trainer.train(stream, 2)
    state = trainer.optimizer.state[shared]
    g_m, g_v = state["next_m"], state["next_v"]  # after 2 steps
    # shared bias at its own step 1: lr * f(1/10) = lr * 0.9 (legacy: x = 0.1 is past the warmup)
    assert torch.allclose(shared.detach(), before - 1e-2 * 0.9 * g_m / (g_v.sqrt() + 1e-6), atol=1e-8)
    h0 = head1.detach().clone()
    trainer.train(stream, 3)   # task 1 for the first time, global step 3, its own step 0 -> f(0) = 0
    assert torch.equal(head1.detach(), h0) and trainer.optimizer.state[head1]["step"] == 1
    trainer.train(stream, 4)   # its own step 1 -> f(0.1) = 0.9
    s = trainer.optimizer.state[head1]
    assert torch.allclose(head1.detach(), h0 - 1e-2 * 0.9 * s["next_m"] / (s["next_v"].sqrt() + 1e-6), atol=1e-8)
    trainer.close()


def test_d_reference_selection_metric_hand_computed():
    cola = glue.get_task("cola")
    # 11 examples: batch 1 (8) has 4/4 classes, 3 mistakes; the short batch 2 (3) one mistake
    gold = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1])
    pred = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 0])
    logits = np.eye(2)[pred]
    # batch 1: tp 3, tn 2, fp 2, fn 1 -> MCC = (3*2 - 2*1) / sqrt(5*4*4*3) = 4 / sqrt(240);
    # batch 2: tp 1, tn 1, fp 0, fn 1 -> MCC = (1*1 - 0*1) / sqrt(1*2*1*2) = 0.5, weighted by its 3 examples
    expected = (4 / np.sqrt(240) * 8 + 0.5 * 3) / 11
    assert glue.reference_selection_metric(cola, logits, gold) == pytest.approx(expected)
    sts = glue.get_task("sts-b")
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 2.5, 1.5, 4.5, 0.5])
    out = np.array([0.05, 0.1, 0.5, 0.55, 0.9, 1.4, 0.4, 0.2, 0.3, 0.3])  # model outputs on the score/5 scale
    from scipy.stats import pearsonr
    first = pearsonr(np.clip(out[:8], 0, 1), scores[:8] / 5)[0]   # 1.4 clipped to 1.0
    assert glue.reference_selection_metric(sts, out, scores) == pytest.approx((first * 8 + np.nan * 2) / 10,
                                                                              nan_ok=True)  # constant batch: NaN
    assert np.isnan(glue.reference_selection_metric(sts, out, scores))
    assert glue.reference_selection_metric(sts, out[:8], scores[:8]) == pytest.approx(first)
    assert np.isnan(glue.reference_selection_metric(sts, out[:9], scores[:9]))  # a 1-example batch: constant
    # the selected epoch follows the sum (starting from 0: NaN or <= 0 is never kept), not the average
    selector = mt.ModelSelector({}, ["a", "b"], average_key="reference_sum", initial_best=0.0)
    assert selector.update(1, {}, {"a": 0.9, "b": 0.9}, float("nan"))[0] is False
    assert selector.update(2, {}, {"a": 0.1, "b": 0.1}, 0.4)[0] is True
    assert selector.update(3, {}, {"a": 0.9, "b": 0.9}, 0.3)[0] is False   # a better average, a lower sum
    assert selector.state["best_epoch"] == 2 and selector.state["history"][2]["reference_sum"] == 0.3
    below_start = mt.ModelSelector({}, ["a"], average_key="reference_sum", initial_best=0.0)
    assert below_start.update(1, {}, {"a": -0.1}, -0.1)[0] is False  # the 2019 start is 0, not "anything"
    assert below_start.state["best_epoch"] is None


def test_d_reference_protocol_run_selects_on_the_per_batch_sum(folder_2019, tmp_path):
    out = tmp_path / "ref"
    argv = readme_command(folder_2019, out) + ["--num_train_epochs", "2", "--steps_per_epoch", "3",
                                               "--max_seq_length", "32", "--reference_protocol", "--tasks", "rte,cola"]
    assert run_multi_task.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    sums = [h["reference_sum"] for h in res["history"]]
    for h in res["history"]:
        assert h["reference_sum"] == pytest.approx(h["results"]["rte"]["reference"] + h["results"]["cola"]["reference"])
        assert h["results"]["rte"]["reference"] == pytest.approx(h["results"]["rte"]["acc"])  # accuracy: no batches
    kept = [e for e, s in zip((1, 2), sums) if s > 0]
    assert res["best_epoch"] == (max(kept, key=lambda e: sums[e - 1]) if kept else None)
    run_config = json.loads((out / "run_config.json").read_text())["flags"]
    assert run_config["optimizer"] == "bertadam" and run_config["schedule"] == "warmup_linear_legacy"


def test_e_reference_layernorm_init_draws_new_layernorms_only(tiny_dir):
    model = modeling.BertForMultiTask.from_pretrained(
        tiny_dir, config=modeling.BertConfig(**dict(TINY, vocab_size=100, hidden_size=32, intermediate_size=64,
                                                    num_attention_heads=2, max_position_embeddings=64, top=True,
                                                    hidden_size_aug=24)), task_num_labels=[2] * 8)
    loaded = {n: p.detach().clone() for n, p in model.named_parameters()}
    redrawn = modeling.reference_layernorm_init(model)
    # every LayerNorm of the new top blocks, gamma AND beta (the checkpoint has no top blocks)
    expected = {n for n, _ in model.named_parameters() if ".top." in n and ".LayerNorm." in n}
    assert set(redrawn) == expected and any(n.endswith(".bias") for n in expected)
    for kind in ("weight", "bias"):  # each drawn from N(0, 0.02): beta no longer 0, gamma no longer 1
        values = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in redrawn
                            if n.endswith("." + kind)])
        assert abs(values.mean().item()) < 0.005 and abs(values.std().item() - 0.02) < 0.004, kind
    for name, value in loaded.items():
        if name not in redrawn:
            assert torch.equal(dict(model.named_parameters())[name].detach(), value), name


def test_f_replayed_batch_cycle_repeats_the_first_epochs_batches(tiny_dir, tmp_path):
    feats = synthetic_features(12, seed=4)
    for flag, same in ((None, False), ("--replay_batch_cycle", True)):
        opts = engine_options(tiny_dir, str(tmp_path), "--train_batch_size", 4, *([flag] if flag else []))
        stream = training.make_stream(opts, training.setup_env(opts), feats)
        epochs = [[stream.next_step()[0][1]["input_ids"].tolist() for _ in range(3)] for _ in range(3)]
        assert (epochs[0] == epochs[1] == epochs[2]) is same, flag


def test_reference_protocol_flag_sets_every_engine_part(tiny_dir, tmp_path):
    opts = engine_options(tiny_dir, str(tmp_path), "--reference_protocol")
    assert (opts.optimizer, opts.schedule, opts.group_by_length) == ("bertadam", "warmup_linear_legacy", False)
    assert opts.per_parameter_schedule and opts.zero_grad_in_place and opts.dropout_off_after_eval \
        and opts.replay_batch_cycle


@pytest.mark.parametrize("runner", [run_classifier, run_multi_task, run_squad, run_ner, run_swag])
def test_adamw_is_every_runners_default_optimizer(runner):
    parser = runner.build_parser()
    assert parser.get_default("optimizer") == "adamw"


def test_2019_qnli_and_rte_heads_are_put_in_our_label_order(tmp_path):
    """The 2019 code listed QNLI/RTE labels as (not_entailment, entailment), ours the other way: a
    head loaded from its checkpoint has its two rows swapped back, the other tasks' are untouched."""
    config = modeling.BertConfig(**TINY, mult=True, pals=True)
    torch.manual_seed(2)
    source = modeling.BertForMultiTask(config, task_num_labels=[2, 2, 3, 2, 1, 2, 2, 2])
    state = {reference_names(k, "pals"): v.clone() for k, v in source.state_dict().items()}
    (tmp_path / "ref").mkdir()
    torch.save(state, tmp_path / "ref" / "pytorch_model.bin")
    (tmp_path / "ref" / "bert_config.json").write_text(json.dumps(config.to_dict()))
    names = glue.PAPER_TASKS  # cola mrpc mnli rte sts-b sst-2 qqp qnli
    model = modeling.BertForMultiTask.from_pretrained(str(tmp_path / "ref"),
                                                      task_num_labels=[2, 2, 3, 2, 1, 2, 2, 2], task_names=names,
                                                      reference_head_rows=glue.reference_head_rows())
    for t, name in enumerate(names):
        saved_w, saved_b = source.heads[t].classifier.weight, source.heads[t].classifier.bias
        got_w, got_b = model.heads[t].classifier.weight, model.heads[t].classifier.bias
        if name in ("rte", "qnli"):
            assert torch.equal(got_w, saved_w.flip(0)) and torch.equal(got_b, saved_b.flip(0)), name
        else:
            assert torch.equal(got_w, saved_w) and torch.equal(got_b, saved_b), name
