"""Validation passes: find errors before the model runs, naming the user's file:line."""

from __future__ import annotations

from ..ir import (
    GRADIENTS,
    SITED,
    BatchError,
    BatchIndexError,
    Graph,
    Node,
    Op,
    OutOfOrderError,
    Ref,
    ValidationError,
)
from .facts import ModelFacts, Site
from .optimize import eliminate_dead_nodes


def _site(node: Node) -> Site:
    site = node.site
    return ("", "") if site is None else (site.path, site.hook)


def _name(target: str) -> str:
    return f"model.{target}"


def check_module_order(graph: Graph, facts: ModelFacts | None) -> Graph:
    """Raise OutOfOrderError when an invoke reads modules against the known call order."""
    if facts is None or not facts.order:
        return graph
    # only reads that will run count: an unused read is dropped before the run (as on a
    # model's first run, when the order is not known yet), so it cannot be out of order
    live = {node.id for node in eliminate_dead_nodes(graph).nodes}
    last: dict[tuple[int, int], tuple[int, Node]] = {}
    for node in graph.nodes:
        if node.op not in SITED or node.id not in live:
            continue
        position = facts.order.get(_site(node))
        if position is None:
            continue
        key = (node.invoke, node.step)
        previous = last.get(key)
        if previous is not None and position < previous[0]:
            before = previous[1]
            raise OutOfOrderError(
                f"{_name(node.target)} is requested at {node.loc} after {_name(before.target)} "
                f"at {before.loc}, but the model runs it first, so it would already have run. "
                "Access modules in the order the model calls them, or use a separate invoke."
            )
        if previous is None or position > previous[0]:
            last[key] = (position, node)
    return graph


def check_batch_slices(graph: Graph, facts: ModelFacts | None) -> Graph:
    """Raise before the run when an invoke indexes or sets rows it does not own."""
    rows = {invoke.index: invoke.rows for invoke in graph.invokes}
    tensor_outputs = facts.tensor_outputs if facts is not None else frozenset()
    reads: dict[int, Node] = {}
    for node in graph.nodes:
        if node.op is Op.READ and _module_value(node, "output") in tensor_outputs:
            reads[node.id] = node
        owned = rows.get(node.invoke)
        if owned is None:
            continue
        if node.op is Op.GETITEM and isinstance(node.args[0], Ref) and node.args[0].id in reads:
            _check_index(node, node.args[1], owned)
        if node.op is Op.WRITE and _module_value(node, "output") in tensor_outputs:
            _check_write(graph, node, owned)
    return graph


def _check_index(node: Node, key: object, owned: int) -> None:
    first = key[0] if isinstance(key, tuple) and key else key
    if isinstance(first, int) and not isinstance(first, bool) and not -owned <= first < owned:
        raise BatchIndexError(
            f"index {first} at {node.loc} is outside this invoke's batch: it owns {owned} "
            f"row(s), so valid indices are {-owned} to {owned - 1}"
        )


def _check_write(graph: Graph, node: Node, owned: int) -> None:
    from ..ir import Const

    value = node.args[0]
    if not isinstance(value, Const):
        return
    shape = getattr(graph.constants[value.index], "shape", None)
    if shape is not None and len(shape) > 0 and shape[0] not in (owned,):
        raise BatchError(
            f"the value set at {node.loc} has {shape[0]} row(s) but this invoke owns {owned}; "
            f"give it shape ({owned}, ...)"
        )


def check_gradients(graph: Graph, facts: ModelFacts | None) -> Graph:
    """Raise when a `.grad` is read or set outside a backward pass of its own invoke.

    A gradient node names the BACKWARD node whose pass computes it (args[1]); that node must
    come earlier in the same invoke, or the gradient would never exist.
    """
    backwards = {node.id: node for node in graph.nodes if node.op is Op.BACKWARD}
    seen: set[int] = set()
    for node in graph.nodes:
        seen.add(node.id)
        if node.op not in GRADIENTS:
            continue
        verb = "read" if node.op is Op.READ_GRAD else "set"
        backward = node.args[1] if len(node.args) > 1 else None
        if not isinstance(node.args[0] if node.args else None, Ref) or not isinstance(
            backward, Ref
        ):
            raise ValidationError(
                f"the .grad {verb} at {node.loc} does not name the value and the backward "
                "pass it belongs to; record it as `value.grad` inside `with loss.backward():`"
            )
        source = backwards.get(backward.id)
        if source is None or backward.id not in seen:
            raise ValidationError(
                f"the .grad {verb} at {node.loc} is not inside a backward pass: gradients "
                "exist only while one runs. Use .grad inside `with loss.backward():`, after "
                "the loss is computed"
            )
        if source.invoke != node.invoke:
            raise ValidationError(
                f"the .grad {verb} at {node.loc} (invoke {node.invoke}) belongs to the "
                f"backward pass at {source.loc} of invoke {source.invoke}; use .grad inside a "
                "`with loss.backward():` block of the same invoke"
            )
    return graph


def check_skips(graph: Graph, facts: ModelFacts | None) -> Graph:
    """Raise when a module is skipped after its output was read in the same invoke and step:
    once the output exists the module has run, so the skip could not take effect."""
    reads: dict[tuple[str, int, int], Node] = {}
    for node in graph.nodes:
        if node.op is Op.READ:
            path = _module_value(node, "output")
            if path is not None:
                reads.setdefault((path, node.invoke, node.step), node)
        elif node.op is Op.SKIP:
            path = _module_value(node, "skip")
            read = reads.get((path, node.invoke, node.step)) if path is not None else None
            if read is not None:
                raise ValidationError(
                    f"{_name(node.target)}() at {node.loc} comes after {_name(read.target)} "
                    f"was read at {read.loc}; once the output exists the module has run. Skip "
                    "the module before reading its output"
                )
    return graph


def _module_value(node: Node, kind: str) -> str | None:
    """The module path of a node's hook site of this kind, outside `.source` call sites
    ("h.0.output" -> "h.0", "output" -> ""); None for any other node."""
    site = node.site
    return site.path if site is not None and site.kind == kind and not site.in_source else None
