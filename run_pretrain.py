#!/usr/bin/env python
"""Pretrain BERT (masked LM), GPT-2 or another decoder family of transformers (causal LM; see
apollo/families.py for which), from scratch or with Apollo, in one Accelerate loop.

    python run_pretrain.py --model_type gpt2 --output_dir runs/gpt2 \
        --apollo_layers 1,3,6,12 --apollo_epoch_list 1,2,5,10 --num_train_epochs 10

Without --apollo_layers the same loop trains the full model from scratch. The method itself lives
in `apollo/`; this file wires it into a training loop that reads top to bottom.

Design choice for DDP: the model always holds all L layer slots and the optimizer is built once
over all of them, as in the official release: (1) the optimizer state then behaves exactly as the
official one at growth (positional moments, no state for new slots), (2) model and optimizer are
prepared once, so `save_state`/`load_state` see one model and one optimizer for the whole run, and
growth is an in-place copy that AdamW never notices. Slots the current stage does not use (U..L-1)
get no gradient; rather than letting DDP search for unused parameters on every step (the official
`find_unused_parameters=True`), they are kept out of DDP and the DDP wrapper alone is rebuilt at
each growth (apollo/stage_ddp.py). Every depth plan uses all U trained slots, so DDP needs no search.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm
from transformers import CONFIG_MAPPING, AutoConfig, get_scheduler

from apollo.checkpoint import read_trainer_state, resolve_resume, save_checkpoint
from apollo import families
from apollo.config import ConfigError, TrainConfig, parse_config
from apollo.console import SurvivingStream
from apollo.data import (EVAL_MASK_SEED, BlockCollator, KeyedBlocks, StepBatchSampler, check_data_args, eval_batches,
                         prepare_first,
                         load_text_splits, token_blocks)
from apollo.flops import training_flops
from apollo.growth import grow_layers, growth_noise_seed
from apollo.kinds import ROLE_PURPOSE, build_model, kind_of, max_positions
from apollo.logs import JsonLines, close_open_logs, schedule_record, stack_info
from apollo.plan import depth_plan, growth_map
from apollo.rank_failures import FailureGuard
from apollo.sampling import sample_depth
from apollo.schedule import StageSchedule
from apollo.shared_layers import layer_slots, run_along
from apollo.stage_ddp import destroy_process_group_last, keep_idle_slots_out_of_ddp, rewrap_ddp
from apollo.throughput import device_peak_tflops, mfu, tokens_per_s
from apollo.tokenizer import load_tokenizer, local_tokenizer

# Flags that must match between a checkpoint and the run that resumes from it (the model's shape is
# compared field by field, so --config_overrides may be reordered).
RESUME_MUST_MATCH = ("model_type", "tokenizer_name", "tokenizer_vocab_size",
                     "max_seq_length", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
                     "num_train_epochs", "max_train_steps", "apollo_layers", "apollo_epoch_list", "apollo_step_list",
                     "dist_function", "grow_method", "copy_optimizer_state_on_growth", "learning_rate",
                     "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2",
                     "adam_epsilon", "max_grad_norm", "mlm_probability", "max_train_samples", "lr_decay_ratio",
                     "lr_decay_type", "growth_warmup_steps", "growth_noise")
TOKENIZER_FIELDS = {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"}  # set by fit_vocabulary
EXAMPLE_KINDS = "bert, gpt2, llama, qwen3, granite, mistral"


# ----------------------------------------------------------------------------------------------
# Setup: everything that can be wrong is checked here, before any data is read or file written.
# ----------------------------------------------------------------------------------------------
def model_config(cfg: TrainConfig):
    """The model config (vocabulary fixed later from the tokenizer); infers --model_type."""
    if cfg.config_name:
        config = AutoConfig.from_pretrained(cfg.config_name)
        if cfg.model_type and cfg.model_type != config.model_type:
            raise ConfigError("model_type", f"{cfg.model_type} but --config_name is a {config.model_type} config")
        cfg.model_type = config.model_type
    elif cfg.model_type:
        if cfg.model_type not in CONFIG_MAPPING:
            raise ConfigError("model_type", f"unknown model type {cfg.model_type!r} (e.g. {EXAMPLE_KINDS}; "
                                            f"the README lists every family)")
        try:
            config = CONFIG_MAPPING[cfg.model_type]()
        except Exception as err:  # a family whose own default config fails its validation
            raise ConfigError("model_type", f"the default {cfg.model_type} config cannot be built "
                                            f"({families.one_line(err)})") from None
    else:
        raise ConfigError("model_type", f"give --model_type ({EXAMPLE_KINDS}, ...) or --config_name")
    if cfg.config_overrides:
        try:
            if not kind_of(cfg.model_type).rebuild_on_overrides:
                config.update_from_string(cfg.config_overrides)
            else:  # rebuilt, so that derived fields follow (Llama's head_dim, Qwen2's layer_types)
                overrides = families.parse_overrides(cfg.config_overrides, config)
                if cfg.config_name:
                    for key, value in overrides.items():
                        setattr(config, key, value)
                else:
                    config = families.build_config(cfg.model_type, overrides)
        except (ValueError, TypeError) as err:
            raise ConfigError("config_overrides", str(err)) from None
    why = families.check_family(config)  # after the overrides: they may make blocks differ by position
    if why:
        raise ConfigError("config_name" if cfg.config_name else "model_type", why)
    positions = max_positions(config)
    if positions is not None and cfg.max_seq_length > positions:
        raise ConfigError("max_seq_length", f"{cfg.max_seq_length} exceeds the model's {positions} positions")
    if cfg.apollo and cfg.layer_list()[-1] != config.num_hidden_layers:
        raise ConfigError("apollo_layers", f"must end at the model's depth {config.num_hidden_layers}, "
                                           f"got {cfg.apollo_layers}")
    return config


def check_vocabulary(cfg: TrainConfig, config, n: int) -> bool:
    """Refuse a tokenizer larger than an explicitly sized model (unless resizing is asked for).

    Called before any data work with the named tokenizer's size or the size a local tokenizer is
    trained to, and again with the trained tokenizer. True if the config's vocab_size is explicit.
    """
    explicit = bool(cfg.config_name or "vocab_size" in (cfg.config_overrides or ""))
    if n > config.vocab_size and explicit and not cfg.resize_token_embeddings:
        flag = "tokenizer_name" if cfg.tokenizer_name else "tokenizer_vocab_size"
        raise ConfigError(flag, f"tokenizer has {n} tokens but the model's vocab_size is {config.vocab_size}; "
                                f"pass --resize_token_embeddings to grow the embeddings")
    return explicit


def fit_vocabulary(cfg: TrainConfig, config, tokenizer) -> None:
    """Size the embeddings for the tokenizer: set for a new config, checked for a named one."""
    n = len(tokenizer)
    explicit = check_vocabulary(cfg, config, n)
    if not explicit or n > config.vocab_size:
        config.vocab_size = n
    for role, token in kind_of(cfg.model_type).ids_from_tokenizer.items():  # the config's ids are the tokenizer's
        setattr(config, f"{role}_token_id", getattr(tokenizer, f"{token}_token_id"))


def check_precision(cfg: TrainConfig) -> None:
    on_gpu = torch.cuda.is_available() and not cfg.cpu
    if cfg.precision == "fp16" and not on_gpu:
        raise ConfigError("mixed_precision", "fp16 needs a CUDA GPU; use bf16 or no on the CPU")
    if cfg.precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision", "bf16 is not supported by this GPU; use fp16 or no")


def named_tokenizer(cfg: TrainConfig):
    """The --tokenizer_name tokenizer (loaded early so its size is checked before any data work), else None."""
    if not cfg.tokenizer_name:
        return None
    try:
        tokenizer = load_tokenizer(cfg.tokenizer_name)
    except (OSError, ValueError) as err:
        raise ConfigError("tokenizer_name", f"cannot load {cfg.tokenizer_name!r}: {str(err).splitlines()[0]}") from None
    kind = kind_of(cfg.model_type)
    for role in (*kind.frame_before, *kind.frame_after):  # the tokens that frame each document in a block
        if getattr(tokenizer, f"{role}_token_id") is None:
            raise ConfigError("tokenizer_name", f"the tokenizer has no {ROLE_PURPOSE[role]}")
    return tokenizer


def check_output_dir(cfg: TrainConfig, config) -> Path | None:
    """Refuse to clobber a user's files; return the checkpoint to resume from, if any."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("output_dir", f"{out} exists and is not a folder")
    if cfg.resume_from_checkpoint:
        ckpt = resolve_resume(cfg.resume_from_checkpoint, out)
        if ckpt is None or not (ckpt / "trainer_state.json").is_file() or not (ckpt / "run_config.json").is_file():
            raise ConfigError("resume_from_checkpoint", f"no complete checkpoint at {cfg.resume_from_checkpoint}"
                                                        f"{' in ' + str(out) if cfg.resume_from_checkpoint == 'latest' else ''}")
        saved = json.loads((ckpt / "run_config.json").read_text())
        for name in RESUME_MUST_MATCH:
            # A flag newer than the checkpoint had its default then (the knobs are off by default).
            theirs = saved.get(name, TrainConfig.__dataclass_fields__[name].default)
            if theirs != getattr(cfg, name):
                raise ConfigError(name, f"{getattr(cfg, name)!r} differs from the checkpoint's {theirs!r}")
        # The model's shape, however it was given (--config_name or --config_overrides, in any order).
        # Token ids and vocabulary size follow the tokenizer, which the flags above already pin down.
        ours = json.loads(json.dumps(config.to_dict(), default=str))
        theirs = saved.get("model_config") or ours
        for key in sorted((set(ours) | set(theirs)) - TOKENIZER_FIELDS):
            if ours.get(key) != theirs.get(key):
                raise ConfigError("config_name" if cfg.config_name else "config_overrides",
                                  f"model {key}={ours.get(key)!r} differs from the checkpoint's {theirs.get(key)!r}")
        return ckpt
    if out.exists() and any(out.iterdir()) and not cfg.overwrite_output_dir:
        raise ConfigError("output_dir", f"{out} is not empty; pass --overwrite_output_dir or --resume_from_checkpoint")
    return None


