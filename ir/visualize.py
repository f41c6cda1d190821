"""Drawing a Graph: a networkx DiGraph, Graphviz DOT text, and images rendered by `dot`.

DOT is written by hand (no pydot or pygraphviz); only render() needs Graphviz installed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .graph import Graph
from .node import Node, Ref, refs
from .op_table import OPS
from .ops import Op

if TYPE_CHECKING:
    import networkx

__all__ = ["FORMATS", "to_dot", "to_networkx", "render"]

FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
"""The image formats render() writes, by file suffix."""

_LABEL_WIDTH = 100  # longer label lines are cut; the tooltip keeps the whole line

# Fill colours per invoke (pastels, so black text stays readable); invoke -1 is grey.
_FILLS = ("#cfe2ff", "#d1f2d9", "#ffe5b4", "#f8d7da", "#e2d9f3", "#d2f4f4", "#fff3b0", "#f3d9e8")
_BORDERS = ("#3d6fb6", "#2e8b57", "#c07a00", "#b5323f", "#6a4ca3", "#2a8c8c", "#a68a00", "#a3487a")
_AFTER_FILL, _AFTER_BORDER = "#eeeeee", "#777777"


def _uses(node: Node) -> Iterator[tuple[int, str]]:
    """(id, kind) for each distinct node this one uses: kind "arg" or "guard"."""
    seen: set[int] = set()
    for ref in refs((node.args, node.kwargs)):
        if ref.id not in seen:
            seen.add(ref.id)
            yield ref.id, "arg"
    if isinstance(node.guard, Ref):
        yield node.guard.id, "guard"


def to_networkx(graph: Graph) -> networkx.DiGraph:
    """A DiGraph with one node per Node (keyed by id) and an edge from each value to its users.

    Node attributes: op (the wire name), target, invoke, step, line ("file:line" or None),
    label (the printed node). Edge attribute kind: "arg", or "guard" for the value that decides
    whether the user runs (an edge that is both is kind "arg" with guard=True). A reference to a
    node that is not in the graph adds a node with missing=True.
    """
    import networkx

    result = networkx.DiGraph(method=graph.method, invokes=len(graph.invokes))
    for node in graph.nodes:
        result.add_node(
            node.id,
            op=Op(node.op).value,
            target=node.target,
            invoke=node.invoke,
            step=node.step,
            line=None if node.loc is None else str(node.loc),
            label=str(node),
        )
    for node in graph.nodes:
        for source, kind in _uses(node):
            if source not in result:
                result.add_node(source, missing=True, label=f"%{source} (missing)")
            if kind == "guard" and result.has_edge(source, node.id):
                result.edges[source, node.id]["guard"] = True
            else:
                result.add_edge(source, node.id, kind=kind)
    return result


def to_dot(graph: Graph, name: str = "graph") -> str:
    """Graphviz DOT text: a cluster per invoke, reads and writes drawn apart, guards dashed."""
    lines = [
        f"digraph {_quote(name)} {{",
        "  rankdir=TB;",
        '  node [fontname="Courier", fontsize=10, margin="0.15,0.05"];',
        '  edge [color="#555555", arrowsize=0.7];',
    ]
    by_invoke: dict[int, list[Node]] = {}
    for node in graph.nodes:
        by_invoke.setdefault(node.invoke, []).append(node)
    # invokes in their order, then the nodes that run after all of them
    for invoke in sorted(by_invoke, key=lambda index: (index < 0, index)):
        lines += _cluster(graph, invoke, by_invoke[invoke])
    present = {node.id for node in graph.nodes}
    missing: set[int] = set()
    for node in graph.nodes:
        for source, kind in _uses(node):
            if source not in present and source not in missing:
                missing.add(source)
                text = _quote(f"%{source} (missing)")
                lines.append(f"  n{source} [label={text}, shape=box, style=dashed, color=red];")
            style = ' [style=dashed, color="#888888", label="if", fontsize=9]'
            lines.append(f"  n{source} -> n{node.id}{style if kind == 'guard' else ''};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _cluster(graph: Graph, invoke: int, nodes: list[Node]) -> list[str]:
    fill, border = _colours(invoke)
    title = _invoke_title(graph, invoke)
    lines = [
        f"  subgraph cluster_{'after' if invoke < 0 else invoke} {{",
        f"    label={_quote(title)};",
        f'    style="rounded"; color="{border}"; fontname="Helvetica"; fontcolor="{border}";',
    ]
    for node in nodes:
        attributes = {**OPS[Op(node.op)].style, "fillcolor": fill}  # drawn as its row says
        attributes["color"] = border
        text = _cut(str(node._replace(loc=None)))
        if node.loc is not None:
            text += "\n" + _cut(node.loc.short())
        attributes["label"] = text
        attributes["tooltip"] = str(node)
        listed = ", ".join(f"{key}={_quote(value)}" for key, value in attributes.items())
        lines.append(f"    n{node.id} [{listed}];")
    lines.append("  }")
    return lines


def _invoke_title(graph: Graph, invoke: int) -> str:
    if invoke < 0:
        return "after the run"
    for entry in graph.invokes:
        if entry.index == invoke:
            rows = "all rows" if entry.stop is None else f"rows {entry.start}:{entry.stop}"
            return f"invoke {invoke} ({rows})"
    return f"invoke {invoke}"


def _colours(invoke: int) -> tuple[str, str]:
    if invoke < 0:
        return _AFTER_FILL, _AFTER_BORDER
    return _FILLS[invoke % len(_FILLS)], _BORDERS[invoke % len(_BORDERS)]


def _cut(text: str) -> str:
    return text if len(text) <= _LABEL_WIDTH else text[: _LABEL_WIDTH - 1] + "…"


def _quote(text: str) -> str:
    """A DOT double-quoted string. Backslashes are escaped (DOT would read `\\l` as an escape);
    newlines become DOT's `\\n`; other control characters are shown as `\\xNN` text."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char == "\n":
            out.append("\\n")
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render(
    graph: Graph, path: str | Path, program: str = "dot", timeout: float | None = 120
) -> Path:
    """Draw the graph to `path` (.svg, .png or .pdf) with Graphviz; return the path.

    Needs Graphviz's `dot` program (`apt-get install graphviz`, `brew install graphviz`,
    `conda install graphviz`).
    """
    path = Path(path)
    image_format = FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise ValueError(
            f"cannot render to {path.name!r}: use a file name ending in "
            f"{', '.join(FORMATS)}, or write graph.to_dot() to a .dot file"
        )
    executable = shutil.which(program)
    if executable is None:
        raise FileNotFoundError(
            f"rendering a graph needs Graphviz's `{program}` program, which is not installed: "
            "run `apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS) or "
            "`conda install graphviz`; or write graph.to_dot() to a .dot file and render it "
            "elsewhere"
        )
    command = [executable, f"-T{image_format}", "-o", str(path)]
    try:
        result = subprocess.run(
            command, input=to_dot(graph).encode("utf-8"), capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(
            f"Graphviz took longer than {timeout}s to draw {len(graph)} nodes; draw part of the "
            "graph (graph.keep(ids)) or pass a larger timeout"
        ) from e
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(
            f"Graphviz could not draw the graph (exit {result.returncode}): {message}"
        )
    return path
