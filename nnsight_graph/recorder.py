"""Recorder: builds the Graph while a trace body runs against Proxies."""

from __future__ import annotations

import linecache
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import torch

from .ir import (
    Const,
    Graph,
    GraphBuildError,
    Invoke,
    Node,
    Op,
    Ref,
    SourceLoc,
    TraceRef,
    const,
    ref,
)
from .ir.errors import InvokeError
from .ir.functions import UNSET
from .ir.node import MAX_SOURCE_TEXT, is_literal
from .ir.sites import SITED_OPS, site_of
from .proxy import Proxy

# Nodes and invokes are NamedTuples; building them from a tuple skips the generated Python
# `__new__`, a noticeable share of a small trace's recording time.
_new_node = partial(tuple.__new__, Node)
_new_invoke = partial(tuple.__new__, Invoke)
NO_KWARGS: dict[str, Any] = {}  # the kwargs of every node that has none; never mutated
_Tensor = torch.Tensor
_SAVE = Op.SAVE  # a module-level name: `Op.X` is slow on Python 3.11 (EnumType.__getattr__)

_PRIMITIVES = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
_PRIMITIVE_TYPES = frozenset({*_PRIMITIVES, type(UNSET)})


def _package_dirs() -> tuple[str, ...]:
    from . import backends, ir, passes

    dirs = {os.path.dirname(module.__file__ or "") for module in (ir, passes, backends)}
    dirs.add(os.path.dirname(__file__))
    dirs.add(os.path.dirname(torch.__file__))
    return tuple(d + os.sep for d in dirs)


_INTERNAL: tuple[str, ...] = ()
_IS_INTERNAL: dict[str, bool] = {}
_LOCATIONS: dict[tuple[str, int], SourceLoc] = {}


def user_location(skip: int = 0) -> SourceLoc | None:
    """The file:line of the innermost frame outside nnsight_graph and torch.

    The search starts at the caller's caller, `skip` frames further out when the caller knows
    that those frames are ours (each frame looked at costs a frame object).
    """
    global _INTERNAL
    frame = sys._getframe(2 + skip)
    while frame is not None:
        file = frame.f_code.co_filename
        internal = _IS_INTERNAL.get(file)
        if internal is None:
            if not _INTERNAL:
                _INTERNAL = _package_dirs()
            internal = _IS_INTERNAL[file] = file.startswith(_INTERNAL)
        if not internal:
            key = (file, frame.f_lineno)
            loc = _LOCATIONS.get(key)
            if loc is None:
                text = linecache.getline(file, frame.f_lineno, frame.f_globals).strip()
                loc = _LOCATIONS[key] = SourceLoc(file, frame.f_lineno, text[:MAX_SOURCE_TEXT])
            return loc
        frame = frame.f_back  # type: ignore[assignment]
    return None


