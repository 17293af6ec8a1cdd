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

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from apollo.accelerator import build_accelerator, check_accelerator, check_precision, compile_blocks, legacy_ddp, \
    peak_tflops
from apollo.batches import EVAL_MASK_SEED, BlockCollator, MicroBatchSampler, training_batches
from apollo.checkpoint import RUN_CONFIG_FILE, Resume, TrainerState, resume_point, save_checkpoint
from apollo.config import ConfigError, TrainConfig, parse_config
from apollo.console import SurvivingStream
from apollo.corpus import check_data_args, load_text_splits, prepare_first, select_blocks, token_blocks
from apollo.evaluation import EvalSet, evaluate, full_depth_plan
from apollo.flops import step_flops
from apollo.growth import Growth, grow_at_boundary
from apollo.kinds import build_model, kind_of
from apollo.logs import JsonLines, RunLogs, close_open_logs, stack_info
from apollo.model_config import check_vocabulary, fit_vocabulary, model_config
from apollo.optim import build_lr_scheduler, build_optimizer
from apollo.preemption import STOP_SIGNALS, StopRequest
from apollo.rank_failures import FailureGuard
from apollo.schedule import StageSchedule, StepCounts, stage_schedule, step_counts
from apollo.shared_layers import layer_slots
from apollo.stage_ddp import destroy_process_group_last, keep_idle_slots_out_of_ddp
from apollo.throughput import mfu, throughput_text, tokens_per_s
from apollo.tokenizer import local_tokenizer, named_tokenizer
from apollo.train_step import DepthDraws, StepResult, diverged, train_step


def cli(argv=None) -> int:
    """Run `main`. A bad flag (exit 2), a non-finite loss (exit 3) or a failure on any rank (exit 1, after
    the traceback) ends with one line on stderr; a failing rank makes every other rank of the job end too."""
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
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
        destroy_process_group_last()  # only now: nothing of main's (the Run and its DDP wrapper) is alive
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        sys.stdout, sys.stderr = streams


def main(argv=None, guard: FailureGuard | None = None) -> None:
    """Setup, fit, save: one run of the command line `argv`."""
    run = setup(parse_config(argv), guard or FailureGuard())
    if run is None:  # --preprocess_only: the tokenizer and the token cache are ready
        return
    fit(run)
    save(run)


# ----------------------------------------------------------------------------------------------
# Setup: everything that can be wrong is checked before any data is read or file written.
# ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything the loop needs, built by `setup`; only `model` (DDP re-wrapped at growth) and `state` change."""
    cfg: TrainConfig
    accelerator: Accelerator
    guard: FailureGuard
    out: Path
    config: transformers.PretrainedConfig  # the model's config
    tokenizer: transformers.PreTrainedTokenizerBase
    model: object  # what Accelerate prepared: the DDP wrapper on several processes (rebuilt at growth)
    raw_model: transformers.PreTrainedModel  # the model itself
    optimizer: object  # Accelerate's wrapper of torch.optim.AdamW over every layer slot
    lr_scheduler: object
    steps: StepCounts
    schedule: StageSchedule
    draws: DepthDraws
    growth: Growth
    idle_slots_out_of_ddp: bool  # Apollo's idle slots are kept out of DDP (apollo/stage_ddp.py)
    batches: Iterator[dict]  # the run's micro-batches from the resumed step on
    eval_set: EvalSet | None  # None: --validation_split_percentage 0 and no validation set
    state: TrainerState
    run_config: dict  # what run_config.json holds
    logs: RunLogs
    stop: StopRequest
    peak_tflops: float | None
    bar: bool  # a progress bar on the console

    def say(self, text: str) -> None:
        """One console line (each node's first process); with a progress bar, above it (tqdm redraws the bar below)."""
        if self.accelerator.is_local_main_process and self.bar:
            tqdm.write(text)
        elif self.accelerator.is_local_main_process:
            print(text, flush=True)

    def last_checkpoint(self) -> Path | None:
        return self.out / f"checkpoint-{self.state.last_checkpoint}" if self.state.last_checkpoint else None


