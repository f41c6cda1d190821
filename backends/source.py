"""Source tracing: a module's forward rewritten so that every call in it is a hook site.

`instrument(forward)` names each call site (`self_c_attn_0`, `attention_interface_0`: the
callee's name and its index) and compiles a copy of the forward in which each call goes
through a dispatcher. While a run needs those sites, the module's forward is replaced by the
copy (an instance attribute, removed afterwards); otherwise nothing changes.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

DISPATCH = "__nnsight_source_call__"


@dataclass(frozen=True)
class Instrumented:
    """A forward's source with its call sites named, and the compiled rewritten copy."""

    source: str  # the forward's source, dedented
    first_line: int  # line of the source's first line in its file
    sites: dict[str, int]  # site name -> line in `source` (1-based)
    function: Callable[..., Any]  # the rewritten forward (unbound)


@functools.cache
def instrument(forward: Callable[..., Any]) -> Instrumented:
    """Name the call sites of `forward` and compile a copy that reports each call."""
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
    code_globals[DISPATCH] = _dispatch
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
    return Instrumented(source, first_line, namer.sites, compiled)


class _CallSites(ast.NodeTransformer):
    """Rewrite `f(a, b=1)` into `__nnsight_source_call__(self, "f_0", f, a, b=1)`."""

    def __init__(self, self_name: str) -> None:
        self.self_name = self_name
        self.counts: dict[str, int] = {}
        self.sites: dict[str, int] = {}

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if self.sites or self.counts:
            return node  # a function defined inside forward keeps its own calls
        node.body = [self.visit(statement) for statement in node.body]  # type: ignore[misc]
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
_ACTIVE: dict[int, tuple[str, Fire]] = {}  # id(module) -> (its path, the run's fire)


def _dispatch(owner: Any, name: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    active = _ACTIVE.get(id(owner))
    if active is None:
        return function(*args, **kwargs)
    path, fire = active
    site = f"{path}.source.{name}"
    args, kwargs = fire((site, "input"), (args, kwargs))
    return fire((site, "output"), function(*args, **kwargs))


@contextmanager
def traced_sources(modules: dict[str, torch.nn.Module], fire: Fire) -> Iterator[None]:
    """While the block runs, each module's forward reports its call sites to `fire`."""
    patched: list[tuple[torch.nn.Module, Any]] = []
    try:
        for path, module in modules.items():
            instrumented = instrument(type(module).forward)
            own = module.__dict__.get("forward")
            patched.append((module, own))
            module.forward = instrumented.function.__get__(module)  # type: ignore[method-assign]
            _ACTIVE[id(module)] = (path, fire)
        yield
    finally:
        for module, own in patched:
            _ACTIVE.pop(id(module), None)
            if own is None:
                del module.forward
            else:
                module.forward = own  # type: ignore[method-assign]


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


__all__ = ["Instrumented", "annotated", "instrument", "traced_sources"]
