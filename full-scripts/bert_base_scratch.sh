#!/usr/bin/env bash
# BERT-Base (masked LM, 15% masking) from scratch, with the official full-scale settings
# (method spec section 6): 48 blocks of 512 tokens per GPU and a global batch of 1,536 blocks (the
# accumulation follows from the GPU count; GLOBAL_BATCH or ACCUM changes it),
# AdamW lr 1e-4, wd 0.01, cosine, warmup 0.025, 40 epochs, bf16.
#
# One node:        DATASET_DIR=data/wiki_books full-scripts/bert_base_scratch.sh
# Node k of N:     HOSTFILE=hosts.txt DATASET_DIR=... full-scripts/bert_base_scratch.sh
#                  (on every node; or full-scripts/multinode.sh start ...)
# Resume:          RESUME=1 ... full-scripts/bert_base_scratch.sh
# CPU smoke test:  APOLLO_SMOKE=1 full-scripts/bert_base_scratch.sh
# run_pretrain.py flags after the script name override every other. Variables: full-scripts/README.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TOKENIZER=${TOKENIZER:-bert-base-uncased}  # Hub name or local folder
PER_DEVICE_BATCH=48  # blocks per GPU per micro-batch, as in the paper's runs
PAPER_ACCUM=1  # their accumulation on 32 GPUs: the default global batch is 1,536 blocks (GLOBAL_BATCH)
FSDP_WRAP=BertLayer  # the FSDP unit, with accelerate_fsdp.yaml
SMOKE_MODEL="num_hidden_layers=12,hidden_size=16,num_attention_heads=2,intermediate_size=32"

# The model is the library's default bert config (BERT-Base: 12 layers, 768 wide, 12 heads);
# its vocabulary follows the tokenizer.
launch bert-base-scratch \
    --model_type bert --mlm_probability 0.15 \
    --max_seq_length 512 \
    --num_train_epochs 40 --learning_rate 1e-4 --weight_decay 0.01 \
    --adam_beta1 0.9 --adam_beta2 0.999 --adam_epsilon 1e-8 \
    --lr_scheduler_type cosine --warmup_ratio 0.025 \
    -- "$@"
