"""Walkthrough sections 1-4, one test per code cell, on the walkthrough's 2-layer net.

Every traced value is compared with the same computation done in plain torch.
"""

import traceback

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph import NNsight

HIDDEN_DIMS = 10


# 1. Getting started ------------------------------------------------------------------------


def test_wrapping_keeps_the_module_and_print_shows_the_hierarchy(net, capsys):
    model = NNsight(net)
    print(model)
    printed = capsys.readouterr().out
    assert printed.strip() == str(net).strip()
    assert "(layer1): Linear(in_features=5, out_features=10, bias=True)" in printed
    assert "(layer2): Linear(in_features=10, out_features=2, bias=True)" in printed
    assert model.layer1._module is net.layer1
    assert [child._module for child in model] == [net.layer1, net.layer2]


def test_wrapping_a_non_module_is_a_type_error():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        NNsight(lambda x: x)


# 2. Accessing activations ------------------------------------------------------------------


def test_empty_trace_runs_the_model_once_on_exit(model, net, x, count_calls, clean):
    counter = count_calls(net)
    with model.trace(x):
        # Your intervention code goes here
        # The model runs when the context exits
        pass
    assert counter.calls == 1
    assert counter.batch_sizes == [1]
    counter.remove()
    assert clean(net)


def test_unsaved_output_raises_on_use(model, x):
    with model.trace(x):
        output = model.output  # mark: unsaved

    with pytest.raises(nnsight.UnsavedValueError, match=r"\.save\(\)") as info:
        print(output)
    assert "`output`" in str(info.value)
    assert isinstance(info.value, nnsight.NNsightError)
    with pytest.raises(nnsight.UnsavedValueError):
        output + 1
    with pytest.raises(nnsight.UnsavedValueError):
        output.shape  # noqa: B018


def test_unsaved_output_error_names_the_assignment_line(model, x, line_of):
    with model.trace(x):
        output = model.output  # mark: unsaved-line

    with pytest.raises(nnsight.UnsavedValueError) as info:
        str(output)
    assert line_of("unsaved-line") in str(info.value)


def test_save_gives_the_real_output(model, net, x):
    with model.trace(x):
        output = model.output.save()

    assert type(output) is torch.Tensor
    assert torch.equal(output, net(x))


def test_nnsight_save_gives_the_real_output(model, net, x):
    with model.trace(x):
        output = nnsight.save(model.output)

    assert type(output) is torch.Tensor
    assert torch.equal(output, net(x))


def test_submodule_outputs(model, net, x):
    with model.trace(x):
        layer1_output = model.layer1.output.save()
        layer2_output = model.layer2.output.save()

    assert torch.equal(layer1_output, net.layer1(x))
    assert torch.equal(layer2_output, net.layer2(net.layer1(x)))
    assert layer1_output.shape == (1, HIDDEN_DIMS)


def test_layer2_input_equals_layer1_output(model, net, x):
    with model.trace(x):
        layer2_input = model.layer2.input.save()

    assert type(layer2_input) is torch.Tensor
    assert torch.equal(layer2_input, net.layer1(x))


def test_model_input_is_the_traced_input(model, x):
    with model.trace(x):
        model_input = model.input.save()

    assert torch.equal(model_input, x)


def test_inputs_are_args_and_kwargs(model, net, x):
    with model.trace(x):
        inputs = model.layer2.inputs.save()

    assert isinstance(inputs, tuple) and len(inputs) == 2
    args, kwargs = inputs
    assert kwargs == {}
    assert isinstance(args, tuple) and len(args) == 1
    assert torch.equal(args[0], net.layer1(x))


def test_operations_on_values(model, net, x):
    with model.trace(x):
        layer1_out = model.layer1.output

        # Apply operations - these are real tensor operations!
        max_idx = torch.argmax(layer1_out, dim=1).save()
        total = (model.layer1.output.sum() + model.layer2.output.sum()).save()

    hidden = net.layer1(x)
    assert torch.equal(max_idx, torch.argmax(hidden, dim=1))
    assert torch.allclose(total, hidden.sum() + net.layer2(hidden).sum())


def test_saving_an_attribute_of_a_value(model, x):
    with model.trace(x):
        shape = model.layer1.output.shape.save()

    assert shape == torch.Size([1, HIDDEN_DIMS])


def test_indexing_an_attribute_of_a_value(model, x):
    with model.trace(x):
        width = nnsight.save(model.layer1.output.shape[1])

    assert width == HIDDEN_DIMS


def test_operations_on_an_attribute_of_a_value(model, net, x):
    with model.trace(x):
        transposed_sum = model.layer1.output.T.sum().save()
        shifted = (model.layer1.output.data + 1).save()

    hidden = net.layer1(x)
    assert torch.allclose(transposed_sum, hidden.T.sum())
    assert torch.allclose(shifted, hidden + 1)


def test_modules_read_in_execution_order(model, net, x):
    with model.trace(x):
        first = model.layer1.output.save()
        second = model.layer2.output.save()
        last = model.output.save()

    assert torch.equal(first, net.layer1(x))
    assert torch.equal(second, net(x))
    assert torch.equal(last, net(x))


# 3. Modifying activations ------------------------------------------------------------------


def test_in_place_modification(model, net, x):
    with model.trace(x):
        # Save original (clone first since we'll modify in-place)
        before = model.layer1.output.clone().save()

        # Zero out the first dimension
        model.layer1.output[:, 0] = 0

        # Save modified
        after = model.layer1.output.save()
        output = model.output.save()

    hidden = net.layer1(x)
    expected_after = hidden.clone()
    expected_after[:, 0] = 0
    assert hidden[0, 0] != 0
    assert torch.equal(before, hidden)
    assert torch.equal(after, expected_after)
    assert torch.allclose(output, net.layer2(expected_after))
    assert not torch.allclose(output, net(x))