class Recorder:
    """Appends Nodes for the operations a trace body performs on Proxies."""

    # Rarely used containers start as these shared empty class-level values: a trace that
    # never fills them allocates nothing for them (many traces are one read and one save).
    optional: frozenset[int] | set[int] = frozenset()  # nodes of steps that may never happen
    caches: tuple[tuple[int, Any], ...] | list[tuple[int, Any]] = ()  # (CACHE node, Cache)
    saved_containers: tuple[Any, ...] | list[Any] = ()  # resolved after the run
    # nnsight.local() blocks (nnsight_graph.local): only a trace that runs elsewhere splits
    remote = False  # the trace runs elsewhere (remote=True, remote="local")
    local_start: int | None = None  # the first node of the block being recorded
    local_blocks: list[Any] = []  # never mutated: replaced by a new list (local._split)
    local_ids: frozenset[int] = frozenset()  # the nodes of all blocks

    def __init__(self, root: Any = None) -> None:
        self.root = root  # the model whose modules this trace may read and write (None: any)
        self.nodes: list[Node] = []
        self.constants: list[Any] = []
        self.invokes: list[Invoke] = []
        self.invoke = -1
        self.step = 0
        self.guard: Ref | None = None  # the condition of the `if proxy:` being recorded
        self.backward: list[int] = []  # the `with loss.backward():` blocks being recorded
        self.barriers: list[Any] = []
        self.results: dict[int, Any] | None = None  # saved values, once the trace has run
        self.session: Any = None  # the model.session() this trace belongs to, if any
        self.trace_index = 0  # its position among the session's traces
        # saved only because a later trace of the session uses them (a server keeps them)
        self.kept: set[int] = set()
        self.optional_from: int | None = None  # steps from here on may never happen (EOS)
        self.saved_ids: set[int] = set()
        self._constant_index: dict[int, int] = {}
        self.total_rows = 0  # batch rows of the invokes opened so far

    # nodes --------------------------------------------------------------------------------

    def add(self, op: Op, target: str = "", args: tuple[Any, ...] = (), **kwargs: Any) -> int:
        """Append a node; return its id."""
        encode = self.encode
        # encode first: encoding may record nodes of its own (a pending `.shape`)
        if not args:
            encoded_args: tuple[Any, ...] = ()
        elif len(args) == 1:  # most nodes: no list to build
            encoded_args = (encode(args[0]),)
        else:  # a comprehension: cheaper than map(), which calls encode from C
            encoded_args = tuple([encode(a) for a in args])
        encoded_kwargs = {k: encode(v) for k, v in kwargs.items()} if kwargs else NO_KWARGS
        return self.append(op, target, encoded_args, encoded_kwargs)

    def add_item(self, op: Op, args: tuple[Any, ...]) -> int:
        """`add` for GETITEM and SETITEM (the proxy's `[...]`): a literal key or value (an int,
        a slice, a tuple of them) is kept without encoding, the common edit `h[:, :, c] = 0`."""
        encode = self.encode
        encoded = tuple([a if is_literal(a) else encode(a) for a in args])
        return self.append(op, "", encoded, NO_KWARGS)

    def append(self, op: Op, target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """Append a node whose arguments are encoded already; return its id.

        Only for callers that the package's own code calls (like `add` and `save`): the
        search for the user's frame starts beyond the caller's caller.
        """
        nodes = self.nodes
        id = len(nodes)
        if self.optional_from is not None and self.step >= self.optional_from:
            self.mark_optional(id)
        loc = user_location(skip=2)
        site = site_of(target) if op in SITED_OPS else None  # the node's typed hook site
        nodes.append(
            _new_node((id, op, target, args, kwargs, self.invoke, self.step, loc, self.guard, site))
        )
        return id

    def mark_optional(self, id: int) -> None:
        """Node `id` belongs to a step that may never happen (generation may end first)."""
        if isinstance(self.optional, set):
            self.optional.add(id)
        else:
            self.optional = {id}

    def proxy(self, op: Op, target: str = "", args: tuple[Any, ...] = (), **kwargs: Any) -> Proxy:
        """Append a node and return a Proxy for its value."""
        return Proxy(self, self.add(op, target, args, **kwargs))

    def once(self, op: Op, target: str, args: tuple[Any, ...] = ()) -> Proxy:
        """A node for a site that fires once per run (the result, the generator): step 0."""
        step, optional = self.step, self.optional_from
        self.step, self.optional_from = 0, None
        try:
            return self.proxy(op, target, args)
        finally:
            self.step, self.optional_from = step, optional

    def encode(self, value: Any) -> Any:
        """An argument as the graph stores it: Ref for Proxies, Const for objects."""
        kind = type(value)
        if kind is _Tensor:  # the common constant first; a Tensor is never a Proxy
            return self.constant(value)
        if kind is Proxy or isinstance(value, Proxy):
            other = value._nn_recorder
            if other is not self:
                if self.session is None or other.session is not self.session:
                    raise GraphBuildError(
                        "a value from another trace was used here; save it in that trace with "
                        ".save() and use the saved value, or group the traces in "
                        "model.session()"
                    )
                other.keep_for_later(value)  # the earlier trace keeps it for this one
                return self.constant(TraceRef(other.trace_index, value._nn_node()))
            return ref(value._nn_node())
        if kind in _PRIMITIVE_TYPES or kind is Ref:
            return value
        if isinstance(value, _Tensor):
            return self.constant(value)
        if kind is tuple and is_literal(value):  # an index like [:, :, 3]: kept as it is
            return value
        if kind is tuple or kind is list:
            return kind(self.encode(v) for v in value)
        if kind is dict or isinstance(value, Mapping):  # tokenizer output too (BatchEncoding)
            return {k: self.encode(v) for k, v in value.items()}
        if kind is slice:
            return slice(self.encode(value.start), self.encode(value.stop), self.encode(value.step))
        if isinstance(value, _PRIMITIVES):
            return value
        if getattr(value, "_nnsight_envoy", False):
            raise GraphBuildError(
                f"a module wrapper ({value._path or 'the model'}) was used as a value; use its "
                ".output or .input"
            )
        return self.constant(value)

    def constant(self, value: Any) -> Const:
        """Put an object in the constant table (once per object)."""
        index = self._constant_index.get(id(value))
        if index is None:
            index = len(self.constants)
            self.constants.append(value)
            self._constant_index[id(value)] = index
        return const(index)

    def save(self, proxy: Proxy) -> None:
        """Keep the proxy's value after the run."""
        node = proxy._nn_node()
        if node in self.saved_ids:
            if self.kept:
                self.kept.discard(node)  # the user wants it too
            return
        self.saved_ids.add(node)
        if proxy._nn_recorder is self:
            self.append(_SAVE, "", (ref(node),), NO_KWARGS)
        else:  # another trace's value: encoding says whether this trace may use it
            self.add(_SAVE, "", (proxy,))

    def keep_for_later(self, proxy: Proxy) -> None:
        """Keep the proxy's value for a later trace of the session (not for the user)."""
        node = proxy._nn_node()
        if node in self.saved_ids:
            return
        self.saved_ids.add(node)
        self.kept.add(node)
        self.append(_SAVE, "", (ref(node),), NO_KWARGS)

    def keep_container(self, container: Any) -> None:
        """Resolve a saved list, dict, ... after the run (and save the Proxies inside it)."""
        if isinstance(self.saved_containers, list):
            self.saved_containers.append(container)
        else:
            self.saved_containers = [container]

    def add_cache(self, node: int, cache: Any) -> None:
        """Fill `cache` with the values the CACHE node `node` collected, after the run."""
        if isinstance(self.caches, list):
            self.caches.append((node, cache))
        else:
            self.caches = [(node, cache)]

    # invokes ------------------------------------------------------------------------------

    def open_invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any], rows: int | None) -> int:
        """Start recording into a new invoke that owns `rows` batch rows (None: all rows)."""
        if self.invoke >= 0:
            raise InvokeError(
                "invokes cannot be nested: close one `with tracer.invoke(...)` block before "
                "opening the next, and pass inputs either to trace() or to invoke(), not both"
            )
        index = len(self.invokes)
        encode = self.encode
        if len(args) == 1:  # the usual single input: no list to build
            encoded_args: tuple[Any, ...] = (encode(args[0]),)
        else:
            encoded_args = tuple([encode(a) for a in args])
        encoded_kwargs = {k: encode(v) for k, v in kwargs.items()} if kwargs else {}
        if rows is None:
            invoke = _new_invoke((index, encoded_args, encoded_kwargs, 0, None))
        else:
            start = self.total_rows
            self.total_rows = start + rows
            invoke = _new_invoke((index, encoded_args, encoded_kwargs, start, start + rows))
        self.invokes.append(invoke)
        self.invoke = index
        self.step = 0
        return index

    def close_invoke(self) -> None:
        self.invoke = -1

    # result -------------------------------------------------------------------------------

    def finish(self) -> Graph:
        """The recorded graph, with SAVE nodes added for Proxies inside saved containers."""
        for container in self.saved_containers:
            for proxy in _proxies_in(container):
                if proxy._nn_recorder is self and proxy._nn_node() not in self.saved_ids:
                    self.invoke = self.nodes[proxy._nn_node()].invoke
                    self.save(proxy)
        self.invoke = -1
        return Graph(self.nodes, self.constants, self.invokes, frozenset(self.optional))


