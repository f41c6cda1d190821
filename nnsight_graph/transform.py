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

INTERNAL_PREFIX = "__nnsight_"  # the transform's helpers and temporaries: never the user's names
SAVE_HELPER = "__nnsight_save__"
STEPS_HELPER = "__nnsight_is_steps__"
PROXY_HELPER = "__nnsight_is_proxy__"
BRANCH_HELPER = "__nnsight_branch__"
PRINT_HELPER = "__nnsight_print__"


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
        name = f"{INTERNAL_PREFIX}context_{self.count}"
        self.count += 1
        target = item.optional_vars or ast.Name(id="_", ctx=ast.Store())
        assign = ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=item.context_expr)
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


class _Prints(ast.NodeTransformer):
    """`print(...)` becomes `__nnsight_print__(...)`, which defers printing Proxies."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "print":
            node.func = ast.copy_location(ast.Name(id=PRINT_HELPER, ctx=ast.Load()), node.func)
        return node


def _parse_statements(source: str, where: ast.AST) -> list[ast.stmt]:
    statements = ast.parse(source).body
    for statement in statements:
        for child in ast.walk(statement):
            if hasattr(child, "lineno"):
                ast.copy_location(child, where)
    return statements


def _assigned(statements: list[ast.stmt]) -> list[str]:
    """Names the statements assign, outside nested functions and our own temporaries."""
    names: dict[str, None] = {}
    stack: list[ast.AST] = list(statements)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.setdefault(node.name, None)
            continue
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            if not node.id.startswith(INTERNAL_PREFIX):
                names.setdefault(node.id, None)
        stack.extend(ast.iter_child_nodes(node))
    return sorted(names)


class _Conditions(ast.NodeTransformer):
    """`if test:` chooses at run time between a plain `if` and a recorded, guarded one."""

    def __init__(self) -> None:
        self.count = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_ClassDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> list[ast.stmt]:
        self.generic_visit(node)
        number = self.count
        self.count += 1
        test, branch = f"__nnsight_test_{number}", f"__nnsight_branch_{number}"
        names = _assigned([*node.body, *node.orelse])
        restore = "".join(f"{n} = {branch}.value_before({n!r})\n" for n in names)
        merge = "".join(f"{n} = {branch}.merged({n!r})\n" for n in names)
        assign = ast.Assign(targets=[ast.Name(id=test, ctx=ast.Store())], value=node.test)
        ast.copy_location(assign, node)
        start = _parse_statements(
            f"{branch} = {BRANCH_HELPER}({test}, locals(), {tuple(names)!r})", node
        )
        middle = _parse_statements(f"{branch}.orelse(locals())\n{restore}", node)
        end = _parse_statements(f"{branch}.end(locals())\n{merge}", node)
        recorded = [*start, *copy.deepcopy(node.body), *middle, *copy.deepcopy(node.orelse)]
        recorded += end
        plain = ast.If(test=ast.Name(id=test, ctx=ast.Load()), body=node.body, orelse=node.orelse)
        ast.copy_location(plain, node)
        choice = ast.If(
            test=ast.Call(
                func=ast.Name(id=PROXY_HELPER, ctx=ast.Load()),
                args=[ast.Name(id=test, ctx=ast.Load())],
                keywords=[],
            ),
            body=recorded,
            orelse=[plain],
        )
        ast.copy_location(choice, node)
        return [assign, choice]


def transform_body(body: list[ast.stmt]) -> list[ast.stmt]:
    """The transformed statements (the input is not changed).

    They call the helpers named by the *_HELPER constants, which the tracer puts in every
    compiled body's namespace.
    """
    module = ast.Module(body=copy.deepcopy(body), type_ignores=[])
    module = _SaveCalls().visit(module)
    module = _Prints().visit(module)
    module = _Conditions().visit(module)
    module = _StepBlocks().visit(module)
    ast.fix_missing_locations(module)
    return module.body
