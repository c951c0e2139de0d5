"""Masked-LM + next-sentence-prediction data for domain fine-tuning (used by lm_finetuning/).

Three jobs, all independent of the model and the CLI:

1. Read a corpus (one sentence per line, a blank line between documents) into a
   `DocumentDatabase` of word-piece token ids, in RAM or, with `reduce_memory`, in a flat
   token-id file on disk that is read with `pread` (no mapping, so it never counts as
   resident memory of the process).
2. Make BERT pretraining instances exactly as the original BERT / pytorch-pretrained-BERT
   `pregenerate_training_data.py`: long multi-sentence A/B pairs, a sentence-weighted
   random-next document that is never the current one, masking 80/10/10 with optional
   whole-word groups, and write them as JSON Lines per data epoch (`epoch_N.json` +
   `epoch_N_metrics.json`).
3. Read those files back into fixed-shape arrays (`PregeneratedEpoch`, in RAM or as numpy
   memmap files): a data source of the engine's `training.EpochStream` (`lengths`, `batch`,
   `close`), one per data epoch. The quick path of simple_lm_finetuning.py (two-sentence pairs,
   per-token masking) is here as well.

Label conventions follow modeling.py's "pretraining" head: `masked_lm_labels` is -100 where
a position is not predicted, `next_sentence_label` is 1 when sentence B is a random one.
"""
import json
import logging
import os
import random
import re
import tempfile
from array import array

import numpy as np
from tqdm import tqdm

from file_utils import ConfigError, DataError, UserError, atomic_open, atomic_write_json

# torch is imported where batches are made, so that pregenerating data (corpus -> JSON) starts
# fast and stays small: it does not need it.

logger = logging.getLogger(__name__)

CLS, SEP, MASK = "[CLS]", "[SEP]", "[MASK]"
IGNORE_INDEX = -100  # masked_lm_labels value of positions that are not predicted
# How masked-LM features pad in a batch ({feature key: pad value}, the engine's collate): inputs with 0,
# masked_lm_labels with IGNORE_INDEX (padding is never predicted).
PADDING = {"input_ids": 0, "token_type_ids": 0, "attention_mask": 0, "masked_lm_labels": IGNORE_INDEX}
EPOCH_FILE = "epoch_{}.json"
METRICS_FILE = "epoch_{}_metrics.json"
CONFIG_FILE = "pregenerate_config.json"   # written last by pregenerate_training_data.py
_EPOCH_NAME = re.compile(r"epoch_(\d+)(_metrics)?\.json")

_CORPUS_FORMAT = "expected one sentence per line and a blank line between documents"


# --------------------------------------------------------------------------------------
# 1. Corpus -> documents of token ids
# --------------------------------------------------------------------------------------

