#!/usr/bin/env python
"""How long the data path takes per step, next to the step itself (issue #5 part 2; goal: below 2%).

    python benchmarks/data_path.py                 # BERT and GPT-2, embedded corpus, ~2-4 min on 2 CPU cores
    python benchmarks/data_path.py --gpu_step_ms 140 --model_types bert

The data path is everything `run_pretrain.py` does to get a micro-batch: read the blocks the
step-keyed sampler names from the Arrow cache, stack them, and for BERT draw the MLM masks. It is
built here with the same pieces and flags as the training script (KeyedBlocks, MicroBatchSampler,
BlockCollator, a DataLoader with `--dataloader_num_workers`), on the same token blocks cache.

Part 1, side by side: a small model (12 layers, width 128) trains on this machine, and each step
is timed in two parts: the time the loop waits in `next(batches)`, and the step (forward,
backward, AdamW). Run with 0 loader workers (fetch and masking in the training process) and with
N workers (they run ahead in the background; the loop waits only if they fall behind).

Part 2, absolute cost at the full-scale shapes (BERT-Base 48x512 with masking, GPT2-Base 12x1024),
in one process, so a GPU user can set it against their own step time: pass --gpu_step_ms, or read
the table of step times implied by the analytic FLOPs at a few assumed throughputs (these are
not measurements). It also checks that the collator's masks equal Hugging Face's
`torch_mask_tokens` on the measured batches, and times that reference too.

Part 3, the same full-scale batches through the DataLoader with 0, 2 and 4 workers, against a
simulated GPU step: the loop sleeps for the step time (--sim_step_ms), leaving the CPU idle as
it is while a GPU computes, and the wait in `next(batches)` is what the training loop loses.

Timings on shared machines vary by +-25% from run to run (far more when other jobs load the
CPU); only the ratios printed side by side within one run mean anything. Part 2 therefore also
reports the CPU time of the training thread (`time.thread_time`), which other processes' load
barely changes, and part 3 the CPU time the training thread spends inside `next(batches)`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config  # noqa: E402

from apollo.config import parse_config  # noqa: E402
from apollo.batches import BlockCollator, KeyedBlocks, MicroBatchSampler, mask_seed  # noqa: E402
from apollo.corpus import load_text_splits, token_blocks  # noqa: E402
from apollo.flops import training_flops  # noqa: E402
from apollo.tokenizer import local_tokenizer  # noqa: E402

FULL_SHAPES = {"bert": (48, 512), "gpt2": (12, 1024)}  # per-GPU micro-batch of the official settings
ASSUMED_TFLOPS = (100, 200, 400)  # achieved bf16 TFLOP/s per GPU, for the implied step-time table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_types", nargs="+", default=["bert", "gpt2"], choices=["bert", "gpt2"])
    p.add_argument("--train_file", nargs="+", default=None, help="Text files (default: the embedded corpus).")
    p.add_argument("--steps", type=int, default=5, help="Timed training steps per setting in part 1.")
    p.add_argument("--batch_size", type=int, default=8, help="Micro-batch of part 1 (blocks).")
    p.add_argument("--seq_len", type=int, default=128, help="Block length of part 1.")
    p.add_argument("--width", type=int, default=128, help="Hidden size of part 1's 12-layer model.")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the background setting.")
    p.add_argument("--full_batches", type=int, default=20, help="Batches timed per full-scale shape in part 2.")
    p.add_argument("--gpu_step_ms", type=float, default=None, help="Your measured GPU step time for part 2's ratio.")
    p.add_argument("--sim_step_ms", type=float, nargs="+", default=[150.0, 50.0],
                   help="Simulated GPU step times of part 3 (about A100 and H100 for BERT-Base 48x512 in bf16).")
    p.add_argument("--sim_steps", type=int, default=12, help="Timed steps per setting in part 3.")
    p.add_argument("--skip_train", action="store_true", help="Skip part 1.")
    return p.parse_args(argv)


def blocks_for(model_type: str, seq_len: int, train_file):
    """Tokenizer and token blocks through the training script's own pipeline and cache."""
    argv = ["--model_type", model_type, "--output_dir", "unused", "--max_seq_length", str(seq_len)]
    if train_file:
        argv += ["--train_file", *train_file]
    cfg = parse_config(argv)
    raw = load_text_splits(cfg)
    tokenizer = local_tokenizer(model_type, raw["train"], raw["train"]._fingerprint, cfg.tokenizer_vocab_size, None)
    blocks = token_blocks(raw, tokenizer, model_type, seq_len, None, None)["train"]
    return tokenizer, blocks


