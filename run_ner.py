"""Fine-tune BERT (optionally with PALs/adapters via --config) for CoNLL-2003 style NER.

Flags + wiring only: reading, label alignment, window splitting, decoding and the entity-level
metric live in tasks/conll.py, the training loop in training.py. Reads --data_dir/train.txt,
valid.txt (or dev.txt) and test.txt. Writes the model + labels.txt, eval_results.txt (dev),
test_results.txt and test_predictions.txt (test) into --output_dir.

    python run_ner.py --bert_model minilm-l6 --data_dir conll2003 --do_train --do_eval --do_predict \
        --output_dir out/ner
"""
import logging
import os

import training
from file_utils import ConfigError, atomic_write_text, make_parser, run_cli
from tasks import conll

logger = logging.getLogger("run_ner")
LABELS_FILE = "labels.txt"


def build_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    training.add_engine_args(parser, max_seq_length=128)
    g = parser.add_argument_group("ner")
    g.add_argument("--data_dir", required=True, help="folder with train.txt, valid.txt (or dev.txt), test.txt")
    g.add_argument("--labels", default=None,
                   help="file with one tag per line (default: labels.txt of --bert_model, else the train file's tags)")
    g.add_argument("--do_train", action="store_true", help="train on train.txt")
    g.add_argument("--do_eval", action="store_true", help="score the dev file into eval_results.txt")
    g.add_argument("--do_predict", action="store_true",
                   help="score test.txt into test_results.txt and write test_predictions.txt")
    return parser


def label_list(args, opts, train_sentences):
    """--labels, else the model folder's labels.txt (a fine-tuned model), else the train file's tags."""
    if args.labels:
        return conll.read_labels_file(args.labels)
    saved = os.path.join(opts.model_dir, LABELS_FILE)
    if os.path.isfile(saved):
        return conll.read_labels_file(saved)
    if train_sentences is not None:
        return conll.labels_from_sentences(train_sentences)
    raise ConfigError(f"no label list: pass --labels, --do_train, or a --bert_model folder with {LABELS_FILE}")


def _features(opts, tokenizer, path, sentences, labels):
    key = {"task": "conll-" + os.path.basename(path), "file": training.file_fingerprint(path),
           "vocab": tokenizer.vocab_fingerprint, "lower": opts.do_lower_case,
           "max_seq_length": opts.max_seq_length, "labels": labels}

    def build():
        features, metas, _ = conll.convert_sentences_to_features(sentences, tokenizer, labels, opts.max_seq_length)
        return list(zip(features, metas))

    pairs = training.cached_features(opts.cache_dir, key, build)
    return [f for f, _ in pairs], [m for _, m in pairs]


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not (args.do_train or args.do_eval or args.do_predict):
        raise ConfigError("at least one of --do_train, --do_eval or --do_predict is required")
    opts = training.EngineOptions.from_args(args)
    env = training.setup_env(opts)
    training.prepare_output_dir(opts, env, training=args.do_train)
    tokenizer = training.load_tokenizer(opts)

    # Read every file first, so that a bad record fails before the model is loaded.
    splits = {}
    if args.do_train:
        splits["train"] = os.path.join(args.data_dir, "train.txt")
    if args.do_eval:
        splits["eval"] = conll.find_dev_file(args.data_dir)
    if args.do_predict:
        splits["test"] = os.path.join(args.data_dir, "test.txt")
    sentences = {name: conll.read_conll(path) for name, path in splits.items()}
    labels = label_list(args, opts, sentences.get("train"))
    if "train" in sentences:
        conll.check_labels(sentences["train"], labels, splits["train"])
    features = {name: _features(opts, tokenizer, splits[name], sentences[name], labels) for name in splits}
    logger.info("labels: %s", " ".join(labels))
    training.write_run_config(args, opts.output_dir, env)   # after the data checks: a failed run leaves no files
    model = training.load_model(opts, task_num_labels=[len(labels)], task_types=["token"], task_names=["ner"])

    trainer = None
    if args.do_train:
        train_features = features["train"][0]
        stream = training.make_stream(opts, env, train_features)
        num_steps = training.num_training_steps(opts, stream.steps_per_epoch)
        logger.info("training on %d sentences -> %d windows, %d optimizer steps",
                    len(sentences["train"]), len(train_features), num_steps)
        trainer = training.Trainer(opts, env, model, num_steps)
        result = trainer.train(stream, num_steps, stream.steps_per_epoch)
        if env.is_main:
            atomic_write_text(os.path.join(opts.output_dir, LABELS_FILE), "\n".join(labels) + "\n")
        trainer.save_model(opts.output_dir, tokenizer)
        if env.is_main:
            training.write_eval_results(os.path.join(opts.output_dir, "train_results.txt"), {
                "global_step": result["global_step"], "loss": result["loss"],
                "train_sentences": len(sentences["train"]), "train_features": len(train_features)})

    for name, results_file in (("eval", "eval_results.txt"), ("test", "test_results.txt")):
        if name not in splits:
            continue
        feats, metas = features[name]
        if trainer is not None:
            out = trainer.predict(feats, task_id=0)
        else:
            out = training.predict(model.to(env.device), feats, 0, opts.eval_batch_size, env, pad_to=opts.pad_to)
        if not env.is_main:
            continue
        predicted = conll.decode_predictions(sentences[name], metas, out["logits"], labels)
        scores = conll.entity_scores([s.tags for s in sentences[name]], predicted)
        extra = {"loss": out["loss"]} if out["loss"] is not None else {}
        if trainer is not None:
            extra["global_step"] = trainer.global_step
        if name == "test":
            conll.write_predictions(os.path.join(opts.output_dir, "test_predictions.txt"), splits[name], predicted)
        conll.write_results(os.path.join(opts.output_dir, results_file), scores, extra)
        logger.info("%s (%s): precision %.4f recall %.4f f1 %.4f\n%s", name, splits[name], scores["precision"],
                    scores["recall"], scores["f1"], conll.format_report(scores))
    if trainer is not None:
        trainer.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
