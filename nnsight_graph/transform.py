"""The source transform applied to a captured trace body before it is compiled.

- `x.save()` on any object becomes `__nnsight_save__(x)`, so plain containers
  (`list().save()`) can be saved as well as Proxies.
- `with <expr> as step:` becomes a loop when `<expr>` is a StepRange (`tracer.iter[...]`,
  `tracer.all()`), so its body runs once per step with `step` a plain int; any other context
  manager is entered as usual.
"""

from __future__ import annotations

import ast
import copy

SAVE_HELPER = "__nnsight_save__"
STEPS_HELPER = "__nnsight_is_steps__"


class _SaveCalls(ast.NodeTransformer):
    """Rewrite `<expr>.save()` (no arguments) into `__nnsight_save__(<expr>)`."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "save"
            and not node.args
            and not node.keywords
        ):
            helper = ast.copy_location(ast.Name(id=SAVE_HELPER, ctx=ast.Load()), func)
            return ast.copy_location(ast.Call(func=helper, args=[func.value], keywords=[]), node)
        return node


class _StepBlocks(ast.NodeTransformer):
    """Rewrite each single-item `with` into a runtime choice between a loop and a `with`."""

    def __init__(self) -> None:
        self.count = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return node  # a function defined in the body keeps its own code

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_With(self, node: ast.With) -> ast.AST | list[ast.stmt]:
        self.generic_visit(node)
        if len(node.items) != 1:
            return node
        item = node.items[0]
        name = f"__nnsight_context_{self.count}"
        self.count += 1
        target = item.optional_vars or ast.Name(id="_", ctx=ast.Store())
        assign = ast.Assign(
            targets=[ast.Name(id=name, ctx=ast.Store())], value=item.context_expr
        )
        loop = ast.For(
            target=copy.deepcopy(target),
            iter=ast.Name(id=name, ctx=ast.Load()),
            body=copy.deepcopy(node.body),
            orelse=[],
        )
        plain = ast.With(
            items=[ast.withitem(ast.Name(id=name, ctx=ast.Load()), item.optional_vars)],
            body=node.body,
        )
        test = ast.Call(
            func=ast.Name(id=STEPS_HELPER, ctx=ast.Load()),
            args=[ast.Name(id=name, ctx=ast.Load())],
            keywords=[],
        )
        choice = ast.If(test=test, body=[loop], orelse=[plain])
        for new in (assign, choice):
            ast.copy_location(new, node)
            for child in ast.walk(new):
                if not hasattr(child, "lineno"):
                    ast.copy_location(child, node)
        return [assign, choice]


def transform_body(body: list[ast.stmt]) -> tuple[list[ast.stmt], list[str]]:
    """The transformed statements (the input is not changed) and the helper names they use."""
    module = ast.Module(body=copy.deepcopy(body), type_ignores=[])
    module = _SaveCalls().visit(module)
    module = _StepBlocks().visit(module)
    ast.fix_missing_locations(module)
    return module.body, [SAVE_HELPER, STEPS_HELPER]