def check_resume_world(checkpoint: Path, world_size: int) -> None:
    """The data order, stage boundaries and per-rank RNG states all assume the checkpoint's process count."""
    saved = json.loads((checkpoint / "run_config.json").read_text()).get("world_size", world_size)
    if saved != world_size:
        raise ConfigError("resume_from_checkpoint", f"{checkpoint} was written by {saved} processes, this run has "
                                                    f"{world_size}; resume with the same number of processes")


def build_schedule(cfg: TrainConfig, steps_per_epoch: int, total_steps: int, full_depth: int) -> StageSchedule:
    if not cfg.apollo:
        return StageSchedule.single_stage(full_depth, total_steps)
    if cfg.apollo_epoch_list:
        schedule = StageSchedule.from_epochs(cfg.layer_list(), cfg.stage_ends(), steps_per_epoch)
        flag = "apollo_epoch_list"
    elif cfg.step_fractions:
        schedule = StageSchedule.from_fractions(cfg.layer_list(), cfg.stage_ends(), total_steps)
        flag = "apollo_step_list"
    else:
        schedule = StageSchedule(cfg.layer_list(), cfg.stage_ends())
        flag = "apollo_step_list"
    ends = schedule.end_steps
    if ends[0] < 1 or any(b <= a for a, b in zip(ends, ends[1:])):
        raise ConfigError(flag, f"stages end at optimizer steps {list(ends)}: each stage needs at least one step "
                                f"({steps_per_epoch} steps per epoch)")
    if ends[-1] > total_steps:  # a stage the run never finishes is a mistake, not a truncation
        raise ConfigError(flag, f"stages end at optimizer steps {list(ends)}, beyond the run's {total_steps} steps "
                                f"({steps_per_epoch} steps per epoch)")
    return schedule


