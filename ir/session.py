"""A session as plain data: its traces' graphs in order, and references between them.

A later trace of `model.session()` may use a value of an earlier one; its constant table
then holds a TraceRef(trace, node) (never a live object) that the runner replaces with
that value before the trace runs. `keep` names, per trace, the saved nodes that are kept
only for later traces: a server does not send those back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import WireFormatError
from .graph import Graph
from .ops import Op


class TraceRef(NamedTuple):
    """The value of node `node` of trace `trace` (an earlier trace of the same session)."""

    trace: int
    node: int

    def __repr__(self) -> str:
        return f"TraceRef(trace={self.trace}, node=%{self.node})"


@dataclass
class SessionGraph:
    """The traces of one session, in the order they run."""

    traces: list[Graph] = field(default_factory=list)
    keep: list[frozenset[int]] = field(default_factory=list)  # per trace: saved for later only

    def check_refs(self) -> None:
        """Refuse (WireFormatError) a TraceRef that does not name a saved node of an earlier
        trace, and a `keep` entry that names no saved node of its trace."""
        if len(self.keep) != len(self.traces):
            raise WireFormatError(
                f"the session has {len(self.traces)} traces but {len(self.keep)} keep lists"
            )
        saved = [saved_nodes(graph) for graph in self.traces]
        for index, graph in enumerate(self.traces):
            unknown = self.keep[index] - saved[index]
            if unknown:
                raise WireFormatError(
                    f"trace {index} keeps nodes it does not save: {sorted(unknown)}"
                )
            for position, constant in enumerate(graph.constants):
                if type(constant) is not TraceRef:
                    continue
                where = f"trace {index}, constant $c{position}"
                if not 0 <= constant.trace < index:
                    raise WireFormatError(
                        f"{where} refers to trace {constant.trace}; a trace may use values of "
                        f"earlier traces only (0 to {index - 1})"
                    )
                if constant.node not in saved[constant.trace]:
                    raise WireFormatError(
                        f"{where} refers to node %{constant.node} of trace {constant.trace}, "
                        "which that trace does not save"
                    )

    def last_uses(self) -> dict[TraceRef, int]:
        """For each referenced value, the index of the last trace that uses it."""
        last: dict[TraceRef, int] = {}
        for index, graph in enumerate(self.traces):
            for constant in graph.constants:
                if type(constant) is TraceRef:
                    last[constant] = index
        return last


def saved_nodes(graph: Graph) -> frozenset[int]:
    """The nodes whose values a graph's SAVE nodes keep."""
    saved = set()
    for node in graph.nodes:
        if node.op == Op.SAVE and node.args:
            arg: Any = node.args[0]
            saved.add(getattr(arg, "id", -1))
    return frozenset(saved)


def resolve(graph: Graph, results: list[dict[int, Any]]) -> list[Any]:
    """The graph's constants with each TraceRef replaced by that trace's value."""
    constants = graph.constants
    if not any(type(c) is TraceRef for c in constants):
        return constants
    resolved = []
    for constant in constants:
        if type(constant) is TraceRef:
            trace = results[constant.trace] if constant.trace < len(results) else {}
            if constant.node not in trace:
                raise WireFormatError(
                    f"the value %{constant.node} of trace {constant.trace} was not computed "
                    "(that trace ended before it, or it was dropped)"
                )
            constant = trace[constant.node]
        resolved.append(constant)
    return resolved


__all__ = ["SessionGraph", "TraceRef", "resolve", "saved_nodes"]
