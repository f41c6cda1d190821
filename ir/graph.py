"""Graph: the nodes of one trace in program order, its constant table and its invokes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .node import Node

if TYPE_CHECKING:
    import networkx

_NO_KWARGS: dict[str, Any] = {}  # shared default, never mutated


class Invoke(NamedTuple):
    """One `tracer.invoke(...)`: its inputs and the rows of the batch it owns.

    `stop` is None for a prompt-less invoke, which sees the whole batch. Immutable (a
    NamedTuple, cheap to build: every trace makes at least one).
    """

    index: int  # type: ignore[assignment]  # a field named like tuple.index, shadowing it
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = _NO_KWARGS
    start: int = 0
    stop: int | None = None

    @property
    def rows(self) -> int | None:
        """How many batch rows this invoke owns; None when it sees the whole batch."""
        return None if self.stop is None else self.stop - self.start


@dataclass(slots=True)
class Graph:
    """A list of Nodes in program order. Nodes refer to earlier nodes by id."""

    nodes: list[Node] = field(default_factory=list)
    constants: list[Any] = field(default_factory=list)
    invokes: list[Invoke] = field(default_factory=list)
    optional: frozenset[int] = frozenset()  # nodes of steps that may never run (early EOS)
    method: str = "trace"  # how the model is run: "trace", "generate", "scan"
    options: dict[str, Any] = field(default_factory=dict)  # keywords for that call
    # recorded in this process; a loaded graph runs only what ir.registry allows
    trusted: bool = True
    # "no_grad" or "inference" (ir.grad_mode): the autograd mode its sender runs the model in,
    # which a loaded graph runs in too; None: the mode of whoever runs it
    grad_mode: str | None = None

    def __str__(self) -> str:
        return "\n".join(str(node) for node in self.nodes)

    def __repr__(self) -> str:
        return f"<Graph: {len(self.nodes)} nodes, {len(self.invokes)} invokes>\n{self}"

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def node(self, id: int) -> Node:
        """The node with this id (ids are not positions once nodes were removed)."""
        for node in self.nodes:
            if node.id == id:
                return node
        raise KeyError(f"no node %{id} in the graph")

    def keep(self, ids: Iterable[int]) -> Graph:
        """A new graph with only the nodes whose id is in `ids`, same order."""
        wanted = set(ids)
        return replace(self, nodes=[n for n in self.nodes if n.id in wanted])

    def with_nodes(self, nodes: list[Node]) -> Graph:
        """A new graph with these nodes and the same constants and invokes."""
        return replace(self, nodes=nodes)

    def users(self) -> dict[int, list[int]]:
        """For each node id, the ids of the nodes that use its value."""
        result: dict[int, list[int]] = {node.id: [] for node in self.nodes}
        for node in self.nodes:
            for ref in node.inputs():
                result.setdefault(ref.id, []).append(node.id)
        return result

    # drawing and storing: thin wrappers over ir.visualize and ir.wire (imported when used) -----

    def to_networkx(self) -> networkx.DiGraph:
        """The graph as a networkx DiGraph: one node per Node, an edge per use (see visualize)."""
        from .visualize import to_networkx

        return to_networkx(self)

    def to_dot(self) -> str:
        """The graph as Graphviz DOT text, one cluster per invoke."""
        from .visualize import to_dot

        return to_dot(self)

    def render(self, path: str | Path) -> Path:
        """Draw the graph to an .svg, .png or .pdf file with Graphviz's `dot` program."""
        from .visualize import render

        return render(self, path)

    def save(self, path: str | Path) -> Path:
        """Write the graph in the wire format (zstd, safetensors; never pickle)."""
        from .wire import save

        return save(self, path)

    @classmethod
    def load(cls, path: str | Path, max_size: int | None = None, limits: Any = None) -> Graph:
        """Read a graph written by save(), within `limits` (ir.limits; default LOCAL, which
        bounds the decompressed size to 1 GiB unless `max_size` says otherwise). The graph is
        untrusted: it runs only what ir.registry allows."""
        from .limits import LOCAL
        from .wire import load

        return load(path, max_size, LOCAL if limits is None else limits)
