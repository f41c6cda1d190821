"""Python control flow in a trace: `if` on a traced value, print(), scan, steps on any model."""

import pytest
import torch

import nnsight_graph as nnsight


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.rand(1, 5)


@pytest.mark.parametrize("threshold", [0.0, 100.0])
def test_if_on_a_traced_value_runs_the_branch_the_value_picks(net, x, threshold):
    model = nnsight.NNsight(net)
    with model.trace(x):
        hidden = model.layer1.output
        if hidden.norm() > threshold:
            model.layer1.output[:] = 0
            branch = nnsight.save(hidden.sum() * 0 + 1)
        else:
            branch = nnsight.save(hidden.sum() * 0 + 2)
        out = model.output.save()

    taken = net.layer1(x).norm() > threshold
    expected = net.layer2(torch.zeros(1, 10)) if taken else net(x)
    assert torch.allclose(out, expected)
    assert branch.item() == (1 if taken else 2)


def test_elif_chains_and_nesting(net, x):
    model = nnsight.NNsight(net)
    norm = net.layer1(x).norm().item()
    with model.trace(x):
        hidden = model.layer1.output
        if hidden.norm() > norm + 1:
            label = nnsight.save(hidden.sum() * 0 + 1)
        elif hidden.norm() > norm - 1:
            if hidden.norm() > 1000:
                label = nnsight.save(hidden.sum() * 0 + 2)
            else:
                label = nnsight.save(hidden.sum() * 0 + 3)
        else:
            label = nnsight.save(hidden.sum() * 0 + 4)

    assert label.item() == 3


def test_a_name_set_only_on_the_path_not_taken_is_not_bound(net, x):
    model = nnsight.NNsight(net)
    with model.trace(x):
        hidden = model.layer1.output
        if hidden.norm() > 1000:
            only_then = hidden.save()
    assert "only_then" not in locals()


def test_plain_python_conditions_run_eagerly(net, x):
    model = nnsight.NNsight(net)
    flag = True
    with model.trace(x) as tracer:
        if flag:
            out = model.output.save()
    assert torch.allclose(out, net(x))
    assert "builtins.bool" not in str(tracer.graph)


def test_print_of_a_traced_value_prints_the_value_at_run_time(net, x, capsys):
    model = nnsight.NNsight(net)
    with model.trace(x):
        print("sum:", model.layer2.output.sum())
        print("recording")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "recording"  # plain prints run while recording, before the model
    assert printed[1] == f"sum: {net(x).sum()!s}"


def test_while_on_a_traced_value_says_what_to_write_instead(net, x):
    model = nnsight.NNsight(net)
    with pytest.raises(nnsight.GraphBuildError, match="while"):
        with model.trace(x):
            while model.layer1.output.sum() > 0:
                pass


def test_scan_binds_shapes_without_save_and_computes_nothing(net, x):
    model = nnsight.NNsight(net)
    kinds = []
    handle = net.layer1.register_forward_hook(lambda m, i, o: kinds.append(type(o).__name__))
    try:
        with model.scan(x):
            width = model.layer1.output.shape[-1]
            out = model.output
    finally:
        handle.remove()
    assert width == 10 and type(width) is int
    assert tuple(out.shape) == (1, 2) and out.dtype == torch.float32
    assert kinds == ["FakeTensor"]  # shapes only: no real matrix product ran


def test_steps_on_a_module_called_twice(x):
    torch.manual_seed(0)
    shared = torch.nn.Linear(5, 5)

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = shared

        def forward(self, value):
            return self.block(self.block(value))

    model = nnsight.NNsight(Twice())
    with model.trace(x) as tracer:
        first = model.block.output.save()
        tracer.next()
        second = model.block.output.save()
    assert torch.allclose(first, shared(x))
    assert torch.allclose(second, shared(shared(x)))

    with model.trace(x) as tracer:
        seen = list().save()
        for _step in tracer.iter[0:2]:
            seen.append(model.block.output)
    assert torch.allclose(seen[1], second)


def test_a_graph_without_running_the_model(net, x):
    model = nnsight.NNsight(net)
    calls = []
    handle = net.register_forward_hook(lambda *args: calls.append(1))
    try:
        with model.trace(x, run=False) as tracer:
            out = model.output.save()
    finally:
        handle.remove()
    assert calls == []
    assert "read output()" in str(tracer.graph)
    with pytest.raises(nnsight.UnsavedValueError):
        out + 1
    saved = model.run(tracer.graph)
    assert torch.allclose(next(iter(saved.values())), net(x))
