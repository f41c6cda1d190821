"""Run-time pieces for stopping a run, skipping modules and caching module values."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


class StopRun(BaseException):
    """Raised at `tracer.stop()` to end the model's run; a BaseException so that no
    `except Exception` in model code can swallow it."""


@contextmanager
def skipped_modules(
    paths: set[str],
    module_at: Callable[[str], torch.nn.Module],
    values: dict[str, list[Any]],
) -> Iterator[None]:
    """While the block runs, each module in `paths` returns its queued skip value instead of
    running its forward (when one was queued for that call); the forwards are put back after.
    """
    patched: list[tuple[torch.nn.Module, Any]] = []
    try:
        for path in paths:
            module = module_at(path)
            own = module.__dict__.get("forward")
            original = module.forward

            def forward(*args: Any, _path: str = path, _original: Any = original, **kwargs: Any):
                queued = values.get(_path)
                if queued:
                    return queued.pop(0)
                return _original(*args, **kwargs)

            patched.append((module, own))
            module.forward = forward  # type: ignore[method-assign]
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own  # type: ignore[method-assign]