def loader(blocks, tokenizer, model_type, batch_size, num_batches, workers, seed=42):
    """The DataLoader exactly as run_pretrain.py builds it (one rank)."""
    micro_per_epoch = len(blocks) // batch_size
    sampler = MicroBatchSampler(len(blocks), batch_size, 1, 0, seed, micro_per_epoch, 0, num_batches)
    collator = BlockCollator(tokenizer, model_type == "bert", 0.15, seed)
    return torch.utils.data.DataLoader(KeyedBlocks(blocks), batch_sampler=sampler, collate_fn=collator,
                                       num_workers=workers, generator=torch.Generator())


def small_model(model_type: str, vocab: int, seq_len: int, width: int):
    torch.manual_seed(0)
    if model_type == "gpt2":
        config = GPT2Config(n_embd=width, n_head=4, n_layer=12, vocab_size=vocab, n_positions=seq_len, use_cache=False,
                            bos_token_id=0, eos_token_id=0)
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"), config
    config = BertConfig(hidden_size=width, num_attention_heads=4, num_hidden_layers=12, intermediate_size=4 * width,
                        vocab_size=vocab, max_position_embeddings=seq_len)
    return AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa"), config


def side_by_side(model_type, tokenizer, blocks, args):
    """Median wait for the next batch and median step time, for 0 and N loader workers."""
    model, config = small_model(model_type, len(tokenizer), args.seq_len, args.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    rows = []
    for workers in (0, args.workers):
        batches = iter(loader(blocks, tokenizer, model_type, args.batch_size, args.steps + 2, workers))
        waits, steps = [], []
        for i in range(args.steps + 2):  # the first two are warm-up (worker start, allocator)
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            if i >= 2:
                waits.append(t1 - t0)
                steps.append(t2 - t1)
        wait, step = statistics.median(waits), statistics.median(steps)
        rows.append((workers, wait, step))
        tokens = args.batch_size * args.seq_len
        gflops = training_flops(config, args.batch_size, args.seq_len, 12) / step / 1e9
        print(f"  {model_type:5s} {args.batch_size}x{args.seq_len} workers={workers}: data wait {1e3 * wait:8.2f} ms  "
              f"step {1e3 * step:8.1f} ms  ratio {100 * wait / step:6.2f}%  "
              f"({tokens / step:,.0f} tok/s, {gflops:.1f} GFLOP/s)")
    return rows


def timed(fn, arg):
    """(wall seconds, CPU seconds of this thread) of one call."""
    t, c = time.perf_counter(), time.thread_time()
    fn(arg)
    return time.perf_counter() - t, time.thread_time() - c


def hf_masked(collator: BlockCollator, rows) -> dict:
    """What `collator` makes of `rows`, through Hugging Face's own `torch_mask_tokens` one block at a time, each
    with the generator BlockCollator seeds for that block: the reference its batched masking must equal."""
    inputs, labels = [], []
    for row in rows:
        epoch, index = row["key"]
        collator.masker.generator = torch.Generator().manual_seed(mask_seed(collator.seed, epoch, index))
        x, y = collator.masker.torch_mask_tokens(row["input_ids"][None].clone(), row["special_tokens_mask"][None].bool())
        inputs.append(x)
        labels.append(y)
    return {"input_ids": torch.cat(inputs), "labels": torch.cat(labels)}


def median_pair(pairs):
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def full_scale(model_type, args):
    """In-process fetch and collate time per micro-batch at the official per-GPU shape; returns the data."""
    batch, seq = FULL_SHAPES[model_type]
    tokenizer, blocks = blocks_for(model_type, seq, args.train_file)
    n = min(args.full_batches, len(blocks) // batch)
    sampler = MicroBatchSampler(len(blocks), batch, 1, 0, 42, len(blocks) // batch, 0, n)
    keys = list(sampler)
    data = KeyedBlocks(blocks)
    collator = BlockCollator(tokenizer, model_type == "bert", 0.15, 42)
    rows = [data.__getitems__(k) for k in keys]
    # Interleave the timings so that load from other processes hits all of them alike.
    fetch, collate, reference = [], [], []
    for k, r in zip(keys, rows):
        fetch.append(timed(data.__getitems__, k))
        collate.append(timed(collator, r))
        if model_type == "bert":
            reference.append(timed(lambda rows: hf_masked(collator, rows), r))
    (fetch, fetch_cpu), (collate, collate_cpu) = median_pair(fetch), median_pair(collate)
    total, total_cpu = fetch + collate, fetch_cpu + collate_cpu
    same = None
    if model_type == "bert":
        same = all(torch.equal(ours[key], ref[key]) for r in rows
                   for ours, ref in [(collator(r), hf_masked(collator, r))] for key in ours)
        if not same:
            raise SystemExit("BlockCollator's masks differ from DataCollatorForLanguageModeling.torch_mask_tokens")
    line = (f"  {model_type:5s} {batch}x{seq}: fetch {1e3 * fetch:6.2f} ms + collate {1e3 * collate:6.2f} ms "
            f"= {1e3 * total:6.2f} ms wall, {1e3 * total_cpu:6.2f} ms CPU (fetch {1e3 * fetch_cpu:.2f}, collate "
            f"{1e3 * collate_cpu:.2f}) per micro-batch in the training process")
    if reference:
        ref_wall, ref_cpu = median_pair(reference)
        line += (f"\n        collate through HF's torch_mask_tokens instead: {1e3 * ref_wall:.2f} ms wall, "
                 f"{1e3 * ref_cpu:.2f} ms CPU; masks identical: {same}")
    print(line)
    total = total_cpu  # what the data path costs on an otherwise idle core
    config = (BertConfig() if model_type == "bert" else GPT2Config())  # BERT-Base / GPT2-Base shapes
    flops = training_flops(config, batch, seq, config.num_hidden_layers)
    implied = []
    for tflops in ASSUMED_TFLOPS:
        step = flops / (tflops * 1e12)
        implied.append(f"{tflops} TFLOP/s -> step {1e3 * step:.0f} ms, data {100 * total / step:.1f}%")
    name = "BERT-Base" if model_type == "bert" else "GPT2-Base"
    print(f"        {name} step = {flops:.3e} FLOPs; implied (not measured): {', '.join(implied)}")
    if args.gpu_step_ms:
        share = 100 * total / (args.gpu_step_ms / 1e3)
        print(f"        against your GPU step of {args.gpu_step_ms:.0f} ms: {share:.1f}% in-process; "
              f"with loader workers this runs in the background")
    return tokenizer, blocks


def background(model_type, tokenizer, blocks, args):
    """Wait per step for the next full-scale batch with 0/2/4 loader workers, the step simulated by a sleep."""
    batch, seq = FULL_SHAPES[model_type]
    for step_ms in args.sim_step_ms:
        parts = []
        for workers in (0, 2, 4):
            batches = iter(loader(blocks, tokenizer, model_type, batch, args.sim_steps + 3, workers))
            waits = []
            for i in range(args.sim_steps + 3):
                wait = timed(next, batches)
                if i >= 3:  # worker start-up is a one-off
                    waits.append(wait)
                time.sleep(step_ms / 1e3)
            wall, cpu = median_pair(waits)
            parts.append(f"{workers} workers: wait {1e3 * wall:5.2f} ms wall ({100 * wall / (step_ms / 1e3):4.1f}%), "
                         f"{1e3 * cpu:5.2f} ms CPU ({100 * cpu / (step_ms / 1e3):4.1f}%)")
        print(f"  {model_type:5s} {batch}x{seq}, step {step_ms:.0f} ms:\n      " + "\n      ".join(parts))


def main(argv=None):
    args = parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    if not args.skip_train:
        print(f"Part 1: data wait vs training step, side by side (12 layers, width {args.width}, AdamW, CPU)")
        for model_type in args.model_types:
            tokenizer, blocks = blocks_for(model_type, args.seq_len, args.train_file)
            side_by_side(model_type, tokenizer, blocks, args)
    print("Part 2: data path per micro-batch at the official per-GPU shapes (in-process, no workers)")
    full = {model_type: full_scale(model_type, args) for model_type in args.model_types}
    print("Part 3: wait per step at the official shapes, loader workers vs a simulated GPU step (sleep)")
    for model_type, (tokenizer, blocks) in full.items():
        background(model_type, tokenizer, blocks, args)


if __name__ == "__main__":
    main()
