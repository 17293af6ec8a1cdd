#!/usr/bin/env python
"""Pretrain BERT (masked LM) or GPT-2 (causal LM), from scratch or with Apollo, in one Accelerate loop.

    python run_pretrain.py --model_type gpt2 --output_dir runs/gpt2 \
        --apollo_layers 1,3,6,12 --apollo_epoch_list 1,2,5,10 --num_train_epochs 10

Without --apollo_layers the same loop trains the full model from scratch. The method itself lives
in `apollo/`; this file wires it into a training loop that reads top to bottom.

Design choice for DDP: the model always holds all L layer slots and the optimizer is built once
over all of them, as in the official release. Slots that the current stage does not use get no
gradient, so DDP needs `find_unused_parameters=True` (Apollo runs only). We prefer this over
keeping only the U unique layers as parameters because (1) the optimizer state then behaves
exactly as the official one at growth (positional moments, no state for new slots), (2) model and
optimizer are prepared once, so `save_state`/`load_state` see one model and one optimizer for the
whole run, and growth is an in-place copy that DDP and AdamW never notice.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, get_scheduler

from apollo.checkpoint import read_trainer_state, resolve_resume, save_checkpoint
from apollo.config import ConfigError, TrainConfig, parse_config
from apollo.data import (EVAL_MASK_SEED, BlockCollator, KeyedBlocks, StepBatchSampler, check_data_args, eval_batches,
                         load_text_splits, token_blocks)
from apollo.flops import training_flops
from apollo.growth import grow_layers
from apollo.logs import JsonLines, schedule_record
from apollo.plan import depth_plan, growth_map
from apollo.sampling import sample_depth
from apollo.schedule import StageSchedule
from apollo.shared_layers import layer_slots, run_along
from apollo.tokenizer import load_tokenizer, local_tokenizer

# Flags that must match between a checkpoint and the run that resumes from it.
RESUME_MUST_MATCH = ("model_type", "config_name", "config_overrides", "tokenizer_name", "tokenizer_vocab_size",
                     "max_seq_length", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
                     "num_train_epochs", "max_train_steps", "apollo_layers", "apollo_epoch_list", "apollo_step_list",
                     "dist_function", "grow_method", "copy_optimizer_state_on_growth", "learning_rate",
                     "lr_scheduler_type", "mlm_probability")


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
        config = CONFIG_MAPPING[cfg.model_type]()
    else:
        raise ConfigError("model_type", "give --model_type (bert or gpt2) or --config_name")
    if cfg.model_type not in ("bert", "gpt2"):
        raise ConfigError("config_name", f"model type {cfg.model_type!r} is not supported (bert, gpt2)")
    if cfg.config_overrides:
        try:
            config.update_from_string(cfg.config_overrides)
        except ValueError as err:
            raise ConfigError("config_overrides", str(err)) from None
    positions = config.n_positions if cfg.model_type == "gpt2" else config.max_position_embeddings
    if cfg.max_seq_length > positions:
        raise ConfigError("max_seq_length", f"{cfg.max_seq_length} exceeds the model's {positions} positions")
    if cfg.apollo and cfg.layer_list()[-1] != config.num_hidden_layers:
        raise ConfigError("apollo_layers", f"must end at the model's depth {config.num_hidden_layers}, "
                                           f"got {cfg.apollo_layers}")
    return config


def fit_vocabulary(cfg: TrainConfig, config, tokenizer) -> None:
    """Size the embeddings for the tokenizer: set for a new config, checked for a named one."""
    n = len(tokenizer)
    explicit = cfg.config_name or "vocab_size" in (cfg.config_overrides or "")
    if n > config.vocab_size and explicit and not cfg.resize_token_embeddings:
        raise ConfigError("tokenizer_name", f"tokenizer has {n} tokens but the model's vocab_size is "
                                            f"{config.vocab_size}; pass --resize_token_embeddings to grow it")
    if not explicit or n > config.vocab_size:
        config.vocab_size = n
    if cfg.model_type == "gpt2":
        config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    else:
        config.pad_token_id = tokenizer.pad_token_id


def check_precision(cfg: TrainConfig) -> None:
    on_gpu = torch.cuda.is_available() and not cfg.cpu
    if cfg.precision == "fp16" and not on_gpu:
        raise ConfigError("mixed_precision", "fp16 needs a CUDA GPU; use bf16 or no on the CPU")
    if cfg.precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision", "bf16 is not supported by this GPU; use fp16 or no")


def check_output_dir(cfg: TrainConfig) -> Path | None:
    """Refuse to clobber a user's files; return the checkpoint to resume from, if any."""
    out = Path(cfg.output_dir)
    if cfg.resume_from_checkpoint:
        ckpt = resolve_resume(cfg.resume_from_checkpoint, out)
        if ckpt is None or not (ckpt / "trainer_state.json").is_file():
            raise ConfigError("resume_from_checkpoint", f"no complete checkpoint at {cfg.resume_from_checkpoint}"
                                                        f"{' in ' + str(out) if cfg.resume_from_checkpoint == 'latest' else ''}")
        saved = json.loads((ckpt / "run_config.json").read_text())
        for name in RESUME_MUST_MATCH:
            if saved.get(name) != getattr(cfg, name):
                raise ConfigError(name, f"{getattr(cfg, name)!r} differs from the checkpoint's {saved.get(name)!r}")
        return ckpt
    if out.exists() and any(out.iterdir()) and not cfg.overwrite_output_dir:
        raise ConfigError("output_dir", f"{out} is not empty; pass --overwrite_output_dir or --resume_from_checkpoint")
    return None


