"""`skip()` in several invokes: each invoke's `.output` of the skipped module is its own value.

nnsight 0.8.1 handles the case where every invoke skips; when only some do it raises. Here the
module then runs for the batch and each skipping invoke's rows are replaced.
"""

import pytest
import torch

import nnsight_graph as nnsight

PARIS = "The Eiffel Tower is in the city of"
ROME = "The Colosseum is in the city of"


def test_each_invoke_gets_its_own_substitute_and_the_module_does_not_run(llm, count_calls):
    attention = count_calls(llm._module.transformer.h[1].attn)
    with llm.trace() as tracer:
        with tracer.invoke(PARIS):
            first = llm.transformer.h[0].output
            llm.transformer.h[1].skip(first * 0 + 1)
            a = llm.transformer.h[1].output.save()
        with tracer.invoke(ROME):
            second = llm.transformer.h[0].output
            llm.transformer.h[1].skip(second * 0 + 2)
            b = llm.transformer.h[1].output.save()
    assert attention.calls == 0  # every row was given: the block never ran
    assert a.shape == b.shape == (1, 8, 128)  # ROME is left-padded to PARIS's 8 tokens
    assert torch.all(a == 1) and torch.all(b == 2)
    assert "forward" not in llm._module.transformer.h[1].__dict__


def test_a_skip_in_one_invoke_leaves_the_other_invokes_rows_as_computed(llm, count_calls):
    with llm.trace(ROME):
        alone = llm.transformer.h[1].output.save()
        alone_logits = llm.lm_head.output.save()
    attention = count_calls(llm._module.transformer.h[1].attn)
    with llm.trace() as tracer:
        with tracer.invoke(PARIS):
            block0 = llm.transformer.h[0].output.save()
            llm.transformer.h[1].skip(block0)
            skipped = llm.transformer.h[1].output.save()
        with tracer.invoke(ROME):
            kept = llm.transformer.h[1].output.save()
            kept_logits = llm.lm_head.output.save()
    assert attention.calls == 1  # the block ran once, for the batch
    assert torch.equal(skipped, block0)
    # ROME's row is left-padded by one token in the batch; its real tokens match its own run
    assert torch.allclose(kept[:, 1:], alone, atol=1e-4)
    assert torch.allclose(kept_logits[:, 1:], alone_logits, atol=1e-4)


def test_a_later_prompt_less_skip_replaces_every_row(llm):
    with llm.trace() as tracer:
        with tracer.invoke(PARIS):
            llm.transformer.h[1].skip(llm.transformer.h[0].output * 0 + 1)
        with tracer.invoke(ROME):
            pass
        with tracer.invoke():
            llm.transformer.h[1].skip(llm.transformer.h[0].output * 0 + 3)
            everything = llm.transformer.h[1].output.save()
    assert everything.shape[0] == 2 and torch.all(everything == 3)


def test_a_skip_value_with_the_wrong_rows_names_the_invokes_rows(llm):
    with pytest.raises(nnsight.BatchError, match="owns 1 batch row"):
        with llm.trace() as tracer:
            with tracer.invoke(PARIS):
                llm.transformer.h[1].skip(torch.zeros(2, 8, 128))
            with tracer.invoke(ROME):
                llm.transformer.h[1].skip(torch.zeros(1, 8, 128))
    assert "forward" not in llm._module.transformer.h[1].__dict__


def test_skips_in_several_invokes_on_a_plain_module(make_net):
    net = make_net()
    model = nnsight.NNsight(net)
    x, y = torch.rand(1, 5), torch.rand(2, 5)
    with model.trace() as tracer:
        with tracer.invoke(x):
            model.layer1.skip(torch.ones(1, 10))
            out_x = model.output.save()
        with tracer.invoke(y):
            out_y = model.output.save()
    assert torch.allclose(out_x, net.layer2(torch.ones(1, 10)))
    assert torch.allclose(out_y, net(y))


def test_skip_then_reading_the_modules_input_works_on_every_trace(make_net):
    """The skip and the input are served by the same (pre-)hook; the order check once knew it
    only on the first trace (before the model's call order was learned) and then refused it."""
    net = make_net()
    model = nnsight.NNsight(net)
    x = torch.rand(1, 5)
    for _ in range(3):
        with model.trace(x):
            model.layer2.skip(torch.zeros(1, 2))
            given = model.layer2.input.save()
            out = model.output.save()
        assert torch.allclose(given, net.layer1(x))
        assert torch.equal(out, torch.zeros(1, 2))


def test_skip_then_reading_the_blocks_inputs_works_on_every_trace_of_gpt2(llm, count_calls):
    """The same rule on a real model, through the plan cache: the second and later traces
    (the call order known, the plan cached) accept what the first one did."""
    attention = count_calls(llm._module.transformer.h[1].attn)
    for _ in range(3):
        with llm.trace(PARIS):
            block0 = llm.transformer.h[0].output
            llm.transformer.h[1].skip(block0)
            given = llm.transformer.h[1].input.save()
            first = llm.transformer.h[1].inputs[0][0].save()
            after = llm.transformer.h[2].input.save()
            kept = block0.save()
        assert torch.equal(given, kept)
        assert torch.equal(first, kept)
        assert torch.equal(after, kept)  # the skipped block's output is its substitute
    assert attention.calls == 0
