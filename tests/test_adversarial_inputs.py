"""Adversarial input files for the task readers: each case is a file a user could really have
(a BOM from a Windows editor, Latin-1 bytes, a duplicated question id, an interrupted
pregeneration, ...) that used to give a wrong result or a traceback. Every one must now give
valid examples or a one-line `DataError`/`ConfigError` naming the file (and the line where
there is one) before any training starts. Crashes found by tests/test_reader_fuzz.py are pinned
here as regression tests, one per crash.
"""
import json
import os

import pytest

import glue_fixtures
from file_utils import ConfigError, DataError, run_cli
from fixtures_qa import (
    conll_sentences,
    squad_v1_data,
    squad_v2_data,
    swag_rows,
    write_conll,
    write_squad,
    write_swag,
)
from tasks import conll, glue, pretraining, squad, swag
from tree_scripts import load_script

finetune_on_pregenerated = load_script("lm_finetuning/finetune_on_pregenerated.py")
pregenerate_training_data = load_script("lm_finetuning/pregenerate_training_data.py")

BOM = "\ufeff".encode("utf-8")


# ---------------------------------------------------------------------------------------------
# CoNLL


def test_conll_bom_is_ignored_docstart_skipped_scores_unchanged(tmp_path):
    plain = write_conll(tmp_path / "plain.txt", conll_sentences())
    with_bom = tmp_path / "bom.txt"
    with_bom.write_bytes(BOM + open(plain, "rb").read())
    assert open(plain, encoding="utf-8").readline() == "-DOCSTART- -X- -X- O\n"
    a, b = conll.read_conll(str(plain)), conll.read_conll(str(with_bom))
    # Without the fix the BOM file had one more sentence: the word "\ufeff-DOCSTART-" tagged O.
    assert [(s.words, s.tags, s.line) for s in b] == [(s.words, s.tags, s.line) for s in a]
    assert not any("DOCSTART" in w for s in b for w in s.words)

    # A stand-in model that tags every word it has not seen in training as B-MISC: on the BOM file
    # it would have predicted an entity for the "-DOCSTART-" word, a false positive.
    known = {w: t for s in a[1:] for w, t in zip(s.words, s.tags)}

    def scores(sentences):
        gold = [s.tags for s in sentences]
        pred = [[known.get(w, "B-MISC") for w in s.words] for s in sentences]
        return conll.entity_scores(gold, pred)

    assert scores(b) == scores(a)
    # Prediction files keep the -DOCSTART- line as it is (no BOM) and are identical.
    preds = [s.tags for s in a]
    conll.write_predictions(str(tmp_path / "p_plain.txt"), str(plain), preds)
    conll.write_predictions(str(tmp_path / "p_bom.txt"), str(with_bom), preds)
    assert (tmp_path / "p_bom.txt").read_bytes() == (tmp_path / "p_plain.txt").read_bytes()


def test_conll_bom_in_labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(BOM + b"O\nB-PER\nI-PER\n")
    assert conll.read_labels_file(str(path)) == ["O", "B-PER", "I-PER"]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_conll_latin1_bytes_name_the_line(tmp_path, newline):
    text = newline.join(["-DOCSTART- -X- -X- O", "", "EU NNP B-NP B-ORG", "rejects VBZ B-VP O", "",
                         "M\xfcller NNP B-NP B-PER", ". . O O", ""])
    path = tmp_path / "latin1.txt"
    path.write_bytes(text.encode("latin-1"))   # "Müller" as one byte 0xfc: not UTF-8
    with pytest.raises(DataError) as err:
        conll.read_conll(str(path))
    assert err.value.line == 6
    assert str(err.value).startswith(f"{path}:6: not valid UTF-8 text (byte 0xfc at byte 2 of the line)")
    with pytest.raises(DataError, match=r":6: not valid UTF-8"):
        conll.write_predictions(str(tmp_path / "out.txt"), str(path), [["O", "O"], ["O", "O"]])
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"O\nB-PER\nB-\xe9\n")
    with pytest.raises(DataError, match=r"labels\.txt:3: not valid UTF-8"):
        conll.read_labels_file(str(labels))


