"""Choose the torch device once and pass it down."""

from __future__ import annotations

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (or when asked for by name), else CPU.

    ``prefer`` may be ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; asking for CUDA on
    a machine without it is an error rather than a silent fall-back.
    """
    if prefer:
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} asked for, but CUDA is not available here")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
