#!/usr/bin/env bash
# GPT2-Base (causal LM) from scratch, with the official full-scale settings
# (method spec section 6): 12 blocks of 1024 tokens per GPU and a global batch of 768 blocks (the
# accumulation follows from the GPU count; GLOBAL_BATCH or ACCUM changes it),
# AdamW lr 1e-4, wd 0.01, cosine, warmup 0.025, 40 epochs, bf16.
#
# One node:        DATASET_DIR=data/wiki_books full-scripts/gpt2_base_scratch.sh
# Node k of N:     HOSTFILE=hosts.txt DATASET_DIR=... full-scripts/gpt2_base_scratch.sh
#                  (on every node; or full-scripts/multinode.sh start ...)
# Resume:          RESUME=1 ... full-scripts/gpt2_base_scratch.sh
# CPU smoke test:  APOLLO_SMOKE=1 full-scripts/gpt2_base_scratch.sh
# run_pretrain.py flags after the script name override every other. Variables: full-scripts/README.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TOKENIZER=${TOKENIZER:-gpt2}  # Hub name or local folder
PER_DEVICE_BATCH=12  # blocks per GPU per micro-batch, as in the paper's runs
PAPER_ACCUM=2  # their accumulation on 32 GPUs: the default global batch is 768 blocks (GLOBAL_BATCH)
FSDP_WRAP=GPT2Block  # the FSDP unit, with accelerate_fsdp.yaml
SMOKE_MODEL="n_layer=12,n_embd=16,n_head=2"

# The model is the library's default gpt2 config (GPT2-Base: 12 layers, 768 wide, 12 heads);
# its vocabulary follows the tokenizer.
launch gpt2-base-scratch \
    --model_type gpt2 \
    --max_seq_length 1024 \
    --num_train_epochs 40 --learning_rate 1e-4 --weight_decay 0.01 \
    --adam_beta1 0.9 --adam_beta2 0.999 --adam_epsilon 1e-8 \
    --lr_scheduler_type cosine --warmup_ratio 0.025 \
    -- "$@"
