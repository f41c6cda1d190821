"""`nnsight.local()` blocks while a graph runs where its recording is not (on a server, or
through `remote="local"`): a LOCAL node hands the values its block reads to the handler of
the run, which gets the block run by the client and returns the values later nodes need.

The handler is set per run with `serving_local_blocks(handler)`; a graph with LOCAL nodes
that runs without one is refused with what to do instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

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
    values = handler(node.kwargs["block"], dict(zip(node.kwargs["inputs"], args, strict=True)), outputs)
    if sorted(values) != sorted(outputs):
        raise ExecutionError(
            f"the client sent values for nodes {sorted(values)} of its nnsight.local() block, "
            f"but the run needs {sorted(outputs)}; use the same nnsight_graph version on both sides"
        )
    return values
