"""Source tracing: a module's forward rewritten so that every call in it is a hook site.

`instrument(forward)` names each call site (`self_c_attn_0`, `attention_interface_0`: the
callee's name and its index) and compiles a copy of the forward in which each call goes
through a dispatcher. While a run needs those sites, the module's forward is replaced by the
copy in that run's thread only (`forwards.ReplacedForwards`); otherwise nothing changes. Which
run a call site reports to is per thread too, so overlapping runs in two threads each see
their own calls.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .forwards import ReplacedForwards

DISPATCH = "__nnsight_source_call__"


@dataclass(frozen=True)
class Instrumented:
    """A forward's source with its call sites named, and the compiled rewritten copy."""

    source: str  # the forward's source, dedented
    first_line: int  # line of the source's first line in its file
    sites: dict[str, int]  # site name -> line in `source` (1-based)
    callees: dict[str, str]  # site name -> the called expression's source ("self.c_proj")
    function: Callable[..., Any]  # the rewritten forward (unbound)
    original: Callable[..., Any]  # the function whose source this is


@functools.cache
def instrument(forward: Callable[..., Any], nested: bool = False) -> Instrumented:
    """Name the call sites of `forward` and compile a copy that reports each call.

    A `nested` copy (a function called from an instrumented forward) reports its calls under
    the call site that called it.
    """
    function = inspect.unwrap(getattr(forward, "__func__", forward))
    lines, first_line = inspect.getsourcelines(function)
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    definition = tree.body[0]
    if not isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise TypeError(f"cannot trace the source of {forward!r}: it is not a def")
    self_name = definition.args.args[0].arg if definition.args.args else "self"
    namer = _CallSites(self_name)
    namer.visit(definition)
    ast.fix_missing_locations(tree)
    code_globals = dict(getattr(function, "__globals__", {}))
    code_globals[DISPATCH] = _nested_dispatch if nested else _dispatch
    free = function.__code__.co_freevars
    wrapper = ast.parse(f"def __nnsight_make__({', '.join(free)}):\n    pass").body[0]
    result = ast.Return(ast.Name(definition.name, ast.Load()))
    wrapper.body = [definition, result]  # type: ignore[attr-defined]
    module = ast.Module([wrapper], type_ignores=[])
    ast.fix_missing_locations(module)
    ast.increment_lineno(module, first_line - 1)
    namespace: dict[str, Any] = {}
    file = inspect.getsourcefile(function) or "<source>"
    exec(compile(module, file, "exec"), code_globals, namespace)
    cells = [cell.cell_contents for cell in (function.__closure__ or ())]
    compiled = namespace["__nnsight_make__"](*cells)
    return Instrumented(source, first_line, namer.sites, namer.callees, compiled, function)


class _CallSites(ast.NodeTransformer):
    """Rewrite `f(a, b=1)` into `__nnsight_source_call__(self, "f_0", f, a, b=1)`."""

    def __init__(self, self_name: str) -> None:
        self.self_name = self_name
        self.counts: dict[str, int] = {}
        self.sites: dict[str, int] = {}
        self.callees: dict[str, str] = {}

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if self.sites or self.counts:
            return node  # a function defined inside forward keeps its own calls
        node.body = [self.visit(statement) for statement in node.body]
        node.decorator_list = []  # the copy is the bare forward (decorators are not re-applied)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        base = _callee_name(node.func)
        index = self.counts.get(base, 0)
        self.counts[base] = index + 1
        name = f"{base}_{index}"
        self.sites[name] = node.lineno
        self.callees[name] = ast.unparse(node.func)
        call = ast.Call(
            func=ast.Name(DISPATCH, ast.Load()),
            args=[ast.Name(self.self_name, ast.Load()), ast.Constant(name), node.func, *node.args],
            keywords=node.keywords,
        )
        return ast.copy_location(call, node)


def _callee_name(func: ast.expr) -> str:
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
        return "_".join(reversed(parts))
    return parts[0] if parts else "call"


# run time -------------------------------------------------------------------------------------

Fire = Callable[[tuple[str, str], Any], Any]


