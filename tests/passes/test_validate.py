"""Validation of gradients and skips before compute: errors name the user's lines."""

from collections import OrderedDict

import pytest
import torch

from nnsight_graph.backends import execute_graph
from nnsight_graph.ir import Const, Graph, Invoke, Node, Op, SourceLoc, ValidationError, ref
from nnsight_graph.passes import VALIDATION, check_gradients, check_skips, run_passes


def make_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    layers = OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    return torch.nn.Sequential(layers).requires_grad_(False)


def lines(graph: Graph) -> list[str]:
    return [line.split("  #")[0] for line in str(graph).splitlines()]


def at(line: int) -> SourceLoc:
    return SourceLoc("/x/demo.py", line)


def node(id: int, op: Op, target: str = "", *args, invoke: int = 0, step: int = 0) -> Node:
    return Node(id, op, target, args, {}, invoke, step, at(10 + id))


def graph_of(*nodes: Node, invokes: int = 1, constants: list | None = None) -> Graph:
    x = torch.rand((invokes, 5), generator=torch.Generator().manual_seed(1))
    return Graph(
        nodes=list(nodes),
        constants=[x, *(constants or [])],
        invokes=[Invoke(i, (Const(0),), {}, i, i + 1) for i in range(invokes)],
    )


def gradient_graph(*tail: Node) -> Graph:
    head = (
        node(0, Op.READ, "layer1.output"),
        node(1, Op.METHOD, "requires_grad_", ref(0), True),
        node(2, Op.READ, "layer2.output"),
        node(3, Op.METHOD, "sum", ref(2)),
        node(4, Op.BACKWARD, "backward", ref(3)),
    )
    return graph_of(*head, *tail, constants=[torch.zeros(1, 10)])


def test_both_checks_are_in_the_pipeline():
    assert check_gradients in VALIDATION
    assert check_skips in VALIDATION


def test_gradients_inside_their_backward_pass_are_valid_and_run():
    graph = gradient_graph(
        node(5, Op.READ_GRAD, "", ref(0), ref(4)),
        node(6, Op.SAVE, "", ref(5)),
        node(7, Op.WRITE_GRAD, "", ref(0), ref(4), Const(1)),
    )
    assert check_gradients(graph, None) is graph
    optimized = run_passes(graph, None, debug=True)
    assert lines(optimized) == lines(graph)
    net = make_net()
    x = graph.constants[0]
    saved = execute_graph(optimized, net, lambda: net(x), 1)
    assert torch.allclose(saved[5], net.layer2.weight.sum(0, keepdim=True))


def test_a_gradient_without_a_backward_pass_names_its_line():
    graph = graph_of(
        node(0, Op.READ, "layer1.output"),
        node(1, Op.METHOD, "sum", ref(0)),
        node(2, Op.READ_GRAD, "", ref(0), ref(1)),  # %1 is not a backward pass
    )
    with pytest.raises(ValidationError, match=r"\.grad read at /x/demo.py:12 is not inside"):
        check_gradients(graph, None)
    with pytest.raises(ValidationError, match="demo.py:12"):
        run_passes(graph, None, debug=True)


def test_a_gradient_set_before_its_backward_pass_names_its_line():
    graph = graph_of(
        node(0, Op.READ, "layer1.output"),
        node(1, Op.METHOD, "sum", ref(0)),
        node(2, Op.WRITE_GRAD, "", ref(0), ref(3), 0.0),
        node(3, Op.BACKWARD, "backward", ref(1)),
    )
    with pytest.raises(ValidationError, match=r"\.grad set at /x/demo.py:12 is not inside"):
        check_gradients(graph, None)


def test_a_gradient_of_another_invokes_backward_pass_names_both_lines():
    graph = graph_of(
        node(0, Op.READ, "layer1.output", invoke=0),
        node(1, Op.METHOD, "sum", ref(0), invoke=0),
        node(2, Op.BACKWARD, "backward", ref(1), invoke=0),
        node(3, Op.READ_GRAD, "", ref(0), ref(2), invoke=1),
        invokes=2,
    )
    with pytest.raises(
        ValidationError, match=r"demo.py:13 \(invoke 1\).*backward pass at /x/demo.py:12"
    ):
        check_gradients(graph, None)


def test_a_gradient_node_without_its_references():
    graph = graph_of(node(0, Op.READ_GRAD, "", 1, 2))
    with pytest.raises(ValidationError, match="does not name the value and the backward pass"):
        check_gradients(graph, None)


def test_skip_after_reading_the_output_names_both_lines():
    graph = graph_of(
        node(0, Op.READ, "layer1.output"),
        node(1, Op.SKIP, "layer1.skip", Const(1)),
        constants=[torch.zeros(1, 10)],
    )
    with pytest.raises(
        ValidationError,
        match=r"model.layer1.skip\(\) at /x/demo.py:11 comes after model.layer1.output was "
        r"read at /x/demo.py:10",
    ):
        check_skips(graph, None)
    root = graph_of(node(0, Op.READ, "output"), node(1, Op.SKIP, "skip", 0))
    with pytest.raises(ValidationError, match=r"model.skip\(\) at .*model.output was read"):
        check_skips(root, None)


def test_skips_before_the_read_or_elsewhere_are_valid_and_run():
    graph = graph_of(
        node(0, Op.SKIP, "layer1.skip", Const(1)),
        node(1, Op.READ, "layer1.output"),
        node(2, Op.SAVE, "", ref(1)),
        node(3, Op.READ, "layer2.output", invoke=1),
        node(4, Op.SKIP, "layer2.skip", 0, invoke=0),  # another invoke read it
        node(5, Op.READ, "layer1.output", step=1),
        node(6, Op.SKIP, "layer1.skip", 0, step=2),  # another step was read
        constants=[torch.full((1, 10), 2.0)],
        invokes=2,
    )
    assert check_skips(graph, None) is graph
    runnable = graph.with_nodes(graph.nodes[:3])
    runnable.invokes = runnable.invokes[:1]
    optimized = run_passes(runnable, None, debug=True)
    net = make_net()
    x = graph.constants[0][:1]
    saved = execute_graph(optimized, net, lambda: net(x), 1)
    assert torch.equal(saved[1], torch.full((1, 10), 2.0))
