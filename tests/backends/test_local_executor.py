"""The local executor: hooks only where needed, serial invokes, row slicing, clean modules."""

from collections import OrderedDict

import pytest
import torch

from nnsight_graph.backends import execute_graph
from nnsight_graph.backends.batching import concatenate, merge, narrow
from nnsight_graph.ir import (
    BatchError,
    Const,
    Graph,
    Invoke,
    ModuleNotCalledError,
    Node,
    Op,
    OutOfOrderError,
    Ref,
    SourceLoc,
)

LOC = SourceLoc("/x/demo.py", 7)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = OrderedDict(
        layer1=torch.nn.Linear(5, 10), layer2=torch.nn.Linear(10, 2), unused=torch.nn.Linear(2, 2)
    )
    net = torch.nn.Sequential(layers)
    net.forward = lambda x: net.layer2(net.layer1(x))  # type: ignore[method-assign]
    return net.requires_grad_(False)


def _run(net, nodes, x, invokes=None):
    graph = Graph(nodes=nodes, constants=[], invokes=invokes or [Invoke(0, (), {}, 0, None)])
    return execute_graph(graph, net, lambda: net(x), x.shape[0])


def test_hooks_only_on_touched_modules(monkeypatch, clean):
    net = _net()
    hooked = []  # modules that carried a forward hook of their own while they ran

    def look(module, args, output):
        if module._forward_hooks:
            hooked.append(module)

    watch = torch.nn.modules.module.register_module_forward_hook(look)
    x = torch.rand(1, 5)
    try:
        saved = _run(net, [Node(0, Op.READ, "layer2.output"), Node(1, Op.SAVE, "", (Ref(0),))], x)
    finally:
        watch.remove()
    assert hooked == [net.layer2]
    assert torch.equal(saved[0], net(x))
    assert clean(net)


def test_invokes_see_their_rows_and_write_only_their_rows():
    net = _net()
    x = torch.rand(3, 5)
    nodes = [
        Node(0, Op.READ, "layer1.output", invoke=0),
        Node(1, Op.SAVE, "", (Ref(0),), invoke=0),
        Node(2, Op.READ, "layer1.output", invoke=1),
        Node(3, Op.SETITEM, "", (Ref(2), slice(None), 0.0), invoke=1),
        Node(4, Op.READ, "output", invoke=2),
        Node(5, Op.SAVE, "", (Ref(4),), invoke=2),
    ]
    invokes = [Invoke(0, (), {}, 0, 1), Invoke(1, (), {}, 1, 3), Invoke(2, (), {}, 0, None)]
    saved = _run(net, nodes, x, invokes)
    assert saved[0].shape == (1, 10)
    expected = net(x)
    expected[1:] = net.layer2.bias
    assert torch.allclose(saved[4], expected)


def test_out_of_order_is_raised_at_run_time_and_hooks_are_removed(clean):
    net = _net()
    nodes = [
        Node(0, Op.READ, "layer2.output", loc=SourceLoc("/x/demo.py", 1)),
        Node(1, Op.READ, "layer1.output", loc=SourceLoc("/x/demo.py", 2)),
        Node(2, Op.SAVE, "", (Ref(1),)),
    ]
    with pytest.raises(OutOfOrderError, match=r"model.layer1.output.*demo.py:2.*layer2.output"):
        _run(net, nodes, torch.rand(1, 5))
    assert clean(net)


def test_module_never_called(clean):
    net = _net()
    nodes = [Node(0, Op.READ, "unused.output", loc=LOC), Node(1, Op.SAVE, "", (Ref(0),))]
    with pytest.raises(ModuleNotCalledError, match=r"model.unused.output.*demo.py:7"):
        _run(net, nodes, torch.rand(1, 5))
    assert clean(net)


def test_errors_keep_their_type_and_name_the_line(clean):
    net = _net()
    nodes = [
        Node(0, Op.READ, "layer1.output", loc=LOC),
        Node(1, Op.SETITEM, "", (Ref(0), (slice(None), 10), 0), loc=LOC),
    ]
    with pytest.raises(IndexError) as caught:
        _run(net, nodes, torch.rand(1, 5))
    assert any("demo.py:7" in note for note in caught.value.__notes__)
    assert clean(net)


def test_input_write_replaces_the_first_argument():
    net = _net()
    x = torch.rand(2, 5)
    nodes = [
        Node(0, Op.WRITE, "layer2.input", (Const(0),)),
        Node(1, Op.READ, "layer2.output"),
        Node(2, Op.SAVE, "", (Ref(1),)),
    ]
    graph = Graph(nodes=nodes, constants=[torch.zeros(2, 10)], invokes=[Invoke(0, (), {}, 0, 2)])
    saved = execute_graph(graph, net, lambda: net(x), 2)
    assert torch.allclose(saved[1], net.layer2.bias.expand(2, 2))


def test_values_are_freed_after_their_last_use():
    net = _net()
    x = torch.rand(1, 5)
    seen = {}

    def spy(graph):
        from nnsight_graph.backends.local import Plan, Run

        plan = Plan.build(graph)
        run = Run(plan, graph.constants, 1, True)
        return plan, run

    nodes = [
        Node(0, Op.READ, "layer1.output"),
        Node(1, Op.METHOD, "sum", (Ref(0),)),
        Node(2, Op.SAVE, "", (Ref(1),)),
    ]
    graph = Graph(nodes=nodes, invokes=[Invoke(0, (), {}, 0, 1)])
    plan, run = spy(graph)
    box_value = net.layer1(x)
    run.fire(("layer1", "output"), box_value)
    seen["env"] = dict(run.env)
    assert seen["env"] == {}  # %0 freed after sum, %1 freed after save
    assert torch.equal(run.saved[1], box_value.sum())


def test_batching_helpers():
    a, b = torch.rand(1, 3), torch.rand(2, 3)
    joined = concatenate([(a, {"m": a}), (b, {"m": b})])
    assert joined[0].shape == (3, 3) and joined[1]["m"].shape == (3, 3)
    with pytest.raises(BatchError, match="shape"):
        concatenate([torch.rand(1, 3), torch.rand(1, 4)])
    with pytest.raises(BatchError, match="keys"):
        concatenate([{"a": a}, {"b": a}])
    full = torch.arange(12.0).reshape(3, 4)
    view = narrow((full, 5), 1, 3, 3)
    assert torch.equal(view[0], full[1:]) and view[1] == 5
    merged = merge(full, torch.zeros(2, 4), 1, 3, 3)
    assert torch.equal(merged[0], full[0]) and merged[1:].abs().sum() == 0
    with pytest.raises(BatchError, match=r"shape \(2, 4\)"):
        merge(full, torch.zeros(3, 4), 1, 3, 3)
