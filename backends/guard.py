"""What the nodes of an untrusted graph may do while it runs: the registry, sizes, a deadline.

A graph that was not recorded in this process (loaded from a file, sent by a client) runs
its nodes through `Guard.apply`: each function, method and attribute is checked against the
registry for the value it is used on, the values a node would create are sized before it
runs (on meta tensors, or from its arguments for Python values), and the run stops at the
first node past its deadline.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from ..ir import Node, Op
from ..ir.errors import ExecutionError
from ..ir.limits import Limits
from ..ir.registry import allowed_function, check_attribute, check_method
from .apply import apply


class LimitError(ExecutionError):
    """An untrusted graph's node would go past a bound of its run (size, time)."""


class RunCancelled(ExecutionError):
    """The run was asked to stop (its job was cancelled): raised at the next node."""


_CANCELLED: ContextVar[Callable[[], bool] | None] = ContextVar("cancelled", default=None)
_CANCEL_CHECK_S = 0.01  # how often a run asks whether it was cancelled


@contextmanager
def cancellable(cancelled: Callable[[], bool]) -> Iterator[None]:
    """Untrusted runs in this block stop at their next node once `cancelled()` is true (a
    server's worker passes its job's cancel flag)."""
    token = _CANCELLED.set(cancelled)
    try:
        yield
    finally:
        _CANCELLED.reset(token)


def check_cancelled() -> None:
    """Raise RunCancelled if the run in progress was asked to stop."""
    cancelled = _CANCELLED.get()
    if cancelled is not None and cancelled():
        raise RunCancelled("the job was cancelled while it ran")


class Guard:
    """The run-time checks of one run of an untrusted graph."""

    def __init__(self, limits: Limits) -> None:
        self.elements = limits.tensor_elements
        self.items = limits.python_items
        seconds = limits.deadline_s
        self.seconds = seconds
        now = time.monotonic()
        self.deadline = None if seconds is None else now + seconds
        self.cancelled = _CANCELLED.get()
        self.next_cancel_check = now

    def apply(
        self, node: Node, args: tuple[Any, ...], kwargs: dict[str, Any], saved: dict[int, Any]
    ) -> Any:
        """Run one node as `backends.apply` does, after checking what it may do."""
        if self.deadline is not None or self.cancelled is not None:
            self.check_time()
        op = node.op
        if op is Op.CALL:
            function = allowed_function(node.target)
            self.check_size(node, function, args, kwargs)
            return self.checked_result(node, function(*args, **kwargs))
        if op is Op.METHOD:
            check_method(args[0], node.target)
            method = getattr(args[0], node.target)
            self.check_size(node, method, args[1:], kwargs, args[0])
            return self.checked_result(node, method(*args[1:], **kwargs))
        if op is Op.GETATTR:
            check_attribute(args[0], node.target)
        return apply(node, args, kwargs, saved)

    def check_time(self) -> None:
        """Stop the run past its deadline, or (every few ms) once it was cancelled."""
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise LimitError(
                f"the run went past its deadline of {self.seconds:g} s; make the graph "
                "smaller (fewer nodes or steps) or ask for a longer deadline"
            )
        if self.cancelled is not None and now >= self.next_cancel_check:
            self.next_cancel_check = now + _CANCEL_CHECK_S
            if self.cancelled():
                raise RunCancelled("the job was cancelled while it ran")

    # sizes -------------------------------------------------------------------------------

    def check_size(
        self,
        node: Node,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        owner: Any = None,
    ) -> None:
        """Refuse the node when the value it would create is larger than the bound."""
        size = _python_size(function, args) if owner is None else None
        if size is not None:
            if size > self.items:
                raise LimitError(self.too_large(node, size, self.items))
            return
        size = _meta_size(function, args, kwargs, owner, node)
        if size is not None and size > self.elements:
            raise LimitError(self.too_large(node, size, self.elements))

    def checked_result(self, node: Node, value: Any) -> Any:
        """The value, unless it is larger than the bound (what a size check could not see)."""
        if isinstance(value, torch.Tensor):
            if value.numel() > self.elements:
                raise LimitError(self.too_large(node, value.numel(), self.elements))
            return value
        size = _length(value)
        if size is not None and size > self.items:
            raise LimitError(self.too_large(node, size, self.items))
        return value

    def too_large(self, node: Node, size: int, limit: int) -> str:
        where = f" at {node.loc}" if node.loc else ""
        return (
            f"the node {node.op.value} {node.target}{where} would create a value of {size} "
            f"elements, more than the limit of {limit} for this run"
        )


_SEQUENCE_TIMES = {operator.mul, operator.imul}
_POWERS = {operator.pow, operator.ipow}  # on ints: math.pow gives a float (or overflows)
_SHIFTS = {operator.lshift, operator.ilshift}
_MATERIALIZE = {list, tuple, sorted, dict}


def _python_size(function: Callable[..., Any], args: tuple[Any, ...]) -> int | None:
    """The size of a Python value the call would build: items, characters or digits."""
    if function in _SEQUENCE_TIMES and len(args) == 2:
        sequence, count = args if isinstance(args[1], int) else args[::-1]
        if isinstance(sequence, (str, bytes, list, tuple)) and isinstance(count, int):
            return len(sequence) * max(count, 0)
    elif function in _POWERS and len(args) == 2 and all(type(a) is int for a in args):
        base, exponent = args  # an int counts 16 to the byte: big ones are slow to compute
        return 16 * (int(exponent * math.log2(abs(base))) // 8 + 1) if abs(base) > 1 else 1
    elif function in _SHIFTS and len(args) == 2 and all(type(a) is int for a in args):
        return 16 * ((args[0].bit_length() + max(args[1], 0)) // 8 + 1)
    elif function in _MATERIALIZE and len(args) == 1 and isinstance(args[0], range):
        return len(args[0])
    return None


def _meta_size(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    owner: Any,
    node: Node,
) -> int | None:
    """The elements of the tensors the call returns, computed on meta tensors (no data).

    None when the call cannot run on meta tensors (data-dependent shapes, Python values);
    the result is then checked after the call instead.
    """
    tensors = owner is not None and isinstance(owner, torch.Tensor)
    tensors = tensors or any(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values()))
    if not tensors and node.target not in _CREATION_TARGETS:
        return None
    meta_args = _to_meta(args)
    meta_kwargs = _to_meta(kwargs)
    if not tensors:
        meta_kwargs = {**meta_kwargs, "device": "meta"}
    try:
        if owner is not None:
            result = getattr(_to_meta(owner), node.target)(*meta_args, **meta_kwargs)
        else:
            result = function(*meta_args, **meta_kwargs)
    except Exception:  # meta cannot run it: the result is checked after the real call
        return None
    return _elements(result)


_CREATION_TARGETS = frozenset(
    f"torch.{name}"
    for name in "zeros ones full empty rand randn randint randperm arange linspace logspace eye "
    "normal scalar_tensor".split()
)


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, (tuple, list)):
        return type(value)(_to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    return value


def _elements(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (tuple, list)):
        return sum(_elements(v) for v in value)
    return 0


def _length(value: Any) -> int | None:
    if isinstance(value, (str, bytes, list, tuple, dict)):
        return len(value)
    if type(value) is int:
        return 16 * (value.bit_length() // 8)
    return None
