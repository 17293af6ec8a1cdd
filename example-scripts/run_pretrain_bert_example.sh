#!/usr/bin/env bash
# BERT (masked LM) trained from scratch on the embedded corpus (KJV + Jargon File), CPU by default, every GPU when present.
# A debugging-size run: 12 layers of width 128, 800 blocks of 128 tokens, 10 epochs (500 steps).
# Extra flags override these, e.g. a 100-step run: bash example-scripts/run_pretrain_bert_example.sh --max_train_samples 160
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch bert_example \
  --model_type bert --config_overrides num_hidden_layers=12,hidden_size=128,num_attention_heads=4,intermediate_size=512 \
  --max_seq_length 128 --per_device_train_batch_size 16 --max_train_samples 800 --max_eval_samples 200 --num_train_epochs 10 --warmup_ratio 0.025 --lr_scheduler_type cosine --weight_decay 0.01 --eval_steps 50 --save_steps 250 --logging_steps 25 \
  --learning_rate 1e-4  \
  "$@"