def setup(cfg: TrainConfig, guard: FailureGuard) -> Run | None:
    """Checks, the processes, data, model and optimizer, resume state, run_config.json, logs; None with
    --preprocess_only (after the data)."""
    bar = progress_bars()
    config, tokenizer, resume = check_before_data(cfg)
    accelerator = build_accelerator(cfg)
    guard.start(accelerator)  # from here on, a failure on any rank ends every rank
    if resume:
        resume.check_world(accelerator.num_processes)
    check_accelerator(cfg, accelerator)
    peak = peak_tflops(cfg, accelerator)
    tokenizer, train_blocks, eval_blocks = prepare_data(cfg, accelerator, config, tokenizer)
    if cfg.preprocess_only:
        return None
    steps = step_counts(cfg, len(train_blocks), accelerator.num_processes)
    schedule = stage_schedule(cfg, steps, config.num_hidden_layers)
    clear_output_dir(cfg, accelerator, resume)
    state = resume.state if resume else TrainerState()
    idle_out = cfg.apollo and not legacy_ddp(cfg)
    model, optimizer, lr_scheduler = model_and_optimizer(cfg, accelerator, config, steps.total,
                                                         schedule.unique_layers(state.step) if idle_out else None)
    if resume:  # weights, optimizer, LR schedule and every RNG; the step fixes stage, data and depths
        accelerator.load_state(str(resume.checkpoint))
        accelerator.print(f"Resumed from {resume.checkpoint} at step {state.step}")
    run_config = write_run_config(cfg, accelerator, config, steps, schedule, peak, len(train_blocks),
                                  len(eval_blocks) if eval_blocks else 0)
    logs = open_logs(cfg, accelerator, resume, schedule)
    if cfg.report_to != "none":
        accelerator.init_trackers("apollo", config={k: v for k, v in vars(cfg).items() if v is not None})
    stop = StopRequest()  # before the loader's workers start: they must ignore the signals from the outset
    batches = training_batches(
        train_blocks, MicroBatchSampler(len(train_blocks), steps.batch_size, steps.world_size, accelerator.process_index,
                                        cfg.seed, steps.per_epoch * steps.accumulation,
                                        state.step * steps.accumulation, steps.total * steps.accumulation),
        BlockCollator(tokenizer, kind_of(cfg.model_type).masked, cfg.mlm_probability, cfg.seed),
        cfg.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda")
    eval_set = None if eval_blocks is None else EvalSet(
        eval_blocks, BlockCollator(tokenizer, kind_of(cfg.model_type).masked, cfg.mlm_probability, EVAL_MASK_SEED),
        cfg.per_device_eval_batch_size, pad=cfg.torch_compile)
    accelerator.print(training_banner(len(train_blocks), steps, schedule, cfg.max_seq_length))
    return Run(cfg, accelerator, guard, Path(cfg.output_dir), config, tokenizer, model,
               accelerator.unwrap_model(model), optimizer, lr_scheduler, steps, schedule,
               DepthDraws(cfg.dist_function, cfg.grow_method, cfg.seed, config.num_hidden_layers),
               Growth.from_config(cfg), idle_out, batches, eval_set, state, run_config, logs, stop, peak, bar)


def progress_bars() -> bool:
    """A progress bar on a terminal; into a file (not a TTY) only plain lines, every --logging_steps, and no
    carriage-return frames from datasets' or transformers' bars either. APOLLO_PROGRESS_BAR=1 forces the
    bars (the example scripts set it when their console is a terminal and filter the frames from their log)."""
    bar = sys.stderr.isatty() or os.environ.get("APOLLO_PROGRESS_BAR") == "1"
    if not bar:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    return bar


def check_before_data(cfg: TrainConfig):
    """(model config, the --tokenizer_name tokenizer or None, the checkpoint to resume from or None): every
    check that needs neither the processes nor the data (files, model, vocabulary, precision, output folder)."""
    check_data_args(cfg)
    config = model_config(cfg)
    tokenizer = named_tokenizer(cfg)
    check_vocabulary(cfg, config, len(tokenizer) if tokenizer else cfg.tokenizer_vocab_size)
    check_precision(cfg)
    resume = None if cfg.preprocess_only else resume_point(cfg, config)
    return config, tokenizer, resume


def prepare_data(cfg: TrainConfig, accelerator, config, tokenizer):
    """(tokenizer, training blocks, evaluation blocks or None). Prepared once (the main process first, then one
    per node: apollo/corpus.py prepare_first), read from the cache by the rest."""
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
    if cfg.preprocess_only:
        validation = blocks.get("validation")
        accelerator.print(f"Tokenizer and token cache ready: {len(blocks['train'])} training and "
                          f"{len(validation) if validation else 0} validation blocks of {cfg.max_seq_length} tokens")
        return tokenizer, None, None
    train_blocks, eval_blocks = select_blocks(cfg, blocks)
    if eval_blocks is None:
        accelerator.print("No evaluation: --validation_split_percentage 0 and no validation set")
    return tokenizer, train_blocks, eval_blocks


def clear_output_dir(cfg: TrainConfig, accelerator, resume: Resume | None) -> None:
    """Every check has passed: only now may --overwrite_output_dir clear the folder."""
    out = Path(cfg.output_dir)
    if accelerator.is_main_process and cfg.overwrite_output_dir and not resume and out.exists():
        shutil.rmtree(out)
    accelerator.wait_for_everyone()


def model_and_optimizer(cfg: TrainConfig, accelerator, config, total_steps: int, ddp_slots: int | None):
    """(model, optimizer, LR scheduler), the first two prepared by Accelerate. With `ddp_slots`, DDP covers only
    layer slots 0..ddp_slots-1: those of the stage the run starts (or resumes) in."""
    set_seed(cfg.seed)
    model = build_model(config)  # SDPA attention where the family has it
    if cfg.torch_compile:
        compile_blocks(model)
    if cfg.gradient_checkpointing:
        # Non-reentrant: a shared block runs several times per pass, and reentrant checkpointing
        # marks its parameters ready once per use, which DDP refuses ("marked ready twice").
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(cfg, model)
    lr_scheduler = build_lr_scheduler(cfg, optimizer, total_steps)
    if ddp_slots is not None:
        keep_idle_slots_out_of_ddp(model, layer_slots(model), ddp_slots)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    return model, optimizer, lr_scheduler


def write_run_config(cfg: TrainConfig, accelerator, config, steps: StepCounts, schedule: StageSchedule,
                     peak: float | None, num_train_blocks: int, num_eval_blocks: int) -> dict:
    """The resolved configuration, written to OUTPUT_DIR/run_config.json (and into every checkpoint)."""
    resolved = {**vars(cfg), "world_size": steps.world_size, "steps_per_epoch": steps.per_epoch,
                "total_steps": steps.total, "stage_end_steps": list(schedule.end_steps),
                "stage_layers": list(schedule.layers), "device_peak_tflops": peak,
                "num_train_blocks": num_train_blocks, "num_eval_blocks": num_eval_blocks,
                "model_config": config.to_dict()}
    if accelerator.is_main_process:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_CONFIG_FILE).write_text(json.dumps(resolved, indent=1, default=str))
    return resolved


