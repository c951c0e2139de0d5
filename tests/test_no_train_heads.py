"""run_multi_task.py --no_train (and the 2019 --do_eval alone) on a fine-tuned model: every task is
scored with the head and task modules the model holds for that task NAME, whatever the order or
subset given with --tasks; a 2019 checkpoint's heads are the paper's order; a plain BERT (no trained
head) is refused unless --allow_random_heads. Each run's test predictions are checked against a
direct forward pass of the original model with the right task id."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import modeling
import multitask as mt
import run_multi_task
import tiny_multitask
import tokenization
import training
from file_utils import run_cli
from tasks import glue
from test_reference_protocol import reference_names
from test_training_helpers import single_thread

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def _spread_heads(model, tokenizer, data, names):
    """Scale the heads up and centre each head's margin on its task's test set, so that every head
    predicts both labels and two heads disagree on some example."""
    with torch.no_grad():
        for t, name in enumerate(names):
            if name not in ("rte", "sst-2", "qnli"):
                continue
            head = model.heads[t].classifier
            head.weight.mul_(40.0)
            head.bias.copy_(torch.tensor([0.3, -0.2]))
            logits = _logits(model, tokenizer, data, name, t)
            head.bias[1] -= float(np.median(logits[:, 1] - logits[:, 0]))


def _logits(model, tokenizer, data, name, task_id, split="test"):
    examples = glue.read_examples(name, data, split)
    feats = glue.convert_examples_to_features(examples, name, tokenizer, 32)
    model.eval()
    return training.predict(model, feats, task_id, 16)["logits"]


def _expected(model, tokenizer, data, name, task_id, label_order=None):
    """Label strings of a direct forward pass with head `task_id` (rows in `label_order`)."""
    labels = label_order or glue.get_task(name).labels
    return [labels[i] for i in _logits(model, tokenizer, data, name, task_id).argmax(-1)]


def _predicted(out, name):
    lines = (out / "predictions" / glue.get_task(name).submission_file()).read_text().splitlines()
    return [line.split("\t")[1] for line in lines[1:]]


def _no_train(tiny_mt, model_dir, out, *extra):
    return run_multi_task.main(["--data_dir", tiny_mt["data"], "--bert_model", str(model_dir), "--config", "none",
                                "--no_train", "--do_predict", "--output_dir", str(out), "--max_seq_length", "32",
                                "--eval_batch_size", "16", "--cache_dir", "none", *map(str, extra)])


@pytest.fixture(scope="module")
def trained(tiny_mt, tmp_path_factory):
    """A PALs model 'trained' as rte,sst-2 (random, heads spread), saved as run_multi_task.py saves."""
    torch.manual_seed(5)
    names = ["rte", "sst-2"]
    model = modeling.BertForMultiTask.from_pretrained(tiny_mt["model"], config=tiny_mt["pals_nodrop"],
                                                      task_num_labels=[2, 2], task_names=names)
    with torch.no_grad():  # task modules that matter: a task's PALs differ from the other's
        for n, p in model.named_parameters():
            if ".adapters." in n or "pal_" in n:
                p.normal_(0.0, 0.5)
    tokenizer = tokenization.BertTokenizer.from_pretrained(tiny_mt["model"], do_lower_case=True)
    _spread_heads(model, tokenizer, tiny_mt["data"], names)
    folder = tmp_path_factory.mktemp("trained") / "model"
    mt.save_with_task_labels(model, str(folder), tokenizer, [],
                             {"rte": ["entailment", "not_entailment"], "sst-2": ["0", "1"]})
    return {"model": model, "tokenizer": tokenizer, "dir": folder}


@pytest.mark.parametrize("tasks", ["sst-2,rte", "sst-2", "rte,sst-2"])
def test_tasks_matched_by_name_any_order_and_subset(tiny_mt, trained, tmp_path, tasks):
    model, tok, data = trained["model"], trained["tokenizer"], tiny_mt["data"]
    sst_own, sst_other = _expected(model, tok, data, "sst-2", 1), _expected(model, tok, data, "sst-2", 0)
    assert sst_own != sst_other  # the test can tell the heads apart
    assert _no_train(tiny_mt, trained["dir"], tmp_path / "out", "--tasks", tasks) == 0
    assert _predicted(tmp_path / "out", "sst-2") == sst_own
    if "rte" in tasks:
        assert _predicted(tmp_path / "out", "rte") == _expected(model, tok, data, "rte", 0)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    dev = glue.read_examples("sst-2", data, "dev")
    gold = [glue.get_task("sst-2").labels.index(e.label) for e in dev]
    acc = float(np.mean(_logits(model, tok, data, "sst-2", 1, "dev").argmax(-1) == np.array(gold)))
    assert res["history"][0]["results"]["sst-2"]["acc"] == pytest.approx(acc)


def test_saved_label_order_is_matched_by_name(tiny_mt, trained, tmp_path, capsys):
    """task_labels.json lists sst-2's labels as 1, 0: head row 0 means '1'."""
    folder = tmp_path / "model"
    shutil.copytree(trained["dir"], folder)
    labels = json.loads((folder / "task_labels.json").read_text())
    (folder / "task_labels.json").write_text(json.dumps(dict(labels, **{"sst-2": ["1", "0"]})))
    model, tok, data = trained["model"], trained["tokenizer"], tiny_mt["data"]
    assert _no_train(tiny_mt, folder, tmp_path / "out", "--tasks", "sst-2") == 0
    assert _predicted(tmp_path / "out", "sst-2") == _expected(model, tok, data, "sst-2", 1, label_order=["1", "0"])
    (folder / "task_labels.json").write_text(json.dumps(dict(labels, **{"sst-2": ["pos", "neg"]})))
    with pytest.raises(SystemExit) as exc:
        run_cli(run_multi_task.main, ["--data_dir", data, "--bert_model", str(folder), "--config", "none",
                                      "--no_train", "--tasks", "sst-2", "--output_dir", str(tmp_path / "o2"),
                                      "--max_seq_length", "32"])
    assert exc.value.code == 2 and "pos, neg" in capsys.readouterr().err