class DocumentDatabase:
    """Documents as lists of sentences of word-piece ids, with sentence-weighted sampling.

    Storage is one flat int32 array of token ids plus sentence and document offsets. In RAM it
    is a numpy array; with `reduce_memory` the ids go to `<workdir>/tokens.bin` and a document is
    read back with `os.pread`, so the corpus lives in the page cache, not in the process. Offsets
    (8 bytes per sentence) stay in RAM, as the reference kept its cumulative sums in RAM.
    `db[i]` returns document i as a list of sentences, each a list of token strings.
    """

    def __init__(self, id_to_token, reduce_memory=False, workdir=None):
        self.id_to_token = id_to_token
        self.reduce_memory = reduce_memory
        self._sentence_ends = array("q")   # token offset where each sentence ends
        self._doc_ends = array("q")        # sentence offset where each document ends
        self._num_tokens = 0
        self._tmpdir = None
        if reduce_memory:
            # Inside a real-disk folder (the output folder), because /tmp may be a RAM disk.
            self._tmpdir = tempfile.TemporaryDirectory(prefix=".documents_", dir=workdir)
            self._path = os.path.join(self._tmpdir.name, "tokens.bin")
            self._file = open(self._path, "wb")
        else:
            self._ids = array("i")
        self._finalized = False

    def add_document(self, sentences):
        """Add one document: a list of sentences given as lists of token ids. Empty ones are skipped."""
        sentences = [s for s in sentences if len(s)]
        if not sentences:
            return
        for sent in sentences:
            ids = array("i", sent)
            if self.reduce_memory:
                self._file.write(ids.tobytes())
            else:
                self._ids.extend(ids)
            self._num_tokens += len(ids)
            self._sentence_ends.append(self._num_tokens)
        self._doc_ends.append(len(self._sentence_ends))

    def finalize(self):
        """Freeze the database: flush the token file, precompute the sampling weights."""
        if self.reduce_memory:
            self._file.close()
            self._fd = os.open(self._path, os.O_RDONLY)
        else:
            self._ids = np.frombuffer(self._ids, dtype=np.int32)
        self.sentence_ends = np.frombuffer(self._sentence_ends, dtype=np.int64)
        self.doc_cumsum = np.frombuffer(self._doc_ends, dtype=np.int64)  # sentences up to doc i, inclusive
        self.doc_lengths = np.diff(self.doc_cumsum, prepend=0)
        self.cumsum_max = int(self.doc_cumsum[-1]) if len(self.doc_cumsum) else 0
        self._finalized = True
        return self

    def __len__(self):
        return len(self._doc_ends)

    @property
    def num_sentences(self):
        return len(self._sentence_ends)

    @property
    def num_tokens(self):
        return self._num_tokens

    def document_ids(self, doc_idx):
        """Document `doc_idx` as a list of numpy int32 arrays (one per sentence)."""
        first = int(self.doc_cumsum[doc_idx - 1]) if doc_idx > 0 else 0
        last = int(self.doc_cumsum[doc_idx])
        start = int(self.sentence_ends[first - 1]) if first > 0 else 0
        end = int(self.sentence_ends[last - 1])
        if self.reduce_memory:
            flat = np.frombuffer(os.pread(self._fd, 4 * (end - start), 4 * start), dtype=np.int32)
        else:
            flat = self._ids[start:end]
        cuts = self.sentence_ends[first:last - 1] - start
        return np.split(flat, cuts)

    def __getitem__(self, doc_idx):
        id_to_token = self.id_to_token
        return [[id_to_token[i] for i in sent.tolist()] for sent in self.document_ids(doc_idx)]

    def sample_doc_index(self, current_idx, rng):
        """A random OTHER document, chosen with probability proportional to its sentence count.

        Draws a sentence index uniformly from the sentences of all other documents (the range
        starting right after the current document, wrapped around) and maps it to its document.
        """
        rand_start = int(self.doc_cumsum[current_idx])
        rand_end = rand_start + self.cumsum_max - int(self.doc_lengths[current_idx])
        sentence_index = rng.randrange(rand_start, rand_end) % self.cumsum_max
        sampled = int(np.searchsorted(self.doc_cumsum, sentence_index, side="right"))
        assert sampled != current_idx
        return sampled

    def close(self):
        if self.reduce_memory and self._tmpdir is not None:
            if self._finalized:
                os.close(self._fd)
            elif not self._file.closed:
                self._file.close()
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_lines(path):
    """Yield (line_number, stripped text); a clear DataError for a missing file or bad UTF-8."""
    if not os.path.isfile(path):
        raise DataError(path, None, "corpus file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise DataError(path, lineno, f"not valid UTF-8 ({exc.reason})") from None


def read_corpus(path, tokenizer, reduce_memory=False, workdir=None, min_documents=2, progress=False):
    """Tokenize a corpus file (one sentence per line, blank line between documents).

    Returns a finalized `DocumentDatabase`. Raises DataError for an empty corpus and for one with
    fewer than `min_documents` non-empty documents (no document breaks: random-next sentences
    would have to come from the same document).
    """
    vocab = tokenizer.vocab
    id_to_token = [None] * (max(vocab.values()) + 1)  # ids may have gaps (duplicated vocab lines)
    for token, index in vocab.items():
        id_to_token[index] = token
    db = DocumentDatabase(id_to_token, reduce_memory=reduce_memory, workdir=workdir)
    try:
        lines = _read_lines(path)
        if progress:
            lines = tqdm(lines, desc="Loading corpus", unit=" lines")
        doc = []
        for _, text in lines:
            if not text:
                db.add_document(doc)
                doc = []
            else:
                doc.append(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)))
        db.add_document(doc)
        db.finalize()
    except BaseException:
        db.close()
        raise
    if db.num_tokens == 0:
        db.close()
        raise DataError(path, None, f"the corpus holds no text ({_CORPUS_FORMAT})")
    if len(db) < min_documents:
        db.close()
        raise DataError(path, None, f"found {len(db)} document(s) and no usable document breaks; "
                        f"{_CORPUS_FORMAT}, and at least {min_documents} documents")
    return db


