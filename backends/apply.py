"""What one node that needs no hook does with its argument values: shared by the executors."""

from __future__ import annotations

from typing import Any

from ..ir import Node, Op
from ..ir.errors import ExecutionError
from ..ir.functions import resolve
from .local_blocks import run_local


def apply(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any], saved: dict[int, Any]) -> Any:
    """Run `node` on its argument values; return its value. A SAVE stores into `saved`.

    A module called on traced values (METHOD `__call__` on a module) is the executor's to
    handle first: its hooks must not count that call as one of the module's steps.
    """
    op = node.op
    if op is Op.GETITEM:
        return args[0][args[1]]
    if op is Op.METHOD:
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if op is Op.CALL:
        return resolve(node.target)(*args, **kwargs)
    if op is Op.SAVE:
        saved[node.args[0].id] = args[0]
        return None
    if op is Op.GETATTR:
        return getattr(args[0], node.target)
    if op is Op.SETITEM:
        args[0][args[1]] = args[2]
        return None
    if op is Op.LOG:
        print(*args, **kwargs)
        return None
    if op is Op.CACHE:
        return None  # values are captured at the hooks
    if op is Op.LOCAL:
        return run_local(node, args)
    raise ExecutionError(f"the local executor cannot run {node}")
