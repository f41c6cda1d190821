"""Edits with constant keys (`hidden[:, :, c] = 0`): literal keys are stored as they are and
passed to torch without decoding, and a plan reused across traces (same code location) takes
each trace's own keys, values and inputs."""

from collections import OrderedDict

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph.ir import Op, is_literal


@pytest.fixture
def model() -> nnsight.NNsight:
    torch.manual_seed(0)
    layers = OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    return nnsight.NNsight(torch.nn.Sequential(layers).requires_grad_(False))


def expected(
    net: torch.nn.Module, x: torch.Tensor, channels: list[int], value: float
) -> torch.Tensor:
    hidden = net.layer1(x).clone()
    for c in channels:
        hidden[:, c] = value
    return net.layer2(hidden)


def edit_once_read(model: nnsight.NNsight, x: torch.Tensor, channels: list[int], value):
    with model.trace(x):
        hidden = model.layer1.output
        for c in channels:
            hidden[:, c] = value
        out = model.layer2.output.save()
    return out


def edit_read_each(model: nnsight.NNsight, x: torch.Tensor, channels: list[int], value):
    with model.trace(x):
        for c in channels:
            model.layer1.output[:, c] = value
        out = model.layer2.output.save()
    return out


@pytest.mark.parametrize("body", [edit_once_read, edit_read_each])
def test_reused_plan_takes_each_traces_keys_values_and_inputs(model, body):
    net = model._module
    runs = [
        (torch.rand(3, 5), [0, 3, 7], 0.0),
        (torch.rand(3, 5), [0, 3, 7], 5.0),  # same structure: the cached plan runs again
        (torch.rand(3, 5), [1, 2, 9], 0.0),  # other keys
        (torch.rand(2, 5), [1, 2, 9], torch.tensor(-2.0)),  # a tensor value (a Const)
        (torch.rand(2, 5), [1, 2, 9], torch.tensor(4.0)),
    ]
    for x, channels, value in runs:
        got = body(model, x, channels, value)
        want = expected(net, x, channels, float(value))
        torch.testing.assert_close(got, want)


def test_slice_and_tuple_keys_with_traced_parts_still_decode(model):
    x = torch.rand(4, 5)
    with model.trace(x):
        hidden = model.layer1.output
        n = hidden.shape[0]  # a traced int inside the key
        hidden[: n - 1, 2] = 0
        out = model.layer1.output[1:n, :3].save()
    want = model._module.layer1(x)
    want[:3, 2] = 0
    torch.testing.assert_close(out, want[1:4, :3])


def test_literal_keys_are_stored_as_they_are(model):
    with model.trace(torch.rand(1, 5)) as tracer:
        hidden = model.layer1.output
        hidden[:, ..., 3] = 0
        model.layer2.output.save()
    setitems = [n for n in tracer.graph.nodes if n.op is Op.SETITEM]
    assert [n.args[1:] for n in setitems] == [((slice(None), Ellipsis, 3), 0)]


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (3, True),
        ("name", True),
        (None, True),
        ((slice(None), slice(1, 4, 2), 3), True),
        ((0, (1, slice(None, -1))), True),
        ([0, 1], False),  # a call may mutate a list: each run gets its own
        ((0, [1]), False),
        ((slice(torch.tensor(1), None),), False),
        ((torch.tensor(1),), False),
        ({"a": 1}, False),
    ],
)
def test_is_literal(value, literal):
    assert is_literal(value) is literal