def build_schedule(cfg: TrainConfig, steps_per_epoch: int, total_steps: int, full_depth: int) -> StageSchedule:
    if not cfg.apollo:
        return StageSchedule.single_stage(full_depth, total_steps)
    if cfg.apollo_epoch_list:
        schedule = StageSchedule.from_epochs(cfg.layer_list(), cfg.stage_ends(), steps_per_epoch)
        flag = "apollo_epoch_list"
    else:
        schedule = StageSchedule(cfg.layer_list(), cfg.stage_ends())
        flag = "apollo_step_list"
    ends = schedule.end_steps
    if ends[0] < 1 or any(b <= a for a, b in zip(ends, ends[1:])):
        raise ConfigError(flag, f"stages end at optimizer steps {list(ends)}: each stage needs at least one step "
                                f"({steps_per_epoch} steps per epoch)")
    if ends[-2 if len(ends) > 1 else -1] >= total_steps and len(ends) > 1:
        raise ConfigError(flag, f"stage boundaries {list(ends)} reach beyond the run's {total_steps} steps")
    return schedule


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


def evaluate(accelerator, model, slots_plan, blocks, collator, batch_size) -> float:
    """Mean loss per target token over the fixed validation blocks, at full depth."""
    raw = accelerator.unwrap_model(model)
    raw.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad(), run_along(raw, slots_plan), accelerator.autocast():
        for batch in eval_batches(blocks, batch_size, accelerator.process_index, accelerator.num_processes, collator):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            loss = raw(**batch).loss.double()
            labels = batch["labels"] if raw.config.model_type == "bert" else batch["labels"][:, 1:]
            count = (labels != -100).sum()
            total += torch.stack([loss * count, count.double()])
    raw.train()
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1]).item()


