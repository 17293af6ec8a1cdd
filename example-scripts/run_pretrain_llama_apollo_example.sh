#!/usr/bin/env bash
# A Llama (causal LM: RMSNorm, rotary positions, grouped-query attention, gated MLP) trained with Apollo (layers 1,3,6,12 at epochs 1,2,5,10; LVPS; interpolation growth) on the embedded corpus (KJV + Jargon File), CPU by default, every GPU when present.
# A debugging-size run: 12 layers of width 128 (4 query heads, 2 key/value heads, MLP 344), 800 blocks of 128 tokens, 10 epochs (500 steps).
# The tokenizer is a byte-level BPE trained on the corpus with Llama's <s> / </s> tokens. Other decoder families: --model_type qwen2|mistral|gpt_neox|...
# Extra flags override these, e.g. a 100-step run: bash example-scripts/run_pretrain_llama_apollo_example.sh --max_train_samples 160
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch llama_apollo_example \
  --model_type llama --config_overrides num_hidden_layers=12,hidden_size=128,num_attention_heads=4,num_key_value_heads=2,intermediate_size=344 \
  --max_seq_length 128 --per_device_train_batch_size 16 --max_train_samples 800 --max_eval_samples 200 --num_train_epochs 10 --warmup_ratio 0.025 --lr_scheduler_type cosine --weight_decay 0.01 --eval_steps 50 --save_steps 250 --logging_steps 25 \
  --learning_rate 3e-4 \
  --apollo_layers 1,3,6,12 --apollo_epoch_list 1,2,5,10 --dist_function lvps --grow_method extend --apollo_info_output_file apollo_info \
  "$@"
