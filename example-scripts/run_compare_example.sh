#!/usr/bin/env bash
# Side-by-side benchmark on the embedded corpus (KJV + Jargon File): for GPT-2 and BERT, scratch vs
# Apollo (lvps + extend) vs progressive stacking (constant_low + stack), same data, tokenizer, batch,
# token budget and evaluation, seeds 1,2,3; then the figures and the table (FLOPs saved at equal loss,
# loss at equal FLOPs, wall-clock saved) in benchmarks/results/TAG/.
#
# Default: 12 layers of width 128, vocab 8192, 200 steps of 8 x 64 tokens, stages at 10/20/50% of
# the steps, two runs at a time with one thread each: 18 runs, 38 CPU-minutes, so about 20-25 min on
# 2 idle CPU cores (52 min measured on 2 cores shared with other jobs).
# Re-running skips the runs that already finished (delete runs/compare to start over).
#
# Extra flags are passed on, e.g.
#   bash example-scripts/run_compare_example.sh --tag tiny --steps 20 --width 32 --seeds 1 --eval_every 5
#   bash example-scripts/run_compare_example.sh --tag stages75 --models gpt2 --seeds 1 --stage_fractions 0.05,0.1,0.25
# A longer run (several hours on 2 cores; minutes on a GPU) that gives the growth methods more room:
#   bash example-scripts/run_compare_example.sh --tag long --steps 2000 --seq 128 --width 256 --eval_every 50 --eval_samples 200
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python benchmarks/compare.py "$@"
