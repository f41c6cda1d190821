"""Capture the body of a `with model.trace(...):` block from source and compile it once.

The body is not run inline: `skip_body` makes its first line raise `SkipBody`, the tracer's
`__exit__` swallows it and runs the compiled body instead, as a function over the caller's
variables. The compiled function is cached per code location.
"""

from __future__ import annotations

import ast
import linecache
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from types import FrameType
from typing import Any

from .entries import Entry, find_entry
from .ir.errors import TraceCaptureError
from .transform import INTERNAL_PREFIX, transform_body

BODY_NAME = "__nnsight_body__"
NAMESPACE_ARG = "__nnsight_namespace__"


class SkipBody(BaseException):
    """Raised right after `__enter__` returns so that the `with` body does not run inline.

    A BaseException, so that an `except Exception` in the body cannot swallow it.
    """


class BodyStopped(BaseException):
    """Raised by `tracer.stop()` while the body is recorded (outside an `if` on a traced
    value): the statements after it never run, as they never would in the model's run.

    The nearest invoke's `with` block ends there; without one the whole body ends.
    """

    def body_variables(self) -> dict[str, Any]:
        """The variables of the stopped body, as they were when it stopped."""
        traceback = self.__traceback__
        while traceback is not None:
            frame = traceback.tb_frame
            if frame.f_code.co_name == BODY_NAME:
                return dict(frame.f_locals)
            traceback = traceback.tb_next
        return {}


@dataclass(frozen=True)
class CapturedBody:
    """The transformed body of one `with` statement, ready to compile for a set of names."""

    file: str
    line: int
    body: list[ast.stmt]
    loaded: frozenset[str]
    stored: tuple[str, ...]
    empty: bool  # only `pass`, `...` or strings: nothing runs, so nothing needs skipping
    mutated: tuple[str, ...]  # names whose object the body changes: `x.append(...)`, `x[k] = v`
    target: str | tuple[str, ...] | None  # the `as` name(s) of the `with` statement
    attribute_stores: tuple[tuple[str, str], ...]  # `obj.attr = ...` in the body: (obj, attr)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Every name the body reads or assigns, in a fixed order."""
        return tuple(sorted(self.loaded | set(self.stored)))


@dataclass
class _FileEntry:
    lines: list[str]
    tree: ast.Module


_FILES: dict[str, _FileEntry] = {}
_BODIES: dict[tuple[str, int, int], tuple[list[str], CapturedBody]] = {}  # file, line, instruction
_COMPILED: dict[tuple[str, int, tuple[str, ...]], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def find_body(frame: FrameType, stacked: bool = False) -> CapturedBody:
    """The captured body of the block the frame is entering (cached per location).

    `stacked`: the frame is entering it through `ExitStack.enter_context`, not a `with`.
    """
    file = frame.f_code.co_filename
    line = frame.f_lineno
    lines = linecache.getlines(file, frame.f_globals)
    if not lines:
        raise TraceCaptureError(
            f"cannot read the source of {file!r}: a trace needs the source of its `with` block "
            "to build the graph. Put the code in a .py file or a notebook cell (python -c and "
            "exec() of strings have no source to read)."
        )
    key = (file, line, frame.f_lasti)  # the instruction tells the items of a `with` apart
    cached = _BODIES.get(key)
    if cached is not None and (cached[0] is lines or cached[0] == lines):
        return cached[1]
    tree = _parse(file, lines)
    entry = find_entry(tree, line, frame.f_code, frame.f_lasti, file, stacked)
    captured = _capture(entry, file)
    _BODIES[key] = (lines, captured)
    return captured


def _parse(file: str, lines: list[str]) -> ast.Module:
    entry = _FILES.get(file)
    if entry is None or not (entry.lines is lines or entry.lines == lines):
        try:
            tree = ast.parse("".join(lines), filename=file)
        except SyntaxError as error:
            raise TraceCaptureError(f"cannot parse the source of {file!r}: {error}") from error
        entry = _FileEntry(lines, tree)
        _FILES[file] = entry
    return entry.tree


def _capture(entry: Entry, file: str) -> CapturedBody:
    body = transform_body(entry.body)
    loaded: set[str] = set()
    stored: dict[str, None] = {}
    mutated: dict[str, None] = {}
    attribute_stores: dict[tuple[str, str], None] = {}
    for node in _walk_scope(body):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
        ):
            attribute_stores.setdefault((node.value.id, node.attr), None)
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _MUTATORS:
                target = node.func.value
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            target = node.value
        if isinstance(target, ast.Name):
            mutated.setdefault(target.id, None)
        if isinstance(node, ast.Name):
            if node.id.startswith(INTERNAL_PREFIX):
                continue  # the transform's own names are never read from or bound to the caller
            if isinstance(node.ctx, ast.Load):
                loaded.add(node.id)
            else:
                stored.setdefault(node.id, None)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stored.setdefault(node.name, None)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                stored.setdefault((alias.asname or alias.name).split(".")[0], None)
    empty = not entry.trailing and all(
        isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
        for s in entry.body
    )
    return CapturedBody(
        file,
        entry.line,
        body,
        frozenset(loaded),
        tuple(stored),
        empty,
        tuple(name for name in mutated if name not in stored),
        _target_name(entry, file),
        tuple(attribute_stores),
    )


