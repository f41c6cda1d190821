"""Errors: out-of-order reads, modules that never run, typos, debug notes, kept exception types,
Python control flow on proxies, and batch-row validation. After each error the model is clean.
"""

import traceback

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph import NNsight


def assert_still_works(model, net, x, clean):
    """No hook outlives the failed trace, and the next trace gives the plain torch result."""
    assert clean(net)
    with model.trace(x):
        output = model.output.save()
    assert torch.equal(output, net(x))
    assert clean(net)


def learn(model, x):
    """Run one good trace, so that the model knows its call order and output kinds."""
    with model.trace(x):
        model.output.save()


# order ---------------------------------------------------------------------------------------


def read_layer2_then_layer1(model, x):
    with model.trace(x):
        model.layer2.output.save()  # mark: backwards-first
        model.layer1.output.save()  # mark: backwards-second


def assert_names_both_reads(error, line_of):
    message = str(error)
    assert "model.layer1.output" in message and "model.layer2.output" in message
    assert line_of("backwards-second") in message
    assert line_of("backwards-first") in message


def test_out_of_order_is_found_at_run_time_then_before_the_run(
    model, net, x, line_of, clean, count_calls
):
    counter = count_calls(net.layer2)

    # first trace on a fresh model: the model runs, the executor notices at layer1's turn
    with pytest.raises(nnsight.OutOfOrderError) as info:
        read_layer2_then_layer1(model, x)
    assert_names_both_reads(info.value, line_of)
    assert counter.calls == 1
    counter.remove()
    assert clean(net)

    assert_still_works(model, net, x, clean)  # a good run teaches the model its call order

    # the same code again: the validation pass raises before the model runs
    counter = count_calls(net)
    with pytest.raises(nnsight.OutOfOrderError) as info:
        read_layer2_then_layer1(model, x)
    assert_names_both_reads(info.value, line_of)
    assert isinstance(info.value, nnsight.ValidationError)
    assert counter.calls == 0
    counter.remove()
    assert_still_works(model, net, x, clean)


def test_out_of_order_on_a_known_model_is_found_before_the_run(
    model, net, x, line_of, clean, count_calls
):
    learn(model, x)
    counter = count_calls(net)
    with pytest.raises(nnsight.OutOfOrderError) as info:
        with model.trace(x):
            model.layer2.output.save()  # mark: known-first
            model.layer1.output.save()  # mark: known-second

    message = str(info.value)
    assert "model.layer1.output" in message and "model.layer2.output" in message
    assert line_of("known-second") in message
    assert line_of("known-first") in message
    assert counter.calls == 0  # the validation pass raised: the model never ran
    assert isinstance(info.value, nnsight.ValidationError)
    counter.remove()
    assert_still_works(model, net, x, clean)


def test_out_of_order_twice_in_a_row(model, net, x, clean):
    for _ in range(2):
        with pytest.raises(nnsight.OutOfOrderError):
            with model.trace(x):
                model.layer2.output.save()
                model.layer1.output.save()
        assert clean(net)
    assert_still_works(model, net, x, clean)


def test_output_then_input_of_the_next_module_is_in_order(model, net, x):
    learn(model, x)
    with model.trace(x):
        hidden = model.layer1.output.save()
        layer2_input = model.layer2.input.save()
    assert torch.equal(hidden, layer2_input)
    assert torch.equal(hidden, net.layer1(x))