class _SourceRuns(threading.local):
    """The source-traced runs of this thread: each thread's call sites report to its own."""

    def __init__(self) -> None:
        self.modules: dict[int, tuple[str, Fire]] = {}  # id(module) -> (its path, run's fire)
        self.expanded: set[str] = set()  # call sites whose own calls are traced (`x.source.y`)
        self.callers: list[tuple[str, Fire]] = []  # the expanded sites being run, innermost last


_RUNS = _SourceRuns()


def _dispatch(owner: Any, name: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    active = _RUNS.modules.get(id(owner))
    if active is None:
        return function(*args, **kwargs)
    path, fire = active
    return _report(f"{path}.source.{name}", fire, function, args, kwargs)


def _nested_dispatch(owner: Any, name: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    callers = _RUNS.callers
    if not callers:
        return function(*args, **kwargs)
    caller, fire = callers[-1]
    return _report(f"{caller}.source.{name}", fire, function, args, kwargs)


def _report(site: str, fire: Fire, function: Any, args: Any, kwargs: Any) -> Any:
    args, kwargs = fire((site, "input"), (args, kwargs))
    runs = _RUNS
    if site in runs.expanded:
        function = _expanded(site, function)
        runs.callers.append((site, fire))
        try:
            result = function(*args, **kwargs)
        finally:
            runs.callers.pop()
    else:
        result = function(*args, **kwargs)
    return fire((site, "output"), result)


def _expanded(site: str, function: Any) -> Any:
    """The instrumented copy of the Python function a call site calls."""
    if isinstance(function, torch.nn.Module):
        raise TypeError(
            f"{site} calls a module: use that module's own .source (model.<path>.source)"
        )
    owner = getattr(function, "__self__", None)
    plain = getattr(function, "__func__", function)
    if not inspect.isfunction(inspect.unwrap(plain)):
        raise TypeError(f"{site} calls {function!r}, which has no Python source to trace")
    copy = instrument(plain, nested=True).function
    return copy.__get__(owner) if owner is not None else copy


def resolve_callee(instrumented: Instrumented, name: str, owner: Any) -> Any:
    """The object a call site calls, when it can be known without running (else None)."""
    expression = instrumented.callees.get(name, "")
    parts = expression.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    first_parameter = next(iter(inspect.signature(instrumented.original).parameters), None)
    if parts[0] == first_parameter:
        value: Any = owner
    else:
        scope = getattr(instrumented.original, "__globals__", {})
        if parts[0] not in scope:
            return None
        value = scope[parts[0]]
    for part in parts[1:]:
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _instrumented(copy: Any, original: Any) -> Any:
    """The forward a `.source` run puts in place of `original`: the instrumented copy."""
    return copy


@contextmanager
def traced_sources(
    modules: dict[str, torch.nn.Module], fire: Fire, expanded: set[str]
) -> Iterator[None]:
    """While the block runs, each module's forward reports its call sites to `fire`; the
    functions called at the `expanded` sites report theirs too (calls in this thread only)."""
    runs = _RUNS
    replaced = ReplacedForwards()
    added = expanded - runs.expanded
    runs.expanded.update(added)
    try:
        for path, module in modules.items():
            copy = instrument(type(module).forward).function.__get__(module)
            replaced.replace(module, functools.partial(_instrumented, copy))
            runs.modules[id(module)] = (path, fire)
        yield
    finally:
        runs.expanded.difference_update(added)
        for module in modules.values():
            runs.modules.pop(id(module), None)
        replaced.restore()


def annotated(instrumented: Instrumented) -> str:
    """The forward's source with each line's call-site names in a left column."""
    by_line: dict[int, list[str]] = {}
    for name, line in instrumented.sites.items():
        by_line.setdefault(line, []).append(name)
    width = max((len(", ".join(n)) for n in by_line.values()), default=0)
    rows = []
    for number, text in enumerate(instrumented.source.splitlines(), start=1):
        names = ", ".join(by_line.get(number, []))
        line = number + instrumented.first_line - 1
        arrow = "->" if names else "  "
        rows.append(f"{names:>{width}} {arrow} {line:4d} {text}")
    return "\n".join(rows)


__all__ = ["Instrumented", "annotated", "instrument", "resolve_callee", "traced_sources"]
