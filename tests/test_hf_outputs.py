"""What the single-task runners and the LM scripts write loads in the Hugging Face stack as it is:
transformers' Auto classes give our outputs (to 1e-5) on the saved folders, and pipeline() gives
our predictions; a folder Hugging Face cannot run (adapters, several heads) is refused by the Auto
classes instead of loading with modules silently dropped."""
import json
import os

import numpy as np
import pytest
import torch
import transformers

import modeling
import run_classifier
import run_ner
import run_squad
import run_swag
import training
from fixtures_qa import make_tokenizer, squad_v1_data, write_conll_dir, write_squad, write_swag_dir
from glue_fixtures import write_glue_fixture
from test_training_helpers import single_thread

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, vocab_file):
    """A random BERT with the real uncased vocab (so Hugging Face's tokenizer gives our ids)."""
    folder = str(tmp_path_factory.mktemp("hf") / "tiny")
    torch.manual_seed(0)
    config = modeling.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=48, max_position_embeddings=128)
    modeling.BertModel(config).save_pretrained(folder, vocab_file=vocab_file)
    return folder


def _common(model, out):
    return ["--bert_model", model, "--output_dir", str(out), "--max_seq_length", "48", "--train_batch_size", "4",
            "--num_train_epochs", "1", "--learning_rate", "1e-3", "--cache_dir", "none", "--do_lower_case"]


def _ours(out, features):
    model = modeling.BertForMultiTask.from_pretrained(str(out)).eval()
    return training.predict(model, features, 0, 8)


def _hf_batch(features):
    batch = training.collate(features)
    return {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}


@pytest.mark.parametrize("task", ["sst-2", "sts-b"])
def test_run_classifier_output_in_auto_classes_and_pipeline(tiny_model, tmp_path, task, vocab_file):
    data = tmp_path / "glue"
    write_glue_fixture(str(data), tasks=[task], n=8)
    out = tmp_path / "out"
    run_classifier.main(["--task_name", task, "--data_dir", str(data), "--do_train", *_common(tiny_model, out)])
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["model_type"] == "bert"
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    from tasks import glue
    tok = make_tokenizer(vocab_file)
    examples = glue.read_examples(task, str(data), "dev")
    features = glue.convert_examples_to_features(examples, task, tok, 48)
    ours = _ours(out, features)["logits"]
    with torch.no_grad():
        theirs = hf(**_hf_batch(features)).logits.numpy()
    np.testing.assert_allclose(theirs.reshape(ours.shape), ours, atol=1e-5)
    # pipeline(): Hugging Face's own tokenizer from our tokenizer files, its own pre/post-processing
    pipe = transformers.pipeline("text-classification", model=str(out), device="cpu")
    text = [examples[0].text_a] if examples[0].text_b is None else [{"text": examples[0].text_a,
                                                                        "text_pair": examples[0].text_b}]
    got = pipe(text[0], top_k=None, function_to_apply="none")
    got = got if isinstance(got, list) else [got]
    by_label = {d["label"]: d["score"] for d in got}
    if task == "sts-b":
        assert config["problem_type"] == "regression" and by_label["score"] == pytest.approx(float(ours[0]), abs=1e-5)
    else:
        assert set(by_label) == {"0", "1"}  # the GLUE label strings as id2label
        assert [by_label["0"], by_label["1"]] == pytest.approx(ours[0].tolist(), abs=1e-5)


def test_run_ner_output_in_auto_classes_and_pipeline(tiny_model, tmp_path, vocab_file):
    data = write_conll_dir(str(tmp_path / "conll"))
    out = tmp_path / "ner"
    run_ner.main(["--data_dir", data, "--do_train", *_common(tiny_model, out)])
    labels = [line for line in (out / "labels.txt").read_text().splitlines() if line]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert [config["id2label"][str(i)] for i in range(len(labels))] == labels
    from tasks import conll
    tok = make_tokenizer(vocab_file)
    task = conll.Conll(data, tok, 48, labels=labels).prepare(train=False, dev=True)
    ours = _ours(out, task.features["dev"])["logits"]
    hf = transformers.AutoModelForTokenClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = hf(**_hf_batch(task.features["dev"])).logits.numpy()
    mask = training.collate(task.features["dev"])["attention_mask"].numpy().astype(bool)
    np.testing.assert_allclose(theirs[mask], ours[:, :theirs.shape[1]][mask], atol=1e-5)
    pipe = transformers.pipeline("token-classification", model=str(out), device="cpu", aggregation_strategy="none",
                                 ignore_labels=[])
    words = task.sentences["dev"][0].words
    predicted = pipe(" ".join(words))
    first = task.features["dev"][0]
    expected = [labels[int(np.argmax(ours[0, pos]))] for pos in task.metas["dev"][0].first_piece]
    firsts = [p for p in predicted if not p["word"].startswith("##")]
    assert [p["entity"] for p in firsts] == expected and len(first["input_ids"]) > len(words)