class WithUnused(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Linear(5, 3)
        self.unused = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("runs_before", [0, 1])
def test_module_never_called(x, line_of, clean, count_calls, runs_before):
    torch.manual_seed(0)
    net = WithUnused().requires_grad_(False)
    model = NNsight(net)
    for _ in range(runs_before):
        learn(model, x)
    counter = count_calls(net.used)
    with pytest.raises(nnsight.ModuleNotCalledError) as info:
        with model.trace(x):
            model.unused.output.save()  # mark: never-called

    assert counter.calls == 1  # raised after the forward
    assert "model.unused.output" in str(info.value)
    assert line_of("never-called") in str(info.value)
    assert isinstance(info.value, nnsight.ExecutionError)
    counter.remove()
    assert_still_works(model, net, x, clean)


# names and messages ------------------------------------------------------------------------


def test_wrong_module_name_lists_the_submodules(model, net, x, clean):
    with pytest.raises(AttributeError) as info:
        with model.trace(x):
            model.layr1.output.save()

    message = str(info.value)
    assert "'layr1'" in message
    assert "layer1" in message and "layer2" in message
    assert_still_works(model, net, x, clean)


def test_module_attributes_pass_through(model, net):
    assert model.layer1.out_features == 10
    assert model.layer1.weight is net.layer1.weight


def test_debug_notes_show_the_line_and_the_graph_node(model, net, x, line_of, clean):
    with pytest.raises(IndexError) as info:
        with model.trace(x):
            model.layer1.output[:, 10] = 0  # mark: debug-on

    notes = "\n".join(info.value.__notes__)
    assert line_of("debug-on") in notes
    assert "model.layer1.output[:, 10] = 0" in notes
    assert "graph node" in notes
    assert_still_works(model, net, x, clean)


def test_debug_off_gives_the_short_form(model, net, x, line_of, clean, monkeypatch):
    monkeypatch.setattr(nnsight.CONFIG.APP, "DEBUG", False)
    with pytest.raises(IndexError) as info:
        with model.trace(x):
            model.layer1.output[:, 10] = 0  # mark: debug-off

    notes = "\n".join(info.value.__notes__)
    assert line_of("debug-off") in notes
    assert "graph node" not in notes
    assert "model.layer1.output[:, 10] = 0" not in notes
    assert_still_works(model, net, x, clean)


def test_debug_is_on_by_default():
    assert nnsight.CONFIG.APP.DEBUG is True


# exception types -----------------------------------------------------------------------------


def test_shape_mismatch_in_intervention_code_is_a_runtime_error(model, net, x, line_of, clean):
    with pytest.raises(RuntimeError) as info:
        with model.trace(x):
            (model.layer1.output @ torch.ones(3, 3)).save()  # mark: matmul

    assert not isinstance(info.value, nnsight.NNsightError)
    assert any(line_of("matmul") in note for note in info.value.__notes__)
    assert_still_works(model, net, x, clean)


def test_shape_mismatch_in_the_model_after_a_replacement_is_a_runtime_error(model, net, x, clean):
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        with model.trace(x):
            model.layer1.output = torch.zeros(1, 3)
            model.output.save()

    assert_still_works(model, net, x, clean)


def test_out_of_range_index_on_a_fresh_model_is_an_index_error(model, net, x, clean):
    with pytest.raises(IndexError):
        with model.trace(x):
            model.layer1.output[1].save()

    assert_still_works(model, net, x, clean)


def test_proxy_in_a_while_is_a_graph_build_error(model, net, x, line_of, clean, count_calls):
    counter = count_calls(net)
    with pytest.raises(nnsight.GraphBuildError) as info:
        with model.trace(x):
            total = model.layer1.output.sum()
            while total > 0:  # mark: if-statement
                model.layer1.output[:] = 0

    message = str(info.value)
    assert "while" in message and "torch.where" in message
    assert line_of("if-statement") in message  # where the compared value was made
    frames = traceback.extract_tb(info.value.__traceback__)
    frames = [f"{frame.filename}:{frame.lineno}" for frame in frames]
    assert any(frame.endswith(line_of("if-statement")) for frame in frames)
    assert counter.calls == 0  # raised while recording
    counter.remove()
    assert_still_works(model, net, x, clean)


# batch rows --------------------------------------------------------------------------------


def test_index_outside_the_invoke_rows_is_found_before_the_run(
    model, net, x, line_of, clean, count_calls
):
    learn(model, x)
    counter = count_calls(net)
    with pytest.raises(IndexError) as info:
        with model.trace(x):
            model.layer1.output[1].save()  # mark: bad-row

    assert isinstance(info.value, nnsight.BatchIndexError)
    assert isinstance(info.value, nnsight.BatchError)
    assert line_of("bad-row") in str(info.value)
    assert counter.calls == 0
    counter.remove()
    assert_still_works(model, net, x, clean)


def test_index_outside_the_rows_of_a_second_invoke(model, net, x, count_calls):
    learn(model, x)
    counter = count_calls(net)
    with pytest.raises(nnsight.BatchIndexError, match="owns 2 row"):
        with model.trace() as tracer:
            with tracer.invoke(x):
                model.layer1.output[0].save()
            with tracer.invoke(torch.cat([x, x])):
                model.layer1.output[2].save()
    assert counter.calls == 0


def test_index_inside_the_invoke_rows_works(model, net, x):
    learn(model, x)
    batch = torch.cat([x, 2 * x])
    with model.trace() as tracer:
        with tracer.invoke(x):
            first = model.layer1.output[-1].save()
        with tracer.invoke(batch):
            second = model.layer1.output[1].save()
    assert torch.allclose(first, net.layer1(x)[0])
    assert torch.allclose(second, net.layer1(batch)[1])


def test_writing_the_wrong_batch_size_is_found_before_the_run(
    model, net, x, line_of, clean, count_calls
):
    learn(model, x)
    counter = count_calls(net)
    with pytest.raises(nnsight.BatchError) as info:
        with model.trace(x):
            model.layer1.output = torch.zeros(2, 10)  # mark: bad-write

    assert line_of("bad-write") in str(info.value)
    assert counter.calls == 0
    counter.remove()
    assert_still_works(model, net, x, clean)


def test_writing_the_wrong_batch_size_in_a_batch_of_invokes(model, net, x, clean):
    with pytest.raises(nnsight.BatchError, match="shape"):
        with model.trace() as tracer:
            with tracer.invoke(x):
                model.layer1.output = torch.zeros(2, 10)
            with tracer.invoke(x * 2):
                model.output.save()

    assert_still_works(model, net, x, clean)


def test_trace_inside_a_trace_is_a_graph_build_error(model, net, x, clean):
    with pytest.raises(nnsight.GraphBuildError, match="inside another trace"):
        with model.trace(x):
            with model.trace(x):
                model.output.save()

    assert_still_works(model, net, x, clean)


def test_nested_invokes_are_a_graph_build_error(model, net, x, clean):
    with pytest.raises(nnsight.GraphBuildError, match="nested"):
        with model.trace() as tracer:
            with tracer.invoke(x):
                with tracer.invoke(x):
                    model.output.save()

    assert_still_works(model, net, x, clean)


def test_module_output_outside_an_invoke_is_a_graph_build_error(model, net, x, clean):
    with pytest.raises(nnsight.GraphBuildError, match="outside an invoke"):
        with model.trace() as tracer:
            with tracer.invoke(x):
                pass
            model.output.save()

    assert_still_works(model, net, x, clean)


def test_module_output_outside_a_trace_is_a_graph_build_error(model):
    with pytest.raises(nnsight.GraphBuildError, match="only available inside"):
        model.layer1.output  # noqa: B018


# values across invokes -----------------------------------------------------------------------


def test_later_module_value_from_an_earlier_invoke_can_feed_a_later_read(model, net, x):
    with model.trace() as tracer:
        with tracer.invoke(x):
            hidden = model.layer1.output.save()
        with tracer.invoke(x * 2):
            combined = (model.layer2.output + hidden.sum()).save()

    assert torch.allclose(hidden, net.layer1(x))
    assert torch.allclose(combined, net(x * 2) + net.layer1(x).sum())


def test_edit_that_needs_a_value_not_yet_computed_raises(model, x):
    with pytest.raises(nnsight.NNsightError):
        with model.trace() as tracer:
            with tracer.invoke(x):
                out = model.output.save()
            with tracer.invoke(x):
                # `out` only exists once the model has returned, after layer1 has run
                model.layer1.output[:, :2] = out
                model.output.save()
