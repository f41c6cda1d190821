"""Steps in a plain trace: a module its parent calls several times has a step per call.

After a `tracer.iter[...]` loop the reads of other modules refer to their own calls (as in
nnsight 0.8.1); in generation the code after a loop goes on at the next step
(tests/api/test_generation_steps.py).
"""

import pytest
import torch

import nnsight_graph as nnsight


class Twice(torch.nn.Module):
    """`out(shared(shared(x)))`: `shared` runs twice in one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(self.shared(x)))


@pytest.fixture
def twice() -> Twice:
    return Twice().requires_grad_(False)


def test_reads_after_a_loop_refer_to_their_own_calls(twice):
    model = nnsight.NNsight(twice)
    x = torch.rand(1, 4)
    with model.trace(x) as tracer:
        first = model.shared.output.save()
        for _ in tracer.iter[1]:
            second = model.shared.output.save()
        out = model.out.output.save()
        result = model.output.save()
    assert torch.allclose(first, twice.shared(x))
    assert torch.allclose(second, twice.shared(twice.shared(x)))
    assert torch.allclose(out, twice(x))
    assert torch.allclose(result, twice(x))


def test_an_edit_in_a_loop_step_changes_only_that_call(twice):
    model = nnsight.NNsight(twice)
    x = torch.rand(1, 4)
    with model.trace(x) as tracer:
        for _ in tracer.iter[1]:
            model.shared.output[:] = 0
        out = model.out.output.save()
    assert torch.allclose(out, twice.out(torch.zeros(1, 4)))
    with model.trace(x) as tracer:
        for _ in tracer.iter[0]:
            model.shared.output[:] = 0
        out = model.out.output.save()
    assert torch.allclose(out, twice.out(twice.shared(torch.zeros(1, 4))))


def test_a_loop_over_both_calls_then_a_later_module(twice):
    model = nnsight.NNsight(twice)
    x = torch.rand(1, 4)
    with model.trace(x) as tracer:
        calls = list().save()
        for _ in tracer.iter[0:2]:
            calls.append(model.shared.output)
        out = model.out.output.save()
    assert len(calls) == 2
    assert torch.allclose(calls[1], twice.shared(calls[0]))
    assert torch.allclose(out, twice(x))


def test_reading_the_looped_module_again_after_the_loop_is_out_of_order(twice):
    model = nnsight.NNsight(twice)
    with pytest.raises(nnsight.OutOfOrderError):
        with model.trace(torch.rand(1, 4)) as tracer:
            for _ in tracer.iter[1]:
                model.shared.output.save()
            model.shared.output.save()  # its first call, which ran before the second
