"""Checks that `--mixed_precision` can run on this machine, before any work starts."""

from typing import Optional

import torch


def _has_fp16_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        return True
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def check_mixed_precision(mode: Optional[str]) -> None:
    """Raise ValueError where --mixed_precision names a precision this machine cannot train in.

    fp16 autocast needs a GPU (CUDA, XPU or Apple MPS); on a CPU, bf16 works instead. bf16 on a
    CUDA GPU needs compute capability 8.0 (Ampere) or newer.
    """
    if mode in (None, "no"):
        return
    if mode == "fp16" and not _has_fp16_accelerator():
        raise ValueError(
            "--mixed_precision fp16 needs a GPU, and this machine has none; use --mixed_precision bf16, which "
            "runs on CPUs, or --mixed_precision no."
        )
    if mode == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"--mixed_precision bf16 needs a GPU with bf16 support (compute capability 8.0 or newer); "
            f"{torch.cuda.get_device_name()} has none. Use --mixed_precision fp16."
        )