def open_logs(cfg: TrainConfig, accelerator, resume: Resume | None, schedule: StageSchedule) -> RunLogs:
    """metrics.jsonl (main process) and the schedule file (each rank); a resumed run keeps what its checkpoint covers."""
    out = Path(cfg.output_dir)
    metrics = None
    if accelerator.is_main_process:
        at_checkpoint = schedule.unique_layers(max(resume.state.step - 1, 0)) if resume else None  # layers the weights hold
        metrics = JsonLines(out / "metrics.jsonl",
                            (lambda r: resume.keeps_metrics_line(r, at_checkpoint)) if resume else None)
    schedule_file = None
    if cfg.apollo_info_output_file:
        prefix = Path(cfg.apollo_info_output_file)
        prefix = prefix if prefix.is_absolute() else out / prefix
        schedule_file = JsonLines(f"{prefix}.rank_{accelerator.process_index}",
                                  resume.keeps_schedule_line if resume else None)
    return RunLogs(metrics, schedule_file)


def training_banner(num_blocks: int, steps: StepCounts, schedule: StageSchedule, seq_len: int) -> str:
    """Hugging Face's summary before training, with the stages."""
    if len(schedule.layers) == 1:
        stages = f"one: {schedule.layers[0]} layers (from scratch)"
    else:
        stages = (f"{', '.join(map(str, schedule.layers))} unique layers, ending after steps "
                  f"{', '.join(map(str, schedule.end_steps))}")
    return "\n".join([
        "***** Running training *****",
        f"  Num examples = {num_blocks} blocks of {seq_len} tokens",
        f"  Num epochs = {math.ceil(steps.total / steps.per_epoch)} ({steps.per_epoch} optimizer steps each)",
        f"  Instantaneous batch size per device = {steps.batch_size}",
        f"  Total train batch size (w. parallel, distributed & accumulation) = {steps.global_batch}",
        f"  Gradient accumulation steps = {steps.accumulation}",
        f"  Total optimization steps = {steps.total}",
        f"  Stages = {stages}"])


