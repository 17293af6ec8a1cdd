#!/usr/bin/env bash
# Start or stop a full-scale run on every node of a hostfile over ssh (your own ssh setup: keys,
# agent, ~/.ssh/config; this script holds no credentials). The repository must sit at the same
# path on every node (a shared filesystem or identical checkouts), and OUTPUT_DIR on a shared
# filesystem: checkpoints are written by all ranks and resumed from by all.
#
#   full-scripts/multinode.sh start HOSTFILE SCRIPT [run_pretrain.py flags...]
#   full-scripts/multinode.sh stop  HOSTFILE SCRIPT       # checkpoint and exit on every node
#   full-scripts/multinode.sh dry   HOSTFILE SCRIPT       # print each node's launch command
#
# HOSTFILE: one host per line (the first is the main node; '#' comments and "host slots=N" lines
# are fine). Node i is started with NODE_RANK=i; the variables below are passed on if set.
# Without ssh, run SCRIPT yourself on each node with HOSTFILE (or NNODES, NODE_RANK, MASTER_ADDR).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PASS_ON=(DATASET_DIR OUTPUT_DIR LOG_DIR GPUS_PER_NODE MASTER_ADDR MASTER_PORT RESUME PRECISION ACCELERATE_CONFIG
         GLOBAL_BATCH ACCUM APOLLO_CACHE TOKENIZER LOADER_WORKERS PREPROCESS_WORKERS EVAL_BLOCKS EVAL_STEPS SAVE_STEPS
         SAVE_TOTAL_LIMIT REPORT_TO TORCH_COMPILE NO_TF32 HF_HOME HF_HUB_OFFLINE PYTHONPATH PATH)

action=${1:-}
hostfile=${2:-}
script=${3:-}
[[ $action =~ ^(start|stop|dry)$ && -f $hostfile && -n $script ]] ||
    die "usage: $(basename "$0") start|stop|dry HOSTFILE SCRIPT [flags...]"
shift 3
script_path=$(cd "$(dirname "$script")" && pwd)/$(basename "$script")
[[ -x $script_path ]] || die "$script: not an executable launch script"
hostfile=$(cd "$(dirname "$hostfile")" && pwd)/$(basename "$hostfile")
run_name=$(grep -o '^launch [^ ]*' "$script_path" | cut -d' ' -f2)
log_dir=${LOG_DIR:-$REPO_ROOT/logs/$run_name}

hosts=()
while read -r line; do
    line=${line%%#*}
    read -r line _ <<<"$line" || true
    [[ -n $line ]] && hosts+=("$line")
done <"$hostfile"

env_args=()
for name in "${PASS_ON[@]}" $(compgen -v | grep -E '^(NCCL|GLOO|TORCH|CUDA)_' || true); do
    [[ -n ${!name:-} ]] && env_args+=("$name=${!name}")
done

for i in "${!hosts[@]}"; do
    host=${hosts[$i]}
    case $action in
        start)
            remote="cd $(printf %q "$REPO_ROOT") && $(printf '%q ' env "${env_args[@]}" HOSTFILE="$hostfile" NODE_RANK="$i" nohup "$script_path" "$@") >/dev/null 2>&1 &"
            echo "node $i ($host): starting $(basename "$script_path"); log $log_dir/node-$i.log"
            ssh -n "$host" "$remote"
            ;;
        dry)
            ssh -n "$host" "cd $(printf %q "$REPO_ROOT") && $(printf '%q ' env "${env_args[@]}" HOSTFILE="$hostfile" NODE_RANK="$i" DRY_RUN=1 "$script_path" "$@")"
            ;;
        stop)
            # One node's stop stops all (the ranks agree through an all-reduce); stopping each
            # node's ranks as well costs nothing and covers a node that stopped answering.
            ssh -n "$host" "$(printf '%q ' "$SCRIPTS_DIR/stop.sh" "$log_dir")" || echo "node $i ($host): nothing stopped"
            ;;
    esac
done
