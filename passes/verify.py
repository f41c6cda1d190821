"""verify: the structural invariants every graph must keep, checked between passes."""

from __future__ import annotations

from ..ir import VALUED, Const, Graph, Node, Op, ValidationError
from ..ir.op_table import names_its_backward, payload_problem


def verify(graph: Graph) -> None:
    """Raise ValidationError naming the first broken invariant of the graph.

    Node ids are unique; every Ref and guard refers to a node earlier in the list; constant
    indices are inside the table; invoke indices name an invoke (or -1, outside all); every
    node's target and arguments have the shape its executor case reads (its row of the op
    table: `ir.op_table.payload_problem`); and a Ref names a node that has a value.
    """
    for invoke in graph.invokes:
        for index in _const_indices((invoke.args, invoke.kwargs)):
            if not 0 <= index < len(graph.constants):
                raise ValidationError(
                    f"invoke {invoke.index} refers to constant $c{index}, but the graph has "
                    f"{len(graph.constants)} constant(s)"
                )
    seen: set[int] = set()
    valueless: dict[int, Op] = {}  # ids of nodes whose op makes no value, by op
    for position, node in enumerate(graph.nodes):
        where = _Where(position, node)  # formats the node only when an error is reported
        if not isinstance(node.op, Op):
            raise ValidationError(f"{where} has no valid op: {node.op!r}")
        if node.id in seen:
            raise ValidationError(f"{where} reuses the id %{node.id} of an earlier node")
        for input in node.inputs():
            if input.id not in seen:
                what = "an earlier node" if input.id != node.id else "another node"
                raise ValidationError(
                    f"{where} refers to %{input.id}, which is not {what} in the graph"
                )
            if input.id in valueless and not names_its_backward(node, input):
                raise ValidationError(
                    f"{where} uses the value of %{input.id}, but a {valueless[input.id].value} "
                    "node has no value"
                )
        for index in _const_indices((node.args, node.kwargs)):
            if not 0 <= index < len(graph.constants):
                raise ValidationError(
                    f"{where} refers to constant $c{index}, but the graph has "
                    f"{len(graph.constants)} constant(s)"
                )
        if not -1 <= node.invoke < len(graph.invokes):
            raise ValidationError(
                f"{where} belongs to invoke {node.invoke}, but the graph has "
                f"{len(graph.invokes)} invoke(s)"
            )
        problem = payload_problem(node)
        if problem:
            raise ValidationError(f"{where} {problem}")
        seen.add(node.id)
        if node.op not in VALUED:
            valueless[node.id] = node.op


class _Where:
    """`node 3 (%3 = ...)` in an error message, formatted only when the message is built."""

    __slots__ = ("position", "node")

    def __init__(self, position: int, node: Node) -> None:
        self.position = position
        self.node = node

    def __format__(self, spec: str) -> str:
        return f"node {self.position} ({self.node})"


def _const_indices(value: object) -> list[int]:
    found: list[int] = []
    _collect_consts(value, found)
    return found


def _collect_consts(value: object, found: list[int]) -> None:
    if isinstance(value, Const):
        found.append(value.index)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _collect_consts(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_consts(item, found)
    elif isinstance(value, slice):
        _collect_consts((value.start, value.stop, value.step), found)