# --------------------------------------------------------------------------------------
# 2. Instances: A/B pairs and masking (pregenerate_training_data.py semantics)
# --------------------------------------------------------------------------------------

def truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
    """Drop one token at a time from the longer side, from its front or back at random (in place)."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc) >= 1
        # Random side so that the model does not learn that one end is always complete.
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()


def create_masked_lm_predictions(tokens, masked_lm_prob, max_predictions_per_seq, whole_word_mask,
                                 vocab_list, rng):
    """Mask a token list in place; returns (tokens, sorted masked positions, original tokens there).

    Candidates are all positions except [CLS]/[SEP]; with `whole_word_mask` a '##' piece joins the
    group of the piece before it, and groups are masked all-or-nothing. The number of masked
    positions is min(max_predictions_per_seq, max(1, round(len(tokens) * masked_lm_prob))) with
    the length including the special tokens. Each chosen position becomes [MASK] (80%), stays
    itself (10%) or becomes a token drawn uniformly from the whole vocabulary (10%).
    """
    cand_indices = []
    for i, token in enumerate(tokens):
        if token == CLS or token == SEP:
            continue
        if whole_word_mask and cand_indices and token.startswith("##"):
            cand_indices[-1].append(i)
        else:
            cand_indices.append([i])

    num_to_mask = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    rng.shuffle(cand_indices)
    masked = []  # (position, original token)
    covered = set()
    for index_set in cand_indices:
        if len(masked) >= num_to_mask:
            break
        # A whole word that would overshoot the budget is skipped, not cut.
        if len(masked) + len(index_set) > num_to_mask:
            continue
        if any(index in covered for index in index_set):
            continue
        for index in index_set:
            covered.add(index)
            if rng.random() < 0.8:
                masked_token = MASK
            elif rng.random() < 0.5:
                masked_token = tokens[index]
            else:
                masked_token = vocab_list[rng.randrange(len(vocab_list))]
            masked.append((index, tokens[index]))
            tokens[index] = masked_token
    masked.sort()
    return tokens, [p for p, _ in masked], [t for _, t in masked]


def create_instances_from_document(db, doc_idx, max_seq_len, short_seq_prob, masked_lm_prob,
                                   max_predictions_per_seq, whole_word_mask, vocab_list, rng):
    """All pretraining instances of one document for one data epoch (dicts ready for JSON).

    Sentences are gathered into a chunk until it reaches the target length; the chunk is split
    at a random sentence into A and B. B is replaced by text from another document (random next)
    when the chunk holds one sentence or with probability 0.5; the unused chunk sentences are
    then put back for the next instance. Target length is max_seq_len - 3, or with probability
    `short_seq_prob` a random length in [2, max_seq_len - 3], to match short downstream inputs.
    """
    document = db[doc_idx]
    max_num_tokens = max_seq_len - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances = []
    current_chunk = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randrange(1, len(current_chunk))
                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])
                tokens_b = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    random_document = db[db.sample_doc_index(doc_idx, rng)]
                    random_start = rng.randrange(0, len(random_document))
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # Put the unused sentences back so they start the next chunk.
                    i -= len(current_chunk) - a_end
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert tokens_a and tokens_b

                tokens = [CLS] + tokens_a + [SEP] + tokens_b + [SEP]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                tokens, positions, labels = create_masked_lm_predictions(
                    tokens, masked_lm_prob, max_predictions_per_seq, whole_word_mask, vocab_list, rng)
                instances.append({
                    "tokens": tokens,
                    "segment_ids": segment_ids,
                    "is_random_next": is_random_next,
                    "masked_lm_positions": positions,
                    "masked_lm_labels": labels,
                })
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def epoch_rng(seed, epoch):
    """The RNG of one data epoch: reproducible, and independent of how many epochs are made."""
    return random.Random(f"pregenerate:{seed}:{epoch}")


def write_epoch(db, output_dir, epoch, max_seq_len=128, short_seq_prob=0.1, masked_lm_prob=0.15,
                max_predictions_per_seq=20, whole_word_mask=False, vocab_list=None, seed=42,
                progress=False):
    """Write `epoch_N.json` (JSON Lines) and then `epoch_N_metrics.json`; returns the instance count.

    Both files are written atomically and the metrics file last, so a data epoch whose metrics
    file exists is complete.
    """
    if max_seq_len < 5:
        raise UserError(f"--max_seq_len must be at least 5 ([CLS] A [SEP] B [SEP]), got {max_seq_len}")
    rng = epoch_rng(seed, epoch)
    num_instances = 0
    doc_range = range(len(db))
    if progress:
        doc_range = tqdm(doc_range, desc=f"Epoch {epoch}", unit=" docs")
    with atomic_open(os.path.join(output_dir, EPOCH_FILE.format(epoch)), "w", encoding="utf-8") as f:
        for doc_idx in doc_range:
            for instance in create_instances_from_document(
                    db, doc_idx, max_seq_len, short_seq_prob, masked_lm_prob, max_predictions_per_seq,
                    whole_word_mask, vocab_list, rng):
                f.write(json.dumps(instance) + "\n")
                num_instances += 1
    atomic_write_json(os.path.join(output_dir, METRICS_FILE.format(epoch)),
                      {"num_training_examples": num_instances, "max_seq_len": max_seq_len})
    return num_instances


# --------------------------------------------------------------------------------------
# 3. Pregenerated epochs -> arrays -> engine steps
# --------------------------------------------------------------------------------------

def _count_lines(path):
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def find_pregenerated_epochs(folder):
    """[(epoch_file, num_samples, max_seq_len), ...] of a complete pregeneration, else an error.

    Complete means what pregenerate_training_data.py leaves when it finishes (it writes each
    epoch's data file, then its metrics file, and pregenerate_config.json after all epochs):
    pregenerate_config.json records epochs_to_generate = N; epochs 0..N-1 each have both files,
    a data file with as many lines as its metrics announce and the config's max_seq_len; no
    epoch files numbered N or above (those belong to another run). Anything else (an interrupted
    run, a half-copied folder, epochs left from an earlier run) is a ConfigError naming the folder
    and what is missing, so no training starts on part of the data.
    """
    epochs = _consecutive_epochs(folder)
    _check_complete(os.fspath(folder), epochs)
    return epochs


def _consecutive_epochs(folder):
    """Validate epoch_0, epoch_1, ... until one is missing; [(epoch_file, num_samples, max_seq_len)]."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(folder, None, "pregenerated data folder not found")
    epochs = []
    while True:
        data = os.path.join(folder, EPOCH_FILE.format(len(epochs)))
        metrics = os.path.join(folder, METRICS_FILE.format(len(epochs)))
        if not (os.path.isfile(data) and os.path.isfile(metrics)):
            break
        try:
            with open(metrics, encoding="utf-8") as f:
                m = json.load(f)
            num, max_len = int(m["num_training_examples"]), int(m["max_seq_len"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(metrics, None, f"not a metrics file of pregenerate_training_data.py ({exc!r})") from None
        if num < 1 or max_len < 5:
            raise DataError(metrics, None, f"no usable training examples (num_training_examples={num}, "
                            f"max_seq_len={max_len})")
        # Cheap up-front check, so that a truncated later epoch does not stop a run hours in.
        lines = _count_lines(data)
        if lines != num:
            raise DataError(data, None, f"holds {lines} lines but its metrics file announces {num} instances")
        epochs.append((data, num, max_len))
    if not epochs:
        raise DataError(folder, None, "holds no pregenerated data (epoch_0.json and epoch_0_metrics.json "
                        "written by lm_finetuning/pregenerate_training_data.py)")
    return epochs


def _check_complete(folder, epochs):
    """The rules of `find_pregenerated_epochs`' docstring, given the consecutive valid epochs."""
    config_path = os.path.join(folder, CONFIG_FILE)
    found = "epoch 0" if len(epochs) == 1 else f"epochs 0..{len(epochs) - 1}"
    if not os.path.isfile(config_path):
        raise ConfigError(
            f"{folder}: incomplete pregeneration: no {CONFIG_FILE}, which pregenerate_training_data.py "
            f"writes after the last epoch (found {found}); run it again with --overwrite_output_dir "
            f"(for data made by another tool and known to be complete, write {CONFIG_FILE} as "
            f'{{"epochs_to_generate": {len(epochs)}}})')
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(config_path, None, f"not a config of pregenerate_training_data.py ({exc})") from None
    wanted = config.get("epochs_to_generate") if isinstance(config, dict) else None
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
        raise DataError(config_path, None, f"epochs_to_generate must be a positive integer, got {wanted!r}")
    if len(epochs) < wanted:
        k = len(epochs)
        missing = [name for name in (EPOCH_FILE.format(k), METRICS_FILE.format(k))
                   if not os.path.isfile(os.path.join(folder, name))]
        raise ConfigError(f"{folder}: incomplete pregeneration: {CONFIG_FILE} records epochs_to_generate="
                          f"{wanted} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing "
                          f"(complete: {found})")
    stale = sorted((int(m.group(1)), name) for name in os.listdir(folder)
                   if (m := _EPOCH_NAME.fullmatch(name)) and int(m.group(1)) >= wanted)
    if stale:
        names = ", ".join(name for _, name in stale[:4]) + (", ..." if len(stale) > 4 else "")
        raise ConfigError(f"{folder}: {names} not part of the pregeneration recorded in {CONFIG_FILE} "
                          f"(epochs_to_generate={wanted}): files of another run? Remove them, or pregenerate "
                          "again with --overwrite_output_dir")
    max_len = config.get("max_seq_len")
    for path, _, epoch_len in epochs:
        if isinstance(max_len, int) and epoch_len != max_len:
            raise ConfigError(f"{folder}: {os.path.basename(path)} has max_seq_len {epoch_len} but {CONFIG_FILE} "
                              f"records {max_len}: epochs of different runs; pregenerate again with "
                              "--overwrite_output_dir")


class PregeneratedEpoch:
    """One data epoch as fixed-shape arrays, in RAM or (memmap_dir given) in numpy memmap files.

    Arrays (N = instances, L = max_seq_len): input_ids int32 [N,L], input_mask bool [N,L],
    segment_ids bool [N,L], lm_label_ids int32 [N,L] (-100 where not masked), is_next bool [N]
    (True = random next), lengths int32 [N]. The memmap files are filled with ordinary file
    writes and read through a short-lived read-only map per batch, so the data set stays in the
    page cache and never accumulates in the resident memory of the process.
    """

    ARRAYS = (("input_ids", np.int32, True), ("input_mask", np.bool_, True), ("segment_ids", np.bool_, True),
              ("lm_label_ids", np.int32, True), ("is_next", np.bool_, False), ("lengths", np.int32, False))

    def __init__(self, epoch_file, num_samples, max_seq_len, vocab, memmap_dir=None, chunk_rows=2048,
                 progress=False):
        self.path, self.num_samples, self.max_seq_len = epoch_file, num_samples, max_seq_len
        self.memmap_dir = memmap_dir
        shapes = {name: ((num_samples, max_seq_len) if two_d else (num_samples,))
                  for name, _, two_d in self.ARRAYS}
        self._dtypes = {name: dtype for name, dtype, _ in self.ARRAYS}
        self._shapes = shapes
        self._arrays, self._files = {}, {}
        if memmap_dir is None:
            sinks = {name: np.zeros(shapes[name], dtype=self._dtypes[name]) for name in shapes}
            self._arrays = sinks
        else:
            os.makedirs(memmap_dir, exist_ok=True)
            base = os.path.splitext(os.path.basename(epoch_file))[0]
            self._files = {name: os.path.join(memmap_dir, f"{base}.{name}.memmap") for name in shapes}
            sinks = {name: open(self._files[name], "wb") for name in shapes}
        try:
            self._fill(sinks, vocab, chunk_rows, progress)
        finally:
            if memmap_dir is not None:
                for f in sinks.values():
                    f.close()
        self.lengths = self._load("lengths")  # small (4 bytes per instance); needed for batching

    def _fill(self, sinks, vocab, chunk_rows, progress):
        L = self.max_seq_len
        chunk = {name: np.zeros((chunk_rows, L) if two_d else (chunk_rows,), dtype=dtype)
                 for name, dtype, two_d in self.ARRAYS}
        chunk["lm_label_ids"].fill(IGNORE_INDEX)
        filled = 0  # rows in the current chunk
        row = 0     # rows written before the current chunk

        def flush():
            for name, buf in chunk.items():
                if self.memmap_dir is None:
                    sinks[name][row:row + filled] = buf[:filled]
                else:
                    sinks[name].write(buf[:filled].tobytes())

        lines = open(self.path, "rb")
        try:
            it = enumerate(lines, 1)
            if progress:
                    it = tqdm(it, total=self.num_samples, desc=f"Loading {os.path.basename(self.path)}", unit=" rows")
            for lineno, raw in it:
                if not raw.strip():
                    continue
                if row + filled >= self.num_samples:
                    raise DataError(self.path, lineno, f"more instances than the {self.num_samples} "
                                    "announced in its metrics file")
                self._parse_into(chunk, filled, raw, lineno, vocab)
                filled += 1
                if filled == chunk_rows:
                    flush()
                    row += filled
                    filled = 0
                    for name in ("input_ids", "input_mask", "segment_ids", "is_next"):
                        chunk[name].fill(0)
                    chunk["lm_label_ids"].fill(IGNORE_INDEX)
            if filled:
                flush()
                row += filled
        finally:
            lines.close()
        if row != self.num_samples:
            raise DataError(self.path, None, f"holds {row} instances but its metrics file announces "
                            f"{self.num_samples}")

    def _parse_into(self, chunk, r, raw, lineno, vocab):
        try:
            inst = json.loads(raw)
            tokens, segment_ids = inst["tokens"], inst["segment_ids"]
            positions, labels = inst["masked_lm_positions"], inst["masked_lm_labels"]
            is_random_next = bool(inst["is_random_next"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(self.path, lineno, f"not a pregenerated instance ({exc!r})") from None
        n = len(tokens)
        if n > self.max_seq_len or len(segment_ids) != n or len(positions) != len(labels):
            raise DataError(self.path, lineno, f"inconsistent instance: {n} tokens, {len(segment_ids)} "
                            f"segment ids, max_seq_len {self.max_seq_len}, {len(positions)} masked "
                            f"positions, {len(labels)} labels")
        try:
            ids = [vocab[t] for t in tokens]
            label_ids = [vocab[t] for t in labels]
        except KeyError as exc:
            raise DataError(self.path, lineno, f"token {exc.args[0]!r} is not in the vocabulary of "
                            "--bert_model (pregenerate and fine-tune with the same --bert_model)") from None
        if positions and not all(isinstance(p, int) and 0 <= p < n for p in positions):
            raise DataError(self.path, lineno, "masked_lm_positions out of range")
        chunk["input_ids"][r, :n] = ids
        chunk["input_mask"][r, :n] = True
        chunk["segment_ids"][r, :n] = segment_ids
        chunk["lm_label_ids"][r, positions] = label_ids
        chunk["is_next"][r] = is_random_next
        chunk["lengths"][r] = n

    def _load(self, name):
        if self.memmap_dir is None:
            return self._arrays[name]
        return np.fromfile(self._files[name], dtype=self._dtypes[name]).reshape(self._shapes[name])

    def __len__(self):
        return self.num_samples

    @property
    def nbytes(self):
        """Bytes of the data arrays (what --reduce_memory keeps out of RAM)."""
        return sum(int(np.prod(s)) * np.dtype(self._dtypes[n]).itemsize for n, s in self._shapes.items())

    def rows(self, indices):
        """Copies of the rows `indices` of every array, as a dict of numpy arrays."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.memmap_dir is None:
            return {name: arr[indices] for name, arr in self._arrays.items()}
        out = {}
        for name in self._files:
            # A fresh map per batch: its pages leave the process when it is dropped.
            mm = np.memmap(self._files[name], dtype=self._dtypes[name], mode="r", shape=self._shapes[name])
            out[name] = np.array(mm[indices])
            del mm
        return out

    def batch(self, indices, pad_to=None):
        """Model inputs for the rows `indices`, cut to the longest row of the batch (int64 tensors)."""
        import torch
        r = self.rows(indices)
        width = min(max(int(r["lengths"].max()), pad_to or 0), self.max_seq_len)
        return {
            "input_ids": torch.from_numpy(r["input_ids"][:, :width].astype(np.int64)),
            "token_type_ids": torch.from_numpy(r["segment_ids"][:, :width].astype(np.int64)),
            "attention_mask": torch.from_numpy(r["input_mask"][:, :width].astype(np.int64)),
            "masked_lm_labels": torch.from_numpy(r["lm_label_ids"][:, :width].astype(np.int64)),
            "next_sentence_label": torch.from_numpy(r["is_next"].astype(np.int64)),
        }

    def close(self):
        for path in self._files.values():
            try:
                os.remove(path)
            except OSError:
                pass
        self._files = {}
        self._arrays = {}


# --------------------------------------------------------------------------------------
# Quick path (simple_lm_finetuning.py): two-sentence pairs, per-token masking
# --------------------------------------------------------------------------------------

def num_sentence_pairs(db):
    """Consecutive sentence pairs inside documents (a one-sentence document gives none)."""
    return int(db.num_sentences - len(db))


def random_word_ids(ids, vocab_size, mask_id, rng, mask_prob=0.15):
    """Mask each position independently: (masked ids, labels with -100 where not chosen).

    A chosen position (probability `mask_prob`) becomes [MASK] (80%), a token id drawn
    uniformly from the vocabulary (10%) or stays (10%); its label is the original id.
    """
    out, labels = list(ids), [IGNORE_INDEX] * len(ids)
    for i, token_id in enumerate(ids):
        prob = rng.random()
        if prob < mask_prob:
            prob /= mask_prob
            if prob < 0.8:
                out[i] = mask_id
            elif prob < 0.9:
                out[i] = rng.randrange(vocab_size)
            labels[i] = token_id
    return out, labels


def simple_lm_features(db, max_seq_length, special_ids, vocab_size, rng, mask_prob=0.15):
    """One data epoch of simple_lm_finetuning.py features (list of dicts).

    Every consecutive sentence pair of every document gives one feature; with probability 0.5
    sentence B is replaced by a random sentence of another document (next_sentence_label 1).
    The pair is cut to max_seq_length - 3 by popping from the end of the longer sentence.
    A pair in which no position was chosen for masking gets one random position masked, because
    a batch without any masked token has no defined MLM loss (the reference left such pairs).
    `special_ids`: dict with the ids of "cls", "sep" and "mask".
    """
    cls_id, sep_id, mask_id = special_ids["cls"], special_ids["sep"], special_ids["mask"]
    max_num_tokens = max_seq_length - 3
    features = []
    for doc_idx in range(len(db)):
        sentences = db.document_ids(doc_idx)
        for i in range(len(sentences) - 1):
            a = sentences[i].tolist()
            if rng.random() < 0.5:
                other = db.document_ids(db.sample_doc_index(doc_idx, rng))
                b = other[rng.randrange(len(other))].tolist()
                is_random_next = 1
            else:
                b = sentences[i + 1].tolist()
                is_random_next = 0
            while len(a) + len(b) > max_num_tokens:
                (a if len(a) > len(b) else b).pop()
            a, a_labels = random_word_ids(a, vocab_size, mask_id, rng, mask_prob)
            b, b_labels = random_word_ids(b, vocab_size, mask_id, rng, mask_prob)
            input_ids = [cls_id] + a + [sep_id] + b + [sep_id]
            labels = [IGNORE_INDEX] + a_labels + [IGNORE_INDEX] + b_labels + [IGNORE_INDEX]
            if all(label == IGNORE_INDEX for label in labels):
                pos = rng.choice([p for p, t in enumerate(input_ids) if t not in (cls_id, sep_id)])
                labels[pos] = input_ids[pos]
                input_ids[pos] = mask_id
            features.append({
                "input_ids": input_ids,
                "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                "masked_lm_labels": labels,
                "next_sentence_label": is_random_next,
            })
    return features