def _target_name(entry: Entry, file: str) -> str | tuple[str, ...] | None:
    target = entry.target
    if target is None or isinstance(target, ast.Name):
        return target.id if target is not None else None
    if isinstance(target, (ast.Tuple, ast.List)) and all(
        isinstance(name, ast.Name) for name in target.elts
    ):  # `with model.edit() as (tracer, edited):`
        return tuple(name.id for name in target.elts)  # type: ignore[attr-defined]
    raise TraceCaptureError(
        f"{file}:{entry.line}: bind the tracer to a plain name "
        "(`with model.trace(input) as tracer:`)"
    )


def target_values(captured: CapturedBody, value: Any) -> dict[str, Any]:
    """The `as` names of the block bound to `value`, which a tuple of names unpacks."""
    target = captured.target
    if target is None:
        return {}
    if isinstance(target, str):
        return {target: value}
    if not isinstance(value, tuple) or len(value) != len(target):
        raise TraceCaptureError(
            f"{captured.file}:{captured.line}: `as ({', '.join(target)})` cannot unpack this "
            "block's value; bind it to one name (`with model.trace(input) as tracer:`), or "
            "write `with model.edit() as (tracer, edited):`"
        )
    return dict(zip(target, value, strict=True))


_MUTATORS = frozenset({"append", "extend", "insert", "update", "add", "setdefault", "__setitem__"})


def _walk_scope(body: list[ast.stmt]) -> list[ast.AST]:
    """Every node of the body's own scope: nested functions and classes are not entered."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        found.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return found


def compile_body(
    captured: CapturedBody, preload: tuple[str, ...], frame_globals: dict[str, Any]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that runs the body with `preload` names taken from a namespace dict.

    It returns the body's local variables when it ends.
    """
    key = (captured.file, captured.line, preload)
    function = _COMPILED.get(key)
    if function is not None and function.__globals__ is frame_globals:
        return function
    prologue = [ast.parse(f"{name} = {NAMESPACE_ARG}[{name!r}]").body[0] for name in preload]
    epilogue = ast.parse("return locals()").body[0]
    for statement in (*prologue, epilogue):
        for node in ast.walk(statement):
            if hasattr(node, "lineno"):
                node.lineno = node.end_lineno = captured.line  # type: ignore[attr-defined]
                node.col_offset = node.end_col_offset = 0  # type: ignore[attr-defined]
    arguments = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(arg=NAMESPACE_ARG)],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    extra: dict[str, Any] = {"type_params": []} if sys.version_info >= (3, 12) else {}
    definition = ast.FunctionDef(
        name=BODY_NAME,
        args=arguments,
        body=[*prologue, *captured.body, epilogue],
        decorator_list=[],
        returns=None,
        lineno=captured.line,
        col_offset=0,
        end_lineno=max(getattr(s, "end_lineno", None) or s.lineno for s in captured.body),
        end_col_offset=0,
        **extra,
    )
    module = ast.Module(body=[definition], type_ignores=[])
    ast.fix_missing_locations(module)
    code = compile(module, captured.file, "exec")
    namespace: dict[str, Any] = {}
    exec(code, frame_globals, namespace)
    function = namespace[BODY_NAME]
    _COMPILED[key] = function
    return function


