"""lm_finetuning/: the three scripts end to end (pregenerate -> fine-tune -> load in the GLUE runners),
the data-epoch stream (memmap vs RAM, reuse of data epochs, exact resume position), step counts
from real sample counts, and one-line errors with exit code 2.

Training runs use a tiny random BERT with the real 30522-token vocab (fast on CPU) except the
end-to-end check, which fine-tunes the bundled MiniLM for a few short steps.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import training
from file_utils import run_cli
from tasks import pretraining as P
from tokenization import BertTokenizer
from tree_scripts import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM = os.path.join(ROOT, "lm_finetuning")
finetune_on_pregenerated = load_script("lm_finetuning/finetune_on_pregenerated.py")
pregenerate_training_data = load_script("lm_finetuning/pregenerate_training_data.py")
simple_lm_finetuning = load_script("lm_finetuning/simple_lm_finetuning.py")

WORDS = ("river bank money water stone light house green market paper music field energy "
         "garden window letter station doctor memory weather").split()


def write_corpus(path, num_docs=8, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(num_docs):
        sents = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) + (" unbelievably" if s % 3 == 0 else "") + "."
                 for s in range(int(rng.integers(2, 7)))]
        docs.append("\n".join(sents))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, vocab_file):
    """A 2-layer, hidden-32 random BERT whose vocab holds just the word pieces of the test corpora.

    A small vocab keeps the [batch, seq, vocab] MLM logits, the cost of every step, small."""
    import modeling
    folder = str(tmp_path_factory.mktemp("tiny_bert"))
    full = BertTokenizer(vocab_file)
    pieces = sorted({p for w in WORDS + ["unbelievably", ".", "one", "two", "three"] for p in full.tokenize(w)})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + pieces
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = modeling.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64)
    modeling.BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_model):
    """Two pregenerated data epochs (max_seq_len 24) of a small corpus, in the tiny model's vocab."""
    base = tmp_path_factory.mktemp("pregen")
    corpus = write_corpus(base / "corpus.txt", num_docs=10)
    out = str(base / "data")
    assert pregenerate_training_data.main(["--train_corpus", corpus, "--output_dir", out, "--epochs_to_generate", "2",
                                           "--max_seq_len", "24", "--do_lower_case", "--seed", "3",
                                           "--bert_model", tiny_model]) == 0
    return out


def _counts(folder):
    return [json.load(open(os.path.join(folder, f"epoch_{e}_metrics.json")))["num_training_examples"]
            for e in range(2)]


# ----------------------------------------------------------------------------------------------
# pregenerate_training_data.py


def test_pregenerate_metrics_match_files_and_storage_modes_agree(tmp_path, data_dir, tiny_model):
    for e, n in enumerate(_counts(data_dir)):
        lines = open(os.path.join(data_dir, f"epoch_{e}.json")).read().splitlines()
        assert len(lines) == n > 0
        assert json.load(open(os.path.join(data_dir, f"epoch_{e}_metrics.json")))["max_seq_len"] == 24
        assert all(len(json.loads(line)["tokens"]) <= 24 for line in lines)
    # Same seed: on-disk documents and parallel workers give byte-identical epochs.
    src = os.path.join(os.path.dirname(data_dir), "corpus.txt")
    other = str(tmp_path / "disk")
    pregenerate_training_data.main(["--train_corpus", src, "--output_dir", other, "--epochs_to_generate", "2",
                                    "--max_seq_len", "24", "--do_lower_case", "--seed", "3", "--reduce_memory",
                                    "--num_workers", "2", "--bert_model", tiny_model])
    for e in range(2):
        for name in (f"epoch_{e}.json", f"epoch_{e}_metrics.json"):
            assert open(os.path.join(other, name), "rb").read() == open(os.path.join(data_dir, name), "rb").read()
    assert not [p for p in os.listdir(other) if p.startswith(".documents_")]
    cfg = json.load(open(os.path.join(other, "pregenerate_config.json")))
    assert cfg["reduce_memory"] and cfg["max_seq_len"] == 24


