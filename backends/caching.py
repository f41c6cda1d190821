"""What a CACHE node keeps at each hook it listens to: its invoke's rows of the value, detached
and moved as `tracer.cache(device=, dtype=, detach=)` asked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Graph, Node, ValidationError
from .batching import narrow


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """One CACHE node's request: the module paths and kinds it keeps, the batch rows of its
    invoke (stop None: every row) and what to do to each tensor it keeps."""

    id: int  # the CACHE node
    paths: tuple[str, ...]
    kinds: tuple[str, ...]
    start: int
    stop: int | None
    device: torch.device | None
    dtype: torch.dtype | None
    detach: bool

    @classmethod
    def of(cls, node: Node, graph: Graph) -> CacheSpec:
        kwargs = node.kwargs
        start, stop = 0, None
        if node.invoke >= 0:  # outside every invoke (and in a prompt-less one): the whole batch
            invoke = graph.invokes[node.invoke]
            start, stop = invoke.start, invoke.stop
        return cls(
            node.id,
            tuple(kwargs["paths"]),
            tuple(kwargs["kinds"]),
            start,
            stop,
            _device(node, kwargs.get("device")),
            _dtype(node, kwargs.get("dtype")),
            bool(kwargs.get("detach", True)),
        )

    def keep(self, value: Any, total: int) -> Any:
        """The value as this cache stores it: its rows, detached, on its device and dtype."""
        stop = self.stop
        if stop is not None and not (self.start == 0 and stop == total):
            value = narrow(value, self.start, stop, total)
        if self.detach or self.device is not None or self.dtype is not None:
            value = _map_tensors(value, self._convert)
        return value

    def _convert(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.detach:
            tensor = tensor.detach()
        if self.device is not None or self.dtype is not None:
            dtype = self.dtype if self.dtype is not None and tensor.is_floating_point() else None
            tensor = tensor.to(device=self.device, dtype=dtype)
        return tensor


def _device(node: Node, name: Any) -> torch.device | None:
    """The device a CACHE node names ("cuda:0"); a bad name is the graph's error, not torch's."""
    if name is None:
        return None
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValidationError(f"{node} names {name!r} as its device, which is not one") from error


def _dtype(node: Node, name: Any) -> torch.dtype | None:
    """The dtype a CACHE node names ("float16"); only dtypes, whatever a loaded graph says."""
    if name is None:
        return None
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValidationError(f"{node} names {name!r} as its dtype, which is not a torch dtype")
    return dtype


def _map_tensors(value: Any, function: Any) -> Any:
    """`value` with `function` applied to every tensor in its tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_map_tensors(v, function) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, function) for v in value)
    if isinstance(value, dict):
        mapped = {k: _map_tensors(v, function) for k, v in value.items()}
        if type(value) is dict:
            return mapped
        try:  # a model output (ModelOutput is a dict): keep its class and attribute access
            return type(value)(**mapped)
        except TypeError:
            return mapped
    return value
