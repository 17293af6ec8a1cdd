# Shared part of the full-scale launch scripts (sourced by bert_base_*.sh, gpt2_base_*.sh, llama_base_*.sh).
#
# Everything that differs between sites comes from the environment; no host, path or credential
# is written here. See full-scripts/README.md for the variables. The launch is always
#   accelerate launch --config_file ACCELERATE_CONFIG <topology> run_pretrain.py <args>
# and APOLLO_SMOKE=1 runs that same command with 2 CPU processes, a tiny model, the embedded
# corpus and one optimizer step per epoch.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS_DIR="$REPO_ROOT/full-scripts"
PAPER_GPUS=32  # the official runs' GPUs: with a script's PER_DEVICE_BATCH and PAPER_ACCUM, the paper's global batch

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 2
}

# Is one of this machine's names or addresses equal to $1?
is_this_host() {
    local want=$1 name
    for name in "$(hostname)" "$(hostname -s 2>/dev/null)" "$(hostname -f 2>/dev/null)" $(hostname -I 2>/dev/null); do
        [[ -n $name && $name == "$want" ]] && return 0
    done
    return 1
}

# Sets NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, GPUS_PER_NODE. Sources, first found wins:
# the variables themselves; HOSTFILE (one host per line, the first is the main node, this node's
# rank is its line number unless NODE_RANK is set); SLURM's variables; a single local node.
resolve_topology() {
    if [[ -n ${HOSTFILE:-} ]]; then
        [[ -f $HOSTFILE ]] || die "HOSTFILE=$HOSTFILE: no such file"
        local hosts=() line i
        while read -r line; do
            line=${line%%#*}
            read -r line _ <<<"$line" || true  # first field: "host slots=8" style lines are fine
            [[ -n $line ]] && hosts+=("$line")
        done <"$HOSTFILE"
        ((${#hosts[@]} > 0)) || die "HOSTFILE=$HOSTFILE lists no host"
        NNODES=${NNODES:-${#hosts[@]}}
        MASTER_ADDR=${MASTER_ADDR:-${hosts[0]}}
        if [[ -z ${NODE_RANK:-} ]]; then
            for i in "${!hosts[@]}"; do
                if is_this_host "${hosts[$i]}"; then NODE_RANK=$i; break; fi
            done
            [[ -n ${NODE_RANK:-} ]] || die "this machine ($(hostname)) is not in HOSTFILE=$HOSTFILE; set NODE_RANK"
        fi
    fi
    NNODES=${NNODES:-${SLURM_NNODES:-1}}
    NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
    if [[ -z ${MASTER_ADDR:-} && -n ${SLURM_JOB_NODELIST:-} ]] && command -v scontrol >/dev/null; then
        MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    fi
    if [[ -z ${MASTER_ADDR:-} ]]; then
        ((NNODES == 1)) || die "NNODES=$NNODES: set MASTER_ADDR (the rank-0 node's address) or HOSTFILE"
        MASTER_ADDR=127.0.0.1
    fi
    MASTER_PORT=${MASTER_PORT:-29500}
    if [[ -z ${GPUS_PER_NODE:-} ]]; then
        GPUS_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        ((GPUS_PER_NODE > 0)) || die "no GPU found (nvidia-smi); set GPUS_PER_NODE, or APOLLO_SMOKE=1 for a CPU smoke run"
    fi
    [[ $NODE_RANK =~ ^[0-9]+$ && $NNODES =~ ^[0-9]+$ ]] && ((NODE_RANK < NNODES)) ||
        die "NODE_RANK=$NODE_RANK must be in 0..$((NNODES - 1))"
}

# The value of FLAG in ARGS... (the last one, as argparse takes it), or nothing.
flag_value() {
    local flag=$1 value=
    shift
    while (($#)); do
        case $1 in
            "$flag") value=${2:-}; shift ;;
            "$flag"=*) value=${1#*=} ;;
        esac
        shift
    done
    echo "$value"
}

# resolve_global_batch PROCESSES DEFAULT WANTED USER_FLAGS...: sets PER_DEVICE_BATCH, ACCUM and GLOBAL_BATCH
# (blocks per optimizer step) so that PROCESSES processes make WANTED blocks a step (DEFAULT if empty), and
# BATCH_NOTE to a line that says so. Steps per epoch, hence the stage boundaries and the LR schedule, follow
# the global batch, so one the processes cannot make is refused. ACCUM, or the user's
# --gradient_accumulation_steps, overrides the derived accumulation; the user's --per_device_train_batch_size
# replaces PER_DEVICE_BATCH.
resolve_global_batch() {
    local processes=$1 default=$2 wanted=${3:-$2}
    shift 3
    local user_batch user_accum
    user_batch=$(flag_value --per_device_train_batch_size "$@")
    user_accum=$(flag_value --gradient_accumulation_steps "$@")
    PER_DEVICE_BATCH=${user_batch:-$PER_DEVICE_BATCH}
    ACCUM=${user_accum:-${ACCUM:-}}
    [[ $PER_DEVICE_BATCH =~ ^[1-9][0-9]*$ ]] ||
        die "--per_device_train_batch_size $PER_DEVICE_BATCH: not a positive integer"
    local per_micro=$((processes * PER_DEVICE_BATCH))
    if [[ -n $ACCUM ]]; then
        [[ $ACCUM =~ ^[1-9][0-9]*$ ]] || die "ACCUM=$ACCUM: not a positive integer"
    else
        [[ $wanted =~ ^[1-9][0-9]*$ ]] || die "GLOBAL_BATCH=$wanted: not a positive integer"
        if ((wanted % per_micro != 0)); then
            local lower=$((wanted / per_micro * per_micro)) upper=$(((wanted / per_micro + 1) * per_micro))
            die "GLOBAL_BATCH=$wanted is not a multiple of $processes processes x $PER_DEVICE_BATCH blocks per device" \
                "= $per_micro; set GLOBAL_BATCH=$( ((lower > 0)) && echo "$lower or $upper" || echo "$upper")," \
                "or ACCUM, or another --per_device_train_batch_size"
        fi
        ACCUM=$((wanted / per_micro))
    fi
    GLOBAL_BATCH=$((per_micro * ACCUM))
    local noun=processes
    ((processes > 1)) || noun=process
    BATCH_NOTE="global batch $GLOBAL_BATCH blocks = $processes $noun x $PER_DEVICE_BATCH per device"
    BATCH_NOTE+=" x $ACCUM accumulation (default $default)"
}

# launch RUN_NAME TRAIN_FLAGS... -- USER_FLAGS...: TRAIN_FLAGS are the official settings; data,
# precision, logging and site flags follow, then the smoke-mode overrides, then the user's flags
# (argparse: the last occurrence of a flag wins, so the user's flags override everything).
launch() {
    local run_name=$1 train=() user=()
    shift
    while (($#)) && [[ $1 != -- ]]; do train+=("$1"); shift; done
    (($#)) && shift
    user=("$@")
    local config=${ACCELERATE_CONFIG:-$SCRIPTS_DIR/accelerate_ddp.yaml}
    [[ -f $config ]] || die "ACCELERATE_CONFIG=$config: no such file"
    local precision=${PRECISION:-bf16}
    local site=() smoke=() topo=()
    if [[ ${APOLLO_SMOKE:-0} == 1 ]]; then
        # Same launcher and config file, CPU-sized: 2 gloo processes on this machine.
        NNODES=1 NODE_RANK=0 GPUS_PER_NODE=2 MASTER_ADDR=127.0.0.1
        MASTER_PORT=${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
        precision=no
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
        OUTPUT_DIR=${OUTPUT_DIR:-$REPO_ROOT/runs/smoke/$run_name}
        LOG_DIR=${LOG_DIR:-$REPO_ROOT/logs/smoke/$run_name}
        # 2 blocks per process and the script's accumulation unless ACCUM says otherwise (GLOBAL_BATCH, meant
        # for the full-scale runs, is ignored: it would make the smoke run as large).
        PER_DEVICE_BATCH=2
        resolve_global_batch 2 $((2 * 2 * PAPER_ACCUM)) "" "${user[@]}"
        # One optimizer step per epoch: as many training blocks as one global batch.
        smoke=(--cpu --config_overrides "$SMOKE_MODEL" --max_seq_length 32
               --max_train_samples "$GLOBAL_BATCH" --max_eval_samples 8 --per_device_eval_batch_size 4
               --eval_steps 10 --save_steps 20 --logging_steps 10 --dataloader_num_workers "${LOADER_WORKERS:-1}"
               --preprocessing_num_workers "${PREPROCESS_WORKERS:-2}")
        if [[ ${RESUME:-0} != 1 ]]; then smoke+=(--overwrite_output_dir); fi  # smoke runs start over
        if grep -q 'distributed_type: *FSDP' "$config"; then
            echo "note: Accelerate applies FSDP only on GPUs; this CPU smoke run trains with DDP (gloo)" >&2
        fi
    else
        if [[ ${PREPROCESS_ONLY:-0} == 1 ]]; then  # no training: the batch does not matter
            NNODES=1 NODE_RANK=0 GPUS_PER_NODE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-29500}
            ACCUM=${ACCUM:-$PAPER_ACCUM} BATCH_NOTE=
        else
            resolve_topology
            resolve_global_batch $((NNODES * GPUS_PER_NODE)) $((PAPER_GPUS * PER_DEVICE_BATCH * PAPER_ACCUM)) \
                "${GLOBAL_BATCH:-}" "${user[@]}"
        fi
        [[ -n ${DATASET_DIR:-} ]] || die "set DATASET_DIR to a dataset saved by download_train_datasets.py"
        OUTPUT_DIR=${OUTPUT_DIR:-$REPO_ROOT/runs/$run_name}
        LOG_DIR=${LOG_DIR:-$REPO_ROOT/logs/$run_name}
        site=(--dataset_dir "$DATASET_DIR" --tokenizer_name "$TOKENIZER"
              --preprocessing_num_workers "${PREPROCESS_WORKERS:-16}"
              --dataloader_num_workers "${LOADER_WORKERS:-4}" --max_eval_samples "${EVAL_BLOCKS:-2048}"
              --eval_steps "${EVAL_STEPS:-1000}" --save_steps "${SAVE_STEPS:-2000}"
              --save_total_limit "${SAVE_TOTAL_LIMIT:-3}" --logging_steps 100 --report_to "${REPORT_TO:-none}")
    fi
    topo=(--num_machines "$NNODES" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR"
          --main_process_port "$MASTER_PORT" --num_processes $((NNODES * GPUS_PER_NODE))
          --mixed_precision "$precision" --dynamo_backend no)
    if grep -q 'distributed_type: *FSDP' "$config"; then
        topo+=(--fsdp_transformer_layer_cls_to_wrap "$FSDP_WRAP")
    fi
    if [[ ${RESUME:-0} == 1 ]]; then
        site+=(--resume_from_checkpoint latest)  # the newest complete checkpoint in OUTPUT_DIR
    fi
    if [[ ${TORCH_COMPILE:-0} == 1 ]]; then site+=(--torch_compile); fi
    if [[ ${NO_TF32:-0} == 1 ]]; then site+=(--no_tf32); fi

    # Other ranks wait while the main process builds the token cache (hours at full scale), so the
    # process group's timeout is long, as in the official scripts (DDP_TIMEOUT seconds).
    local args=("${train[@]}" --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$ACCUM"
                --mixed_precision "$precision" --output_dir "$OUTPUT_DIR"
                --apollo_info_output_file apollo_schedule --ddp_timeout "${DDP_TIMEOUT:-36000}"
                "${site[@]}" "${smoke[@]}" "${user[@]}")
    local cmd=(accelerate launch --config_file "$config" "${topo[@]}" "$REPO_ROOT/run_pretrain.py" "${args[@]}")
    if [[ ${PREPROCESS_ONLY:-0} == 1 ]]; then  # one process builds the tokenizer and token cache, then exits
        cmd=(python "$REPO_ROOT/run_pretrain.py" "${args[@]}" --preprocess_only)
    fi
    if [[ ${DRY_RUN:-0} == 1 ]]; then  # show what this node would run, and stop
        echo "node $NODE_RANK of $NNODES, $GPUS_PER_NODE processes per node, main $MASTER_ADDR:$MASTER_PORT"
        [[ -z $BATCH_NOTE ]] || echo "$BATCH_NOTE"
        printf '%q ' "${cmd[@]}"
        echo
        return 0
    fi
    mkdir -p "$LOG_DIR"
    local log="$LOG_DIR/node-$NODE_RANK.log" pidfile="$LOG_DIR/node-$NODE_RANK.pid"
    {
        echo "# $(date -u +%FT%TZ) $(hostname) node $NODE_RANK/$NNODES, $GPUS_PER_NODE processes per node," \
             "main $MASTER_ADDR:$MASTER_PORT"
        [[ -z $BATCH_NOTE ]] || echo "# $BATCH_NOTE"
        printf '%q ' "${cmd[@]}"
        echo
    } | tee -a "$log"
    # The subshell records its PID and becomes the launcher (exec), in the foreground so that Ctrl-C
    # reaches every rank; stop.sh finds the ranks as this PID's children. A preemption or Ctrl-C
    # signals every process of the job: the ranks checkpoint and exit, tee ignores the signal (dead,
    # it would break the ranks' prints), and this shell waits for them (a trap runs after the
    # foreground pipeline ends) to log the exit status.
    local rc=0
    set -o pipefail
    trap ':' TERM INT
    (
        echo "$BASHPID $(hostname)" >"$pidfile"
        cd "$REPO_ROOT"
        exec "${cmd[@]}"
    ) 2>&1 | (trap '' TERM INT; exec tee -a "$log") || rc=$?
    rm -f "$pidfile"
    echo "# $(date -u +%FT%TZ) exit status $rc" | tee -a "$log"
    return $rc
}
