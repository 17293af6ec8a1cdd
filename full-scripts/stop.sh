#!/usr/bin/env bash
# Stop a run of the full-scale scripts cleanly: every rank finishes its optimizer step, writes a
# checkpoint and exits 0; restart it with RESUME=1. run_pretrain.py turns SIGTERM into a stop
# request, and the ranks agree on stopping through an all-reduce each step, so signalling the ranks
# of ANY one node stops the whole job, all nodes included.
#
#   full-scripts/stop.sh LOG_DIR [--wait]     e.g. full-scripts/stop.sh logs/bert-base-apollo
#
# It reads LOG_DIR/node-K.pid (written by the launch script: launcher PID and host), and sends
# SIGTERM to that launcher's run_pretrain.py children on this machine only. The launcher itself is
# not signalled: torch's elastic agent would kill the ranks 30 s later, possibly mid-checkpoint.
# Ctrl-C in the terminal of a foreground launch also checkpoints, within that 30-s grace period.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

log_dir=${1:-}
[[ -n $log_dir && -d $log_dir ]] || die "usage: $(basename "$0") LOG_DIR [--wait]  (the run's log folder)"
wait_for_exit=${2:-}
launchers=()
for pidfile in "$log_dir"/node-*.pid; do
    [[ -e $pidfile ]] || continue
    read -r pid host <"$pidfile"
    is_this_host "$host" || continue
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$pidfile: launcher $pid is not running (stale file)"
        continue
    fi
    ranks=$(pgrep -P "$pid" -f run_pretrain.py || true)
    if [[ -z $ranks ]]; then
        echo "$pidfile: launcher $pid has no training process yet; try again in a moment"
        continue
    fi
    echo "$pidfile: SIGTERM to ranks" $ranks "(launcher $pid); they checkpoint at the end of this step"
    kill -TERM $ranks
    launchers+=("$pid")
done
((${#launchers[@]} > 0)) || die "no running launcher of this machine ($(hostname)) in $log_dir"
if [[ $wait_for_exit == --wait ]]; then
    for pid in "${launchers[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do sleep 2; done
    done
    echo "stopped; the newest checkpoint is in the run's OUTPUT_DIR (resume with RESUME=1)"
fi
