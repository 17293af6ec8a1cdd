#!/usr/bin/env bash
# The short GPU check: bf16, fp16, per-block compile, BERT-Base and GPT2-Base steps at their real vocabulary,
# the data path, and with 2+ GPUs DDP, the FSDP probe and an FSDP scratch run. Each check runs in its own
# process; the script exits 1 if any fails and writes RESULTS_DIR/summary.json. Details: gpu_check.py.
#
#   full-scripts/gpu_check.sh [RESULTS_DIR]       # 1+ NVIDIA GPUs; default RESULTS_DIR logs/gpu_check
#   GPU_CHECK_ON_CPU=1 full-scripts/gpu_check.sh  # the same checks at tiny shapes on the CPU (tests this script only)
exec python "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" "$@"
