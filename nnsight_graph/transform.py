"""The source transform applied to a captured trace body before it is compiled.

`x.save()` on any object becomes `__nnsight_save__(x)`, so plain containers
(`list().save()`) can be saved as well as Proxies.
"""

from __future__ import annotations

import ast
import copy

SAVE_HELPER = "__nnsight_save__"


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


def transform_body(body: list[ast.stmt]) -> tuple[list[ast.stmt], list[str]]:
    """The transformed statements (the input is not changed) and the helper names they use."""
    module = ast.Module(body=copy.deepcopy(body), type_ignores=[])
    module = _SaveCalls().visit(module)
    return module.body, [SAVE_HELPER]