def test_unknown_task_and_plain_bert_are_refused(tiny_mt, trained, tmp_path, capsys):
    def run(model, out, *extra):
        with pytest.raises(SystemExit) as exc:
            run_cli(run_multi_task.main, ["--data_dir", tiny_mt["data"], "--bert_model", str(model), "--config",
                                          "none", "--no_train", "--output_dir", str(tmp_path / out),
                                          "--max_seq_length", "32", "--cache_dir", "none", *extra])
        return exc.value.code, capsys.readouterr().err
    code, err = run(trained["dir"], "a", "--tasks", "sst-2,mrpc")
    assert code == 2 and "mrpc" in err and "rte, sst-2" in err and "--allow_random_heads" in err
    assert not (tmp_path / "a").exists()
    code, err = run(tiny_mt["model"], "b", "--tasks", "sst-2")
    assert code == 2 and "none" in err and "--allow_random_heads" in err
    assert not (tmp_path / "b").exists()
    code, _ = run(tiny_mt["model"], "c", "--tasks", "sst-2", "--allow_random_heads")
    assert code == 0 and (tmp_path / "c" / "results.json").exists()
    with pytest.raises(SystemExit) as exc:  # the flag means nothing to a training run: refused, not ignored
        run_cli(run_multi_task.main, ["--data_dir", tiny_mt["data"], "--bert_model", tiny_mt["model"],
                                      "--tasks", "sst-2", "--allow_random_heads", "--dry_run"])
    assert exc.value.code == 2 and "--allow_random_heads is for --no_train" in capsys.readouterr().err


def test_single_hugging_face_head_only_for_one_task(tiny_mt, trained, tmp_path, capsys):
    """A one-task model without adapters is saved in the Hugging Face layout (classifier.*); without
    its task name (a foreign HF model) it is accepted for exactly one task."""
    torch.manual_seed(6)
    model = modeling.BertForMultiTask.from_pretrained(tiny_mt["model"], task_num_labels=[2], task_names=["sst-2"])
    tok, data = trained["tokenizer"], tiny_mt["data"]
    _spread_heads(model, tok, data, ["sst-2"])
    folder = tmp_path / "hf"
    model.save_pretrained(str(folder), vocab_file=os.path.join(tiny_mt["model"], "vocab.txt"))
    config = json.loads((folder / "config.json").read_text())
    for key in ("task_names", "task_num_labels", "task_types", "num_tasks"):
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    assert _no_train(tiny_mt, folder, tmp_path / "one", "--tasks", "sst-2") == 0
    assert _predicted(tmp_path / "one", "sst-2") == _expected(model, tok, data, "sst-2", 0)
    with pytest.raises(SystemExit) as exc:
        run_cli(run_multi_task.main, ["--data_dir", data, "--bert_model", str(folder), "--config", "none",
                                      "--no_train", "--tasks", "rte,sst-2", "--output_dir", str(tmp_path / "two"),
                                      "--max_seq_length", "32"])
    assert exc.value.code == 2 and "exactly one task" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["no_train", "2019_do_eval"])
