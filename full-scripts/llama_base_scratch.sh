#!/usr/bin/env bash
# A Llama of about GPT2-Base size (causal LM) from scratch, with the official GPT2-Base full-scale settings
# (method spec section 6): 12 blocks of 1024 tokens per GPU and a global batch of 768 blocks (the
# accumulation follows from the GPU count; GLOBAL_BATCH or ACCUM changes it),
# AdamW lr 1e-4, wd 0.01, cosine, warmup 0.025, 40 epochs, bf16.
#
# The model: 12 layers, width 768, 12 query heads and 4 key/value heads (grouped-query attention),
# gated MLP of 2048 (three matrices: about GPT-2's 2 x 768 x 3072 MLP weights), RMSNorm, rotary
# positions, untied LM head; the GPT-2 tokenizer by default, so runs compare with gpt2_base_*.sh on the
# same tokens (about 153M parameters with its 50,257-token vocabulary, vs GPT2-Base's 124M tied).
#
# One node:        DATASET_DIR=data/wiki_books full-scripts/llama_base_scratch.sh
# Node k of N:     HOSTFILE=hosts.txt DATASET_DIR=... full-scripts/llama_base_scratch.sh
#                  (on every node; or full-scripts/multinode.sh start ...)
# Resume:          RESUME=1 ... full-scripts/llama_base_scratch.sh
# CPU smoke test:  APOLLO_SMOKE=1 full-scripts/llama_base_scratch.sh
# run_pretrain.py flags after the script name override every other. Variables: full-scripts/README.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TOKENIZER=${TOKENIZER:-gpt2}  # Hub name or local folder; its end-of-text token separates documents
PER_DEVICE_BATCH=12  # blocks per GPU per micro-batch, as in the paper's runs
PAPER_ACCUM=2  # their accumulation on 32 GPUs: the default global batch is 768 blocks (GLOBAL_BATCH)
FSDP_WRAP=LlamaDecoderLayer  # the FSDP unit, with accelerate_fsdp.yaml
SMOKE_MODEL="num_hidden_layers=12,hidden_size=16,num_attention_heads=2,num_key_value_heads=1,intermediate_size=32"

launch llama-base-scratch \
    --model_type llama \
    --config_overrides num_hidden_layers=12,hidden_size=768,num_attention_heads=12,num_key_value_heads=4,intermediate_size=2048,max_position_embeddings=1024 \
    --max_seq_length 1024 \
    --num_train_epochs 40 --learning_rate 1e-4 --weight_decay 0.01 \
    --adam_beta1 0.9 --adam_beta2 0.999 --adam_epsilon 1e-8 \
    --lr_scheduler_type cosine --warmup_ratio 0.025 \
    -- "$@"
