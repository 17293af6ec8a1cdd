"""The corpus: text files or a saved dataset -> token blocks, cached on disk (made once per data and tokenizer).

Documents keep their stored order: each group of GROUP_DOCS consecutive documents is concatenated
and cut into blocks (the official `group_texts`). A held-out validation set is a fixed function of
the corpus (never of --seed), so runs with different seeds train and evaluate on the same blocks and
share one token cache. What a run then does with the blocks (their order per step, MLM masks,
evaluation batches) is `apollo/batches.py`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from pathlib import Path

from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset, load_from_disk

from .config import ConfigError
from .kinds import kind_of

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "data" / "embedded"
EMBEDDED_TRAIN = [str(EMBEDDED_DIR / "train.txt")]
EMBEDDED_VALIDATION = [str(EMBEDDED_DIR / "validation.txt")]
_FORMAT = "v2"  # bump when tokenization/grouping below changes (v2: stored order, groups by document index)
GROUP_DOCS = 1000  # documents concatenated per group: the official group_texts' map batch (see token_blocks)
HOLDOUT_RUNS = 100  # a held-out validation set is at most this many runs of consecutive documents ...
HOLDOUT_MIN_RUN = 100  # ... each of at least this many documents (fewer runs for a small hold-out)


def training_files(cfg) -> tuple[list[str] | None, list[str] | None]:
    """(train files, validation files) of a text-file run; the embedded corpus when none are given."""
    if cfg.dataset_dir:
        return None, cfg.validation_file
    if cfg.train_file:
        return cfg.train_file, cfg.validation_file
    return EMBEDDED_TRAIN, cfg.validation_file or EMBEDDED_VALIDATION


def embedded_sample(folder: Path, lines: dict[str, int]) -> list[str]:
    """The first `lines[split]` documents of each embedded split written to FOLDER, as --SPLIT_file flags
    (tests and the family walk: tokenizer training and tokenization in about a second)."""
    flags = []
    for split, count in lines.items():
        text = (EMBEDDED_DIR / f"{split}.txt").read_text().splitlines(keepends=True)[:count]
        (folder / f"{split}.txt").write_text("".join(text))
        flags += [f"--{split}_file", str(folder / f"{split}.txt")]
    return flags


def check_data_args(cfg) -> None:
    """File-level checks, before anything heavy runs."""
    train, validation = training_files(cfg)
    for flag, files in (("train_file", train), ("validation_file", validation)):
        for name in files or []:
            if not os.path.isfile(name):
                raise ConfigError(flag, f"no such file: {name}")
            if os.path.getsize(name) == 0:
                raise ConfigError(flag, f"file is empty: {name}")
    if cfg.dataset_dir and not os.path.isdir(cfg.dataset_dir):
        raise ConfigError("dataset_dir", f"no such directory: {cfg.dataset_dir}")
    if cfg.dataset_dir:
        _saved_dataset(cfg.dataset_dir)  # memory-mapped: checks splits and columns without reading the text


def _saved_dataset(path) -> DatasetDict:
    """A dataset saved with save_to_disk, with a 'train' split and a 'text' column in every split."""
    try:
        raw = load_from_disk(path)
    except Exception as err:  # datasets raises several types for a folder it cannot read
        raise ConfigError("dataset_dir", f"cannot load a saved dataset from {path}: {err}") from None
    if not isinstance(raw, DatasetDict):
        raw = DatasetDict({"train": raw})
    if "train" not in raw:
        raise ConfigError("dataset_dir", f"dataset has no 'train' split (splits: {', '.join(raw)})")
    for split, ds in raw.items():
        if "text" not in ds.column_names:
            raise ConfigError("dataset_dir", f"the {split} split has no 'text' column "
                                             f"(columns: {', '.join(ds.column_names)})")
    return raw


def load_text_splits(cfg) -> DatasetDict:
    """DatasetDict with 'train' and 'validation', each with a 'text' column of non-empty documents."""
    train, validation = training_files(cfg)
    if cfg.dataset_dir:  # its splits and columns are checked there; the text loader makes both
        raw = _saved_dataset(cfg.dataset_dir)
        if validation:
            raw["validation"] = load_dataset("text", data_files={"validation": validation})["validation"]
        flag = "dataset_dir"
    else:
        files = {"train": train, **({"validation": validation} if validation else {})}
        raw = load_dataset("text", data_files=files)
        flag = "train_file"
    raw = DatasetDict({k: v.select_columns(["text"]) for k, v in raw.items() if k in ("train", "validation")})
    raw = raw.filter(lambda batch: [bool(t.strip()) for t in batch["text"]], batched=True)
    if len(raw["train"]) == 0:
        raise ConfigError(flag, "the training data has no non-empty document")
    if "validation" not in raw and cfg.validation_split_percentage > 0:
        raw = split_holdout(raw["train"], cfg.validation_split_percentage)
    return raw  # without a 'validation' split (--validation_split_percentage 0): no evaluation


def split_holdout(train, percent: float) -> DatasetDict:
    """'train' and 'validation' from one dataset: `holdout_runs` held out, both in stored order."""
    runs = holdout_runs(len(train), percent)
    if sum(b - a for a, b in runs) >= len(train):
        raise ConfigError("validation_split_percentage", f"holds out all {len(train)} training documents")
    kept = zip([0] + [b for _, b in runs], [a for a, _ in runs] + [len(train)])
    # Contiguous selects are slices of the memory-mapped table (no index list of the whole corpus).
    return DatasetDict(train=concatenate_datasets([train.select(range(a, b)) for a, b in kept if b > a]),
                       validation=concatenate_datasets([train.select(range(a, b)) for a, b in runs]))


def holdout_runs(num_docs: int, percent: float) -> list[tuple[int, int]]:
    """The documents held out for validation: [start, stop) runs of consecutive documents.

    A fixed function of the corpus size and the percentage (never of --seed): up to HOLDOUT_RUNS
    runs of at least HOLDOUT_MIN_RUN documents where the hold-out is large enough, one run centred
    in each of as many equal segments of the corpus, so the held-out text is spread over the whole
    corpus while sentence-per-line corpora (BookCorpus) keep whole passages on both sides of a cut.
    The official scripts hold out the first N% as one run; this spreads it instead.
    """
    held = min(max(round(num_docs * percent / 100), 1), num_docs)
    runs = max(1, min(HOLDOUT_RUNS, held // HOLDOUT_MIN_RUN))
    out = []
    for i in range(runs):
        lo, hi = i * num_docs // runs, (i + 1) * num_docs // runs
        length = (i + 1) * held // runs - i * held // runs
        start = lo + (hi - lo - length) // 2
        out.append((start, start + length))
    return out


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _tokenize_and_group(batch, tokenizer, model_type: str, block: int):
    """Concatenate the batch's documents (with separators) and cut them into blocks of `block` tokens."""
    kind = kind_of(model_type)
    # BERT: [CLS] doc [SEP], as BERT's tokenizer frames a text; causal LMs: doc <end-of-text>.
    before = [getattr(tokenizer, f"{role}_token_id") for role in kind.frame_before]
    after = [getattr(tokenizer, f"{role}_token_id") for role in kind.frame_after]
    ids, special = [], []
    for doc in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]:
        ids += [*before, *doc, *after]
        special += [*([1] * len(before)), *([0] * len(doc)), *([1] * len(after))]
    n = len(ids) // block * block  # the remainder of each group is dropped, as in run_clm/run_mlm
    out = {"input_ids": [ids[i:i + block] for i in range(0, n, block)]}
    if kind.masked:  # masking skips the framing tokens
        out["special_tokens_mask"] = [special[i:i + block] for i in range(0, n, block)]
    return out