def build_lr_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    """transformers' scheduler: the step's LR is a function of the step alone (growth ramp: see the loop)."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    extra = None
    if cfg.lr_scheduler_type == "warmup_stable_decay":
        decay = max(1, round(cfg.lr_decay_ratio * total_steps))
        if warmup + decay > total_steps:
            raise ConfigError("lr_decay_ratio", f"{warmup} warmup and {decay} decay steps exceed the run's "
                                                f"{total_steps} steps")
        extra = {"num_decay_steps": decay, "decay_type": cfg.lr_decay_type}
    return get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         scheduler_specific_kwargs=extra)


def build_optimizer(cfg: TrainConfig, model):
    # No weight decay on biases and LayerNorm weights (all 1-D tensors), as the HF Trainer does.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)


class StopRequest:
    """SIGTERM/SIGINT (cluster preemption): finish the step, checkpoint, and exit."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers outlive a job-wide SIGTERM/SIGINT (a scheduler signals every process of the
    job): the rank still needs their batches to finish its step and checkpoint. They end when the
    loader shuts them down, when the rank dies (they watch their parent), or at kill_loader_workers."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def kill_loader_workers() -> None:
    """At exit (atexit; it runs before multiprocessing's own exit function): workers the loader has not
    shut down, after an error, would ignore that function's SIGTERM and keep the rank waiting forever."""
    for worker in multiprocessing.active_children():
        worker.kill()


def step_outcome(accelerator, loss, grad_norm, stop_requested: bool) -> tuple[float, float, bool]:
    """The step's loss (mean over ranks), gradient norm and whether any rank was asked to stop.

    One all-reduce and one transfer to the host for the three: each `.item()` waits for the device.
    The gradient norm needs no reduction: DDP has already averaged the gradients on every rank. The
    flag is filled in on the device (torch.full), not copied from the host.
    """
    shared = torch.stack([loss.float(), torch.full((), float(stop_requested), device=loss.device)])
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(shared)  # sum: a mean for the loss, "any" for the flag
    loss_sum, stops, norm = torch.cat([shared, grad_norm.detach().float().reshape(1)]).tolist()
    return loss_sum / accelerator.num_processes, norm, stops > 0


