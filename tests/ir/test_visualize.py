"""Drawing graphs: networkx conversion, DOT text, images rendered by Graphviz."""

import shutil
from collections import OrderedDict

import pytest
import torch

from nnsight_graph import NNsight
from nnsight_graph.ir import Const, Graph, Invoke, Node, Op, Ref, SourceLoc
from nnsight_graph.ir.visualize import render, to_dot, to_networkx

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _model() -> NNsight:
    torch.manual_seed(0)
    layers = OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    return NNsight(torch.nn.Sequential(layers).requires_grad_(False))


def _recorded() -> Graph:
    """Two invokes: a read, an in-place edit, an `if` on a traced value (guards), saves."""
    model = _model()
    x = torch.rand(1, 5)
    with model.trace() as tracer:
        with tracer.invoke(x):
            hidden = model.layer1.output
            hidden[:, 0] = 0
            if hidden.sum() > 0:
                out = model.output * 2
            else:
                out = model.output * 3
            out.save()
        with tracer.invoke(x * 2):
            model.output.save()
    assert tracer.graph is not None
    return tracer.graph


def _uses(node: Node) -> set[int]:
    return {ref.id for ref in node.inputs()}


def test_to_networkx_has_a_node_per_ir_node_with_its_attributes():
    graph = _recorded()
    result = to_networkx(graph)
    assert sorted(result.nodes) == [node.id for node in graph.nodes]
    for node in graph.nodes:
        attributes = result.nodes[node.id]
        assert attributes["op"] == node.op.value
        assert attributes["target"] == node.target
        assert (attributes["invoke"], attributes["step"]) == (node.invoke, node.step)
        assert attributes["line"] == f"{node.loc.file}:{node.loc.line}"
        assert attributes["line"].startswith(__file__)
        assert attributes["label"] == str(node)
    read = next(n for n in graph.nodes if n.op is Op.READ and n.target == "layer1.output")
    assert result.nodes[read.id]["op"] == "read"
    assert result.graph["invokes"] == 2


def test_to_networkx_has_an_edge_per_use_and_dashed_kind_for_guards():
    graph = _recorded()
    result = to_networkx(graph)
    for node in graph.nodes:
        assert set(result.predecessors(node.id)) == _uses(node)
    guarded = [node for node in graph.nodes if node.guard is not None]
    assert guarded, "the `if` should guard some nodes"
    for node in guarded:
        assert result.edges[node.guard.id, node.id]["kind"] == "guard"
    kinds = [kind for _, _, kind in result.edges(data="kind")]
    assert kinds.count("guard") == len(guarded)
    assert kinds.count("arg") == sum(len(_uses(n) - {n.guard and n.guard.id}) for n in graph)


def test_to_networkx_marks_references_to_missing_nodes():
    graph = Graph([Node(1, Op.SAVE, "", (Ref(0),))])
    result = to_networkx(graph)
    assert result.nodes[0]["missing"] is True
    assert result.edges[0, 1]["kind"] == "arg"


def test_to_dot_has_a_cluster_per_invoke_and_distinct_reads_and_writes():
    graph = _recorded()
    dot = to_dot(graph)
    assert dot.startswith('digraph "graph" {') and dot.rstrip().endswith("}")
    assert 'label="invoke 0 (rows 0:1)"' in dot
    assert 'label="invoke 1 (rows 1:2)"' in dot
    read = next(n for n in graph.nodes if n.op is Op.READ)
    write = next(n for n in graph.nodes if n.op is Op.SETITEM)
    read_line = next(line for line in dot.splitlines() if line.strip().startswith(f"n{read.id} ["))
    write_line = next(
        line for line in dot.splitlines() if line.strip().startswith(f"n{write.id} [")
    )
    assert 'shape="invhouse"' in read_line
    assert 'shape="house"' in write_line and "bold" in write_line
    guarded = next(node for node in graph.nodes if node.guard is not None)
    assert f"n{guarded.guard.id} -> n{guarded.id} [style=dashed" in dot
    fills = {line.split('fillcolor="')[1][:7] for line in dot.splitlines() if "fillcolor" in line}
    assert len(fills) == 2  # one colour per invoke


def test_to_dot_labels_nodes_after_the_run_and_escapes_text():
    loc = SourceLoc('/x/we"ird\\dir/demo.py', 3)
    graph = Graph(
        nodes=[
            Node(0, Op.READ, 'layer "1"\\output\nnext', (), {}, 0, 0, loc),
            Node(1, Op.CALL, "operator.add", (Ref(0), 'a"b\\c\n\r', Const(0)), {}, -1, 0, None),
            Node(2, Op.SAVE, "", (Ref(1),), {}, -1, 0, None, Ref(0)),
        ],
        constants=[torch.ones(1)],
        invokes=[Invoke(0, (Const(0),), {}, 0, None)],
    )
    dot = to_dot(graph)
    assert 'label="after the run"' in dot
    assert 'label="invoke 0 (all rows)"' in dot
    assert 'layer \\"1\\"\\\\output\\nnext' in dot  # quote, backslash and newline escaped
    assert "\r" not in dot and "\n\n" not in dot


@needs_dot
def test_dot_accepts_the_text(tmp_path):
    import subprocess

    for graph in (_recorded(), Graph([Node(0, Op.CALL, 'x"\\', ("\\l\n\x01",))])):
        result = subprocess.run(
            ["dot", "-Tsvg"], input=to_dot(graph).encode(), capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stderr.decode()
        assert b"<svg" in result.stdout


@needs_dot
def test_render_writes_png_svg_and_pdf(tmp_path):
    graph = _recorded()
    png = graph.render(tmp_path / "graph.png")
    assert png.read_bytes().startswith(PNG_MAGIC)
    svg = render(graph, tmp_path / "graph.svg")
    text = svg.read_text()
    assert "<svg" in text and "invoke 0" in text and "layer1.output" in text
    assert render(graph, tmp_path / "graph.pdf").read_bytes().startswith(b"%PDF")


def test_render_names_the_fix_when_graphviz_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install graphviz"):
        render(Graph(), tmp_path / "graph.png", program="no-such-graphviz-program")


def test_render_refuses_unknown_formats(tmp_path):
    with pytest.raises(ValueError, match=r"\.svg, \.png, \.pdf"):
        render(Graph(), tmp_path / "graph.gif")


def test_graph_methods_delegate():
    graph = _recorded()
    assert graph.to_dot() == to_dot(graph)
    assert sorted(graph.to_networkx().edges) == sorted(to_networkx(graph).edges)
