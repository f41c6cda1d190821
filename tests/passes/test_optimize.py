"""Optimizing passes: a graph in, the printed graph out, and the same saved values on the
walkthrough's 2-layer net before and after."""

from collections import OrderedDict

import pytest
import torch

from nnsight_graph.backends import execute_graph
from nnsight_graph.ir import (
    Const,
    Graph,
    Invoke,
    Node,
    Op,
    OutOfOrderError,
    SourceLoc,
    ref,
)
from nnsight_graph.passes import (
    eliminate_common_subexpressions,
    eliminate_dead_nodes,
    fold_constants,
    is_random,
    run_passes,
)


def loc(line: int) -> SourceLoc:
    return SourceLoc("/x/demo.py", line)


def graph_of(*nodes: Node, invokes: int = 1, constants: list | None = None) -> Graph:
    """A graph of these nodes whose invokes each own one row of the input (constant $c0)."""
    x = torch.rand((invokes, 5), generator=torch.Generator().manual_seed(1))
    return Graph(
        nodes=list(nodes),
        constants=[x, *(constants or [])],
        invokes=[Invoke(i, (Const(0),), {}, i, i + 1) for i in range(invokes)],
    )


def node(id: int, op: Op, target: str = "", *args, invoke: int = 0, step: int = 0, **kwargs):
    return Node(id, op, target, args, kwargs, invoke, step, loc(id + 1))


def read(id: int, target: str, invoke: int = 0, step: int = 0) -> Node:
    return node(id, Op.READ, target, invoke=invoke, step=step)


def save(id: int, value: int, invoke: int = 0) -> Node:
    return node(id, Op.SAVE, "", ref(value), invoke=invoke)


def lines(graph: Graph) -> list[str]:
    return [line.split("  #")[0] for line in str(graph).splitlines()]


def make_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    layers = OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    return torch.nn.Sequential(layers).requires_grad_(False)


def run(graph: Graph, seed: int = 0) -> dict:
    """Saved values of the graph on a fresh net (same weights each time)."""
    net = make_net()
    x = torch.cat([graph.constants[0]])
    torch.manual_seed(seed)
    return execute_graph(graph, net, lambda: net(x), len(graph.invokes))


def assert_same_results(before: Graph, after: Graph) -> None:
    expected, got = run(before), run(after)
    assert expected.keys() == got.keys()
    for id, value in expected.items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(got[id])), f"%{id} differs"


# common subexpressions --------------------------------------------------------------------------


def test_repeated_reads_and_calls_are_merged_until_a_value_changes():
    graph = graph_of(
        read(0, "layer1.output"),
        read(1, "layer1.output"),  # the same value: merged into %0
        node(2, Op.METHOD, "sum", ref(0)),
        node(3, Op.METHOD, "sum", ref(1)),  # sum(%0) once %1 is %0: merged into %2
        node(4, Op.CALL, "operator.add", ref(2), ref(3)),
        save(5, 4),
        read(6, "layer1.output"),  # edited in place below: kept apart
        node(7, Op.SETITEM, "", ref(6), (slice(None), 0), 0),
        read(8, "layer1.output"),  # after the edit: a new value
        node(9, Op.METHOD, "sum", ref(8)),
        save(10, 9),
        node(11, Op.METHOD, "sum", ref(0)),  # the same as %2, but the edit came between
        save(12, 11),
    )
    optimized = eliminate_common_subexpressions(graph)
    assert lines(optimized) == [
        "%0 = read layer1.output()",
        "%2 = method sum(%0)",
        "%4 = call operator.add(%2, %2)",
        "%5 = save(%4)",
        "%6 = read layer1.output()",
        "%7 = setitem(%6, (:, 0), 0)",
        "%8 = read layer1.output()",
        "%9 = method sum(%8)",
        "%10 = save(%9)",
        "%11 = method sum(%0)",
        "%12 = save(%11)",
    ]
    assert len(graph.nodes) == 13  # the input graph is unchanged
    assert_same_results(graph, optimized)
    results = run(optimized)
    assert torch.equal(results[11], results[9])  # %0 is the edited tensor by then
    assert not torch.equal(results[4], results[9] * 2)


