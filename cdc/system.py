"""What machine a number was measured on."""

from __future__ import annotations

import os
import platform
import typing

import torch

from cdc.choices import Precision


def hardware() -> str:
    """One line: CPU model and cores used by torch, plus the GPU if one is visible."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether the device computes bf16 in hardware (CPU: AVX512-BF16 or AMX; CUDA: compute capability >= 8)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


def peak_memory_mb() -> float:
    """Peak memory of this process so far: GPU memory allocated by torch on CUDA, else peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """'fp32' or 'bf16' as given; 'auto' -> 'bf16' where the device has native bf16 (`native_bf16`), else 'fp32'."""
    if precision not in typing.get_args(Precision):
        raise ValueError(f"precision must be one of {', '.join(typing.get_args(Precision))}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch device that exists here: None -> cuda when available, else cpu; ValueError for anything else."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from e
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device} is not available on this machine (use cpu)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device type {device.type!r} is not supported (use cpu or cuda)")
    return device