def main(argv=None) -> None:
    cfg = parse_config(argv)
    check_data_args(cfg)
    config = model_config(cfg)
    check_precision(cfg)
    resume_dir = check_output_dir(cfg)

    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.apollo)  # idle slots get no gradient
    accelerator = Accelerator(mixed_precision=cfg.precision, cpu=cfg.cpu, kwargs_handlers=[ddp],
                              log_with=None if cfg.report_to == "none" else cfg.report_to, project_dir=cfg.output_dir)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process and cfg.overwrite_output_dir and not resume_dir and out.exists():
        shutil.rmtree(out)
    accelerator.wait_for_everyone()

    # Data and tokenizer: prepared once by the main process, then read from the cache by the rest.
    with accelerator.main_process_first():
        raw = load_text_splits(cfg)
        if cfg.tokenizer_name:
            tokenizer = load_tokenizer(cfg.tokenizer_name)
        else:
            tokenizer = local_tokenizer(cfg.model_type, raw["train"], raw["train"]._fingerprint,
                                        cfg.tokenizer_vocab_size, cfg.cache_dir)
        fit_vocabulary(cfg, config, tokenizer)
        blocks = token_blocks(raw, tokenizer, cfg.model_type, cfg.max_seq_length, cfg.preprocessing_num_workers,
                              cfg.cache_dir)
    train_blocks, eval_blocks = blocks["train"], blocks["validation"]
    if cfg.max_train_samples:
        train_blocks = train_blocks.select(range(min(cfg.max_train_samples, len(train_blocks))))
    if cfg.max_eval_samples:
        eval_blocks = eval_blocks.select(range(min(cfg.max_eval_samples, len(eval_blocks))))
    if len(eval_blocks) == 0:
        raise ConfigError("validation_file", f"the validation text makes no block of {cfg.max_seq_length} tokens")

    # Step arithmetic: an epoch is the whole number of global batches in the training blocks.
    world, b, accum = accelerator.num_processes, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    steps_per_epoch = len(train_blocks) // (b * world * accum)
    if steps_per_epoch < 1:
        raise ConfigError("per_device_train_batch_size", f"{len(train_blocks)} training blocks make no full global "
                                                         f"batch of {b}x{world} processes x{accum} accumulation")
    total_steps = cfg.max_train_steps or steps_per_epoch * cfg.num_train_epochs
    full_depth = config.num_hidden_layers
    schedule = build_schedule(cfg, steps_per_epoch, total_steps, full_depth)
    eval_every = cfg.eval_steps or max(total_steps // 10, 1)
    save_every = (steps_per_epoch if cfg.save_strategy == "epoch" else cfg.save_steps or max(total_steps // 4, 1))

    # Model, optimizer, LR schedule.
    set_seed(cfg.seed)
    auto = AutoModelForCausalLM if cfg.model_type == "gpt2" else AutoModelForMaskedLM
    model = auto.from_config(config, attn_implementation="sdpa")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = build_optimizer(cfg, model)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    # Not passed to prepare(): Accelerate would step it once per process. We step it once per optimizer step.
    lr_scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                                 num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    raw_model = accelerator.unwrap_model(model)
    slots = layer_slots(raw_model)

    # Resume: weights, optimizer, LR schedule and every RNG; the step fixes stage, data and depths.
    state = {"step": 0, "tokens": 0, "flops": 0.0, "elapsed_s": 0.0}
    if resume_dir:
        accelerator.load_state(str(resume_dir))
        state = read_trainer_state(resume_dir)
        accelerator.print(f"Resumed from {resume_dir} at step {state['step']}")
    resolved = {**vars(cfg), "world_size": world, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "stage_end_steps": list(schedule.end_steps), "stage_layers": list(schedule.layers),
                "num_train_blocks": len(train_blocks), "num_eval_blocks": len(eval_blocks),
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

    collator = BlockCollator(tokenizer, cfg.model_type == "bert", cfg.mlm_probability, cfg.seed)
    eval_collator = BlockCollator(tokenizer, cfg.model_type == "bert", cfg.mlm_probability, EVAL_MASK_SEED)
    sampler = StepBatchSampler(len(train_blocks), b, world, accelerator.process_index, cfg.seed,
                               steps_per_epoch * accum, state["step"] * accum, total_steps * accum)
    loader = torch.utils.data.DataLoader(KeyedBlocks(train_blocks), batch_sampler=sampler, collate_fn=collator,
                                         num_workers=cfg.dataloader_num_workers,
                                         generator=torch.Generator())  # keeps the global RNG untouched
    batches = iter(loader)

    def log_eval(step):
        full_plan = depth_plan(schedule.unique_layers(max(step - 1, 0)), full_depth, cfg.grow_method)
        loss = evaluate(accelerator, model, full_plan, eval_blocks, eval_collator, cfg.per_device_eval_batch_size)
        record = {"step": step, "flops": state["flops"], "tokens": state["tokens"],
                  "elapsed_s": round(state["elapsed_s"], 3), "eval_loss": loss}
        if metrics:
            metrics.write(record)
        accelerator.log({"eval_loss": loss}, step=step)
        accelerator.print(f"step {step}: eval_loss {loss:.4f} at {state['flops']:.3e} FLOPs")

    # ------------------------------------------------------------------------------------------
    # The training loop. `step` counts finished optimizer steps; the step being computed has
    # 0-based index `step`, and everything that varies (stage, depth, batch, LR) is a function of it.
    # ------------------------------------------------------------------------------------------
    stop = StopRequest()
    step = state["step"]
    model.train()
    if step == 0:
        log_eval(0)
    progress = tqdm(total=total_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    clock = time.perf_counter()
    tokens_per_micro = b * cfg.max_seq_length * world
    while step < total_steps:
        unique = schedule.unique_layers(step)
        gmap = None
        if schedule.grows_at(step):  # first step of a new stage: copy layers along the growth map
            old = schedule.unique_layers(step - 1)
            gmap = growth_map(old, unique, cfg.grow_method)
            grow_layers(slots, gmap, optimizer.optimizer, cfg.copy_optimizer_state_on_growth)
            accelerator.print(f"step {step}: grew {old} -> {unique} unique layers, map {gmap}")
            if metrics:
                metrics.write({"step": step + 1, "event": "growth", "from": old, "to": unique, "map": gmap})

        loss_sum, depth_sum, step_flops = 0.0, 0, 0.0
        for micro in range(accum):
            batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
            depth = sample_depth(cfg.dist_function, unique, full_depth, cfg.seed, step, micro)
            plan = depth_plan(unique, depth, cfg.grow_method)
            if info:
                info.write(schedule_record(step * accum + micro, step, unique, depth, plan,
                                           gmap is not None and micro == 0, gmap if micro == 0 else None))
            # Gradients are synchronised across ranks only on the last micro-batch of the step.
            sync = accelerator.no_sync(model) if micro < accum - 1 else contextlib.nullcontext()
            with sync, run_along(raw_model, plan):
                loss = model(**batch).loss
                accelerator.backward(loss / accum)
            loss_sum += loss.detach().float()
            depth_sum += depth
            step_flops += training_flops(config, b, cfg.max_seq_length, depth) * world
        loss_mean = accelerator.reduce(loss_sum / accum, "mean").item()
        if not math.isfinite(loss_mean):
            last = state.get("last_checkpoint", "none (no checkpoint yet)")
            raise FloatingPointError(f"non-finite loss {loss_mean} at step {step + 1}; stopping. "
                                     f"Last good checkpoint: step {last} in {out}")
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        lr = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        step += 1
        now = time.perf_counter()
        state.update(step=step, tokens=state["tokens"] + tokens_per_micro * accum,
                     flops=state["flops"] + step_flops, elapsed_s=state["elapsed_s"] + now - clock)
        clock = now
        record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss_mean, "lr": lr,
                  "tokens": state["tokens"], "step_flops": step_flops, "flops": state["flops"],
                  "stage": schedule.stage_index(step - 1), "unique_layers": unique, "depth": depth_sum / accum,
                  "elapsed_s": round(state["elapsed_s"], 3)}
        if metrics:
            metrics.write(record)
        accelerator.log({k: record[k] for k in ("loss", "lr", "depth", "unique_layers", "flops")}, step=step)
        progress.update(1)
        progress.set_postfix(loss=f"{loss_mean:.3f}", U=unique, D=f"{depth_sum / accum:.1f}")
        if step % cfg.logging_steps == 0:
            progress.write(f"step {step}/{total_steps} loss {loss_mean:.4f} lr {lr:.2e} U {unique} "
                           f"D {depth_sum / accum:.1f} flops {state['flops']:.3e}")

        if step % eval_every == 0 or step == total_steps:
            log_eval(step)
        stopping = accelerator.reduce(torch.tensor(float(stop.requested), device=accelerator.device), "max").item() > 0
        if cfg.save_strategy != "no" and (step % save_every == 0 or step == total_steps or stopping):
            state["last_checkpoint"] = step
            save_checkpoint(accelerator, out, step, state, resolved, cfg.save_total_limit)
        if stopping:
            accelerator.print(f"Stop requested: saved a checkpoint at step {step} in {out}; resume with "
                              f"--resume_from_checkpoint latest")
            sys.exit(0)
        clock = time.perf_counter()  # evaluation and saving are not training time
    progress.close()

    # The final model: a plain Hugging Face model at full depth (growth to L if the run ended early).
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unique = schedule.unique_layers(total_steps - 1)
        if unique < full_depth:
            grow_layers(slots, growth_map(unique, full_depth, cfg.grow_method))
        raw_model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        accelerator.print(f"Saved the final {full_depth}-layer model and tokenizer to {out}")
    if metrics:
        metrics.close()
    if info:
        info.close()
    accelerator.end_training()


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {err}\n")
        sys.exit(2)
    except FloatingPointError as err:
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {err}\n")
        sys.exit(3)