# ----------------------------------------------------------------------------------------------
# The training loop. `state.step` counts finished optimizer steps; the step being computed has
# 0-based index `state.step`, and everything that varies (stage, depth, batch, LR) is a function of it.
# ----------------------------------------------------------------------------------------------
def fit(run: Run) -> None:
    cfg, state, steps, schedule = run.cfg, run.state, run.steps, run.schedule
    run.model.train()
    if state.step == 0:
        validate(run, 0)
    progress = tqdm(total=steps.total, initial=state.step, desc="train",
                    disable=not (run.accelerator.is_local_main_process and run.bar))
    clock = time.perf_counter()
    last_line = dataclasses.replace(state)  # throughput on a console line: since the previous line
    while state.step < steps.total:
        run.guard.step_begins(state.step + 1)
        unique = schedule.unique_layers(state.step)
        grows = schedule.grows_at(state.step)
        if grows:  # after the step that ended the old stage, before the new stage's first forward
            grow(run, state.step)
        plans = run.draws.plans(state.step, unique, steps.accumulation)
        run.logs.write_schedule(state.step, unique, plans, grows,
                                stack_info(schedule.layers, schedule.stage_index(state.step), cfg.grow_method))
        result = train_step(run.accelerator, run.model, run.raw_model, run.optimizer, run.lr_scheduler, run.batches,
                            plans, step=state.step, lr_factor=schedule.growth_lr_factor(state.step,
                                                                                        cfg.growth_warmup_steps),
                            max_grad_norm=cfg.max_grad_norm, stop_requested=run.stop.requested,
                            last_checkpoint=run.last_checkpoint())
        seconds = time.perf_counter() - clock
        depths = [len(plan) for plan in plans]
        flops = step_flops(run.config, steps.batch_size, cfg.max_seq_length, depths, steps.world_size)
        state.add_step(steps.global_batch * cfg.max_seq_length, flops, seconds)
        depth = sum(depths) / len(depths)
        log_step(run, result, unique, depth, flops, seconds)
        progress.update(1)
        progress.set_postfix(loss=f"{result.loss:.3f}", U=unique, D=f"{depth:.1f}")
        if state.step % cfg.logging_steps == 0:
            run.say(console_line(run, result, unique, depth, last_line))
            last_line = dataclasses.replace(state)
            run.logs.flush()

        if state.step % steps.eval_every == 0 or state.step == steps.total:
            validate(run, state.step)
        # A stop request always checkpoints, whatever --save_strategy says: that is its point.
        if result.stop or (cfg.save_strategy != "no" and (state.step % steps.save_every == 0
                                                          or state.step == steps.total)):
            checkpoint(run, stopping=result.stop)
        if result.stop:
            run.accelerator.print(f"Stop requested: saved a checkpoint at step {state.step} in {run.out}; resume "
                                  f"with --resume_from_checkpoint latest")
            sys.exit(0)
        clock = time.perf_counter()  # evaluation and saving are not training time
    progress.close()


def grow(run: Run, step: int) -> None:
    """The growth into the stage of optimizer step `step` (0-based), logged with `step` = finished steps."""
    old, new = run.schedule.unique_layers(step - 1), run.schedule.unique_layers(step)
    run.model, gmap = grow_at_boundary(run.accelerator, run.model, run.optimizer.optimizer, old, new, run.growth,
                                       step, run.idle_slots_out_of_ddp)
    run.say(f"step {step}: grew {old} -> {new} unique layers, map {gmap}")
    run.logs.write_metrics({"step": step, "event": "growth", "from": old, "to": new, "map": gmap})