def test_values_edited_in_place_or_handed_to_the_model_are_not_merged():
    graph = graph_of(
        read(0, "layer1.output"),
        node(1, Op.METHOD, "clone", ref(0)),
        node(2, Op.METHOD, "clone", ref(0)),  # edited below: must stay its own tensor
        node(3, Op.METHOD, "add_", ref(2), 1),
        node(4, Op.METHOD, "mul", ref(0), 2),
        node(5, Op.METHOD, "mul", ref(0), 2),  # written to the model below
        node(6, Op.WRITE, "layer1.output", ref(5)),
        save(7, 1),
        save(8, 2),
        save(9, 4),
    )
    assert eliminate_common_subexpressions(graph) is graph
    results = run(graph)
    assert torch.equal(results[1] + 1, results[2])


def test_nothing_is_merged_across_a_change_of_any_value():
    graph = graph_of(
        read(0, "layer1.output"),
        node(1, Op.METHOD, "sum", ref(0)),
        node(2, Op.GETITEM, "", ref(0), 0),
        node(3, Op.METHOD, "add_", ref(2), 1),  # changes %0 through a view
        node(4, Op.METHOD, "sum", ref(0)),  # the same call, another value
        node(5, Op.CALL, "torch.nn.functional.relu", ref(0), inplace=True),
        node(6, Op.METHOD, "sum", ref(0)),
        node(7, Op.CALL, "torch.stack", [ref(1), ref(4), ref(6)]),
        save(8, 7),
    )
    assert eliminate_common_subexpressions(graph) is graph
    sums = run(graph)[7]
    assert torch.allclose(sums[1], sums[0] + 10)
    assert sums[2] >= sums[1]


def test_saved_repeats_keep_their_ids():
    graph = graph_of(
        read(0, "layer1.output"),
        node(1, Op.METHOD, "sum", ref(0)),
        read(2, "layer1.output"),
        node(3, Op.METHOD, "sum", ref(2)),
        save(4, 1),
        save(5, 3),  # saved values are bound by the id of the node they save
    )
    optimized = eliminate_common_subexpressions(graph)
    assert lines(optimized) == [
        "%0 = read layer1.output()",
        "%1 = method sum(%0)",
        "%3 = method sum(%0)",
        "%4 = save(%1)",
        "%5 = save(%3)",
    ]
    assert_same_results(graph, optimized)


def test_random_calls_effects_and_gradient_reads_are_never_merged():
    graph = graph_of(
        read(0, "layer1.output"),
        node(1, Op.CALL, "torch.randn_like", ref(0)),
        node(2, Op.CALL, "torch.randn_like", ref(0)),
        node(3, Op.CALL, "torch.nn.functional.dropout", ref(0), 0.5),
        node(4, Op.CALL, "torch.nn.functional.dropout", ref(0), 0.5),
        node(5, Op.CALL, "torch.rand_like", ref(0)),
        node(6, Op.CALL, "torch.rand_like", ref(0)),
        node(7, Op.LOG, "", ref(0)),
        node(8, Op.LOG, "", ref(0)),
        *(save(9 + i, i + 1) for i in range(4)),
    )
    assert eliminate_common_subexpressions(graph) is graph
    results = run(graph)
    assert not torch.equal(results[1], results[2])
    assert not torch.equal(results[3], results[4])


def test_reads_are_not_merged_across_another_module_or_invoke():
    graph = graph_of(
        read(0, "layer1.output"),
        read(1, "layer2.output"),
        read(2, "layer1.output"),  # out of order: must still fail at run time
        save(3, 2),
    )
    assert eliminate_common_subexpressions(graph) is graph
    with pytest.raises(OutOfOrderError):
        run(graph)
    invokes = graph_of(
        read(0, "layer1.output", invoke=0),
        read(1, "layer1.output", invoke=1),
        node(2, Op.METHOD, "sum", ref(0), invoke=0),
        node(3, Op.METHOD, "sum", ref(1), invoke=1),
        read(4, "layer1.output", step=1),
        invokes=2,
    )
    assert eliminate_common_subexpressions(invokes) is invokes