def test_in_place_modification_leaves_the_model_unchanged(model, net, x, clean):
    expected = net(x)
    with model.trace(x):
        model.layer1.output[:, 0] = 0

    assert torch.equal(net(x), expected)
    assert clean(net)


def test_in_place_tensor_method(model, net, x):
    with model.trace(x):
        model.layer1.output.clamp_(min=0)
        output = model.output.save()

    assert torch.allclose(output, net.layer2(net.layer1(x).clamp(min=0)))
    assert not torch.allclose(output, net(x))


def test_in_place_through_inplace_keyword(model, net, x):
    with model.trace(x):
        torch.nn.functional.relu(model.layer1.output, inplace=True)
        output = model.output.save()

    assert torch.allclose(output, net.layer2(torch.relu(net.layer1(x))))


def test_in_place_through_out_keyword(model, net, x):
    with model.trace(x):
        hidden = model.layer1.output
        torch.mul(hidden, 0, out=hidden)
        output = model.output.save()

    assert torch.allclose(output, net.layer2(torch.zeros(1, HIDDEN_DIMS)))


def test_replacement_with_noise_changes_downstream(model, net, x):
    torch.manual_seed(123)
    with model.trace(x):
        original = model.layer1.output.clone()

        # Add noise to the activation
        noise = 0.1 * torch.randn_like(original)
        model.layer1.output = original + noise

        modified = model.layer1.output.save()
        output = model.output.save()

    torch.manual_seed(123)
    hidden = net.layer1(x)
    expected = hidden + 0.1 * torch.randn_like(hidden)
    assert not torch.allclose(modified, hidden)
    assert torch.allclose(modified, expected)
    assert torch.allclose(output, net.layer2(expected))


def test_index_error_keeps_its_type_and_names_the_line(model, net, x, line_of, clean):
    # This will fail because hidden_dims=10, so valid indices are 0-9
    with pytest.raises(IndexError) as info:
        with model.trace(x):
            model.layer1.output[:, HIDDEN_DIMS] = 0  # mark: out-of-bounds

    error = info.value
    where = line_of("out-of-bounds")
    assert "out of bounds" in str(error)
    assert any(where in note for note in getattr(error, "__notes__", []))
    formatted = "".join(traceback.format_exception(error))
    assert where in formatted
    assert "model.layer1.output[:, HIDDEN_DIMS] = 0" in formatted
    assert clean(net)


# 4. Invokers and batching ------------------------------------------------------------------


def test_multiple_invokes(model, net, x, count_calls):
    counter = count_calls(net)
    with model.trace() as tracer:  # No input here
        with tracer.invoke(x):  # First invoker with input
            out1 = model.output.save()

        with tracer.invoke(x * 2):  # Second invoker with different input
            out2 = model.output.save()

    assert counter.calls == 1
    assert counter.batch_sizes == [2]
    assert out1.shape == (1, 2) and out2.shape == (1, 2)
    assert torch.allclose(out1, net(x))
    assert torch.allclose(out2, net(x * 2))


def test_values_from_earlier_invokes(model, net, x):
    with model.trace() as tracer:
        with tracer.invoke(x):
            # Save layer1 output from first input
            layer1_out = model.layer1.output.save()

        with tracer.invoke(x):
            # Use it in the second invoker!
            model.layer1.output[:] = layer1_out * 0  # Zero it out
            modified_out = model.output.save()

        with tracer.invoke(x):
            original_out = model.output.save()

    assert torch.allclose(layer1_out, net.layer1(x))
    assert torch.allclose(modified_out, net.layer2(torch.zeros(1, HIDDEN_DIMS)))
    assert torch.allclose(modified_out, net.layer2.bias.expand(1, 2))
    assert torch.allclose(original_out, net(x))


def test_prompt_less_invoke_sees_the_whole_batch(model, net, x):
    with model.trace() as tracer:
        with tracer.invoke(x):
            pass  # First input

        with tracer.invoke(x * 2):
            pass  # Second input

        # No-arg invoke: sees ALL inputs
        with tracer.invoke():
            all_outputs = model.output.save()

    assert all_outputs.shape == (2, 2)  # Batch size = 2
    assert torch.allclose(all_outputs, torch.cat([net(x), net(x * 2)]))


def test_each_invoke_sees_only_its_rows(model, net, x):
    with model.trace() as tracer:
        with tracer.invoke(x):
            hidden1 = model.layer1.output.save()
        with tracer.invoke(torch.cat([x * 2, x * 3])):
            hidden2 = model.layer1.output.save()

    assert hidden1.shape == (1, HIDDEN_DIMS) and hidden2.shape == (2, HIDDEN_DIMS)
    assert torch.allclose(hidden1, net.layer1(x))
    assert torch.allclose(hidden2, net.layer1(torch.cat([x * 2, x * 3])))


def test_setting_input_changes_the_output(model, net, x):
    with model.trace(x):
        model.layer2.input = model.layer2.input * 2
        seen = model.layer2.input.save()
        output = model.output.save()

    hidden = net.layer1(x)
    assert torch.allclose(seen, hidden * 2)
    assert torch.allclose(output, net.layer2(hidden * 2))
    assert not torch.allclose(output, net(x))


def test_setting_input_to_a_constant_tensor(model, net, x):
    replacement = torch.ones(1, HIDDEN_DIMS)
    with model.trace(x):
        model.layer2.input = replacement
        output = model.output.save()

    assert torch.allclose(output, net.layer2(replacement))
