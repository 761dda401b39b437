"""Speed switches of the CPU training step: bf16 autocast where the hardware has native bf16, and
torch.compile of the loss functions with an eager fallback when no C++ compiler is present."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of CPUs whose matmuls run bf16 natively; elsewhere oneDNN emulates it, slower than fp32."""


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


CPU_HAS_NATIVE_BF16 = _cpu_has_native_bf16()
"""Read once at import: a plain constant, which torch.compile folds instead of breaking the graph on."""


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls are native (and so faster than fp32) on `device`."""
    return device.type == "cuda" or (device.type == "cpu" and CPU_HAS_NATIVE_BF16)


def bf16_autocast(enabled: bool, device: torch.device) -> AbstractContextManager:
    """bf16 autocast on `device` when `enabled` (callers pass `config.bf16_autocast and native_bf16(...)`)."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def cxx_compiler() -> str | None:
    """The C++ compiler inductor's CPU backend would build with, if any."""
    return next(filter(None, (shutil.which(name) for name in ("g++", "c++", "clang++"))), None)


def maybe_compile(fn: F, enabled: bool, name: str) -> F:
    """`torch.compile(fn)` (inductor, static shapes) if `enabled` and a C++ compiler exists; otherwise `fn`
    itself, with a one-line warning when compilation was asked for but is not possible here."""
    if not enabled:
        return fn
    if cxx_compiler() is None:
        warnings.warn(f"compile_update: no C++ compiler found; {name} runs eagerly", stacklevel=2)
        return fn
    return torch.compile(fn, dynamic=False)
