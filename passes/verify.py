"""verify: the structural invariants every graph must keep, checked between passes."""

from __future__ import annotations

from ..ir import HOOKED, Const, Graph, Node, Op, Ref, ValidationError

SITE_KINDS = {
    Op.READ: frozenset({"input", "inputs", "output"}),
    Op.WRITE: frozenset({"input", "inputs", "output"}),
    Op.SKIP: frozenset({"skip"}),
}
"""What a hook target may end in, by op ("h.0.output", "layer1.inputs", "h.1.skip")."""


def verify(graph: Graph) -> None:
    """Raise ValidationError naming the first broken invariant of the graph.

    Node ids are unique; every Ref and guard refers to a node earlier in the list; constant
    indices are inside the table; invoke indices name an invoke (or -1, outside all); saves
    name a node; hooked nodes have targets the executor can parse.
    """
    for invoke in graph.invokes:
        for index in _const_indices((invoke.args, invoke.kwargs)):
            if not 0 <= index < len(graph.constants):
                raise ValidationError(
                    f"invoke {invoke.index} refers to constant $c{index}, but the graph has "
                    f"{len(graph.constants)} constant(s)"
                )
    seen: set[int] = set()
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
        if node.op is Op.SAVE and not (node.args and type(node.args[0]) is Ref):
            raise ValidationError(f"{where} saves no node: its first argument must be a Ref")
        if node.op in HOOKED:
            problem = _target_problem(node)
            if problem:
                raise ValidationError(f"{where} {problem}")
        seen.add(node.id)


class _Where:
    """`node 3 (%3 = ...)` in an error message, formatted only when the message is built."""

    __slots__ = ("position", "node")

    def __init__(self, position: int, node: Node) -> None:
        self.position = position
        self.node = node

    def __format__(self, spec: str) -> str:
        return f"node {self.position} ({self.node})"


def _target_problem(node: Node) -> str:
    """Why the executor could not bind this hooked node to a hook site ("" when it can)."""
    target = node.target
    if target == "grad" and node.op is not Op.SKIP:
        needed = 3 if node.op is Op.WRITE else 2
        if len(node.args) < needed or not all(type(a) is Ref for a in node.args[:2]):
            return f"is a gradient {node.op.value} but its arguments are not (value, backward" + (
                ", new value)" if node.op is Op.WRITE else ")"
            )
        return ""
    if target == "result":
        return "" if node.op is Op.READ else f"cannot {node.op.value} the model's result"
    path, _, kind = target.rpartition(".")
    if kind not in SITE_KINDS[node.op]:
        allowed = ", ".join(sorted(SITE_KINDS[node.op]))
        return f"has target {target!r}, which does not end in one of: {allowed}"
    if "." in target and not all(path.split(".")):
        return f"has target {target!r}, whose module path has an empty part"
    if node.op is not Op.READ and not node.args:
        return "has no value to put at its hook site"
    return ""


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