def test_conll_bad_byte_deep_in_a_large_file_names_its_line(tmp_path):
    # Far beyond the text decoder's first block, so the decoder's own offset would be meaningless.
    lines = [f"word{i} NN O O" if i % 10 else "" for i in range(1, 20001)]
    lines[15000 - 1] = "caf\xe9 NN O O"
    path = tmp_path / "big.txt"
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(DataError) as err:
        conll.read_conll(str(path))
    assert err.value.line == 15000


def test_conll_indented_docstart_is_a_document_line(tmp_path):
    """Fuzzer find: a -DOCSTART- line with leading whitespace was read as the word '-DOCSTART-'
    tagged O (one more sentence, trained on and scored)."""
    plain = write_conll(tmp_path / "plain.txt", conll_sentences()[:3])
    text = open(plain, encoding="utf-8").read()
    indented = tmp_path / "indented.txt"
    indented.write_text(text.replace("-DOCSTART-", " \t-DOCSTART-"), encoding="utf-8")
    a, b = conll.read_conll(str(plain)), conll.read_conll(str(indented))
    assert [(s.words, s.tags) for s in b] == [(s.words, s.tags) for s in a]
    assert len(b) == 3


# ---------------------------------------------------------------------------------------------
# SQuAD reading


def _squad_text(data, version="1.1"):
    return json.dumps({"version": version, "data": data}, indent=1, ensure_ascii=False)


def test_squad_duplicate_id_names_second_occurrence(tmp_path):
    """Fuzzer find: a repeated question id; predictions.json (a dict keyed by id) kept one answer
    and the evaluation scored both questions with it."""
    data = squad_v1_data()
    data[2]["paragraphs"][0]["qas"][1]["id"] = "q0001"      # the id of data[0]'s second question
    path = write_squad(tmp_path / "dev.json", data)
    lines = open(path, encoding="utf-8").read().splitlines()
    first, second = [n for n, line in enumerate(lines, 1) if '"q0001"' in line]
    for is_training in (False, True):
        with pytest.raises(DataError) as err:
            squad.read_squad_examples(str(path), is_training)
        assert err.value.line == second
        assert str(err.value).startswith(f"{path}:{second}: data[2].paragraphs[0].qas[1] (id='q0001'): "
                                          f"duplicate question id 'q0001', first used by "
                                          f"data[0].paragraphs[0].qas[1] (line {first})")


def test_squad_duplicate_id_as_number_and_string(tmp_path):
    data = squad_v1_data()
    qas = data[0]["paragraphs"][0]["qas"]
    qas[0]["id"], qas[2]["id"], qas[3]["id"] = 12, 1, "1"   # 1 and "1" are the same key in predictions.json
    path = write_squad(tmp_path / "dev.json", data)
    with pytest.raises(DataError, match="duplicate question id '1'") as err:
        squad.read_squad_examples(str(path), False)
    assert lines_of(path)[err.value.line - 1].strip() == '"id": "1",'


def lines_of(path):
    return open(path, encoding="utf-8").read().splitlines()


def test_squad_error_line_of_numeric_id_is_not_a_prefix_match(tmp_path):
    # `"id": 1` must not be found at `"id": 12`, an earlier question's id.
    data = squad_v1_data()
    qas = data[0]["paragraphs"][0]["qas"]
    qas[0]["id"], qas[1]["id"] = 12, 1
    del qas[1]["question"]
    path = write_squad(tmp_path / "dev.json", data)
    with pytest.raises(DataError, match='missing "question"') as err:
        squad.read_squad_examples(str(path), False)
    assert lines_of(path)[err.value.line - 1].strip() == '"id": 1,'


def test_squad_latin1_bytes_name_the_line(tmp_path):
    """Fuzzer find: UnicodeDecodeError from a file that is not UTF-8."""
    text = _squad_text(squad_v1_data())
    path = tmp_path / "latin1.json"
    path.write_bytes(text.replace("Levi's", "L\xe9vi's").encode("latin-1", "replace"))
    with pytest.raises(DataError) as err:
        squad.load_squad_json(str(path))
    assert "not valid UTF-8 text (byte 0xe9" in str(err.value)
    assert b"L\xe9vi's Stadium" in path.read_bytes().split(b"\n")[err.value.line - 1]
    with pytest.raises(DataError, match=rf"latin1\.json:{err.value.line}: not valid UTF-8"):
        squad.read_squad_examples(str(path), True)


