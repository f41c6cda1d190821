"""The autograd mode a graph runs in: `torch.no_grad()` or `torch.inference_mode()` around a
trace is in effect while its model runs, so a graph sent to a server carries it."""

from __future__ import annotations

import contextlib
from typing import Any, Final

GRAD_MODES: Final = ("no_grad", "inference")  # the wire names; None: grad enabled


def current_grad_mode() -> str | None:
    """The autograd mode of this thread now: "inference", "no_grad" or None (grad enabled)."""
    import torch

    if torch.is_inference_mode_enabled():
        return "inference"
    return None if torch.is_grad_enabled() else "no_grad"


def grad_mode_context(mode: str | None) -> Any:
    """A context that runs in `mode` (None: the caller's own mode, unchanged)."""
    import torch

    match mode:
        case None:
            return contextlib.nullcontext()
        case "no_grad":
            return torch.no_grad()
        case "inference":
            return torch.inference_mode()
    raise ValueError(f"unknown autograd mode {mode!r}; expected one of {GRAD_MODES} or None")


__all__ = ["GRAD_MODES", "current_grad_mode", "grad_mode_context"]
