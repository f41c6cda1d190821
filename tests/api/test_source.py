"""Source tracing (walkthrough 7.1): call sites inside a forward, read and written."""

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph import NNsight


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(4, 4)

    def forward(self, x):
        hidden = torch.relu(self.inner(x))
        if x.sum() < -1000:  # never taken in these tests
            hidden = super().forward(x)
        return hidden * 2


def test_print_source_names_every_call_site(llm):
    text = str(llm.transformer.h[0].attn.source)
    assert "attention_interface_0 ->" in text
    assert "self_c_proj_0 ->" in text
    assert "attn_output = self.c_proj(attn_output)" in text


def test_read_an_operation_output(llm):
    with llm.trace("Hello"):
        attn_output = llm.transformer.h[0].attn.source.attention_interface_0.output.save()
        block_attn = llm.transformer.h[0].attn.output.save()
    assert isinstance(attn_output, tuple)
    expected = llm._module.transformer.h[0].attn.c_proj(
        attn_output[0].reshape(*attn_output[0].shape[:-2], -1)
    )
    first = block_attn[0] if isinstance(block_attn, tuple) else block_attn
    assert torch.allclose(first, expected, atol=1e-5)
    assert "forward" not in llm._module.transformer.h[0].attn.__dict__  # original is back


def test_write_an_operation_output_changes_the_module(llm):
    with llm.trace("Hello"):
        llm.transformer.h[0].attn.source.self_c_proj_0.output[:] = 0
        out = llm.transformer.h[0].attn.output.save()
    first = out[0] if isinstance(out, tuple) else out
    assert first.abs().sum() == 0


def test_inputs_of_an_operation(llm):
    with llm.trace("Hello"):
        given = llm.transformer.h[0].attn.source.self_c_proj_0.input.save()
        returned = llm.transformer.h[0].attn.source.self_c_proj_0.output.save()
    assert torch.allclose(llm._module.transformer.h[0].attn.c_proj(given), returned, atol=1e-6)


def test_user_module_with_super_and_an_unknown_site():
    torch.manual_seed(0)
    model = NNsight(torch.nn.Sequential(Block()))
    x = torch.rand(1, 4)
    assert "torch_relu_0 ->" in str(model[0].source)
    with model.trace(x):
        relu = model[0].source.torch_relu_0.output.save()
        model[0].source.torch_relu_0.output[:] = 1
        out = model.output.save()
    assert torch.equal(relu, torch.ones(1, 4))  # the saved value is the edited tensor
    assert torch.equal(out, torch.full((1, 4), 2.0))
    with pytest.raises(AttributeError, match="torch_relu_0"):
        _ = model[0].source.torch_relu_1
    with pytest.raises(nnsight.ModuleNotCalledError, match="branch"):
        with model.trace(x):
            model[0].source.super_0.output.save()


def scale_and_shift(x, factor):
    scaled = torch.mul(x, factor)
    return torch.add(scaled, 1.0)


class UsesHelper(torch.nn.Module):
    def forward(self, x):
        return scale_and_shift(x, 3.0)


def test_source_one_level_deeper_into_a_called_function():
    model = NNsight(torch.nn.Sequential(UsesHelper()))
    x = torch.ones(1, 2)
    listing = str(model[0].source.scale_and_shift_0.source)
    assert "torch_mul_0 ->" in listing and "torch_add_0 ->" in listing
    with model.trace(x):
        scaled = model[0].source.scale_and_shift_0.source.torch_mul_0.output.save()
        model[0].source.scale_and_shift_0.source.torch_mul_0.output[:] = 10
        out = model.output.save()
    assert torch.equal(scaled, torch.full((1, 2), 10.0))
    assert torch.equal(out, torch.full((1, 2), 11.0))
    with pytest.raises(AttributeError, match="torch_mul_0"):
        _ = model[0].source.scale_and_shift_0.source.torch_mul_9


def test_a_function_chosen_at_run_time_is_traced_by_name(llm):
    attention = llm.transformer.h[0].attn.source.attention_interface_0
    with pytest.raises(nnsight.GraphBuildError, match="only known when the model runs"):
        str(attention.source)
    name = "torch_nn_functional_scaled_dot_product_attention_0"
    if llm.config._attn_implementation != "sdpa":
        pytest.skip("the shipped model runs another attention implementation here")
    with llm.trace("Hello"):
        inner = getattr(attention.source, name).output.save()
        outer = attention.output.save()
    assert torch.allclose(inner.transpose(1, 2), outer[0])


class _Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x) + 1


class _Twice(torch.nn.Module):
    """Calls one module twice: step 0 and step 1 of `inner`."""

    def __init__(self):
        super().__init__()
        self.inner = _Inner()

    def forward(self, x):
        return self.inner(self.inner(x))


def test_a_module_skipped_at_one_step_and_source_traced_keeps_its_skip():
    torch.manual_seed(0)
    net = _Twice().requires_grad_(False)
    model = NNsight(net)
    x = torch.rand(1, 4)
    with model.trace(x) as tracer:
        model.inner.skip(torch.zeros(1, 4))  # the first call does not run
        given = model.inner.source.self_linear_0.input.save()  # so the site runs once: call 2
        tracer.next()
        out = model.inner.output.save()
    assert torch.equal(given, torch.zeros(1, 4))
    assert torch.allclose(out, net.inner(torch.zeros(1, 4)))
    assert "forward" not in net.inner.__dict__