def test_a_value_from_another_invoke_ends_what_can_be_merged():
    graph = graph_of(
        read(0, "layer2.output", invoke=0),
        read(1, "layer1.output", invoke=1),
        node(2, Op.METHOD, "sum", ref(1), invoke=1),
        node(3, Op.CALL, "operator.add", ref(1), ref(0), invoke=1),  # waits for invoke 0
        node(4, Op.METHOD, "sum", ref(1), invoke=1),  # other invokes took turns meanwhile
        invokes=2,
    )
    assert eliminate_common_subexpressions(graph) is graph


def test_arguments_of_other_types_kwargs_or_guards_are_different_nodes():
    graph = graph_of(
        read(0, "layer1.output"),
        node(1, Op.CALL, "operator.mul", ref(0), 1),
        node(2, Op.CALL, "operator.mul", ref(0), 1.0),  # int * float gives another dtype
        node(3, Op.CALL, "operator.mul", ref(0), True),
        node(4, Op.CALL, "operator.mul", ref(0), -0.0),
        node(5, Op.CALL, "operator.mul", ref(0), 0.0),
        node(6, Op.METHOD, "sum", ref(0), dim=0),
        node(7, Op.METHOD, "sum", ref(0), dim=1),
        node(8, Op.METHOD, "sum", ref(0)),
        node(9, Op.METHOD, "sum", ref(0))._replace(guard=ref(1)),
        node(10, Op.CALL, "mylib.helper", ref(0)),  # an unknown function may do anything
        node(11, Op.CALL, "mylib.helper", ref(0)),
    )
    assert eliminate_common_subexpressions(graph) is graph


def test_merged_references_are_rewritten_everywhere():
    graph = graph_of(
        read(0, "layer1.output"),
        node(1, Op.GETATTR, "shape", ref(0)),
        node(2, Op.GETATTR, "shape", ref(0)),
        node(3, Op.METHOD, "reshape", ref(0), [ref(2)]),
        node(4, Op.METHOD, "sum", ref(0), dim=ref(2)),
        node(5, Op.CALL, "operator.gt", ref(3), 0),
        node(6, Op.METHOD, "sum", ref(3))._replace(guard=ref(5)),
        node(7, Op.CALL, "operator.gt", ref(3), 0),
        node(8, Op.METHOD, "sum", ref(3))._replace(guard=ref(7)),
        node(9, Op.CALL, "operator.add", ref(6), ref(8)),
        save(10, 9),
    )
    optimized = eliminate_common_subexpressions(graph)
    assert lines(optimized) == [
        "%0 = read layer1.output()",
        "%1 = getattr shape(%0)",
        "%3 = method reshape(%0, [%1])",
        "%4 = method sum(%0, dim=%1)",
        "%5 = call operator.gt(%3, 0)",
        "%6 = method sum(%3) if %5",
        "%9 = call operator.add(%6, %6)",
        "%10 = save(%9)",
    ]


# constants ----------------------------------------------------------------------------------


def test_constant_arithmetic_is_folded_into_its_uses():
    graph = graph_of(
        node(0, Op.CALL, "operator.mul", 2, 3),
        node(1, Op.CALL, "operator.add", ref(0), 1),
        node(2, Op.GETITEM, "", (4, 5, 6), slice(1, None)),
        node(3, Op.GETITEM, "", ref(2), 0),
        read(4, "layer1.output"),
        node(5, Op.CALL, "operator.mul", ref(4), ref(1)),
        node(6, Op.METHOD, "reshape", ref(5), (ref(3), -1)),
        node(7, Op.CALL, "operator.eq", ref(0), 6.0),
        save(8, 6),
        save(9, 7),  # a saved value needs its node
    )
    folded = fold_constants(graph)
    assert lines(folded) == [
        "%4 = read layer1.output()",
        "%5 = call operator.mul(%4, 7)",
        "%6 = method reshape(%5, (5, -1))",
        "%7 = call operator.eq(6, 6.0)",
        "%8 = save(%6)",
        "%9 = save(%7)",
    ]
    assert_same_results(graph, folded)