def test_pregenerate_whole_word_mask_and_existing_output(tmp_path, vocab_file):
    corpus = write_corpus(tmp_path / "c.txt", num_docs=6)
    out = str(tmp_path / "out")
    args = ["--train_corpus", corpus, "--output_dir", out, "--max_seq_len", "32", "--do_lower_case",
            "--do_whole_word_mask", "--epochs_to_generate", "3"]
    pregenerate_training_data.main(args)
    instances = [json.loads(line) for e in range(3) for line in open(os.path.join(out, f"epoch_{e}.json"))]
    whole = 0
    for inst in instances:
        tokens = list(inst["tokens"])
        for p, label in zip(inst["masked_lm_positions"], inst["masked_lm_labels"]):
            tokens[p] = label
        masked = set(inst["masked_lm_positions"])
        for i, t in enumerate(tokens):  # "unbelievably" -> unbelievable ##ly: both or neither
            if t.startswith("##"):
                assert (i in masked) == (i - 1 in masked)
                whole += i in masked
    assert whole > 0
    # Refuses to mix with earlier data; --overwrite_output_dir removes stale epochs.
    with pytest.raises(SystemExit) as exc:
        run_cli(pregenerate_training_data.main, args)
    assert exc.value.code == 2
    pregenerate_training_data.main(args[:-1] + ["1", "--overwrite_output_dir"])
    assert sorted(p for p in os.listdir(out) if p.startswith("epoch_")) == ["epoch_0.json", "epoch_0_metrics.json"]


