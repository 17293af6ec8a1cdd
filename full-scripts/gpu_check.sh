#!/usr/bin/env bash
# The short GPU check of issue #5 part 4, prepared but NOT yet run (no GPU was available when the
# scripts were written). On a machine with 1+ NVIDIA GPUs, from the repository root:
#
#   full-scripts/gpu_check.sh [RESULTS_DIR]        # ~10 min on one A100/H100; more checks with 2+ GPUs
#
# Each check is one line PASS/FAIL in RESULTS_DIR/summary.txt, details in RESULTS_DIR/<check>.log:
#   bf16, fp16   Apollo (1,3,6,12 by steps) on a small BERT through accelerate launch, mixed precision
#   compile      the same with --torch_compile: counts dynamo recompilations (expect 1: train + eval)
#   step_time    BERT-Base shapes (48x512, bf16), 30 steps: seconds per step from metrics.jsonl, then
#                benchmarks/data_path.py --gpu_step_ms with it (the data path's share of a real step)
#   ddp2         with 2+ GPUs: bf16 Apollo on 2 GPUs
#   fsdp_probe   with 2+ GPUs: full-scripts/fsdp_shared_blocks_probe.py over nccl
#   fsdp2        with 2+ GPUs: a scratch run with accelerate_fsdp.yaml (Apollo+FSDP is refused)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
results=${1:-logs/gpu_check}
mkdir -p "$results"
export APOLLO_CACHE=${APOLLO_CACHE:-$results/cache}
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
((gpus > 0)) || { echo "no GPU (nvidia-smi -L lists none)" >&2; exit 2; }
summary=$results/summary.txt
: >"$summary"
{ nvidia-smi -L; python -c 'import torch, accelerate, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "capability", torch.cuda.get_device_capability(), "bf16", torch.cuda.is_bf16_supported(), "accelerate", accelerate.__version__, "transformers", transformers.__version__)'; } | tee "$results/env.txt"

SMALL=(--model_type bert --config_overrides "num_hidden_layers=12,hidden_size=256,num_attention_heads=4,intermediate_size=1024"
       --max_seq_length 128 --per_device_train_batch_size 16 --max_train_steps 40 --max_eval_samples 64
       --apollo_layers 1,3,6,12 --apollo_step_list 4,8,20,40 --apollo_info_output_file sched --eval_steps 20
       --save_steps 20 --warmup_ratio 0.025 --overwrite_output_dir)

check() {  # check NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    if timeout "$limit" "$@" >"$results/$name.log" 2>&1; then
        echo "PASS $name" | tee -a "$summary"
    else
        echo "FAIL $name (exit $?, see $results/$name.log)" | tee -a "$summary"
    fi
}
launch() {  # launch NPROC ACCELERATE_FLAGS... -- RUN_PRETRAIN_FLAGS...
    local n=$1
    shift
    local flags=()
    while [[ $1 != -- ]]; do flags+=("$1"); shift; done
    shift
    if ((n > 1)); then flags+=(--multi_gpu); fi
    accelerate launch --num_machines 1 --num_processes "$n" --dynamo_backend no --main_process_port 29533 \
        "${flags[@]}" run_pretrain.py "$@"
}

check bf16 600 launch 1 --mixed_precision bf16 -- "${SMALL[@]}" --mixed_precision bf16 --output_dir "$results/bf16"
check fp16 600 launch 1 --mixed_precision fp16 -- "${SMALL[@]}" --mixed_precision fp16 --output_dir "$results/fp16"
check compile 900 env TORCH_LOGS=recompiles launch 1 --mixed_precision bf16 -- "${SMALL[@]}" --mixed_precision bf16 \
    --torch_compile --output_dir "$results/compile"
echo "compile: $(grep -c 'Recompiling function' "$results/compile.log") recompilations" | tee -a "$summary"
check step_time 900 launch 1 --mixed_precision bf16 -- --model_type bert --max_seq_length 512 \
    --per_device_train_batch_size 48 --max_train_steps 30 --eval_steps 1000 --max_eval_samples 48 \
    --save_strategy no --mixed_precision bf16 --output_dir "$results/step_time" --overwrite_output_dir
step_s=$(python -c "import json, sys; m = [json.loads(l) for l in open(sys.argv[1]) if '\"loss\"' in l]; print((m[-1]['elapsed_s'] - m[9]['elapsed_s']) / (len(m) - 10))" "$results/step_time/metrics.jsonl" 2>/dev/null)
if [[ -n $step_s ]]; then
    echo "step_time: BERT-Base 48x512 bf16 step $step_s s (steps 11-30; vocabulary 8192, not 30522)" | tee -a "$summary"
    python benchmarks/data_path.py --skip_train --model_types bert \
        --gpu_step_ms "$(python -c "print(1000 * $step_s)")" --sim_step_ms "$(python -c "print(1000 * $step_s)")" \
        2>&1 | tee "$results/data_path.log" | grep -E 'bert|your GPU|workers' | tee -a "$summary"
fi
if ((gpus >= 2)); then
    check ddp2 600 launch 2 --mixed_precision bf16 -- "${SMALL[@]}" --mixed_precision bf16 --output_dir "$results/ddp2"
    check fsdp_probe 300 torchrun --nproc_per_node 2 --master_port 29534 full-scripts/fsdp_shared_blocks_probe.py
    check fsdp2 600 accelerate launch --config_file full-scripts/accelerate_fsdp.yaml --num_machines 1 \
        --num_processes 2 --main_process_port 29535 --fsdp_transformer_layer_cls_to_wrap BertLayer run_pretrain.py \
        --model_type bert --config_overrides "num_hidden_layers=4,hidden_size=256,num_attention_heads=4,intermediate_size=1024" \
        --max_seq_length 128 --per_device_train_batch_size 16 --max_train_steps 20 --max_eval_samples 66 \
        --eval_steps 10 --save_steps 10 --mixed_precision bf16 --output_dir "$results/fsdp2" --overwrite_output_dir
fi
cat "$summary"