def test_only_safe_pure_calls_on_literals_are_folded():
    graph = graph_of(
        node(0, Op.CALL, "operator.truediv", 1, 0),  # raises at run time, with its line
        node(1, Op.CALL, "operator.mul", "ab", 3),  # repetition: any size
        node(2, Op.CALL, "operator.pow", 2, 100000),
        node(3, Op.CALL, "torch.randn", 2, 3),
        node(4, Op.CALL, "operator.iadd", 1, 2),
        node(5, Op.CALL, "operator.add", Const(1), 1),  # a table entry: may change per trace
        node(6, Op.CALL, "operator.add", 1, 2)._replace(guard=ref(7)),
        node(7, Op.CALL, "torch.tensor", 1),  # the result is not a literal
        node(8, Op.CALL, "operator.add", (1,), [2]),
        node(9, Op.CALL, "mylib.add", 1, 2),
        constants=[torch.ones(1)],
    )
    assert fold_constants(graph) is graph


def test_a_folded_condition_and_saved_value_keep_their_node():
    graph = graph_of(
        node(0, Op.CALL, "operator.gt", 3, 2),
        read(1, "layer1.output"),
        node(2, Op.METHOD, "sum", ref(1))._replace(guard=ref(0)),
        node(3, Op.CALL, "operator.and_", ref(0), True),
        node(4, Op.LOG, "", ref(3)),
    )
    assert lines(fold_constants(graph)) == [
        "%0 = call operator.gt(3, 2)",
        "%1 = read layer1.output()",
        "%2 = method sum(%1) if %0",
        "%4 = log(True)",
    ]


# dead nodes ---------------------------------------------------------------------------------


def test_unused_random_calls_are_kept():
    graph = graph_of(
        read(0, "layer1.output"),
        node(1, Op.CALL, "torch.randn_like", ref(0)),  # unused, but draws from the generator
        node(2, Op.CALL, "torch.randn_like", ref(0)),
        node(3, Op.METHOD, "clone", ref(0)),  # unused: dropped
        save(4, 2),
    )
    optimized = eliminate_dead_nodes(graph)
    assert lines(optimized) == [
        "%0 = read layer1.output()",
        "%1 = call torch.randn_like(%0)",
        "%2 = call torch.randn_like(%0)",
        "%4 = save(%2)",
    ]
    assert_same_results(graph, optimized)


def test_unused_changes_that_ir_does_not_know_of_are_kept():
    graph = graph_of(
        read(0, "layer1.output"),
        node(1, Op.METHOD, "tolist", ref(0)),
        node(2, Op.METHOD, "append", ref(1), 1.5),  # changes the saved list
        node(3, Op.CALL, "mylib.record", ref(0)),  # may do anything
        node(4, Op.CALL, "torch.relu", ref(0)),  # pure and unused: dropped
        save(5, 1),
    )
    optimized = eliminate_dead_nodes(graph)
    assert lines(optimized) == [
        "%0 = read layer1.output()",
        "%1 = method tolist(%0)",
        "%2 = method append(%1, 1.5)",
        "%3 = call mylib.record(%0)",
        "%5 = save(%1)",
    ]


def test_random_rules():
    def call(target: str) -> Node:
        return Node(0, Op.CALL, target)

    for target in ("torch.randn_like", "torch.rand", "torch.nn.functional.dropout"):
        assert is_random(call(target))
    assert is_random(Node(0, Op.METHOD, "normal_"))
    assert is_random(Node(0, Op.METHOD, "bernoulli"))
    assert is_random(call("torch.empty_like"))
    assert not is_random(call("torch.nn.functional.layer_norm"))
    assert not is_random(Node(0, Op.READ, "random.output"))


# the pipeline -------------------------------------------------------------------------------


def test_pipeline_folds_merges_then_drops():
    graph = graph_of(
        node(0, Op.CALL, "operator.mul", 2, 3),
        read(1, "layer1.output"),
        node(2, Op.CALL, "operator.mul", ref(1), ref(0)),
        read(3, "layer1.output"),
        node(4, Op.CALL, "operator.mul", ref(3), 6),  # the same as %2 once %0 is folded
        node(5, Op.CALL, "operator.add", ref(2), ref(4)),
        node(6, Op.METHOD, "clone", ref(5)),  # unused
        save(7, 5),
    )
    optimized = run_passes(graph, None, debug=True)
    assert lines(optimized) == [
        "%1 = read layer1.output()",
        "%2 = call operator.mul(%1, 6)",
        "%5 = call operator.add(%2, %2)",
        "%7 = save(%5)",
    ]
    assert_same_results(graph, optimized)
