"""Step time of the Apollo path vs the stock model at the same executed depth, measured side by side.

For each (U unique layers, D executed depth): a 12-slot model running D positions along the extend
plan of its first U slots (`apollo.shared_layers.run_along`), and a stock model built with D layers.
One step = forward + backward + AdamW. Timings alternate between the two models so machine noise
hits both alike; the printed ratio is median(stock) / median(Apollo): >= 1 means Apollo is not slower.

    python benchmarks/shared_vs_stock.py [--model gpt2|bert|llama|qwen2|...] [--width 128] [--repeats 7]

Other decoder families are their default config shrunk by rule (apollo/small_configs.py) to 4 query heads,
2 key/value heads (where the family groups them) and MLPs of 8/3 x width rounded to a multiple of 8, as
Llama sizes its gated MLP.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import CONFIG_MAPPING, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/...` from the repo root
from apollo.families import check_family  # noqa: E402
from apollo.kinds import build_model  # noqa: E402
from apollo.plan import depth_plan  # noqa: E402
from apollo.shared_layers import run_along  # noqa: E402
from apollo.small_configs import Sizes, small_config  # noqa: E402


def build(kind, layers, width, vocab):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=vocab, n_positions=512))
    if kind == "bert":
        return BertForMaskedLM(BertConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=4,
                                          intermediate_size=4 * width, vocab_size=vocab))
    sizes = Sizes(layers=layers, width=width, heads=4, kv_heads=2, head_dim=width // 4,
                  inner=(8 * width // 3 + 7) // 8 * 8, vocab=vocab, positions=512)
    return build_model(small_config(kind, sizes))


def step_fn(model, plan, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with run_along(model, plan):
            model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def timed(step):
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="gpt2, bert or any family that run_pretrain.py trains")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    if args.model not in CONFIG_MAPPING:
        p.error(f"unknown model type {args.model!r}")
    why = None if args.model in ("gpt2", "bert") else check_family(build(args.model, 2, args.width, args.vocab).config)
    if why:
        p.error(why)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    print(f"{args.model} width {args.width}, vocab {args.vocab}, batch {args.batch}x{args.seq}, "
          f"{torch.get_num_threads()} threads, {args.repeats} alternating repeats")
    print(f"{'U':>3} {'D':>3} {'stock s/step':>13} {'apollo s/step':>14} {'stock/apollo':>13}")
    apollo_model = build(args.model, 12, args.width, args.vocab).train()
    for unique, depth in ((1, 1), (1, 3), (3, 3), (3, 6), (6, 6), (6, 12), (12, 12)):
        stock = build(args.model, depth, args.width, args.vocab).train()
        steps = {"stock": step_fn(stock, list(range(depth)), batch),
                 "apollo": step_fn(apollo_model, depth_plan(unique, depth), batch)}
        times = {k: [] for k in steps}
        for name, step in steps.items():  # warm-up
            step()
        for _ in range(args.repeats):
            for name, step in steps.items():
                times[name].append(timed(step))
        s, a = statistics.median(times["stock"]), statistics.median(times["apollo"])
        print(f"{unique:>3} {depth:>3} {s:>13.4f} {a:>14.4f} {s / a:>13.3f}")


if __name__ == "__main__":
    main()
