"""Watch one run of a model to learn its call order and which modules return batch tensors.

The hooks are global (every module, every thread): they record only the calls made in the
thread that watches, so a forward of the same model in another thread cannot change the order.
"""

from __future__ import annotations

from _thread import get_ident
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)


@dataclass
class Observation:
    """The hook events of one run in the order they fired, and the tensor-output modules."""

    events: list[tuple[str, str]] = field(default_factory=list)
    tensor_outputs: set[str] = field(default_factory=set)


@contextmanager
def observed(root: torch.nn.Module, batch_rows: int | None) -> Iterator[Observation]:
    """Record every call of `root`'s modules in this thread while the block runs (global hooks,
    removed after)."""
    paths = {id(module): path for path, module in root.named_modules()}
    observation = Observation()
    thread = get_ident()

    def before(module: torch.nn.Module, args: Any) -> None:
        path = paths.get(id(module))
        if path is not None and get_ident() == thread:
            observation.events.append((path, "input"))

    def after(module: torch.nn.Module, args: Any, output: Any) -> None:
        path = paths.get(id(module))
        if path is None or get_ident() != thread:
            return
        observation.events.append((path, "output"))
        if (
            isinstance(output, torch.Tensor)
            and output.dim() > 0
            and batch_rows is not None
            and output.shape[0] == batch_rows
        ):
            observation.tensor_outputs.add(path)

    handles = [register_module_forward_pre_hook(before), register_module_forward_hook(after)]
    try:
        yield observation
    finally:
        for handle in handles:
            handle.remove()
