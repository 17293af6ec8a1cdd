"""Throughput figures for the logs: tokens per second and MFU (model FLOPs utilization).

MFU = the training FLOPs a device achieved per second / the device's peak dense bf16 FLOP/s.
The FLOPs are the exact count of what ran (`apollo.flops.training_flops` at the executed depth,
so a shared block counts once per use), not 6N per token. The peak comes from --peak_tflops, or
from the table below for the GPUs we know; otherwise MFU is not logged (None).
"""
from __future__ import annotations

# Dense (not 2:4 sparse) bf16 tensor-core peaks from NVIDIA's data sheets, in TFLOP/s, matched
# against torch.cuda.get_device_name() in this order (the first substring found wins).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0),
                    ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


def device_peak_tflops(device_name: str | None) -> float | None:
    """The table's bf16 peak for a device name (e.g. 'NVIDIA A100-SXM4-80GB'), or None if unknown."""
    for key, peak in PEAK_BF16_TFLOPS:
        if device_name and key in device_name:
            return peak
    return None


def tokens_per_s(tokens: float, seconds: float) -> float | None:
    return tokens / seconds if seconds > 0 else None


def mfu(flops: float, seconds: float, devices: int, peak_tflops: float | None) -> float | None:
    """Achieved FLOP/s per device over the peak; `flops` is the whole job's, over `devices` devices."""
    if peak_tflops is None or seconds <= 0:
        return None
    return flops / seconds / devices / (peak_tflops * 1e12)


def throughput_text(since, now, devices: int, peak_tflops: float | None) -> str:
    """Tokens per second and MFU between two snapshots of the run's counters (TrainerState), for a console line."""
    seconds = now.elapsed_s - since.elapsed_s
    rate = tokens_per_s(now.tokens - since.tokens, seconds)
    util = mfu(now.flops - since.flops, seconds, devices, peak_tflops)
    return f"tok/s {rate:.0f}" + (f" MFU {100 * util:.1f}%" if util is not None else "")
