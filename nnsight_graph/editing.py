"""Model editing: a recorded graph applied before every trace of the edited model.

An edit is a graph with one prompt-less invoke. Each trace of an edited model runs the edits
first: they become the leading invokes (seeing the whole batch), so they take their turn at
every hook before the trace's own interventions.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .ir import Graph, Ref, const, map_args, ref


def with_edits(edits: list[Graph], graph: Graph) -> Graph:
    """`graph` with `edits` prepended as invokes 0..n-1 (ids and constants renumbered)."""
    if not edits:
        return graph
    nodes = []
    constants = list(graph.constants)
    invokes = []
    optional = set(graph.optional)
    next_id = max((n.id for n in graph.nodes), default=-1) + 1
    for index, edit in enumerate(edits):
        shift = next_id - min((n.id for n in edit.nodes), default=0)
        offset = len(constants)
        constants.extend(edit.constants)
        for node in edit.nodes:
            nodes.append(
                node._replace(
                    id=node.id + shift,
                    args=_renumber(node.args, shift, offset),
                    kwargs=_renumber(node.kwargs, shift, offset),
                    guard=None if node.guard is None else ref(node.guard.id + shift),
                    invoke=index if node.invoke >= 0 else -1,
                )
            )
        optional.update(id + shift for id in edit.optional)
        invokes.append(edit.invokes[0]._replace(index=index, start=0, stop=None))
        next_id = max((n.id for n in nodes), default=next_id - 1) + 1
    count = len(edits)
    nodes.extend(
        node._replace(invoke=node.invoke + count) if node.invoke >= 0 else node
        for node in graph.nodes
    )
    invokes.extend(invoke._replace(index=invoke.index + count) for invoke in graph.invokes)
    return replace(
        graph, nodes=nodes, constants=constants, invokes=invokes, optional=frozenset(optional)
    )


def _renumber(value: Any, shift: int, offset: int) -> Any:
    """An edit's argument with its node ids moved by `shift` and its constants by `offset`."""

    def move(leaf: Any) -> Any:
        return ref(leaf.id + shift) if type(leaf) is Ref else const(leaf.index + offset)

    return map_args(value, move)