@pytest.mark.parametrize("text, message", [
    ("", "holds no text"),
    ("one sentence.\nanother one.\nno blank line anywhere.\n", "found 1 document"),
    ("\n\nfirst.\nsecond.\n\n\n", "found 1 document"),
])
def test_pregenerate_corpus_errors_exit_2(tmp_path, capsys, text, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        run_cli(pregenerate_training_data.main, ["--train_corpus", str(corpus), "--output_dir", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and "c.txt" in err[-1]
    assert not os.path.exists(tmp_path / "o" / "epoch_0_metrics.json")


def test_pregenerate_output_dir_that_is_a_file(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.txt", num_docs=3)
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(SystemExit) as exc:
        run_cli(pregenerate_training_data.main, ["--train_corpus", corpus, "--output_dir", str(out)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: --output_dir {out} is a file, not a folder"]
    assert out.read_text() == "a file" and sorted(os.listdir(tmp_path)) == ["c.txt", "out"]


def test_scripts_run_from_repo_root_and_fail_in_one_line(tmp_path):
    corpus = tmp_path / "one_doc.txt"
    corpus.write_text("just one document.\nwith two sentences.\n", encoding="utf-8")
    runs = [
        ["pregenerate_training_data.py", "--train_corpus", str(corpus), "--output_dir", str(tmp_path / "a")],
        ["finetune_on_pregenerated.py", "--pregenerated_data", str(tmp_path), "--output_dir", str(tmp_path / "b")],
        ["simple_lm_finetuning.py", "--train_corpus", str(corpus), "--output_dir", str(tmp_path / "c")],
    ]
    expected = ["found 1 document", "holds no pregenerated data", "found 1 document"]
    for argv, message in zip(runs, expected):
        proc = subprocess.run([sys.executable, os.path.join("lm_finetuning", argv[0])] + argv[1:], cwd=ROOT,
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "b" / "model.safetensors")


# ----------------------------------------------------------------------------------------------
# the data-epoch stream


def _loader(data_dir, vocab, plan, memmap_dir=None):
    return lambda e: P.PregeneratedEpoch(plan[e][0], plan[e][1], plan[e][2], vocab, memmap_dir=memmap_dir)


def test_stream_memmap_equals_ram_reuses_data_epochs_and_resumes(data_dir, tmp_path, tiny_model):
    vocab = BertTokenizer.from_pretrained(tiny_model).vocab
    data = P.find_pregenerated_epochs(data_dir)
    plan = [data[e % 2] for e in range(3)]  # 3 training epochs over 2 data epochs
    sizes = [n for _, n, _ in plan]
    def make(loader):
        return training.EpochStream(load_epoch=loader, epoch_sizes=sizes, batch_size=6, accumulation=2, seed=5)
    ram = make(_loader(data_dir, vocab, plan))
    mm = make(_loader(data_dir, vocab, plan, str(tmp_path / "mm")))
    assert ram.steps == [math.ceil(math.ceil(n / 3) / 2) for n in sizes]
    seen = [[] for _ in range(3)]
    ram_steps = []
    for step in range(ram.total_steps):
        epoch = ram.epoch if ram.step_in_epoch < ram.steps[ram.epoch] else ram.epoch + 1
        a, b = ram.next_step(), mm.next_step()
        assert len(a) == len(b) <= 2
        for (ta, ba), (tb, bb) in zip(a, b):
            assert ta == tb == 0 and ba.keys() == bb.keys()
            for k in ba:
                assert torch.equal(ba[k], bb[k]), k
            assert ba["input_ids"].shape[0] <= 3
            seen[epoch].extend(tuple(row[:int(mask.sum())].tolist())
                               for row, mask in zip(ba["input_ids"], ba["attention_mask"]))
        ram_steps.append(a)
    assert [len(s) for s in seen] == sizes  # every example of each epoch exactly once
    # epoch 2 reuses data epoch 0 in another order
    assert sorted(seen[2]) == sorted(seen[0]) and seen[2] != seen[0]
    # resume: a fresh stream placed at a saved position continues identically
    k = ram.steps[0] + 1
    probe = make(_loader(data_dir, vocab, plan))
    for _ in range(k):
        probe.next_step()
    state = json.loads(json.dumps(probe.state_dict()))
    resumed = make(_loader(data_dir, vocab, plan))
    resumed.load_state_dict(state)
    for step in range(k, ram.total_steps):
        got = resumed.next_step()
        for (_, x), (_, y) in zip(got, ram_steps[step]):
            assert all(torch.equal(x[key], y[key]) for key in x)
    with pytest.raises(Exception, match="does not fit this run"):
        training.EpochStream(load_epoch=lambda e: None, epoch_sizes=sizes[:2], batch_size=6, accumulation=2,
                             seed=5).load_state_dict(state)
    for s in (ram, mm, resumed, probe):
        s.close()
    assert os.listdir(tmp_path / "mm") == []


# ----------------------------------------------------------------------------------------------
# training scripts


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_finetune_on_pregenerated_memmap_and_ram_train_identically(data_dir, tiny_model, tmp_path, caplog):
    n0, n1 = _counts(data_dir)
    base = ["--pregenerated_data", data_dir, "--bert_model", tiny_model, "--epochs", "3",
            "--train_batch_size", "8", "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3",
            "--do_lower_case", "--logging_steps", "1"]
    outs = {}
    for mode in ("ram", "memmap"):
        out = str(tmp_path / mode)
        args = base + ["--output_dir", out] + (["--reduce_memory"] if mode == "memmap" else [])
        with caplog.at_level("WARNING"):
            assert finetune_on_pregenerated.main(args) == 0
        outs[mode] = out
        assert {"config.json", "model.safetensors", "vocab.txt", "run_config.json", "train_results.txt"} <= \
            set(os.listdir(out))
        assert not [p for p in os.listdir(out) if p.startswith(".memmap_")]
    assert "data epochs will be reused" in caplog.text
    # t_total from the real sample counts: epochs 0,1,2 use data epochs 0,1,0; micro-batch 4.
    expected = sum(math.ceil(math.ceil(n / 4) / 2) for n in (n0, n1, n0))
    for out in outs.values():
        results = dict(line.split(" = ") for line in open(os.path.join(out, "train_results.txt")).read().splitlines())
        assert int(results["global_step"]) == expected
        assert math.isfinite(float(results["loss"]))
        config = json.load(open(os.path.join(out, "config.json")))
        assert config["task_types"] == ["pretraining"] and config["task_names"] == ["lm"]
    ram, mm, init = _weights(outs["ram"]), _weights(outs["memmap"]), load_file(os.path.join(tiny_model,
                                                                                            "model.safetensors"))
    assert ram.keys() == mm.keys()
    for k in ram:
        assert torch.equal(ram[k], mm[k]), k  # identical batches -> identical training
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(ram[key], init[key.replace("bert.", "", 1)])  # it did train
    # The result loads back as a starting point (continued LM fine-tuning, with its heads).
    import modeling
    again = modeling.BertForMultiTask.from_pretrained(outs["ram"])
    assert again.task_types == ["pretraining"]
    assert torch.equal(again.state_dict()["heads.0.predictions.bias"], ram["cls.predictions.bias"])  # HF names on disk


def test_simple_lm_finetuning_tiny(tmp_path, tiny_model):
    corpus = write_corpus(tmp_path / "c.txt", num_docs=6, seed=2)
    docs = open(corpus).read().strip().split("\n\n")
    pairs = sum(len(d.splitlines()) - 1 for d in docs)
    out = str(tmp_path / "out")
    assert simple_lm_finetuning.main(["--train_corpus", corpus, "--bert_model", tiny_model, "--output_dir", out,
                                      "--do_train", "--on_memory", "--max_seq_length", "32",
                                      "--train_batch_size", "4", "--num_train_epochs", "2", "--bf16",
                                      "--learning_rate", "1e-3"]) == 0
    results = dict(line.split(" = ") for line in open(os.path.join(out, "train_results.txt")).read().splitlines())
    assert int(results["global_step"]) == 2 * math.ceil(pairs / 4)
    assert {"config.json", "model.safetensors", "vocab.txt"} <= set(os.listdir(out))
    assert open(os.path.join(out, "vocab.txt")).read() == open(os.path.join(tiny_model, "vocab.txt")).read()


def test_minilm_lm_finetune_then_glue_runners(tmp_path):
    """A short LM fine-tune of the bundled MiniLM; the result is --bert_model for the GLUE runners."""
    import glue_fixtures
    corpus = write_corpus(tmp_path / "c.txt", num_docs=6, seed=4)
    data = str(tmp_path / "data")
    pregenerate_training_data.main(["--train_corpus", corpus, "--output_dir", data, "--epochs_to_generate", "1",
                                    "--max_seq_len", "20", "--bert_model", "minilm-l6", "--do_lower_case"])
    lm = str(tmp_path / "lm")
    assert finetune_on_pregenerated.main(["--pregenerated_data", data, "--bert_model", "minilm-l6", "--epochs", "0.25",
                                          "--train_batch_size", "4", "--output_dir", lm, "--do_lower_case"]) == 0
    assert {"config.json", "model.safetensors", "vocab.txt"} <= set(os.listdir(lm))
    # What the GLUE runners do with --bert_model: the LM-tuned encoder is taken, the MLM/NSP head left out.
    import modeling
    tuned = _weights(lm)
    clf = modeling.BertForMultiTask.from_pretrained(lm, task_num_labels=[2], task_types=["classification"])
    state = clf.state_dict()
    encoder = [k for k in tuned if k.startswith("bert.")]
    assert len(encoder) > 50 and all(torch.equal(state[k], tuned[k]) for k in encoder)
    assert not any(k.startswith("heads.0.predictions") for k in state)
    glue_dir = str(tmp_path / "glue")
    glue_fixtures.write_glue_fixture(glue_dir, tasks=["sst-2"], n=8)
    common = ["--bert_model", lm, "--max_seq_length", "24", "--train_batch_size", "4", "--eval_batch_size", "8",
              "--num_train_epochs", "1"]
    # In-process (saves two interpreter + torch start-ups); the CLI path itself is tested above.
    import run_classifier
    out = str(tmp_path / "classifier")
    assert run_classifier.main(common + ["--output_dir", out, "--task_name", "sst-2", "--do_train", "--do_eval",
                                         "--data_dir", os.path.join(glue_dir, "SST-2")]) in (0, None)
    results = dict(line.split(" = ") for line in open(os.path.join(out, "eval_results.txt")).read().splitlines())
    assert 0.0 <= float(results["acc"]) <= 1.0 and int(results["global_step"]) == 2
    import run_multi_task
    out = str(tmp_path / "multi_task")
    assert run_multi_task.main(common + ["--output_dir", out, "--tasks", "sst-2", "--data_dir", glue_dir,
                                         "--steps_per_epoch", "2"]) in (0, None)
    assert os.path.isfile(os.path.join(out, "best", "model.safetensors"))


def test_stream_shards_each_global_batch_across_ranks(data_dir, tiny_model):
    vocab = BertTokenizer.from_pretrained(tiny_model).vocab
    plan = P.find_pregenerated_epochs(data_dir)
    sizes = [n for _, n, _ in plan]
    streams = [training.EpochStream(load_epoch=_loader(data_dir, vocab, plan), epoch_sizes=sizes, batch_size=8,
                                    accumulation=2, seed=1, rank=r, world_size=w) for r, w in ((0, 1), (0, 2), (1, 2))]
    single, r0, r1 = streams
    assert r0.steps == r1.steps

    def rows(batch):
        return [tuple(r[:int(m.sum())].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"])]

    for epoch in range(len(sizes)):
        whole, split = [], []
        for _ in range(single.steps[epoch]):
            whole.extend(row for _, b in single.next_step() for row in rows(b))
        for _ in range(r0.steps[epoch]):
            for (_, a), (_, b) in zip(r0.next_step(), r1.next_step()):
                assert len(a["input_ids"]) >= 1 and len(b["input_ids"]) >= 1  # no empty slice on any rank
                split.extend(rows(a) + rows(b))
        assert sorted(split) == sorted(whole) and len(split) == sizes[epoch]  # each example once per epoch
    for s in streams:
        s.close()


def test_finetune_resume_after_interruption_is_exact(data_dir, tiny_model, tmp_path, monkeypatch):
    n0, _ = _counts(data_dir)
    base = ["--pregenerated_data", data_dir, "--bert_model", tiny_model, "--epochs", "2", "--train_batch_size", "4",
            "--learning_rate", "1e-3", "--do_lower_case", "--save_steps", "1", "--reduce_memory"]
    full = str(tmp_path / "full")
    finetune_on_pregenerated.main(base + ["--output_dir", full])
    stop_after = math.ceil(n0 / 4) + 1  # interrupted inside the second epoch (second data file)
    calls = {"n": 0}
    original = training.EpochStream.next_step

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise KeyboardInterrupt
        return original(self)

    part = str(tmp_path / "part")
    monkeypatch.setattr(training.EpochStream, "next_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune_on_pregenerated.main(base + ["--output_dir", part])
    monkeypatch.setattr(training.EpochStream, "next_step", original)
    assert not os.path.exists(os.path.join(part, "model.safetensors"))
    assert json.load(open(os.path.join(part, "checkpoint", "checkpoint.json")))["global_step"] == stop_after
    finetune_on_pregenerated.main(base + ["--output_dir", part, "--resume"])
    a, b = _weights(full), _weights(part)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_simple_lm_needs_a_sentence_pair(tmp_path, capsys, tiny_model):
    corpus = tmp_path / "c.txt"
    corpus.write_text("one.\n\ntwo.\n\nthree.\n", encoding="utf-8")  # three one-sentence documents
    with pytest.raises(SystemExit) as exc:
        run_cli(simple_lm_finetuning.main, ["--train_corpus", str(corpus), "--bert_model", tiny_model,
                                            "--output_dir", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "no document has two sentences" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="--fp16 needs a CUDA device")
def test_finetune_on_pregenerated_fp16_cuda(data_dir, tiny_model, tmp_path):
    out = str(tmp_path / "fp16")
    assert finetune_on_pregenerated.main(["--pregenerated_data", data_dir, "--bert_model", tiny_model, "--epochs", "1",
                                          "--train_batch_size", "4", "--fp16", "--output_dir", out]) == 0
    results = dict(line.split(" = ") for line in open(os.path.join(out, "train_results.txt")).read().splitlines())
    assert math.isfinite(float(results["loss"]))


def test_case_setting_follows_model_folder_and_mismatch_warns(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "c.txt", num_docs=3)
    out = str(tmp_path / "out")
    pregenerate_training_data.main(["--train_corpus", corpus, "--output_dir", out, "--epochs_to_generate", "1",
                                    "--bert_model", "minilm-l6"])  # no case flag: the uncased MiniLM says lower
    assert json.load(open(os.path.join(out, "pregenerate_config.json")))["do_lower_case"] is True
    with caplog.at_level("WARNING"):
        finetune_on_pregenerated.check_pregenerate_config(out, True)
        assert "do_lower_case" not in caplog.text
        finetune_on_pregenerated.check_pregenerate_config(out, False)
    assert "pregenerated with do_lower_case=True but this run uses False" in caplog.text
