"""`nnsight.local()` blocks while a graph runs where its recording is not (on a server, or
through `remote="local"`): a LOCAL node hands the values its block reads to the handler of
the run, which gets the block run by the client and returns the values later nodes need.

The handler is set per run with `serving_local_blocks(handler)`; a graph with LOCAL nodes
that runs without one is refused with what to do instead. The values that come back are
checked against the LOCAL node's declaration (kwargs["declared"], made by the client's shape
pass, nnsight_graph.local_shapes) before any later node runs: `mismatch` is that check, the
same on the client (before it sends) and here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from ..ir import Node
from ..ir.errors import ExecutionError

# (block, {node id: value it reads}, [node ids whose values the run needs back]) -> those values
LocalHandler = Callable[[int, dict[int, Any], list[int]], dict[int, Any]]

_HANDLER: ContextVar[LocalHandler | None] = ContextVar("local_blocks", default=None)


@contextmanager
def serving_local_blocks(handler: LocalHandler) -> Iterator[None]:
    """Runs in this block hand each LOCAL node's values to `handler`."""
    token = _HANDLER.set(handler)
    try:
        yield
    finally:
        _HANDLER.reset(token)


def run_local(node: Node, args: tuple[Any, ...]) -> dict[int, Any]:
    """A LOCAL node's value: the handler's answer for the node ids in kwargs["outputs"]."""
    handler = _HANDLER.get()
    if handler is None:
        raise ExecutionError(
            "this graph has an nnsight.local() block, which runs only in the client that "
            "recorded it: run the trace with remote=True (or remote='local') from there"
        )
    outputs = list(node.kwargs["outputs"])
    downloads = dict(zip(node.kwargs["inputs"], args, strict=True))
    values = handler(node.kwargs["block"], downloads, outputs)
    if sorted(values) != sorted(outputs):
        raise ExecutionError(
            f"the client sent values for nodes {sorted(values)} of its nnsight.local() block, "
            f"but the run needs {sorted(outputs)}; use the same nnsight_graph version on both sides"
        )
    for entry in node.kwargs.get("declared") or ():
        problem = mismatch(entry, values[entry["id"]])
        if problem:
            where = f" at {node.loc}" if node.loc else ""
            raise ExecutionError(
                f"the client sent for node %{entry['id']} of its nnsight.local() block{where} "
                f"{problem}; the run stopped before any node used it. Send what the block "
                "computes (an nnsight_graph client checks this before it sends), or run the "
                "trace again if the block's result depends on more than the values it reads"
            )
    return values


def mismatch(entry: dict[str, Any], value: Any) -> str:
    """How `value` differs from a declaration entry of a LOCAL node ("" when it fits):
    {"kind": "tensor", "shape": [...], "dtype": "int64" or "floating" (any floating dtype: the
    server may run the model in another precision than the client's pass)}, {"kind": "value",
    "type": "int"} (a builtin scalar of that type) or {"kind": "unknown"} (anything fits)."""
    kind = entry["kind"]
    if kind == "tensor":
        expected = f"a tensor of shape {list(entry['shape'])} and dtype {entry['dtype']}"
        if not isinstance(value, torch.Tensor):
            return f"a value of type {type(value).__name__}, but the trace declared {expected}"
        dtype = entry["dtype"]
        floating = dtype == "floating"
        fits = value.is_floating_point() if floating else dtype_name(value.dtype) == dtype
        if list(value.shape) != list(entry["shape"]) or not fits:
            got = f"shape {list(value.shape)} and dtype {dtype_name(value.dtype)}"
            return f"a tensor of {got}, but the trace declared {expected}"
        return ""
    if kind == "value" and type(value).__name__ != entry["type"]:
        got = "a tensor" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
        return f"{got}, but the trace declared a value of type {entry['type']}"
    return ""


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.int64` -> "int64"."""
    return str(dtype).removeprefix("torch.")
