"""Gradients in a trace (walkthrough section 6): `with loss.backward():` and `.grad`."""

import pytest
import torch

import nnsight_graph as nnsight

PROMPT = "The Eiffel Tower is in the city of"


def _plain_grads(llm, prompt, layers, edit=None):
    """The gradients of the given blocks' outputs for logits.sum(), with plain torch hooks."""
    model = llm._module
    ids = llm.tokenizer(prompt, return_tensors="pt").input_ids
    outputs = {}

    def keep(index):
        def hook(module, args, output):
            output.retain_grad()
            outputs[index] = output
            if edit is not None and index == edit[0]:
                output.register_hook(edit[1])

        return hook

    handles = [model.transformer.h[i].register_forward_hook(keep(i)) for i in layers]
    try:
        model(ids).logits.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    model.zero_grad(set_to_none=True)
    return {i: outputs[i].grad for i in layers}


def test_walkthrough_gradient_cell(llm):
    with llm.trace("Hello"):
        hs = llm.transformer.h[-1].output[0]
        hs.requires_grad_(True)
        logits = llm.lm_head.output
        loss = logits.sum()
        with loss.backward():
            grad = hs.grad.save()

    expected = _plain_grads(llm, "Hello", [3])[3][0]
    assert grad.shape == expected.shape
    assert torch.allclose(grad, expected, atol=1e-6)


def test_walkthrough_modifying_gradients(llm):
    with llm.trace("Hello"):
        hs = llm.transformer.h[-1].output[0]
        hs.requires_grad_(True)
        logits = llm.lm_head.output
        loss = logits.sum()
        with loss.backward():
            original_grad = hs.grad.clone().save()
            hs.grad[:] = 0
            modified_grad = hs.grad.save()

    assert original_grad.abs().sum() > 0
    assert modified_grad.abs().sum() == 0


def test_a_changed_gradient_flows_further_back(llm):
    with llm.trace(PROMPT):
        early = llm.transformer.h[0].output
        late = llm.transformer.h[2].output
        loss = llm.lm_head.output.sum()
        with loss.backward():
            late.grad[:] = late.grad * 2
            doubled = early.grad.save()

    expected = _plain_grads(llm, PROMPT, [0, 2], edit=(2, lambda g: g * 2))[0]
    assert torch.allclose(doubled, expected, atol=1e-5)


def test_gradients_are_read_in_reverse_order(llm):
    with llm.trace(PROMPT):
        early = llm.transformer.h[0].output
        late = llm.transformer.h[2].output
        loss = llm.lm_head.output.sum()
        with loss.backward():
            late_grad = late.grad.save()
            early_grad = early.grad.save()
    expected = _plain_grads(llm, PROMPT, [0, 2])
    assert torch.allclose(late_grad, expected[2], atol=1e-6)
    assert torch.allclose(early_grad, expected[0], atol=1e-6)

    with pytest.raises(nnsight.OutOfOrderError, match="reverse order"):
        with llm.trace(PROMPT):
            early = llm.transformer.h[0].output
            late = llm.transformer.h[2].output
            loss = llm.lm_head.output.sum()
            with loss.backward():
                early.grad.save()
                late.grad.save()


def test_grad_outside_backward_and_on_a_module_say_the_rule(llm):
    with pytest.raises(nnsight.GraphBuildError, match="inside `with loss.backward"):
        with llm.trace(PROMPT):
            llm.transformer.h[0].output.grad.save()
    with pytest.raises(nnsight.GraphBuildError, match="gradients belong to values"):
        with llm.trace(PROMPT):
            llm.transformer.h[0].grad.save()


def test_two_backward_blocks_with_retain_graph(llm):
    with llm.trace(PROMPT):
        hidden = llm.transformer.h[1].output
        logits = llm.lm_head.output
        with logits.sum().backward(retain_graph=True):
            first = hidden.grad.save()
        with (logits.sum() * 3).backward():
            second = hidden.grad.save()
    assert torch.allclose(second, first * 3, rtol=1e-4, atol=1e-3)


def test_grad_of_each_invoke_covers_its_rows(llm):
    with llm.trace() as tracer:
        with tracer.invoke(PROMPT):
            hidden = llm.transformer.h[1].output
            loss = llm.lm_head.output.sum()
            with loss.backward():
                grad = hidden.grad.save()
        with tracer.invoke(PROMPT):
            pass
    alone = _plain_grads(llm, PROMPT, [1])[1]
    assert grad.shape == alone.shape
    # the loss covers this invoke's rows only, so the gradient equals the prompt's own
    assert torch.allclose(grad, alone, rtol=1e-4, atol=1e-3)  # batched vs alone: float sums differ


def test_grad_of_a_value_that_needs_no_grad(llm):
    with pytest.raises(nnsight.ExecutionError, match="requires_grad_"):
        with llm.trace(PROMPT):
            constant = llm.transformer.h[1].output.detach()
            loss = llm.lm_head.output.sum()
            with loss.backward():
                constant.grad.save()


def test_assigning_grad_replaces_it_for_the_layers_before(make_net):
    """`h.grad = h.grad * 2` inside backward: the earlier layer's weights see twice the grad
    (nnsight 0.8.1 gives the same); the assignment is a recorded node, not a Python attribute."""
    net = make_net().requires_grad_(True)
    model = nnsight.NNsight(net)
    x = torch.rand(2, 5)
    with model.trace(x):
        hidden = model.layer1.output
        loss = model.output.sum()
        with loss.backward():
            before = hidden.grad.clone().save()
            hidden.grad = hidden.grad * 2
            after = hidden.grad.save()
    ours = net.layer1.weight.grad.clone()
    net.zero_grad(set_to_none=True)
    net(x).sum().backward()
    assert torch.allclose(after, 2 * before)
    assert torch.allclose(ours, 2 * net.layer1.weight.grad)