def test_squad_bom_is_ignored(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(BOM + _squad_text(squad_v1_data()).encode("utf-8"))
    plain = write_squad(tmp_path / "plain.json", squad_v1_data())
    assert squad.read_squad_examples(str(path), True) == squad.read_squad_examples(str(plain), True)


@pytest.mark.parametrize("payload, needle", [
    ("[" * 5000 + "]" * 5000, "nested too deeply"),     # fuzzer find: RecursionError
    ("9" * 4400, "invalid JSON"),                       # fuzzer find: ValueError (int digit limit)
])
def test_squad_json_the_parser_cannot_hold(tmp_path, payload, needle):
    path = tmp_path / "odd.json"
    path.write_text('{"version": "1.1", "data": [], "extra": ' + payload + "}", encoding="utf-8")
    with pytest.raises(DataError, match=needle) as err:
        squad.read_squad_examples(str(path), False)
    assert str(err.value).startswith(str(path))


def test_squad_v1_file_with_some_empty_answer_lists_fails_before_training(tmp_path):
    """Fuzzer find: a SQuAD 2.0 dev file read without --version_2_with_negative was accepted,
    and evaluate_v1 raised only after training and prediction."""
    path = write_squad(tmp_path / "dev.json", squad_v2_data(), "2.0")
    with pytest.raises(DataError, match="--version_2_with_negative") as err:
        squad.read_squad_examples(str(path), False)
    assert '"u0000"' in lines_of(path)[err.value.line - 1]
    assert "data[0].paragraphs[0].qas[4] (id='u0000'): no answers while other questions have some" in str(err.value)
    # as v2.0 it is fine, and so is a file with no gold answers at all (a test file)
    assert len(squad.read_squad_examples(str(path), False, True)[0]) == 14
    data = squad_v1_data()
    for article in data:
        for qa in article["paragraphs"][0]["qas"]:
            qa["answers"] = []
    assert len(squad.read_squad_examples(str(write_squad(tmp_path / "test.json", data)), False)[0]) == 11


@pytest.mark.parametrize("mutate, needle", [
    # checked by the reader already before this work (kept as regression tests)
    (lambda qa, p: qa["answers"][0].update(answer_start=-1), "answer_start -1 with answer length"),
    (lambda qa, p: qa["answers"][0].update(answer_start=len(p["context"])), "is outside the context"),
    (lambda qa, p: qa["answers"][0].update(answer_start="12"), "answer_start is not an integer: '12'"),
    (lambda qa, p: qa["answers"][0].update(answer_start=True), "answer_start is not an integer: True"),
    (lambda qa, p: qa["answers"][0].update(text=None), 'answers[0] has no "text" string'),
    (lambda qa, p: qa.update(answers={"text": "x"}), '"answers" is not a list'),
    (lambda qa, p: qa.update(question=["Who?"]), 'missing "question" string'),
    (lambda qa, p: qa.update(is_impossible="false"), "is_impossible must be true or false"),
    # new: a whitespace answer was kept, with a span of the word before it
    (lambda qa, p: qa["answers"][0].update(text=" ", answer_start=p["context"].index(" ")), "empty answer text"),
    # new: a boolean id became the string 'True'
    (lambda qa, p: qa.update(id=True), 'missing question "id"'),
    # fuzzer find: TypeError ('<' between None and int)
    (lambda qa, p: qa["answers"][0].update(answer_start=None), "answer has no answer_start"),
])
def test_squad_malformed_training_records(tmp_path, mutate, needle):
    data = squad_v2_data()
    paragraph = data[1]["paragraphs"][0]
    qa = paragraph["qas"][1]
    mutate(qa, paragraph)
    path = write_squad(tmp_path / "train.json", data, "2.0")
    with pytest.raises(DataError) as err:
        squad.read_squad_examples(str(path), True, True)
    message = str(err.value)
    assert needle in message and message.startswith(f"{path}:") and "data[1].paragraphs[0].qas[1]" in message
    assert err.value.line is not None


def test_squad_context_not_a_string_points_at_its_questions(tmp_path):
    data = squad_v1_data()
    data[1]["paragraphs"][0]["context"] = ["The Amazon River", "in South America"]
    path = write_squad(tmp_path / "dev.json", data)
    with pytest.raises(DataError) as err:
        squad.read_squad_examples(str(path), False)
    assert "data[1].paragraphs[0] (title='Amazon_river'): \"context\" is not a string" in str(err.value)
    assert '"q0004"' in lines_of(path)[err.value.line - 1]   # the paragraph's first question


def test_squad_v2_missing_is_impossible_and_plausible_answers(tmp_path):
    """Documented reading, pinned: in v2 training a missing is_impossible means "no answers";
    plausible_answers are not read (as in the reference), whatever they hold."""
    data = squad_v2_data()
    qas = data[0]["paragraphs"][0]["qas"]
    for qa in qas:
        qa.pop("is_impossible", None)
    qas[-1]["plausible_answers"] = [{"text": 5, "answer_start": "x"}]
    path = write_squad(tmp_path / "train.json", data, "2.0")
    examples, _ = squad.read_squad_examples(str(path), True, True)
    by_id = {e.qas_id: e for e in examples}
    assert by_id["u0000"].is_impossible and (by_id["u0000"].start_position, by_id["u0000"].end_position) == (-1, -1)
    assert not by_id["q0000"].is_impossible and by_id["q0000"].doc_tokens[by_id["q0000"].start_position] == "Gustave"


def test_squad_answer_starting_in_leading_whitespace(tmp_path):
    """An answer whose offset points at whitespace before the context's first word started at
    word -1, i.e. the LAST word of the context."""
    data = [{"title": "t", "paragraphs": [{"context": "  Paris", "qas": [
        {"id": "a", "question": "Where?", "answers": [{"text": "  Paris", "answer_start": 0}]}]}]}]
    path = write_squad(tmp_path / "train.json", data)
    [example], dropped = squad.read_squad_examples(str(path), True)
    assert dropped == [] and (example.start_position, example.end_position) == (0, 0)


# ---------------------------------------------------------------------------------------------
# SWAG CSV


def _swag_bytes(tmp_path, rows=None, with_label=True):
    path = write_swag(tmp_path / "rows.csv", swag_rows() if rows is None else rows, with_label)
    return path.read_bytes()


def test_swag_latin1_bytes_name_the_line(tmp_path):
    """Fuzzer find: UnicodeDecodeError from a file that is not UTF-8."""
    rows = swag_rows()
    rows[2]["sent1"] = "A man is standing in a caf\xe9."
    text = _swag_bytes(tmp_path, rows).decode("utf-8")
    path = tmp_path / "latin1.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as err:
        swag.read_swag_examples(str(path))
    assert err.value.line == 4 and str(err.value).startswith(f"{path}:4: not valid UTF-8 text (byte 0xe9")


def test_swag_bom_before_a_quoted_header_field(tmp_path):
    # csv writers quote the empty first header name as "" in some settings; the BOM sat in front
    # of that quote and made the header unrecognisable.
    body = _swag_bytes(tmp_path).split(b"\r\n", 1)[1]
    path = tmp_path / "bom.csv"
    path.write_bytes(BOM + b'"",' + b",".join(h.encode() for h in swag.HEADER[1:]) + b"\r\n" + body)
    assert [e.label for e in swag.read_swag_examples(str(path))] == [0, 1, 0, 2]


def test_swag_quoted_field_with_line_breaks_is_named_by_its_first_line(tmp_path):
    rows = swag_rows()
    rows[0]["sent1"] = "Members of the procession\nwalk down the street."   # record on lines 2-3
    rows[1]["label"] = "7"                                                   # record on line 4
    path = tmp_path / "multiline.csv"
    path.write_bytes(_swag_bytes(tmp_path, rows))
    with pytest.raises(DataError) as err:
        swag.read_swag_examples(str(path))
    assert err.value.line == 4 and "label must be 0..3, got '7'" in str(err.value)
    rows[1]["label"] = "1"
    path.write_bytes(_swag_bytes(tmp_path, rows))
    examples = swag.read_swag_examples(str(path))
    assert [e.line for e in examples] == [2, 4, 5, 6]
    assert examples[0].context == "Members of the procession\nwalk down the street."


@pytest.mark.parametrize("edit, needle", [
    # short and long rows were errors already (pinned); labels other than the digits 0..3 are new
    (lambda line: line.rsplit(b",", 2)[0], "expected 12 columns, got 10"),           # a short row
    (lambda line: line + b",extra", "expected 12 columns, got 13"),
    (lambda line: line[:-1] + b"+1", r"label must be 0\.\.3, got '\+1'"),
    (lambda line: line[:-1] + "\u0661".encode(), "label must be 0..3"),              # Arabic-Indic digit one
    (lambda line: line[:-1] + b"\x1c" + line[-1:], "label must be 0..3"),  # a control char str.strip() drops
])
def test_swag_bad_rows(tmp_path, edit, needle):
    lines = _swag_bytes(tmp_path).split(b"\r\n")
    lines[3] = edit(lines[3])
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(DataError, match=needle) as err:
        swag.read_swag_examples(str(path))
    assert err.value.line == 4


# ---------------------------------------------------------------------------------------------
# GLUE TSV


def test_glue_bad_byte_far_into_the_file_names_its_line(tmp_path):
    rows = "".join(f"{i}\tsentence number {i}\tanother one\t{'entailment' if i % 2 else 'not_entailment'}\n"
                   for i in range(5000))
    text = "index\tsentence1\tsentence2\tlabel\n" + rows
    lines = text.split("\n")
    lines[3000] = lines[3000].replace("sentence", "sent\xe9nce")   # "3000\tsent\xe9...": the 10th byte
    path = tmp_path / "train.tsv"
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(DataError) as err:
        glue.read_examples("rte", None, "train", path=str(path))
    # before: no line, and "at byte N" counted from the start of the decoder's current block
    assert err.value.line == 3001
    assert str(err.value).startswith(f"{path}:3001: not valid UTF-8 text (byte 0xe9 at byte 10 of the line)")


def test_glue_oversized_field_names_its_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood\t1\n" + "x" * 200_000 + "\t0\n", encoding="utf-8")
    with pytest.raises(DataError, match="field larger than field limit") as err:
        glue.read_examples("sst-2", None, "train", path=str(path))
    assert err.value.line == 3


def test_glue_path_that_is_a_folder(tmp_path):
    with pytest.raises(DataError, match="cannot read file") as err:
        glue.read_examples("sst-2", None, "train", path=str(tmp_path))
    assert str(err.value).startswith(str(tmp_path))


@pytest.mark.parametrize("task, split", [("cola", "train"), ("sts-b", "dev"), ("qnli", "test")])
def test_glue_leading_bom_is_still_ignored(tmp_path, task, split):
    files = glue_fixtures.write_glue_fixture(str(tmp_path / "plain"), tasks=[task], n=4)[task]
    plain = glue.read_examples(task, None, split, path=files[split])
    bom = tmp_path / "bom.tsv"
    bom.write_bytes(BOM + open(files[split], "rb").read())
    with_bom = glue.read_examples(task, None, split, path=str(bom))
    assert [(e.text_a, e.text_b, e.label, e.index, e.line) for e in with_bom] == \
        [(e.text_a, e.text_b, e.label, e.index, e.line) for e in plain]


# ---------------------------------------------------------------------------------------------
# Pregenerated LM data (lm_finetuning/)


def _corpus(path, num_docs=6):
    docs = [f"document {d} sentence one is here.\nits second sentence follows.\nand a third one ends it."
            for d in range(num_docs)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def _pregenerate(corpus, out, *extra):
    return pregenerate_training_data.main(["--train_corpus", corpus, "--output_dir", str(out), "--max_seq_len", "24",
                                           "--bert_model", "minilm-l6", *extra])


def _interrupt_at_epoch(monkeypatch, stop):
    original = pretraining.write_epoch

    def write_epoch(db, output_dir, epoch, **kwargs):
        if epoch == stop:
            raise KeyboardInterrupt
        return original(db, output_dir, epoch, **kwargs)

    monkeypatch.setattr(pretraining, "write_epoch", write_epoch)
    return original


def test_interrupted_pregeneration_is_refused_before_training(tmp_path, monkeypatch, capsys):
    corpus = _corpus(tmp_path / "corpus.txt")
    data = tmp_path / "data"
    _interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _pregenerate(corpus, data, "--epochs_to_generate", "3")
    # epochs 0 and 1 are complete on their own: before, training ran on them as if that were all
    assert sorted(os.listdir(data)) == ["epoch_0.json", "epoch_0_metrics.json", "epoch_1.json",
                                        "epoch_1_metrics.json"]
    with pytest.raises(ConfigError) as err:
        pretraining.find_pregenerated_epochs(str(data))
    assert str(err.value).startswith(f"{data}: incomplete pregeneration: no pregenerate_config.json")
    assert "found epochs 0..1" in str(err.value)
    out = tmp_path / "lm"
    with pytest.raises(SystemExit) as exit_:
        run_cli(finetune_on_pregenerated.main, ["--pregenerated_data", str(data), "--output_dir", str(out)])
    assert exit_.value.code == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert err_lines[-1].startswith(f"error: {data}: incomplete pregeneration")
    assert not out.exists()   # refused before anything was written or loaded


@pytest.fixture()
def complete_data(tmp_path):
    data = tmp_path / "data"
    assert _pregenerate(_corpus(tmp_path / "corpus.txt"), data, "--epochs_to_generate", "3") == 0
    return data


def test_complete_pregeneration_is_accepted(complete_data):
    epochs = pretraining.find_pregenerated_epochs(str(complete_data))
    assert [os.path.basename(path) for path, _, _ in epochs] == ["epoch_0.json", "epoch_1.json", "epoch_2.json"]
    assert all(max_len == 24 and n > 0 for _, n, max_len in epochs)


def test_pregeneration_missing_an_epoch(complete_data):
    (complete_data / "epoch_2_metrics.json").unlink()
    with pytest.raises(ConfigError, match=r"records epochs_to_generate=3 but epoch_2_metrics\.json is missing "
                                          r"\(complete: epochs 0\.\.1\)"):
        pretraining.find_pregenerated_epochs(str(complete_data))
    (complete_data / "epoch_2.json").unlink()
    with pytest.raises(ConfigError, match=r"epoch_2\.json and epoch_2_metrics\.json are missing"):
        pretraining.find_pregenerated_epochs(str(complete_data))


def test_pregeneration_with_epochs_of_another_run(complete_data):
    for name in ("epoch_1.json", "epoch_1_metrics.json"):
        (complete_data / name.replace("1", "7")).write_bytes((complete_data / name).read_bytes())
    with pytest.raises(ConfigError, match=r"epoch_7\.json, epoch_7_metrics\.json not part of the pregeneration"):
        pretraining.find_pregenerated_epochs(str(complete_data))


def test_pregeneration_epoch_with_another_length(complete_data):
    metrics = complete_data / "epoch_1_metrics.json"
    metrics.write_text(json.dumps(dict(json.loads(metrics.read_text()), max_seq_len=32)))
    with pytest.raises(ConfigError, match="epoch_1.json has max_seq_len 32 but pregenerate_config.json records 24"):
        pretraining.find_pregenerated_epochs(str(complete_data))


def test_pregeneration_line_count_differs_from_metrics(complete_data):
    # (checked before this work too; pinned)
    path = complete_data / "epoch_2.json"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DataError, match="lines but its metrics file announces"):
        pretraining.find_pregenerated_epochs(str(complete_data))


@pytest.mark.parametrize("text, needle", [("[3]", "epochs_to_generate must be a positive integer"),
                                          ('{"epochs_to_generate": true}', "positive integer, got True"),
                                          ("{", "not a config of pregenerate_training_data.py")])
def test_pregeneration_config_unreadable(complete_data, text, needle):
    (complete_data / "pregenerate_config.json").write_text(text)
    with pytest.raises(DataError, match=needle):
        pretraining.find_pregenerated_epochs(str(complete_data))


def test_interrupted_overwrite_does_not_inherit_the_old_config(complete_data, tmp_path, monkeypatch):
    """A new run over old data (--overwrite_output_dir) removes the old pregenerate_config.json
    first: left in place, the new run's epochs 0..2 (other seed), interrupted before epoch 3 of 5,
    looked like the old complete 3-epoch pregeneration."""
    _interrupt_at_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _pregenerate(_corpus(tmp_path / "corpus.txt"), complete_data, "--epochs_to_generate", "5", "--seed", "7",
                     "--overwrite_output_dir")
    assert not (complete_data / "pregenerate_config.json").exists()
    with pytest.raises(ConfigError, match="incomplete pregeneration: no pregenerate_config.json"):
        pretraining.find_pregenerated_epochs(str(complete_data))
