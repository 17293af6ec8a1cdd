"""Data: text -> token blocks (cached), a step-keyed batch order, and deterministic MLM masking.

Documents keep their stored order: each group of GROUP_DOCS consecutive documents is concatenated
and cut into blocks (the official `group_texts`), and only the order of the blocks is shuffled,
per epoch. A held-out validation set is a fixed function of the corpus (never of --seed), so runs
with different seeds train and evaluate on the same blocks and share one token cache.

Every batch is a pure function of (seed, micro-batch index, rank): the order is a per-epoch
permutation from a generator of its own, and each block's MLM mask is drawn from a generator
seeded by (seed, epoch, block index). So a resumed run sees exactly the batches and masks it
would have seen, and 2 ranks with batch b see the same blocks and masks as 1 rank with batch 2b.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset, load_from_disk
from transformers import DataCollatorForLanguageModeling

from .config import ConfigError
from .kinds import kind_of

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "data" / "embedded"
EMBEDDED_TRAIN = [str(EMBEDDED_DIR / "train.txt")]
EMBEDDED_VALIDATION = [str(EMBEDDED_DIR / "validation.txt")]
_FORMAT = "v2"  # bump when tokenization/grouping below changes (v2: stored order, groups by document index)
GROUP_DOCS = 1000  # documents concatenated per group: the official group_texts' map batch (see token_blocks)
HOLDOUT_RUNS = 100  # a held-out validation set is at most this many runs of consecutive documents ...
HOLDOUT_MIN_RUN = 100  # ... each of at least this many documents (fewer runs for a small hold-out)
EVAL_MASK_SEED = 1234  # one fixed eval mask for every run, so runs with different seeds compare
EVAL_EPOCH = 2**31 - 1  # the epoch key of validation blocks (never a training epoch)


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
    if cfg.dataset_dir:
        raw = _saved_dataset(cfg.dataset_dir)
        if validation:
            raw["validation"] = load_dataset("text", data_files={"validation": validation})["validation"]
        flag = "dataset_dir"
    else:
        files = {"train": train, **({"validation": validation} if validation else {})}
        raw = load_dataset("text", data_files=files)
        flag = "train_file"
    if "train" not in raw:
        raise ConfigError(flag, f"dataset has no 'train' split (splits: {', '.join(raw)})")
    for split, ds in raw.items():
        if "text" not in ds.column_names:
            raise ConfigError(flag, f"the {split} split has no 'text' column (columns: {', '.join(ds.column_names)})")
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


def epoch_permutation(num_blocks: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0xDA7A]).permutation(num_blocks)


@dataclass
class StepBatchSampler:
    """Yields, for micro-batches start..stop-1, this rank's list of (epoch, block index) keys.

    Micro-batch m of epoch e covers positions [m*B*W, (m+1)*B*W) of epoch e's permutation; rank r
    takes the r-th slice of B. Blocks left over at an epoch's end are skipped (drop_last). An epoch
    with fewer blocks than one global batch (one optimizer step) is padded as DistributedSampler
    pads: positions past the end wrap round to the start of the same permutation, so every
    micro-batch is full and N ranks see exactly the blocks one rank would.
    """
    num_blocks: int
    batch_size: int
    world_size: int
    rank: int
    seed: int
    micro_per_epoch: int
    start: int
    stop: int

    def __len__(self):
        return max(self.stop - self.start, 0)

    def __iter__(self):
        perm_epoch, perm = None, None
        for m in range(self.start, self.stop):
            epoch, j = divmod(m, self.micro_per_epoch)
            if epoch != perm_epoch:
                perm_epoch, perm = epoch, epoch_permutation(self.num_blocks, self.seed, epoch)
            lo = (j * self.world_size + self.rank) * self.batch_size
            yield [(epoch, int(i)) for i in perm[np.arange(lo, lo + self.batch_size) % self.num_blocks]]


class KeyedBlocks(torch.utils.data.Dataset):
    """Blocks addressed by (epoch, index) keys, fetched a batch at a time from Arrow."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self):
        return len(self.blocks)

    def __getitems__(self, keys):
        rows = self.blocks[[i for _, i in keys]]
        return [{"key": key, **{c: rows[c][j] for c in rows}} for j, key in enumerate(keys)]

    def __getitem__(self, key):
        return self.__getitems__([key])[0]


