"""Where in the caller's source a captured block was entered, and so what its body is.

A block is entered by one item of a `with` statement (`with torch.no_grad(), model.trace(x):`)
or by `stack.enter_context(model.trace(x))` directly inside `with ExitStack() as stack:`.
"""

from __future__ import annotations

import ast
import dis
from dataclasses import dataclass
from types import CodeType

from .ir.errors import TraceCaptureError, TraceLayoutError

# the instruction that enters a `with` item: SETUP_WITH up to Python 3.10, BEFORE_WITH after
_WITH_SETUP = frozenset(dis.opmap[n] for n in ("SETUP_WITH", "BEFORE_WITH") if n in dis.opmap)


@dataclass(frozen=True)
class Entry:
    """The statements a block captures and the name it is bound to."""

    line: int  # the first line of the statement that entered the block
    body: list[ast.stmt]  # what runs as the block's body (items entered after it included)
    target: ast.expr | None  # the `as` target, or the name `enter_context(...)` is assigned to
    trailing: bool  # other `with` items are entered after the block: the body enters them


def find_entry(
    tree: ast.Module, line: int, code: CodeType, offset: int, file: str, stacked: bool
) -> Entry:
    """The entry the frame running `code` at instruction `offset` (on `line`) is making.

    `stacked`: the block is being entered by `ExitStack.enter_context`, not by a `with`.
    """
    if stacked:
        return _stack_entry(tree, line, file)
    statement = _find_with(tree, line, file)
    index = _entered_item(statement, code, offset) if len(statement.items) > 1 else 0
    if index is None:
        raise TraceCaptureError(
            f"{file}:{line}: cannot tell which item of this `with` statement is the trace; "
            "give the trace a `with` statement of its own"
        )
    item = statement.items[index]
    rest = statement.items[index + 1 :]
    if not rest:
        return Entry(statement.lineno, statement.body, item.optional_vars, False)
    # the items after the trace's are entered by its body, once it is recorded (the body is
    # skipped as soon as the trace's own `__enter__` returns)
    inner = ast.With(items=rest, body=statement.body)
    ast.copy_location(inner, statement)
    return Entry(statement.lineno, [inner], item.optional_vars, True)


def _find_with(tree: ast.Module, line: int, file: str) -> ast.With:
    """The innermost `with` statement whose header spans `line`."""
    found: ast.With | None = None
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and node.lineno <= line:
            header_end = node.body[0].lineno - 1 if node.body[0].lineno > node.lineno else line
            if line <= max(header_end, node.lineno):
                if found is None or node.lineno >= found.lineno:
                    found = node
    if found is None:
        raise TraceCaptureError(
            f"{file}:{line}: a trace must be entered with a `with` statement, for example "
            "`with model.trace(input):`, or with `stack.enter_context(model.trace(input))` "
            "inside `with contextlib.ExitStack() as stack:`"
        )
    if found.body[0].lineno == found.lineno:
        raise TraceLayoutError(
            f"{file}:{line}: put the body of the `with` block on its own lines, below the "
            "`with` line"
        )
    return found


def _entered_item(statement: ast.With, code: CodeType, offset: int) -> int | None:
    """Which item of `statement` the instruction at `offset` enters (None: cannot tell).

    Each item has one with-setup instruction, in order, on the lines of the header (in each
    copy of the statement's code); the frame entering an item is paused at that instruction.
    """
    first, last = statement.lineno, max(statement.body[0].lineno - 1, statement.lineno)
    lines: list[tuple[int, int, int | None]] = list(code.co_lines())
    setups = []
    for instruction in dis.get_instructions(code):
        if instruction.opcode in _WITH_SETUP:
            at = instruction.offset
            line = next((n for start, end, n in lines if start <= at < end), None)
            if line is not None and first <= line <= last:
                setups.append(at)
    count = len(statement.items)
    if not setups or len(setups) % count or offset not in setups:
        return None
    return setups.index(offset) % count  # a `finally` block's code is compiled more than once


def _stack_entry(tree: ast.Module, line: int, file: str) -> Entry:
    """`[name =] stack.enter_context(...)` directly inside `with ... as stack:`: the body is
    the rest of that `with` block, which ends when the stack closes."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.With):
            continue
        stacks = {i.optional_vars.id for i in node.items if isinstance(i.optional_vars, ast.Name)}
        for position, statement in enumerate(node.body):
            if statement.lineno <= line <= (statement.end_lineno or statement.lineno):
                target, receiver = _entered_by(statement)
                if receiver is None or receiver not in stacks:
                    break  # an inner block may hold it; it is checked in its own turn
                body = node.body[position + 1 :]
                if not body:  # nothing after it: an empty body
                    body = [ast.copy_location(ast.Pass(), statement)]
                return Entry(statement.lineno, body, target, False)
    raise TraceCaptureError(
        f"{file}:{line}: a trace entered through an ExitStack must be entered by a statement "
        "of its own directly inside the stack's `with` block: `with contextlib.ExitStack() as "
        "stack:` then `tracer = stack.enter_context(model.trace(input))`; the rest of that "
        "block is the trace's body"
    )


def _entered_by(statement: ast.stmt) -> tuple[ast.expr | None, str | None]:
    """For `[target =] stack.enter_context(...)`: the target and the stack's name."""
    target: ast.expr | None = None
    value: ast.expr | None = None
    if isinstance(statement, ast.Expr):
        value = statement.value
    elif isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target, value = statement.targets[0], statement.value
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr == "enter_context"
        and isinstance(value.func.value, ast.Name)
    ):
        return target, value.func.value.id
    return None, None
