"""verify(): graph invariants, and the pipeline naming the pass that broke them."""

import pytest
import torch

from nnsight_graph.ir import Const, Graph, Invoke, Node, Op, SourceLoc, ValidationError, ref
from nnsight_graph.passes import pipeline, run_passes, verify

LOC = SourceLoc("/x/demo.py", 3)


def graph_of(*nodes: Node, constants: list | None = None) -> Graph:
    return Graph(nodes=list(nodes), constants=constants or [], invokes=[Invoke(0)])


def node(id: int, op: Op, target: str = "", *args, invoke: int = 0, **kwargs) -> Node:
    return Node(id, op, target, args, kwargs, invoke, 0, LOC)


VALID = graph_of(
    node(0, Op.READ, "layer1.output"),
    node(1, Op.CALL, "operator.mul", ref(0), Const(0)),
    node(2, Op.SAVE, "", ref(1)),
    node(3, Op.READ, "output"),
    node(4, Op.WRITE, "layer2.inputs", ((ref(3),), {})),
    node(5, Op.SKIP, "h.0.skip", ref(0)),
    node(6, Op.RESULT, ""),
    node(7, Op.BACKWARD, "backward", ref(6)),
    node(8, Op.READ_GRAD, "", ref(0), ref(7)),
    node(9, Op.WRITE_GRAD, "", ref(0), ref(7), ref(8)),
    node(10, Op.METHOD, "sum", ref(8))._replace(guard=ref(1)),
    node(11, Op.LOG, "", ref(1), invoke=-1),
    constants=[torch.ones(1)],
)


def test_a_valid_graph_passes():
    verify(VALID)


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([node(0, Op.READ, "a.output"), node(0, Op.READ, "b.output")], "reuses the id %0"),
        ([node(0, Op.METHOD, "sum", ref(1)), node(1, Op.READ, "a.output")], "refers to %1"),
        ([node(0, Op.METHOD, "sum", ref(0))], r"refers to %0, which is not another node"),
        ([node(0, Op.READ, "a.output")._replace(guard=ref(5))], r"refers to %5"),
        ([node(0, Op.METHOD, "sum", [{"k": slice(ref(4), None)}])], r"refers to %4"),
        ([node(0, Op.CALL, "torch.add", Const(3), 1)], r"constant \$c3, but the graph has 1"),
        ([node(0, Op.READ, "a.output", invoke=2)], "invoke 2, but the graph has 1"),
        ([node(0, Op.SAVE, "", 1)], "saves no node"),
        ([node(0, Op.READ, "layer1.outptu")], "does not end in one of: input, inputs, output"),
        ([node(0, Op.SKIP, "layer1.output", 1)], "does not end in one of: skip"),
        ([node(0, Op.READ, "h..output")], "module path has an empty part"),
        ([node(0, Op.READ, ".output")], "module path has an empty part"),
        ([node(0, Op.WRITE, "a.output")], "no value to put at its hook site"),
        ([node(0, Op.WRITE, "result", 1)], "has target 'result': the model's result is a resu"),
        ([node(0, Op.READ, "grad", 1, 2)], "a gradient is a read_grad or write_grad node now"),
        ([node(0, Op.RESULT, "", 1)], "a result node takes 0"),
        ([node(0, Op.WRITE_GRAD, "", 1, 2, 3)], r"gradient write but its arguments are not"),
        ([node(0, Op.READ_GRAD, "", 1, 2)], r"arguments are not \(value, backward\)"),
    ],
)
def test_each_broken_invariant_is_named(nodes, message):
    graph = graph_of(*nodes, constants=[torch.ones(1)])
    with pytest.raises(ValidationError, match=message):
        verify(graph)


def test_invoke_inputs_name_constants_in_the_table():
    graph = Graph(nodes=[], constants=[], invokes=[Invoke(0, (Const(0),))])
    with pytest.raises(ValidationError, match=r"invoke 0 refers to constant \$c0"):
        verify(graph)


def test_debug_pipeline_names_the_pass_that_broke_the_graph(monkeypatch):
    def duplicate_first_node(graph: Graph) -> Graph:
        return graph.with_nodes([graph.nodes[0], *graph.nodes])

    monkeypatch.setattr(
        pipeline, "OPTIMIZATION", (*pipeline.OPTIMIZATION[:1], duplicate_first_node)
    )
    graph = graph_of(node(0, Op.READ, "layer1.output"), node(1, Op.SAVE, "", ref(0)))
    with pytest.raises(
        ValidationError, match=r"the pass duplicate_first_node broke the graph: .*reuses the id"
    ):
        run_passes(graph, None, debug=True)
    assert run_passes(graph, None).nodes[0] == run_passes(graph, None).nodes[1]  # no check


def test_debug_pipeline_rejects_a_broken_input():
    graph = graph_of(node(0, Op.SAVE, "", ref(3)))
    with pytest.raises(ValidationError, match="the graph given to run_passes is invalid"):
        run_passes(graph, None, debug=True)


def test_verify_formats_nodes_only_to_report_an_error(monkeypatch):
    """A graph with a 100 MiB string argument costs verify nothing extra (it formatted every
    node before: 9 s for eight such nodes)."""

    formatted = []
    monkeypatch.setattr(Node, "__str__", lambda self: formatted.append(self.id) or "node")
    big = "x" * (1 << 20)
    nodes = [Node(0, Op.READ, "layer1.output")]
    nodes += [Node(i, Op.METHOD, "clone", (ref(i - 1), big)) for i in range(1, 9)]
    verify(Graph(nodes, invokes=[Invoke(0)]))
    assert formatted == []
    with pytest.raises(ValidationError, match="node 0 \\(node\\) refers to %0"):
        verify(Graph([nodes[1]], invokes=[Invoke(0)]))
    assert formatted == [1]