def check_accelerator(cfg: TrainConfig, accelerator) -> None:
    """What the launcher chose (FSDP, whole-model compilation) must suit the run; TF32 on where it helps."""
    if cfg.apollo and accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError("apollo_layers", "Apollo runs are not supported under FSDP (shared blocks, growth and the "
                                           "final save are verified with DDP only); launch with "
                                           "full-scripts/accelerate_ddp.yaml")
    dynamo = getattr(accelerator.state, "dynamo_plugin", None)
    if cfg.apollo and dynamo is not None and str(dynamo.backend).split(".")[-1].upper() != "NO":
        raise ConfigError("dynamo_backend", "Accelerate's dynamo_backend compiles the whole model, which recompiles "
                                           "for every new depth plan (8 by default, then silently runs eager); set "
                                           "dynamo_backend: 'NO' and pass --torch_compile to compile per block")
    # Ampere+ only: TF32 matmuls for whatever float32 work autocast leaves (and for --mixed_precision no).
    if accelerator.device.type == "cuda" and not cfg.no_tf32 and torch.cuda.get_device_capability()[0] >= 8:
        torch.set_float32_matmul_precision("high")


def compile_blocks(model) -> None:
    """torch.compile each block in place: module objects keep their identity, so the shared-layer plan,
    growth and state_dict keys work unchanged, and blocks of one shape share one compiled graph.

    Static shapes (dynamic=False): otherwise the first evaluation batch of another size (the full-scale
    scripts evaluate 48 blocks a device and train 16 or 12) makes dynamo recompile the blocks with a
    symbolic batch dimension, and training then runs that dynamic graph. Evaluation pads its last batch
    to the full size (evaluate), so one graph serves training and one evaluation."""
    for block in layer_slots(model):
        block.compile(dynamic=False)


def evaluate(accelerator, model, slots_plan, blocks, collator, batch_size, pad: bool = False) -> float:
    """Mean loss per target token over the fixed validation blocks, at full depth.

    With `pad`, a last, partial batch is filled up to `batch_size` rows that carry no target (labels
    all -100): the same loss, and no new input shape for compiled blocks."""
    raw = accelerator.unwrap_model(model)
    raw.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    runs = 0
    with torch.no_grad(), run_along(raw, slots_plan), accelerator.autocast():
        for batch in eval_batches(blocks, batch_size, accelerator.process_index, accelerator.num_processes, collator,
                                  pad=pad):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            loss = raw(**batch).loss.double()
            labels = batch["labels"][:, kind_of(raw.config.model_type).label_shift:]  # the targets the loss counts
            count = (labels != -100).sum()
            total += torch.stack([loss * count, count.double()])
            runs += 1
        if accelerator.distributed_type == DistributedType.FSDP:
            # Every FSDP forward gathers weights from all ranks, so all ranks must run equally many:
            # one with fewer batches runs extra passes whose results are ignored.
            most = int(accelerator.reduce(torch.tensor(runs, device=accelerator.device), "max").item())
            if most > runs:
                spare = next(eval_batches(blocks, batch_size, 0, accelerator.num_processes, collator))
                for _ in range(most - runs):
                    raw(**{k: v.to(accelerator.device) for k, v in spare.items()})
    raw.train()
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1]).item()