def test_2019_checkpoint_heads_mapped_by_paper_order(tiny_mt, tmp_path, command):
    """A Bert-n-Pals checkpoint (classifier.N, multi_layers.N: N is the position in the paper's order
    cola mrpc mnli rte sts-b sst-2 qqp qnli) evaluated with --tasks sst-2,rte --do_predict (item 19:
    the 2019 --do_eval alone predicts with the model in memory). Its RTE head lists
    (not_entailment, entailment): the runner puts the rows, bias included, in our order."""
    config = modeling.BertConfig(**tiny_multitask.bert_keys(hidden_size_aug=12, mult=True, pals=True,
                                                            hidden_dropout_prob=0.0,
                                                            attention_probs_dropout_prob=0.0))
    torch.manual_seed(7)
    names = glue.PAPER_TASKS
    source = modeling.BertForMultiTask(config, task_num_labels=[2, 2, 3, 2, 1, 2, 2, 2])
    tok = tokenization.BertTokenizer.from_pretrained(tiny_mt["model"], do_lower_case=True)
    with torch.no_grad():
        for n, p in source.named_parameters():
            if ".adapters." in n or "pal_" in n:
                p.normal_(0.0, 0.5)
    _spread_heads(source, tok, tiny_mt["data"], names)
    folder = tmp_path / "ref"
    folder.mkdir()
    torch.save({reference_names(k, "pals"): v.clone() for k, v in source.state_dict().items()},
               folder / "pytorch_model.bin")
    (folder / "bert_config.json").write_text(json.dumps(config.to_dict()))
    shutil.copy(os.path.join(tiny_mt["model"], "vocab.txt"), folder / "vocab.txt")
    data = tiny_mt["data"]
    rte_2019 = list(glue.REFERENCE_LABEL_ORDER["rte"])
    assert _expected(source, tok, data, "rte", 3, rte_2019) != _expected(source, tok, data, "rte", 3)
    if command == "no_train":
        assert _no_train(tiny_mt, folder, tmp_path / "out", "--tasks", "sst-2,rte") == 0
    else:  # the Bert-n-Pals README line with --do_eval alone (and --do_predict)
        assert run_multi_task.main(["--data_dir", data, "--do_eval", "--do_predict", "--do_lower_case",
                                    "--bert_config_file", str(folder / "bert_config.json"),
                                    "--vocab_file", str(folder / "vocab.txt"),
                                    "--init_checkpoint", str(folder / "pytorch_model.bin"), "--tasks", "sst-2,rte",
                                    "--output_dir", str(tmp_path / "out"), "--max_seq_length", "32",
                                    "--eval_batch_size", "16", "--cache_dir", "none"]) == 0
    assert _predicted(tmp_path / "out", "sst-2") == _expected(source, tok, data, "sst-2", names.index("sst-2"))
    assert _predicted(tmp_path / "out", "rte") == _expected(source, tok, data, "rte", names.index("rte"), rte_2019)


@pytest.mark.parametrize("task", ["sts-b", "cola"])
def test_no_selected_epoch_refuses_predictions_after_writing_results(tiny_mt, tmp_path, capsys, task):
    """One dev example under the 2019 selection rule, which starts from best = 0: STS-B's per-batch
    Pearson is NaN and CoLA's MCC is 0 every epoch, so no epoch is ever selected and best/ is never
    written. results.json is written (history, no best epoch) and --do_predict is refused with one
    line instead of a traceback (or predictions from an unselected model)."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        run_cli(run_multi_task.main, tiny_multitask.argv(
            tiny_mt, out, "--tasks", task, "--max_eval_examples", 1, "--num_train_epochs", 2,
            "--steps_per_epoch", 2, "--selection", "reference_sum", "--do_predict", "--no_plots",
            config="none"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no epoch was selected" in err and len(err.strip().splitlines()) == 1
    res = json.loads((out / "results.json").read_text())
    assert res["best_epoch"] is None and res["predictions"] is None and "no epoch was selected" in \
        res["predictions_refused"]
    assert len(res["history"]) == 2
    for entry in res["history"]:
        assert np.isnan(entry["average"]) if task == "sts-b" else entry["average"] == 0.0
    assert not (out / "predictions").exists() and not (out / "best").exists()
