"""verify: the structural invariants every graph must keep, checked between passes."""

from __future__ import annotations

from collections.abc import Callable

from ..ir import HOOKED, Const, Graph, Node, Op, Ref, ValidationError
from ..ir.sites import site_of

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
    name a node; hooked nodes have targets the executor can parse; every op's arguments have
    the shape its executor case reads (`PAYLOAD`), and a Ref names a node that has a value.
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
            if input.id in valueless and not _names_its_backward(node, input):
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
        if node.op is Op.SAVE and not (node.args and type(node.args[0]) is Ref):
            raise ValidationError(f"{where} saves no node: its first argument must be a Ref")
        if node.op in HOOKED:
            problem = _target_problem(node)
            if problem:
                raise ValidationError(f"{where} {problem}")
        check = PAYLOAD.get(node.op)
        problem = check(node) if check is not None else ""
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
    site = site_of(target)
    path, kind = site.path, site.kind
    if kind not in SITE_KINDS[node.op]:
        allowed = ", ".join(sorted(SITE_KINDS[node.op]))
        return f"has target {target!r}, which does not end in one of: {allowed}"
    if "." in target and not all(path.split(".")):
        return f"has target {target!r}, whose module path has an empty part"
    if node.op is not Op.READ and not node.args:
        return "has no value to put at its hook site"
    return ""


VALUED = frozenset({Op.READ, Op.CALL, Op.METHOD, Op.GETATTR, Op.GETITEM, Op.CALL_MODULE, Op.LOCAL})
"""Ops whose node has a value that other nodes may use; a BACKWARD is named only by the
gradient sites of its backward pass (args[1] of a `grad` READ or WRITE)."""


def _names_its_backward(node: Node, ref: Ref) -> bool:
    return node.target == "grad" and len(node.args) > 1 and node.args[1] == ref


def _arguments(count: int, *, kwargs: bool = False) -> Callable[[Node], str]:
    """A check that the node has exactly `count` arguments (and keywords only if `kwargs`)."""

    def check(node: Node) -> str:
        if len(node.args) != count:
            return f"has {len(node.args)} argument(s), but a {node.op.value} node takes {count}"
        if node.kwargs and not kwargs:
            return f"has keyword arguments, but a {node.op.value} node takes none"
        return ""

    return check


def _method_problem(node: Node) -> str:
    return "" if node.args else "calls a method on nothing: args[0] must be the value it is on"


_PRINT_KEYWORDS = frozenset({"sep", "end", "flush"})


def _log_problem(node: Node) -> str:
    unknown = sorted(set(node.kwargs) - _PRINT_KEYWORDS)
    if unknown:
        return f"passes print() the keywords {unknown}; a log node takes only sep, end, flush"
    return ""


def _backward_problem(node: Node) -> str:
    if not (node.args and type(node.args[0]) is Ref):
        return "has no loss: its first argument must be the node whose .backward() it runs"
    return ""


def _barrier_problem(node: Node) -> str:
    if len(node.args) != 1 or type(node.args[0]) is not int or node.args[0] < 1:
        return "must have one argument: how many invokes (at least 1) it waits for"
    return ""


_CACHE_KINDS = frozenset({"output", "input"})


def _cache_problem(node: Node) -> str:
    kwargs = node.kwargs
    paths, kinds = kwargs.get("paths"), kwargs.get("kinds")
    if (
        node.args
        or not _strings(paths)
        or not _strings(kinds)
        or not set(kinds or ()) <= _CACHE_KINDS
    ):
        return (
            "must have no arguments, paths= a list of module paths and kinds= a list of "
            '"output" and "input"'
        )
    for key in ("device", "dtype"):
        if not (kwargs.get(key) is None or type(kwargs[key]) is str):
            return f"has {key}={kwargs[key]!r}; a cache names its {key} by a str, or None"
    return ""


def _local_problem(node: Node) -> str:
    kwargs = node.kwargs
    inputs, outputs = kwargs.get("inputs") or (), kwargs.get("outputs")
    if (
        set(kwargs) != {"block", "inputs", "outputs"}
        or type(kwargs["block"]) is not int
        or not _ints(inputs)
        or not _ints(outputs)
        or len(inputs) != len(node.args)
        or not all(type(a) is Ref and a.id == i for a, i in zip(node.args, inputs, strict=True))
    ):
        return (
            "must have block= an int, inputs= the ids of its arguments (each a node's value) "
            "and outputs= a list of node ids"
        )
    return ""


def _ints(value: object) -> bool:
    return isinstance(value, (tuple, list)) and all(type(v) is int for v in value)


def _strings(value: object) -> bool:
    return isinstance(value, (tuple, list)) and all(type(v) is str for v in value)


PAYLOAD: dict[Op, Callable[[Node], str]] = {
    Op.METHOD: _method_problem,
    Op.GETATTR: _arguments(1),
    Op.GETITEM: _arguments(2),
    Op.SETITEM: _arguments(3),
    Op.LOG: _log_problem,
    Op.BACKWARD: _backward_problem,
    Op.STOP: _arguments(0),
    Op.BARRIER: _barrier_problem,
    Op.CACHE: _cache_problem,
    Op.LOCAL: _local_problem,
}
"""Op -> why its arguments do not have the shape the executor reads ("" when they do). READ,
WRITE and SKIP are checked as hook sites; SAVE above; a CALL's arguments are its function's."""


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
