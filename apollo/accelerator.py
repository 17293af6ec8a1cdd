"""The Accelerator a run trains with: built from the flags, checked against what the launcher chose, and
what the device runs (precision, TF32, per-block compilation, the peak FLOP/s behind MFU)."""
from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.utils import DistributedType

from .config import ConfigError, TrainConfig
from .shared_layers import layer_slots
from .throughput import device_peak_tflops


def check_precision(cfg: TrainConfig) -> None:
    on_gpu = torch.cuda.is_available() and not cfg.cpu
    if cfg.precision == "fp16" and not on_gpu:
        raise ConfigError("mixed_precision", "fp16 needs a CUDA GPU; use bf16 or no on the CPU")
    if cfg.precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision", "bf16 is not supported by this GPU; use fp16 or no")


def legacy_ddp(cfg: TrainConfig) -> bool:
    """APOLLO_TEST_DDP_FIND_UNUSED=1 (tests only): the former setup, every slot in DDP with the unused-parameter
    search. Otherwise Apollo's idle slots are kept out of DDP (apollo/stage_ddp.py) and DDP needs no search."""
    return cfg.apollo and os.environ.get("APOLLO_TEST_DDP_FIND_UNUSED") == "1"


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=legacy_ddp(cfg))]
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
    return accelerator


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


def peak_tflops(cfg: TrainConfig, accelerator) -> float | None:
    """One device's dense bf16 peak for the MFU: --peak_tflops, else the GPU's from the table; said if none."""
    peak = cfg.peak_tflops
    if peak is None and accelerator.device.type == "cuda":
        peak = device_peak_tflops(torch.cuda.get_device_name(accelerator.device))
    if peak is None:
        accelerator.print(f"MFU not logged: no peak bf16 FLOP/s known for {device_name(accelerator.device)}; "
                          f"pass --peak_tflops")
    return peak


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def compile_blocks(model) -> None:
    """torch.compile each block in place: module objects keep their identity, so the shared-layer plan,
    growth and state_dict keys work unchanged, and blocks of one shape share one compiled graph.

    Static shapes (dynamic=False): otherwise the first evaluation batch of another size (the full-scale
    scripts evaluate 48 blocks a device and train 16 or 12) makes dynamo recompile the blocks with a
    symbolic batch dimension, and training then runs that dynamic graph. Evaluation pads its last batch
    to the full size (apollo/evaluation.py), so one graph serves training and one evaluation."""
    for block in layer_slots(model):
        block.compile(dynamic=False)
