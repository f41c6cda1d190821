"""Run-time pieces for stopping a run, skipping modules and caching module values."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..ir.errors import BatchError
from .batching import batch_size, concatenate, merge


class StopRun(BaseException):
    """Raised at `tracer.stop()` to end the model's run; a BaseException so that no
    `except Exception` in model code can swallow it."""


class SkipCall:
    """What the invokes that skip one call of a module gave instead of its output.

    A prompt-less invoke's value stands for the whole batch; an invoke that owns some rows
    gives those rows. When the invokes' rows cover the batch the module does not run and its
    output is their values joined in row order; otherwise it runs and each skipping invoke's
    rows of its output are replaced.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.whole: list[Any] = []  # values for every row (prompt-less invokes), in turn order
        self.parts: list[tuple[int, int, Any]] = []  # (start, stop, value) of row-owning invokes

    def add(self, value: Any, start: int, stop: int | None) -> None:
        if stop is None or (start == 0 and stop == self.total):
            self.whole.append(value)
            self.parts.clear()  # a later whole-batch value replaces every row given before
        else:
            self.parts.append((start, stop, value))

    def output(self, run_module: Callable[[], Any]) -> Any:
        """The module's output for this call, running it only when some rows need it."""
        parts = sorted(self.parts, key=lambda part: part[0])
        if self.whole:
            full = self.whole[-1]
        elif _covers(parts, self.total):
            for start, stop, value in parts:
                _check_rows(value, start, stop)
            return concatenate([value for _, _, value in parts])
        else:
            full = run_module()
        for start, stop, value in parts:
            full = merge(full, value, start, stop, self.total)
        return full


def _covers(parts: list[tuple[int, int, Any]], total: int) -> bool:
    """Whether the sorted row ranges cover [0, total) exactly once."""
    position = 0
    for start, stop, _ in parts:
        if start != position:
            return False
        position = stop
    return position == total


def _check_rows(value: Any, start: int, stop: int) -> None:
    rows = batch_size(value)
    if rows != stop - start:
        raise BatchError(
            f"a skip() in an invoke that owns {stop - start} batch row(s) gave a value with "
            f"{rows} row(s); give it a value of that invoke's rows (for example computed from "
            "that invoke's own .output of an earlier module)"
        )


@contextmanager
def skipped_modules(
    paths: set[str],
    module_at: Callable[[str], torch.nn.Module],
    pending: dict[str, SkipCall],
) -> Iterator[None]:
    """While the block runs, each module in `paths` whose current call some invoke skipped
    (a `SkipCall` in `pending`, queued by its input hook) returns the skip values instead of,
    or merged into, its forward's output; the forwards are put back after.
    """
    patched: list[tuple[torch.nn.Module, Any]] = []
    try:
        for path in paths:
            module = module_at(path)
            own = module.__dict__.get("forward")
            original = module.forward

            def forward(*args: Any, _path: str = path, _original: Any = original, **kwargs: Any):
                skip = pending.pop(_path, None)
                if skip is None:
                    return _original(*args, **kwargs)
                return skip.output(lambda: _original(*args, **kwargs))

            patched.append((module, own))
            module.forward = forward
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own