def main(argv=None, guard: FailureGuard | None = None) -> None:
    guard = guard or FailureGuard()
    cfg = parse_config(argv)
    # A progress bar on a terminal; into a file (not a TTY) only plain lines, every --logging_steps, and no
    # carriage-return frames from datasets' or transformers' bars either. APOLLO_PROGRESS_BAR=1 forces the
    # bars (the example scripts set it when their console is a terminal and filter the frames from their log).
    bar = sys.stderr.isatty() or os.environ.get("APOLLO_PROGRESS_BAR") == "1"
    if not bar:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    check_data_args(cfg)
    config = model_config(cfg)
    tokenizer = named_tokenizer(cfg)
    check_vocabulary(cfg, config, len(tokenizer) if tokenizer else cfg.tokenizer_vocab_size)
    check_precision(cfg)
    resume_dir = None if cfg.preprocess_only else check_output_dir(cfg, config)

    # Apollo's idle slots are kept out of DDP (apollo/stage_ddp.py), so DDP needs no unused-parameter search.
    # APOLLO_TEST_DDP_FIND_UNUSED=1 (tests only) keeps the former setup: every slot in DDP, with the search.
    legacy_ddp = cfg.apollo and os.environ.get("APOLLO_TEST_DDP_FIND_UNUSED") == "1"
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=legacy_ddp)]
    if cfg.ddp_timeout:  # how long other ranks may wait, e.g. while the main process builds the token cache
        handlers.append(InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.ddp_timeout)))
    # Accelerate sets up gloo for CPU processes only when told cpu=True: without it, a CPU-only
    # `torchrun --nproc_per_node 2` silently runs two independent one-process trainings.
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = cfg.cpu or (launched > 1 and not torch.cuda.is_available())
    accelerator = Accelerator(mixed_precision=cfg.precision, cpu=cpu, kwargs_handlers=handlers,
                              log_with=None if cfg.report_to == "none" else cfg.report_to, project_dir=cfg.output_dir)
    if launched > 1 and accelerator.num_processes != launched:
        raise ConfigError("cpu", f"launched as {launched} processes but Accelerate set up {accelerator.num_processes} "
                                 f"on {accelerator.device}; pass --cpu or launch on the devices Accelerate found")
    guard.start(accelerator)  # from here on, a failure on any rank ends every rank
    out = Path(cfg.output_dir)
    if resume_dir:
        check_resume_world(resume_dir, accelerator.num_processes)

    check_accelerator(cfg, accelerator)
    peak_tflops = cfg.peak_tflops
    if peak_tflops is None and accelerator.device.type == "cuda":
        peak_tflops = device_peak_tflops(torch.cuda.get_device_name(accelerator.device))
    if peak_tflops is None:
        accelerator.print(f"MFU not logged: no peak bf16 FLOP/s known for {device_name(accelerator.device)}; "
                          f"pass --peak_tflops")

    # Data and tokenizer: prepared once (the main process first, then one per node), read from the cache by the rest.
    if accelerator.num_processes > 1 and accelerator.is_main_process:
        limit = f"{cfg.ddp_timeout} s" if cfg.ddp_timeout else "torch's default timeout"
        accelerator.print(f"Preparing data; the other processes wait for it up to {limit} (--ddp_timeout)")
    with prepare_first(accelerator, cfg.ddp_timeout):
        raw = load_text_splits(cfg)
        if tokenizer is None:
            tokenizer = local_tokenizer(cfg.model_type, raw["train"], raw["train"]._fingerprint,
                                        cfg.tokenizer_vocab_size, cfg.cache_dir)
        fit_vocabulary(cfg, config, tokenizer)
        blocks = token_blocks(raw, tokenizer, cfg.model_type, cfg.max_seq_length, cfg.preprocessing_num_workers,
                              cfg.cache_dir)
    train_blocks, eval_blocks = blocks["train"], blocks.get("validation")
    if cfg.preprocess_only:
        accelerator.print(f"Tokenizer and token cache ready: {len(train_blocks)} training and "
                          f"{len(eval_blocks) if eval_blocks else 0} validation blocks of {cfg.max_seq_length} tokens")
        return
    if len(train_blocks) == 0:
        raise ConfigError("dataset_dir" if cfg.dataset_dir else "train_file",
                          f"the training text makes no block of {cfg.max_seq_length} tokens")
    if eval_blocks is None:
        accelerator.print("No evaluation: --validation_split_percentage 0 and no validation set")
    if cfg.max_train_samples:
        train_blocks = train_blocks.select(range(min(cfg.max_train_samples, len(train_blocks))))
    if eval_blocks and cfg.max_eval_samples and cfg.max_eval_samples < len(eval_blocks):
        # Evenly spaced, not the first N: the first blocks are a few documents of one kind, and
        # their loss (measured: 6.96 vs 6.67 on a spread of 48 blocks) is not the validation set's.
        stride = len(eval_blocks) / cfg.max_eval_samples
        eval_blocks = eval_blocks.select([int(i * stride) for i in range(cfg.max_eval_samples)])
    if eval_blocks is not None and len(eval_blocks) == 0:
        raise ConfigError("validation_file", f"the validation text makes no block of {cfg.max_seq_length} tokens")

    # Step arithmetic: an epoch is the whole number of global batches in the training blocks (the rest
    # is dropped), and at least one: fewer blocks than a global batch make one step, padded by wrapping
    # round the epoch's permutation as DistributedSampler pads (StepBatchSampler).
    world, b, accum = accelerator.num_processes, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    steps_per_epoch = max(len(train_blocks) // (b * world * accum), 1)
    total_steps = cfg.max_train_steps or steps_per_epoch * cfg.num_train_epochs
    full_depth = config.num_hidden_layers
    schedule = build_schedule(cfg, steps_per_epoch, total_steps, full_depth)
    eval_every = cfg.eval_steps or max(total_steps // 10, 1)
    save_every = (steps_per_epoch if cfg.save_strategy == "epoch" else cfg.save_steps or max(total_steps // 4, 1))

    # Every check has passed: only now may --overwrite_output_dir clear the folder.
    if accelerator.is_main_process and cfg.overwrite_output_dir and not resume_dir and out.exists():
        shutil.rmtree(out)
    accelerator.wait_for_everyone()

    # Model, optimizer, LR schedule.
    set_seed(cfg.seed)
    model = build_model(config)  # SDPA attention where the family has it
    if cfg.torch_compile:
        compile_blocks(model)
    if cfg.gradient_checkpointing:
        # Non-reentrant: a shared block runs several times per pass, and reentrant checkpointing
        # marks its parameters ready once per use, which DDP refuses ("marked ready twice").
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(cfg, model)
    # Not passed to prepare(): Accelerate would step it once per process. We step it once per optimizer step.
    lr_scheduler = build_lr_scheduler(cfg, optimizer, total_steps)
    # Resume: weights, optimizer, LR schedule and every RNG; the step fixes stage, data and depths.
    state = read_trainer_state(resume_dir) if resume_dir else {"step": 0, "tokens": 0, "flops": 0.0, "elapsed_s": 0.0}
    slots = layer_slots(model)
    track_stage_in_ddp = cfg.apollo and not legacy_ddp
    if track_stage_in_ddp:  # DDP covers the slots of the stage the run starts (or resumes) in
        keep_idle_slots_out_of_ddp(model, slots, schedule.unique_layers(state["step"]))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    raw_model = accelerator.unwrap_model(model)
    if resume_dir:
        accelerator.load_state(str(resume_dir))
        accelerator.print(f"Resumed from {resume_dir} at step {state['step']}")
    resolved = {**vars(cfg), "world_size": world, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "stage_end_steps": list(schedule.end_steps), "stage_layers": list(schedule.layers),
                "device_peak_tflops": peak_tflops,
                "num_train_blocks": len(train_blocks), "num_eval_blocks": len(eval_blocks) if eval_blocks else 0,
                "model_config": config.to_dict()}
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(resolved, indent=1, default=str))
    keep = state["step"] if resume_dir else None
    metrics = JsonLines(out / "metrics.jsonl", keep, "step") if accelerator.is_main_process else None
    info = None
    if cfg.apollo_info_output_file:
        prefix = Path(cfg.apollo_info_output_file)
        prefix = prefix if prefix.is_absolute() else out / prefix
        info = JsonLines(f"{prefix}.rank_{accelerator.process_index}", keep - 1 if resume_dir else None,
                         "curr_global_step")
    if cfg.report_to != "none":
        accelerator.init_trackers("apollo", config={k: v for k, v in vars(cfg).items() if v is not None})

    masked = kind_of(cfg.model_type).masked
    collator = BlockCollator(tokenizer, masked, cfg.mlm_probability, cfg.seed)
    eval_collator = BlockCollator(tokenizer, masked, cfg.mlm_probability, EVAL_MASK_SEED)
    sampler = StepBatchSampler(len(train_blocks), b, world, accelerator.process_index, cfg.seed,
                               steps_per_epoch * accum, state["step"] * accum, total_steps * accum)
    stop = StopRequest()  # before the loader's workers start: they must ignore the signals from the outset
    loader = torch.utils.data.DataLoader(KeyedBlocks(train_blocks), batch_sampler=sampler, collate_fn=collator,
                                         num_workers=cfg.dataloader_num_workers, worker_init_fn=ignore_stop_signals,
                                         pin_memory=accelerator.device.type == "cuda",  # faster, async copies
                                         generator=torch.Generator())  # keeps the global RNG untouched
    batches = iter(loader)
    if cfg.dataloader_num_workers:
        atexit.unregister(kill_loader_workers)  # once per process, however many runs it makes (tests)
        atexit.register(kill_loader_workers)

    def say(text: str) -> None:
        """One console line; with a progress bar, above it (tqdm redraws the bar below the line)."""
        if accelerator.is_local_main_process and bar:
            tqdm.write(text)
        elif accelerator.is_local_main_process:
            print(text, flush=True)

    def flush_logs() -> None:
        for log in (metrics, info):
            if log:
                log.flush()

    def log_eval(step):
        if eval_blocks is None:  # --validation_split_percentage 0: said once at the start
            return
        full_plan = depth_plan(schedule.unique_layers(max(step - 1, 0)), full_depth, cfg.grow_method)
        loss = evaluate(accelerator, model, full_plan, eval_blocks, eval_collator, cfg.per_device_eval_batch_size,
                        pad=cfg.torch_compile)
        record = {"step": step, "flops": state["flops"], "tokens": state["tokens"],
                  "elapsed_s": round(state["elapsed_s"], 6), "eval_loss": loss}
        if metrics:
            metrics.write(record)
            metrics.flush()
        accelerator.log({"eval_loss": loss}, step=step)
        say(f"step {step}: eval_loss {loss:.4f} at {state['flops']:.3e} FLOPs")
        if not math.isfinite(loss):  # raised before this step's checkpoint: these weights are not worth one
            raise diverged(f"eval_loss {loss}", step)

    def diverged(what: str, at_step: int) -> FloatingPointError:
        last = state.get("last_checkpoint")
        where = f"last good checkpoint: {out / f'checkpoint-{last}'}" if last else "no checkpoint was written"
        return FloatingPointError(f"non-finite {what} at step {at_step}; stopped ({where})")

    # ------------------------------------------------------------------------------------------
    # The training loop. `step` counts finished optimizer steps; the step being computed has
    # 0-based index `step`, and everything that varies (stage, depth, batch, LR) is a function of it.
    # ------------------------------------------------------------------------------------------
    step = state["step"]
    model.train()
    if step == 0:
        log_eval(0)
    progress = tqdm(total=total_steps, initial=step, disable=not (accelerator.is_local_main_process and bar),
                    desc="train")
    clock = time.perf_counter()
    tokens_per_micro = b * cfg.max_seq_length * world
    last_line = dict(state)  # throughput on a console line: since the previous line
    while step < total_steps:
        guard.step_begins(step + 1)
        unique = schedule.unique_layers(step)
        gmap = None
        if schedule.grows_at(step):  # first step of a new stage: copy layers along the growth map
            old = schedule.unique_layers(step - 1)
            gmap = growth_map(old, unique, cfg.grow_method)
            grow_layers(slots, gmap, optimizer.optimizer, cfg.copy_optimizer_state_on_growth,
                        noise=cfg.growth_noise, noise_seed=growth_noise_seed(cfg.seed, step))
            if track_stage_in_ddp and keep_idle_slots_out_of_ddp(raw_model, slots, unique):
                model = rewrap_ddp(accelerator, model)  # DDP now covers the grown slots
            say(f"step {step}: grew {old} -> {unique} unique layers, map {gmap}")
            if metrics:
                metrics.write({"step": step + 1, "event": "growth", "from": old, "to": unique, "map": gmap})

        loss_sum, depth_sum, step_flops = 0.0, 0, 0.0
        for micro in range(accum):
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
            depth = sample_depth(cfg.dist_function, unique, full_depth, cfg.seed, step, micro)
            plan = depth_plan(unique, depth, cfg.grow_method)
            if info:
                grows_now = gmap is not None and micro == 0
                info.write(schedule_record(step * accum + micro, step, unique, depth, plan, grows_now,
                                           stack_info(schedule.layers, schedule.stage_index(step), cfg.grow_method)))
            # Gradients are synchronised across ranks only on the last micro-batch of the step.
            sync = accelerator.no_sync(model) if micro < accum - 1 else contextlib.nullcontext()
            with sync, run_along(raw_model, plan):
                loss = model(**batch).loss
                accelerator.backward(loss / accum)
            loss_sum += loss.detach().float()
            depth_sum += depth
            step_flops += training_flops(config, b, cfg.max_seq_length, depth) * world
        # Clipping at infinity only measures the norm. The step's one wait for the device follows.
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
        loss_mean, grad_norm, stopping = step_outcome(accelerator, loss_sum / accum, grad_norm, stop.requested)
        # Stop before a non-finite update reaches the weights (and a checkpoint); fp16's grad scaler
        # skips overflowing steps by itself.
        bad = None if math.isfinite(loss_mean) else f"loss {loss_mean}"
        if bad is None and accelerator.scaler is None and not math.isfinite(grad_norm):
            bad = f"gradient norm {grad_norm}"
        if bad:
            raise diverged(bad, step + 1)
        # The scheduler sets each group's LR from the step alone; the growth ramp scales it for this
        # step only (the scheduler's next step recomputes it from its base LR).
        ramp = schedule.growth_lr_factor(step, cfg.growth_warmup_steps)
        for group, scheduled in zip(optimizer.param_groups, lr_scheduler.get_last_lr()):
            group["lr"] = scheduled * ramp
        lr = optimizer.param_groups[0]["lr"]  # the rate this step applies, logged as such
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        step += 1
        seconds = time.perf_counter() - clock
        state.update(step=step, tokens=state["tokens"] + tokens_per_micro * accum,
                     flops=state["flops"] + step_flops, elapsed_s=state["elapsed_s"] + seconds)
        record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss_mean, "lr": lr,
                  "tokens": state["tokens"], "step_flops": step_flops, "flops": state["flops"],
                  "stage": schedule.stage_index(step - 1), "unique_layers": unique, "depth": depth_sum / accum,
                  "elapsed_s": round(state["elapsed_s"], 6),
                  "tokens_per_s": tokens_per_s(tokens_per_micro * accum, seconds),
                  "mfu": mfu(step_flops, seconds, world, peak_tflops)}
        if metrics:
            metrics.write(record)
        accelerator.log({k: record[k] for k in ("loss", "lr", "depth", "unique_layers", "flops")}, step=step)
        progress.update(1)
        progress.set_postfix(loss=f"{loss_mean:.3f}", U=unique, D=f"{depth_sum / accum:.1f}")
        if step % cfg.logging_steps == 0:
            say(f"step {step}/{total_steps} loss {loss_mean:.4f} lr {lr:.2e} U {unique} D {depth_sum / accum:.1f} "
                f"flops {state['flops']:.3e} {throughput(last_line, state, world, peak_tflops)}")
            last_line = dict(state)
            flush_logs()

        if step % eval_every == 0 or step == total_steps:
            log_eval(step)
        # A stop request always checkpoints, whatever --save_strategy says: that is its point.
        if stopping or (cfg.save_strategy != "no" and (step % save_every == 0 or step == total_steps)):
            if stopping:
                guard.close()  # as before the final save below
            flush_logs()
            state["last_checkpoint"] = step
            save_checkpoint(accelerator, out, step, state, resolved, cfg.save_total_limit)
        if stopping:
            accelerator.print(f"Stop requested: saved a checkpoint at step {step} in {out}; resume with "
                              f"--resume_from_checkpoint latest")
            sys.exit(0)
        clock = time.perf_counter()  # evaluation and saving are not training time
    progress.close()

    # The final model: a plain Hugging Face model at full depth. The last stage always has L unique layers
    # and always runs (model_config and build_schedule refuse anything else), so no growth is left to do.
    # Every rank joins get_state_dict: under FSDP each holds a shard and gathering is collective.
    guard.close()  # the last collectives of the run follow; the launchers may end before all ranks do
    accelerator.wait_for_everyone()
    final_state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        raw_model.save_pretrained(out, state_dict=final_state)
        tokenizer.save_pretrained(out)
        accelerator.print(f"Saved the final {full_depth}-layer model and tokenizer to {out}")
    if metrics:
        metrics.close()
    if info:
        info.close()
    for tracker in accelerator.trackers:  # end_training() minus destroying the process group: cli() does that
        tracker.finish()


def throughput(since: dict, now: dict, devices: int, peak_tflops: float | None) -> str:
    """Tokens per second and MFU between two snapshots of the trainer state (for a console line)."""
    seconds = now["elapsed_s"] - since["elapsed_s"]
    rate = tokens_per_s(now["tokens"] - since["tokens"], seconds)
    util = mfu(now["flops"] - since["flops"], seconds, devices, peak_tflops)
    return f"tok/s {rate:.0f}" + (f" MFU {100 * util:.1f}%" if util is not None else "")


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def cli(argv=None) -> int:
    """Run `main`. A bad flag (exit 2), a non-finite loss (exit 3) or a failure on any rank (exit 1, after
    the traceback) ends with one line on stderr; a failing rank makes every other rank of the job end too."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SurvivingStream(sys.stdout), SurvivingStream(sys.stderr)  # a dead `tee` ends no run
    prog = os.path.basename(sys.argv[0])
    guard = FailureGuard()
    try:
        main(argv, guard)
        return 0
    except SystemExit as stop:  # the preemption stop and argparse: returned, so that main's frames are freed below
        return stop.code
    except (ConfigError, FloatingPointError) as err:
        guard.close()  # this thread reports now, not the watcher
        guard.announce(err)  # a rank that fails alone (e.g. one that waited past --ddp_timeout) ends the others
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2 if isinstance(err, ConfigError) else 3
    except Exception as err:  # noqa: BLE001 - anything else: say where, and end the other ranks too
        guard.close()
        earlier = guard.failure_elsewhere()
        if earlier:  # a consequence (e.g. gloo's "connection closed by peer"): the first failure is the news
            line = f"rank {guard.rank} stopped: {earlier}"
        else:
            line = guard.announce(err)
            traceback.print_exc()  # this rank's own failure: the traceback is for debugging it
        sys.stderr.write(f"{prog}: error: {line}\n")
        return 1
    finally:  # main installs preemption handlers; put the caller's back (tests call cli in-process)
        guard.close()
        close_open_logs()
        destroy_process_group_last()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        sys.stdout, sys.stderr = streams


if __name__ == "__main__":
    sys.exit(cli())