def _proxies_in(value: Any, depth: int = 0) -> Iterator[Proxy]:
    if depth > 50:
        return
    if isinstance(value, Proxy):
        yield value
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _proxies_in(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _proxies_in(item, depth + 1)


class _ThreadState(threading.local):
    """What this thread is recording. Each thread records its own traces: a trace opened in
    one thread never sees another thread's recorder or session."""

    def __init__(self) -> None:
        self.recorder: Recorder | None = None  # the trace whose body is being recorded
        self.session: Any = None  # the model.session() whose body is being recorded


# Read on every Envoy access: one attribute of a thread-local (about 15 ns more than the
# module-level list it replaced, which every thread shared).
_STATE = _ThreadState()


def active() -> Recorder | None:
    """The recorder of the trace this thread is recording, if any."""
    return _STATE.recorder


class recording:  # noqa: N801 - used like a function: `with recording(recorder):`
    """Make `recorder` this thread's active one while the body runs (a class: cheaper than a
    generator)."""

    __slots__ = ("recorder", "previous")

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.previous: Recorder | None = None

    def __enter__(self) -> Recorder:
        state = _STATE
        self.previous = state.recorder
        state.recorder = self.recorder
        return self.recorder

    def __exit__(self, *exc_info: object) -> None:
        _STATE.recorder = self.previous
