# Shared by the example scripts: run run_pretrain.py on whatever this machine has.
#   no GPU -> one CPU process; 1 GPU -> one process on it; N GPUs -> `accelerate launch`, one process per GPU.
# Usage: launch NAME ARGS...   (output in runs/NAME; the console is appended to $APOLLO_LOG_DIR/NAME.log, default
#        logs/, after a header line per run; later flags override earlier ones, so `--output_dir` or
#        `--max_train_steps` can be passed on)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
launch() {
  local name=$1; shift
  local logs=${APOLLO_LOG_DIR:-logs}
  mkdir -p "${logs}"
  local gpus
  gpus=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  local cmd=(python run_pretrain.py)
  if [ "${gpus}" -gt 1 ]; then
    cmd=(accelerate launch --multi_gpu --num_processes "${gpus}" --num_machines 1 --dynamo_backend no run_pretrain.py)
  fi
  local log="${logs}/${name}.log"
  cmd+=(--output_dir "runs/${name}" --overwrite_output_dir "$@")
  echo "[example] ${name}: ${gpus} GPU(s); log appended to ${log}, outputs in runs/${name}"
  # Appended, never truncated: a rerun (say, with a typo) keeps the log of the run before it.
  { printf '# %s ' "$(date -u +%FT%TZ)"; printf '%q ' "${cmd[@]}"; echo; } >>"${log}"
  # On a terminal the console keeps its progress bar (APOLLO_PROGRESS_BAR=1: python's output is a pipe
  # here), and the log file gets only the plain lines: awk keeps what follows a line's last \r, which
  # cuts the bar's carriage-return frames out. Not on a terminal: no bar at all.
  if [ -t 1 ]; then export APOLLO_PROGRESS_BAR=${APOLLO_PROGRESS_BAR:-1}; fi
  # Preemption or Ctrl-C signals every process of the job; the run checkpoints and exits. tee and awk
  # ignore the signal (they end when the run closes its output; dead, they would break its prints),
  # and this shell waits for the run (a trap runs after the foreground command ends) to return its status.
  # tee opens the console anew (/dev/fd/3): -a, or it would truncate a file the caller redirected with >>.
  trap ':' TERM INT
  { "${cmd[@]}" 2>&1 | (trap '' TERM INT; exec tee -a /dev/fd/3) |
      (trap '' TERM INT; exec awk '{ sub(/.*\r/, ""); print; fflush() }') >>"${log}"; } 3>&1
}