def _group_chunks(batch, texts, tokenizer, model_type: str, block: int):
    """Blocks of the document groups named in `batch['group']`, in order (group g = documents g*G..g*G+G-1)."""
    out = {}
    for g in batch["group"]:
        part = _tokenize_and_group(texts[g * GROUP_DOCS:(g + 1) * GROUP_DOCS], tokenizer, model_type, block)
        for column, rows in part.items():
            out.setdefault(column, []).extend(rows)
    if not out:
        out = {"input_ids": [], "special_tokens_mask": []} if kind_of(model_type).masked else {"input_ids": []}
    return out


def token_blocks(raw: DatasetDict, tokenizer, model_type: str, block: int, num_proc, cache_dir) -> DatasetDict:
    """Tokenized blocks, cached on disk by (data, tokenizer, block length, model type) and reused.

    Documents are taken in their stored order, GROUP_DOCS at a time: each group is concatenated and
    cut into blocks and its remainder dropped, which is what the official scripts' `group_texts`
    does with the default map batch of 1,000 documents (about 1 token in 60 of a BookCorpus group of
    1,000 sentences; nothing of a 1,000-article Wikipedia group but its last partial block). Groups
    are fixed by document index, not by worker: the official map cuts a group short wherever a worker's
    shard ends, so its blocks depend on --preprocessing_num_workers; ours are the same for any number.
    """
    from .tokenizer import cache_root

    parts = [_FORMAT, model_type, str(block), _tokenizer_digest(tokenizer)]
    parts += [f"{k}:{v._fingerprint}:{len(v)}" for k, v in sorted(raw.items())]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
    path = cache_root(cache_dir) / "blocks" / f"{model_type}-{block}-{key}"
    if not (path / "dataset_dict.json").exists():
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        work = path.with_name(f"{path.name}.work-{os.getpid()}")  # map's output on disk, not in memory
        work.mkdir(parents=True, exist_ok=True)
        blocks = {}
        for split, texts in raw.items():
            groups = Dataset.from_dict({"group": list(range(-(-len(texts) // GROUP_DOCS)))})
            blocks[split] = groups.map(
                _group_chunks, batched=True, batch_size=1, num_proc=min(num_proc, len(groups)) if num_proc else None,
                remove_columns=["group"], fn_kwargs=dict(texts=texts, tokenizer=tokenizer, model_type=model_type,
                                                         block=block),
                cache_file_name=str(work / f"{split}.arrow"), new_fingerprint=f"{key}-{split}",
                desc=f"Tokenizing and grouping ({split})", load_from_cache_file=False)
        DatasetDict(blocks).save_to_disk(str(tmp))
        del blocks
        shutil.rmtree(work, ignore_errors=True)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(path)).with_format("torch")


@contextlib.contextmanager
def prepare_first(accelerator, timeout_s: int | None = None):
    """Order of data preparation: the main process, then the first process of each node, then the rest.

    The main process reads the text, trains the tokenizer and writes the token blocks while all
    others wait. Then the first process of every other node enters: with a shared cache folder
    ($APOLLO_CACHE / --cache_dir) it finds the finished cache; with a node-local one it builds that
    node's copy, once per node. Only then do the remaining processes enter, and they only read.
    Every process passes two barriers, so the nesting cannot deadlock.

    A process that waits longer than the process group's timeout (--ddp_timeout) fails with one
    line naming the flag (gloo raises; NCCL's watchdog aborts with its own message). For tests
    only, APOLLO_TEST_PREPARE_DELAY_S makes the main process's preparation that many seconds slower.
    """
    try:
        with accelerator.main_process_first(), accelerator.local_main_process_first():
            delay = float(os.environ.get("APOLLO_TEST_PREPARE_DELAY_S") or 0)
            if delay and accelerator.is_main_process:
                time.sleep(delay)
            yield
    except RuntimeError as err:
        if "timed out" not in str(err).lower():
            raise
        waited = f"more than {timeout_s} s" if timeout_s else "past the process group's timeout"
        raise ConfigError("ddp_timeout", f"process {accelerator.process_index} waited {waited} for the main "
                                         f"process to prepare the data; pass a longer --ddp_timeout (the "
                                         f"full-scale scripts use 36000), or build the cache first with "
                                         f"--preprocess_only") from None


def select_blocks(cfg, blocks: DatasetDict):
    """(training blocks, evaluation blocks or None) a run uses: --max_train_samples, --max_eval_samples; refuses
    a corpus that makes no block."""
    train, evaluation = blocks["train"], blocks.get("validation")
    if len(train) == 0:
        raise ConfigError("dataset_dir" if cfg.dataset_dir else "train_file",
                          f"the training text makes no block of {cfg.max_seq_length} tokens")
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if evaluation and cfg.max_eval_samples and cfg.max_eval_samples < len(evaluation):
        # Evenly spaced, not the first N: the first blocks are a few documents of one kind, and
        # their loss (measured: 6.96 vs 6.67 on a spread of 48 blocks) is not the validation set's.
        stride = len(evaluation) / cfg.max_eval_samples
        evaluation = evaluation.select([int(i * stride) for i in range(cfg.max_eval_samples)])
    if evaluation is not None and len(evaluation) == 0:
        raise ConfigError("validation_file", f"the validation text makes no block of {cfg.max_seq_length} tokens")
    return train, evaluation
