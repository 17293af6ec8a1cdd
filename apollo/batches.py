"""Batches: token blocks -> the micro-batches of each optimizer step, MLM masks, evaluation batches.

Every batch is a pure function of (seed, micro-batch index, rank): the order is a per-epoch
permutation from a generator of its own, and each block's MLM mask is drawn from a generator
seeded by (seed, epoch, block index). So a resumed run sees exactly the batches and masks it
would have seen, and 2 ranks with batch b see the same blocks and masks as 1 rank with batch 2b.
The blocks themselves come from `apollo/corpus.py`.
"""
from __future__ import annotations

import atexit
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling

from .preemption import ignore_stop_signals, kill_loader_workers, stop_signals_held

EVAL_MASK_SEED = 1234  # one fixed eval mask for every run, so runs with different seeds compare
EVAL_EPOCH = 2**31 - 1  # the epoch key of validation blocks (never a training epoch)


def epoch_permutation(num_blocks: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0xDA7A]).permutation(num_blocks)


@dataclass
class MicroBatchSampler:
    """Yields, for micro-batches start..stop-1 (counted over the run: optimizer step x accumulation
    + micro-step), this rank's list of (epoch, block index) keys: one DataLoader batch per micro-batch.

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
    micro_per_epoch: int  # micro-batches per epoch: steps per epoch x accumulation
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


def mask_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the generator that draws the MLM mask of block `index` in `epoch`."""
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
            g = torch.Generator().manual_seed(mask_seed(self.seed, epoch, index))
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


def training_batches(blocks, sampler: MicroBatchSampler, collator: BlockCollator, num_workers: int,
                     pin_memory: bool) -> Iterator[dict]:
    """The run's micro-batches in order. Workers start here and ignore stop signals from the outset (create the
    StopRequest first: apollo/preemption.py)."""
    loader = torch.utils.data.DataLoader(KeyedBlocks(blocks), batch_sampler=sampler, collate_fn=collator,
                                         num_workers=num_workers, worker_init_fn=ignore_stop_signals,
                                         pin_memory=pin_memory,  # faster, async copies to a GPU
                                         generator=torch.Generator())  # keeps the global RNG untouched
    with stop_signals_held():  # the workers are forked here
        batches = iter(loader)
    if num_workers:
        atexit.unregister(kill_loader_workers)  # once per process, however many runs it makes (tests)
        atexit.register(kill_loader_workers)
    return batches