def begin(frame: FrameType, stacked: bool = False) -> CapturedBody:
    """At `__enter__`: capture the `with` body the frame is entering and skip running it."""
    captured = find_body(frame, stacked)
    if not captured.empty:
        skip_body(frame)
    return captured


def end(frame: FrameType, captured: CapturedBody, exc_type: type[BaseException] | None) -> bool:
    """At `__exit__`: undo `begin`; whether the block ended as planned (run the body now)."""
    if captured.empty:
        return exc_type is None
    # undo `skip_body` here rather than in a function of its own: while the trace function
    # is set, every call costs a call of `_ignore_calls` too
    frame.f_trace = None
    frame.f_trace_opcodes = False
    previous = _SKIP.previous
    sys.settrace(previous.pop() if previous else None)
    return exc_type is SkipBody


def run_body(run: Callable[[FrameType], None], frame: FrameType, skip: Any) -> None:
    """Run the captured body; errors do not show the SkipBody they replaced as context."""
    try:
        run(frame)
    except BaseException as error:
        if error.__context__ is skip:
            error.__context__ = None
        raise


class CapturedBlock:
    """A `with` block whose body is captured when it is entered and run when it exits.

    `__enter__` calls `_capture()`; `__exit__` returns `_finish(exc_type, exc)`, which runs
    `self._run(frame)` when the block ended as planned. Traces and sessions both work this way.
    """

    _frame: FrameType | None = None
    _captured: CapturedBody | None = None

    def _capture(self) -> None:
        frame = sys._getframe(2)  # the frame executing the `with` statement
        stacked = frame.f_globals.get("__name__") == "contextlib"
        if stacked:  # `stack.enter_context(block)`: the user's frame is the one calling it
            while frame.f_globals.get("__name__") == "contextlib" and frame.f_back is not None:
                frame = frame.f_back
        self._captured = begin(frame, stacked)
        self._frame = frame

    def _finish(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> bool:
        frame, self._frame = self._frame, None
        if frame is None or self._captured is None:
            return False
        if not end(frame, self._captured, exc_type):
            return False
        run_body(self._run, frame, exc)
        return True

    def _run(self, frame: FrameType) -> None:
        raise NotImplementedError


class _SkipState(threading.local):
    """The trace functions `skip_body` replaced, innermost last. `sys.settrace` is per thread,
    so the stack is too: a trace in another thread must not restore this thread's function."""

    def __init__(self) -> None:
        self.previous: list[Any] = []


_SKIP = _SkipState()


def skip_body(frame: FrameType) -> None:
    """Make the next instruction `frame` runs after `__enter__` returns raise SkipBody.

    Raising at the first instruction (an opcode event) keeps the exception inside the `with`
    statement's handler whatever the body starts with, and before any `with` item after the
    block's own is entered (those are part of the captured body); interpreters that deliver
    no opcode events raise at the first line event instead. The `as` name is then not yet
    bound, so the tracer binds it itself.
    """
    _SKIP.previous.append(sys.gettrace())
    # the frame's own settings first: Python 3.12 delivers opcode events to a frame only if
    # it asked for them before tracing was switched on
    frame.f_trace_opcodes = True
    frame.f_trace = _raise_skip
    sys.settrace(_ignore_calls)


def _ignore_calls(frame: FrameType, event: str, arg: Any) -> None:
    """The global trace function while a body is skipped: no other frame is traced."""
    return None


def _raise_skip(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "opcode" or event == "line":
        raise SkipBody()
    return _raise_skip
