"""What one node that needs no hook does with its argument values: shared by the executors.

One `match` over every op; `assert_never` makes mypy refuse an op without a case.
"""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info >= (3, 11):
    from typing import assert_never
else:  # torch depends on typing_extensions
    from typing_extensions import assert_never

from ..ir import Node, Op
from ..ir.errors import ExecutionError
from ..ir.functions import resolve, select
from .local_blocks import run_local


def apply(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any], saved: dict[int, Any]) -> Any:
    """Run `node` on its argument values; return its value. A SAVE stores into `saved`.

    Hooked ops run at their hook site, control ops (STOP, BARRIER, BACKWARD) in the
    executor's own step; a module called on traced values (CALL_MODULE, or METHOD `__call__`
    on a module) is the executor's to handle first: its hooks must not count that call as one
    of the module's steps.
    """
    op = node.op
    match op:
        case Op.GETITEM:
            return args[0][args[1]]
        case Op.METHOD:
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        case Op.CALL:
            return resolve(node.target)(*args, **kwargs)
        case Op.SELECT:
            return select(args[0], args[1], args[2])
        case Op.SAVE:
            saved[node.args[0].id] = args[0]
            return None
        case Op.GETATTR:
            return getattr(args[0], node.target)
        case Op.SETITEM:
            args[0][args[1]] = args[2]
            return None
        case Op.LOG:
            print(*args, **kwargs)
            return None
        case Op.CACHE:
            return None  # values are captured at the hooks
        case Op.LOCAL:
            return run_local(node, args)
        case Op.READ | Op.WRITE | Op.SKIP | Op.RESULT | Op.READ_GRAD | Op.WRITE_GRAD:
            raise ExecutionError(f"{node} runs at its hook site, not here")
        case Op.STOP | Op.BARRIER | Op.BACKWARD | Op.CALL_MODULE:
            raise ExecutionError(f"{node} runs in the executor's own step, not here")
        case _:
            assert_never(op)
