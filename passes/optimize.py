"""Optimization passes: make the graph cheaper to run without changing its results."""

from __future__ import annotations

from ..ir import EFFECTFUL, Graph, Node, Op, refs

IN_PLACE_OPERATORS = frozenset(
    f"operator.i{name}"
    for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul")
    + ("and", "or", "xor", "lshift", "rshift")
)


def has_effect(node: Node) -> bool:
    """Whether the node must run even if nothing uses its value (saves, writes, in-place ops)."""
    if node.op in EFFECTFUL:
        return True
    if node.op is Op.METHOD or node.op is Op.CALL:
        name = node.target.rsplit(".", 1)[-1]
        if name.endswith("_") and not name.endswith("__"):
            return True  # torch's in-place convention: add_, zero_, requires_grad_
        if node.target in IN_PLACE_OPERATORS or (name.startswith("__i") and name != "__invert__"):
            return True  # augmented assignment: operator.iadd, Tensor.__iadd__
    return False


def eliminate_dead_nodes(graph: Graph) -> Graph:
    """Drop nodes whose value is never used and that have no effect."""
    live: set[int] = set()
    for node in reversed(graph.nodes):
        if node.id in live or has_effect(node):
            live.add(node.id)
            live.update(ref.id for ref in refs((node.args, node.kwargs)))
    if len(live) == len(graph.nodes):
        return graph
    return graph.keep(live)
