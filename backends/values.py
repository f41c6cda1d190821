"""Values at hook sites and errors of nodes: what a READ sees, what a WRITE changes, and
the notes that name the user's line."""

from __future__ import annotations

from typing import Any

from ..ir import Node, Ref
from ..ir.errors import ExecutionError
from .plan import GRAD, RESULT


class Missing(Exception):
    """A node's input does not exist yet; the cursor waits for it."""

    def __init__(self, ref: Ref) -> None:
        self.ref = ref


def project(full: Any, kind: str) -> Any:
    """What a READ of `kind` sees of the site's value."""
    if kind == "input":
        args, kwargs = full
        if args:
            return args[0]
        if kwargs:
            return next(iter(kwargs.values()))
        raise ExecutionError("the module was called without arguments, so it has no .input")
    return full


def inject(full: Any, kind: str, new: Any) -> Any:
    """The site's value after a WRITE of `kind` set it to `new`."""
    if kind == "input":
        args, kwargs = full
        if args:
            return ((new, *args[1:]), kwargs)
        first = next(iter(kwargs))
        return (args, {**kwargs, first: new})
    if kind == "inputs":
        if not (isinstance(new, tuple) and len(new) == 2 and isinstance(new[1], dict)):
            raise ExecutionError("set .inputs to a pair (args_tuple, kwargs_dict)")
        return (tuple(new[0]), new[1])
    return new


def describe(target: str) -> str:
    if target == GRAD:
        return "a .grad"
    return "tracer.result()" if target == RESULT else f"model.{target}"


def with_location(error: Exception, node: Node, debug: bool) -> Exception:
    """Add the user's file:line to an error raised by a node (once), keeping its type."""
    if getattr(error, "_nnsight_located", False) or node.loc is None:
        return error
    if debug:
        import linecache

        text = linecache.getline(node.loc.file, node.loc.line).strip()
        error.add_note(f"  in the intervention code at {node.loc}: {text}\n  graph node: {node}")
    else:
        error.add_note(f"  at {node.loc}")
    error._nnsight_located = True  # type: ignore[attr-defined]
    return error
