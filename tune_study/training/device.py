"""The device a run trains on and what differs between a GPU and a CPU: the device and precision
chosen for ``auto``, its name in the exports, CUDA's out-of-memory error, the allocator's cache and
peak, synchronisation, and the dropout RNG of the device. On a CPU each GPU-only call is a no-op."""
from __future__ import annotations

import math

import torch

from ..errors import StudyError

OOM = torch.cuda.OutOfMemoryError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StudyError("device: 'cuda' asked for, but no CUDA device is visible")
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 on a GPU that has it, else fp32."""
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast_for(device: torch.device, precision: str):
    """The autocast context of a precision (None for fp32: no context at all)."""
    if precision != "bf16":
        return None
    return torch.autocast(device.type, dtype=torch.bfloat16)


def device_name(device: torch.device | None = None) -> str:
    """The card's name, or ``cpu xN`` with N the threads torch uses: the ``device`` column."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()}"


def free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    # math.nan, one object: equal to itself in a compared dict (float("nan") would not be)
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rng_of(device: torch.device) -> torch.Tensor:
    """The generator dropout draws from on ``device`` (the CUDA one's state lives on the host: no sync)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_rng_of(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
