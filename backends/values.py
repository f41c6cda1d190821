"""Values at hook sites and errors of nodes: what a READ sees, what a WRITE changes, and
the notes that name the user's line."""

from __future__ import annotations

from typing import Any

from ..ir import GRADIENTS, Const, Node, Op, Ref, map_args
from ..ir.errors import ExecutionError, ModuleNotCalledError, OutOfOrderError, add_note


class Missing(Exception):
    """A node's input does not exist yet; the cursor waits for it."""

    def __init__(self, ref: Ref) -> None:
        self.ref = ref


def arg_value(arg: Any, env: dict[int, Any], constants: list[Any]) -> Any:
    """The run-time value of an argument: Refs and Consts replaced, containers rebuilt.

    A Ref whose value is not in `env` raises KeyError with its id.
    """
    kind = type(arg)
    if kind is Ref:
        return env[arg.id]
    if kind is Const:
        return constants[arg.index]
    return map_args(arg, lambda leaf: env[leaf.id] if type(leaf) is Ref else constants[leaf.index])


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


def describe(node: Node) -> str:
    """What a hooked node reads or writes, as the user wrote it."""
    if node.op in GRADIENTS:
        return "a .grad"
    return "tracer.result()" if node.op is Op.RESULT else f"model.{node.target}"


def with_location(error: Exception, node: Node, debug: bool) -> Exception:
    """Add the user's file:line to an error raised by a node (once), keeping its type."""
    if getattr(error, "_nnsight_located", False) or node.loc is None:
        return error
    if debug:
        text = node.loc.text
        add_note(error, f"  in the intervention code at {node.loc}: {text}\n  graph node: {node}")
    else:
        add_note(error, f"  at {node.loc}")
    error._nnsight_located = True  # type: ignore[attr-defined]
    return error


def out_of_order(node: Node, previous: Node | None) -> OutOfOrderError:
    """The error for a module access whose module already ran (`previous`: the last one read)."""
    if node.op in GRADIENTS:
        return OutOfOrderError(
            f"the .grad requested at {node.loc} was already computed and passed on: "
            "gradients arrive in reverse order of the forward pass, so read the .grad of "
            "later values first (for example layer 5 before layer 0)"
        )
    after = f" after reading {describe(previous)} at {previous.loc}" if previous is not None else ""
    return OutOfOrderError(
        f"{describe(node)} was requested at {node.loc}{after}, but that module had "
        "already run in this forward pass. Access modules in the order the model calls "
        "them (for example layer 0 before layer 5), or use a separate invoke."
    )


def not_called(node: Node, count: int) -> ModuleNotCalledError:
    """The error for a module access whose step never came (the module ran `count` times)."""
    return ModuleNotCalledError(
        f"{describe(node)} requested at {node.loc} was never reached: "
        f"the module ran {count} time(s) in this run and step {node.step} was "
        "asked for. Check the module path, the inputs, and any early stop."
    )
