"""Node, the argument references it holds (Ref, Const) and SourceLoc."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, final

from .ops import Op
from .sites import SITED_OPS, SiteOf, site_of


@final  # exact `type(arg) is Ref` checks (the executors' fast path) then narrow for mypy
@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to the value of an earlier node."""

    id: int

    def __repr__(self) -> str:
        return f"%{self.id}"


_REFS: list[Ref] = []
# Growing the shared tables is one step under a lock: two threads growing at once would each
# append from the same length, and `_REFS[i]` would no longer be `Ref(i)`. Reads take no lock.
_GROW = threading.Lock()


def ref(id: int) -> Ref:
    """The Ref for a node id, shared: equal graphs then compare by identity, which is fast."""
    try:
        return _REFS[id]
    except IndexError:
        with _GROW:
            _REFS.extend([Ref(i) for i in range(len(_REFS), id + 1)])
        return _REFS[id]


@final
@dataclass(frozen=True, slots=True)
class Const:
    """A reference to an entry of the graph's constant table (tensors and other objects)."""

    index: int

    def __repr__(self) -> str:
        return f"$c{self.index}"


_CONSTS: list[Const] = []


def const(index: int) -> Const:
    """The Const for a table index, shared like `ref`: building a frozen dataclass is slow."""
    try:
        return _CONSTS[index]
    except IndexError:
        with _GROW:
            _CONSTS.extend([Const(i) for i in range(len(_CONSTS), index + 1)])
        return _CONSTS[index]


MAX_SOURCE_TEXT = 1000  # characters of the source line a location keeps


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """Where in the user's code a node was created, with that line's text as it was then
    (errors quote it: nothing reads a file a location names)."""

    file: str
    line: int
    text: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    def short(self) -> str:
        """`name.py:12`, the form used in printed graphs."""
        return f"{self.file.rsplit('/', 1)[-1]}:{self.line}"


_NO_KWARGS: dict[str, Any] = {}  # shared default, never mutated


class Node(NamedTuple):
    """One intervention step. Holds no tensors: constants live in the graph's table.

    Immutable; a NamedTuple rather than a dataclass because traces create many nodes and a
    tuple is several times cheaper to build. A READ, WRITE or SKIP node carries its hook site
    (`site`), made from its target when the node is made; other nodes have None.
    """

    id: int
    op: Op
    target: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = _NO_KWARGS
    invoke: int = 0
    step: int = 0
    loc: SourceLoc | None = None
    guard: Ref | None = None  # runs only when this value is true (inside `if proxy:`)
    site: SiteOf | None = None  # a sited op's hook site (`ir.sites`): set when it is made

    def __str__(self) -> str:
        parts = [_format(a) for a in self.args]
        parts += [f"{k}={_format(v)}" for k, v in self.kwargs.items()]
        call = f"{self.op.value} {self.target}".rstrip() + f"({', '.join(parts)})"
        where = f"  # {self.loc.short()}" if self.loc else ""
        step = f" @step{self.step}" if self.step else ""
        guard = f" if {self.guard!r}" if self.guard is not None else ""
        return f"%{self.id} = {call}{step}{guard}{where}"

    def inputs(self) -> Iterator[Ref]:
        """Every value this node needs: its arguments' Refs and its guard."""
        yield from refs((self.args, self.kwargs))
        if self.guard is not None:
            yield self.guard


_generated_new = Node.__new__


def _new(
    cls: type[Node],
    id: int,
    op: Op,
    target: str = "",
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] = _NO_KWARGS,
    invoke: int = 0,
    step: int = 0,
    loc: SourceLoc | None = None,
    guard: Ref | None = None,
    site: SiteOf | None = None,
) -> Node:
    """Node(...): a sited op's site is made from its target here (the recorder, whose hot path
    builds nodes from a tuple, makes it the same way)."""
    if site is None and op in SITED_OPS:
        site = site_of(target)
    return _generated_new(cls, id, op, target, args, kwargs, invoke, step, loc, guard, site)


Node.__new__ = _new  # type: ignore[method-assign,assignment]


def _format(value: Any) -> str:
    if isinstance(value, slice):
        parts = ["" if x is None else _format(x) for x in (value.start, value.stop, value.step)]
        text = ":".join(parts)
        return text[:-1] if text.endswith(":") and value.step is None else text
    if value is Ellipsis:
        return "..."
    if isinstance(value, tuple):
        return "(" + ", ".join(_format(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_format(v)}" for k, v in value.items()) + "}"
    return repr(value)


def map_args(value: Any, leaf: Callable[[Ref | Const], Any]) -> Any:
    """`value` with each Ref and Const replaced by `leaf(it)`, however deeply nested in tuples,
    lists, dicts and slices (those are rebuilt); anything else is kept as it is."""
    if isinstance(value, (Ref, Const)):
        return leaf(value)
    if isinstance(value, tuple):
        return tuple(map_args(v, leaf) for v in value)
    if isinstance(value, list):
        return [map_args(v, leaf) for v in value]
    if isinstance(value, dict):
        return {k: map_args(v, leaf) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(*(map_args(v, leaf) for v in (value.start, value.stop, value.step)))
    return value


_LITERAL_TYPES = frozenset({type(None), bool, int, float, complex, str, bytes, type(Ellipsis)})


def is_literal(value: Any) -> bool:
    """Whether an argument is stored and passed as it is: it holds no Ref or Const and cannot
    change (None, bool, int, float, complex, str, bytes, Ellipsis, and slices and tuples of
    them: an index like `[:, :, 3]`). Lists and dicts are never literal: a call may mutate them,
    so each run gets its own copy."""
    kind = type(value)
    if kind in _LITERAL_TYPES:
        return True
    if kind is slice:
        return (
            type(value.start) in _LITERAL_TYPES
            and type(value.stop) in _LITERAL_TYPES
            and type(value.step) in _LITERAL_TYPES
        )
    if kind is tuple:
        for item in value:
            if type(item) not in _LITERAL_TYPES and not is_literal(item):
                return False
        return True
    return False


def refs(value: Any) -> Iterator[Ref]:
    """Every Ref inside an argument, however deeply nested in tuples, lists, dicts, slices."""
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from refs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from refs(item)
    elif isinstance(value, slice):
        yield from refs((value.start, value.stop, value.step))