def log_step(run: Run, result: StepResult, unique: int, depth: float, flops: float, seconds: float) -> None:
    """The step's metrics.jsonl line and tracker values."""
    state, steps = run.state, run.steps
    tokens = steps.global_batch * run.cfg.max_seq_length
    record = {"step": state.step, "epoch": round(state.step / steps.per_epoch, 4), "loss": result.loss,
              "lr": result.lr, "tokens": state.tokens, "step_flops": flops, "flops": state.flops,
              "stage": run.schedule.stage_index(state.step - 1), "unique_layers": unique, "depth": depth,
              "elapsed_s": round(state.elapsed_s, 6), "tokens_per_s": tokens_per_s(tokens, seconds),
              "mfu": mfu(flops, seconds, steps.world_size, run.peak_tflops)}
    run.logs.write_metrics(record)
    run.accelerator.log({k: record[k] for k in ("loss", "lr", "depth", "unique_layers", "flops")}, step=state.step)


def console_line(run: Run, result: StepResult, unique: int, depth: float, since: TrainerState) -> str:
    """The progress line of every --logging_steps: throughput since the previous line (`since`)."""
    return (f"step {run.state.step}/{run.steps.total} loss {result.loss:.4f} lr {result.lr:.2e} U {unique} "
            f"D {depth:.1f} flops {run.state.flops:.3e} "
            f"{throughput_text(since, run.state, run.steps.world_size, run.peak_tflops)}")


def validate(run: Run, step: int) -> None:
    """Evaluate at full depth after `step` optimizer steps; a non-finite loss stops the run before its checkpoint."""
    if run.eval_set is None:  # --validation_split_percentage 0: said once at the start
        return
    plan = full_depth_plan(run.schedule, step, run.config.num_hidden_layers, run.cfg.grow_method)
    es = run.eval_set
    loss = evaluate(run.accelerator, run.model, plan, es.blocks, es.collator, es.batch_size, pad=es.pad)
    state = run.state
    run.logs.write_metrics({"step": step, "flops": state.flops, "tokens": state.tokens,
                            "elapsed_s": round(state.elapsed_s, 6), "eval_loss": loss})
    if run.logs.metrics:
        run.logs.metrics.flush()
    run.accelerator.log({"eval_loss": loss}, step=step)
    run.say(f"step {step}: eval_loss {loss:.4f} at {state.flops:.3e} FLOPs")
    if not math.isfinite(loss):  # raised before this step's checkpoint: these weights are not worth one
        raise diverged(f"eval_loss {loss}", step, run.last_checkpoint())


def checkpoint(run: Run, stopping: bool) -> None:
    if stopping:
        run.guard.close()  # as before the final save below
    run.logs.flush()
    save_checkpoint(run.accelerator, run.out, run.state, run.run_config, run.cfg.save_total_limit)


# ----------------------------------------------------------------------------------------------
# Save: the final model, a plain Hugging Face model at full depth. The last stage always has L unique
# layers and always runs (model_config and stage_schedule refuse anything else): no growth is left.
# ----------------------------------------------------------------------------------------------
def save(run: Run) -> None:
    accelerator = run.accelerator
    # Every rank joins get_state_dict: under FSDP each holds a shard and gathering is collective.
    run.guard.close()  # the last collectives of the run follow; the launchers may end before all ranks do
    accelerator.wait_for_everyone()
    final_state = accelerator.get_state_dict(run.model)
    if accelerator.is_main_process:
        run.raw_model.save_pretrained(run.out, state_dict=final_state)
        run.tokenizer.save_pretrained(run.out)
        accelerator.print(f"Saved the final {run.config.num_hidden_layers}-layer model and tokenizer to {run.out}")
    run.logs.close()
    for tracker in accelerator.trackers:  # end_training() minus destroying the process group: cli() does that
        tracker.finish()


if __name__ == "__main__":
    sys.exit(cli())