def _mask_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index, 0x3A5C]).generate_state(1, np.uint64)[0] >> 1)


class BlockCollator:
    """Stacks blocks; for MLM, masks each block with HF's masking (80/10/10) from its own generator.

    The masks are exactly those of `DataCollatorForLanguageModeling.torch_mask_tokens` run on one
    block with that block's generator: the same four draws, in the same order and shapes. Only the
    bookkeeping around them is batched, and the vocabulary size and [MASK] id are looked up once
    (`len(tokenizer)` is slow): 48x512 blocks take ~9 ms of CPU here, ~19 ms through HF's function
    (benchmarks/data_path.py measures both and checks that the masks are identical).
    """

    def __init__(self, tokenizer, mlm: bool, mlm_probability: float, seed: int):
        self.seed = seed
        self.masker = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability) if mlm else None
        if mlm:
            self.mask_id = tokenizer.convert_tokens_to_ids(tokenizer.mask_token)
            self.vocab_size = len(tokenizer)

    def __call__(self, rows):
        ids = torch.stack([r["input_ids"] for r in rows])
        if self.masker is None:
            return {"input_ids": ids, "labels": ids.clone()}  # the model shifts labels for causal LM
        special = torch.stack([r["special_tokens_mask"] for r in rows]).bool()
        m = self.masker
        shape = (1, ids.shape[1])
        keep_p = torch.full(shape, m.mlm_probability)
        replace_p = torch.full(shape, m.mask_replace_prob)
        random_p = None  # HF draws no random words when [MASK] takes every masked token
        if m.mask_replace_prob < 1:
            random_p = torch.full(shape, m.random_replace_prob / (1 - m.mask_replace_prob))
        masked, replaced, randomized, words = [], [], [], []
        for row, no_mask in zip(rows, special):
            epoch, index = row["key"]
            g = torch.Generator().manual_seed(_mask_seed(self.seed, epoch, index))
            masked.append(torch.bernoulli(keep_p.masked_fill(no_mask[None], 0.0), generator=g))
            replaced.append(torch.bernoulli(replace_p, generator=g))
            if random_p is not None and m.random_replace_prob > 0:
                randomized.append(torch.bernoulli(random_p, generator=g))
                words.append(torch.randint(self.vocab_size, shape, dtype=torch.long, generator=g))
        masked = torch.cat(masked).bool()
        replaced = torch.cat(replaced).bool() & masked
        labels = ids.masked_fill(~masked, -100)  # loss only on the masked positions
        inputs = ids.masked_fill(replaced, self.mask_id)
        if randomized:
            randomized = torch.cat(randomized).bool() & masked & ~replaced
            inputs = torch.where(randomized, torch.cat(words), inputs)
        return {"input_ids": inputs, "labels": labels}

    def reference(self, rows):
        """The same batch through HF's own `torch_mask_tokens`, one block at a time (for checks)."""
        inputs, labels = [], []
        for row in rows:
            epoch, index = row["key"]
            self.masker.generator = torch.Generator().manual_seed(_mask_seed(self.seed, epoch, index))
            x, y = self.masker.torch_mask_tokens(row["input_ids"][None].clone(), row["special_tokens_mask"][None].bool())
            inputs.append(x)
            labels.append(y)
        return {"input_ids": torch.cat(inputs), "labels": torch.cat(labels)}


def eval_batches(blocks, batch_size: int, rank: int, world_size: int, collator, pad: bool = False):
    """This rank's share of the fixed validation blocks, in order (keys use a reserved epoch).

    With `pad`, a last batch with fewer rows is filled up to `batch_size` with copies of its last row
    whose labels are all -100: they carry no target, so the loss over the batch's targets is the same.
    """
    indices = list(range(rank, len(blocks), world_size))
    dataset = KeyedBlocks(blocks)
    for lo in range(0, len(indices), batch_size):
        batch = collator(dataset.__getitems__([(EVAL_EPOCH, i) for i in indices[lo:lo + batch_size]]))
        missing = batch_size - len(batch["input_ids"]) if pad else 0
        if missing > 0:
            batch = {k: torch.cat([v, v[-1:].expand(missing, *v.shape[1:])]) for k, v in batch.items()}
            batch["labels"][-missing:] = -100
        yield batch
