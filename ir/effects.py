"""Which nodes have effects beyond their value: the rule passes and executors share."""

from __future__ import annotations

from .functions import split_name
from .node import Node
from .op_table import EFFECTFUL
from .ops import Op

IN_PLACE_OPERATORS = frozenset(
    f"operator.i{name}"
    for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul")
    + ("and", "or", "xor", "lshift", "rshift")
)


CONTAINER_MUTATORS = frozenset(
    {
        "append",
        "extend",
        "insert",
        "pop",
        "popitem",
        "remove",
        "clear",
        "update",
        "setdefault",
        "sort",
        "reverse",
        "add",
        "discard",
    }
)
"""Methods of lists, dicts and sets that change the object in place (no trailing `_`)."""


def has_effect(node: Node) -> bool:
    """Whether the node must run even if nothing uses its value (saves, writes, in-place ops)."""
    if node.op in EFFECTFUL:
        return True
    if node.op is Op.METHOD or node.op is Op.CALL:
        kwargs = node.kwargs
        if kwargs and (kwargs.get("inplace") is True or "out" in kwargs):
            return True  # F.relu(x, inplace=True), torch.mul(a, b, out=a)
        name = split_name(node.target)[1]
        if node.op is Op.METHOD and name in CONTAINER_MUTATORS:
            return True  # values.append(x) on a list made in the trace
        if name.endswith("_") and not name.endswith("__"):
            return True  # torch's in-place convention: add_, zero_, requires_grad_
        if node.target in IN_PLACE_OPERATORS or (name.startswith("__i") and name != "__invert__"):
            return True  # augmented assignment: operator.iadd, Tensor.__iadd__
    return False


def mutates(node: Node) -> bool:
    """Whether the node changes an existing value in place (an effect other than SAVE)."""
    return node.op is not Op.SAVE and has_effect(node)
