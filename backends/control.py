"""Run-time pieces for stopping a run, skipping modules and caching module values."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

from .forwards import ReplacedForwards


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
    running its forward (when one was queued for that call), in this thread only; the
    forwards are put back after (`forwards.ReplacedForwards`)."""
    replaced = ReplacedForwards()
    try:
        for path in paths:
            replaced.replace(module_at(path), partial(_skipping, path, values))
        yield
    finally:
        replaced.restore()


def _skipping(path: str, values: dict[str, list[Any]], original: Any) -> Any:
    """The forward of a skipped module: its next queued value, or else `original`'s result."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        queued = values.get(path)
        if queued:
            return queued.pop(0)
        return original(*args, **kwargs)

    return forward
