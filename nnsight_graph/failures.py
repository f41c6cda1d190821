"""Notes for errors the model itself raises while a trace runs: which module failed, in which
trace, on what inputs (torch's own message says only what went wrong inside it)."""

from __future__ import annotations

import types
from typing import Any

import torch

from .ir import Const, Graph, Op, SourceLoc, map_args
from .ir.errors import add_note

_WRITES = frozenset({Op.WRITE, Op.SKIP, Op.WRITE_GRAD})


def note_model_error(
    error: BaseException, root: torch.nn.Module, graph: Graph, key: Any, hint: str
) -> None:
    """Add one note to `error`, keeping its type, unless a node's location is on it already;
    `hint` ends it (what the model's inputs must be)."""
    if getattr(error, "_nnsight_located", False):
        return  # raised by the intervention code: its note names the user's line
    module_path = _failing_module(error.__traceback__, root)
    if module_path is None:
        return  # not raised inside the model's modules: nothing to add
    where = f"model.{module_path}" if module_path else "the model"
    failed = type(root if not module_path else root.get_submodule(module_path)).__name__
    trace = f" (the trace at {SourceLoc(*key)})" if _is_location(key) else ""
    inputs = [_inputs_of(invoke.args, invoke.kwargs, graph) for invoke in graph.invokes]
    given = [text for text in inputs if text]
    text = f"  while {where} ({failed}) ran{trace}"
    if given:
        shown = "; ".join(given[:3]) + ("; ..." if len(given) > 3 else "")
        text += f", on the input {shown}" if len(given) == 1 else f", on the inputs {shown}"
    if any(node.op in _WRITES for node in graph.nodes):
        text += " (or on a value the intervention code wrote into the model)"
    add_note(error, f"{text}. {hint}" if hint else f"{text}.")
    error._nnsight_located = True  # type: ignore[attr-defined]


def _is_location(key: Any) -> bool:
    return (
        isinstance(key, tuple)
        and len(key) == 2
        and isinstance(key[0], str)
        and isinstance(key[1], int)
    )


def _failing_module(traceback: types.TracebackType | None, root: torch.nn.Module) -> str | None:
    """The path of the innermost module of `root` whose forward is in the traceback."""
    paths = {id(module): path for path, module in root.named_modules(remove_duplicate=False)}
    found: str | None = None
    while traceback is not None:
        owner = traceback.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in paths:
            found = paths[id(owner)]
        traceback = traceback.tb_next
    return found


def _inputs_of(args: tuple[Any, ...], kwargs: dict[str, Any], graph: Graph) -> str:
    constants = graph.constants

    def decode(leaf: Any) -> Any:
        return constants[leaf.index] if type(leaf) is Const else leaf

    args, kwargs = map_args((args, kwargs), decode)
    parts = [describe_value(value) for value in args]
    parts += [f"{name}={describe_value(value)}" for name, value in kwargs.items()]
    return ", ".join(parts)


def describe_value(value: Any, depth: int = 0) -> str:
    """A short description of an input: `Tensor[1, 7] float32`, `dict with keys 'x'`, ..."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"Tensor[{', '.join(str(n) for n in value.shape)}] {dtype}"
    if isinstance(value, str):
        text = value if len(value) <= 30 else value[:27] + "..."
        return f"str {text!r}"
    if isinstance(value, dict):
        keys = ", ".join(repr(k) for k in list(value)[:5]) + (", ..." if len(value) > 5 else "")
        return f"dict with keys {keys}" if value else "empty dict"
    if isinstance(value, (list, tuple)):
        kind = type(value).__name__
        if not value or depth > 0:
            return f"{kind} of {len(value)}"
        return f"{kind} of {len(value)} ({describe_value(value[0], depth + 1)}, ...)"
    return type(value).__name__