def test_run_squad_and_run_swag_outputs_in_auto_classes(tiny_model, tmp_path, vocab_file):
    squad_file = write_squad(str(tmp_path / "train.json"), squad_v1_data())
    out = tmp_path / "squad"
    run_squad.main(["--train_file", squad_file, "--do_train", *_common(tiny_model, out), "--max_seq_length", "96",
                    "--doc_stride", "32", "--max_query_length", "16"])
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]
    from tasks import squad
    tok = make_tokenizer(vocab_file)
    examples, _ = squad.read_squad_examples(squad_file, False)
    features, _ = squad.convert_examples_to_features(examples, tok, 96, 32, 16, False)
    ours = _ours(out, features)
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = hf(**_hf_batch(features))
    width = theirs.start_logits.shape[1]
    real = training.collate(features)["attention_mask"].numpy().astype(bool)  # padding is never scored
    np.testing.assert_allclose(theirs.start_logits.numpy()[real], ours["start_logits"][:, :width][real], atol=1e-5)
    np.testing.assert_allclose(theirs.end_logits.numpy()[real], ours["end_logits"][:, :width][real], atol=1e-5)

    data = write_swag_dir(str(tmp_path / "swag"))
    out = tmp_path / "swag_out"
    run_swag.main(["--data_dir", data, "--do_train", *_common(tiny_model, out)])
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMultipleChoice"]
    from tasks import swag
    features = swag.convert_examples_to_features(swag.read_swag_examples(os.path.join(data, "val.csv")), tok, 48)[0]
    ours = _ours(out, features)["logits"]
    hf = transformers.AutoModelForMultipleChoice.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = hf(**_hf_batch(features)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_lm_finetuning_output_in_auto_classes(tiny_model, tmp_path, vocab_file):
    import lm_finetuning.simple_lm_finetuning as simple
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat .\nit was a sunny day .\n\nbirds fly over the sea .\n"
                      "the ship sails home .\nwe wave at it .\n", encoding="utf-8")
    out = tmp_path / "lm"
    simple.main(["--train_corpus", str(corpus), *_common(tiny_model, out), "--max_seq_length", "32"])
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    hf = transformers.AutoModelForPreTraining.from_pretrained(str(out)).eval()
    ours = modeling.BertForMultiTask.from_pretrained(str(out)).eval()
    ids = torch.tensor([[101, 1996, 4937, 103, 2006, 1996, 13523, 102]])
    with torch.no_grad():
        theirs = hf(input_ids=ids)
        mine = ours(input_ids=ids, task_id=0)
    np.testing.assert_allclose(theirs.prediction_logits.numpy(), mine["prediction_logits"].numpy(), atol=1e-5)
    np.testing.assert_allclose(theirs.seq_relationship_logits.numpy(), mine["seq_relationship_logits"].numpy(),
                               atol=1e-5)


def test_folders_hugging_face_cannot_run_are_refused_not_half_loaded(tiny_model, tmp_path):
    """A PALs model (or several heads) has no Hugging Face class: the Auto classes must fail, not
    load the encoder with a fresh head and the adapters dropped."""
    pals = os.path.join(tmp_path, "pals.json")
    with open(pals, "w") as f:
        json.dump({"hidden_size": 32, "num_attention_heads": 2, "mult": True, "pals": True, "hidden_size_aug": 12},
                  f)
    model = modeling.BertForMultiTask.from_pretrained(tiny_model, config=pals, task_num_labels=[2])
    model.save_pretrained(str(tmp_path / "pals"))
    two = modeling.BertForMultiTask.from_pretrained(tiny_model, task_num_labels=[2, 3])
    two.save_pretrained(str(tmp_path / "two"))
    for folder in ("pals", "two"):
        assert json.loads((tmp_path / folder / "config.json").read_text())["model_type"] == modeling.OWN_MODEL_TYPE
        with pytest.raises(Exception):
            transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / folder))
        again = modeling.BertForMultiTask.from_pretrained(str(tmp_path / folder))  # ours reads them back
        assert again.task_num_labels == ([2] if folder == "pals" else [2, 3])
