"""A tiny randomly initialised GPT-2 (nothing downloads): reads, edits and batching compared
with plain torch forward hooks on the same model."""

import pytest
import torch

import nnsight_graph as nnsight

transformers = pytest.importorskip("transformers")

ATOL = 1e-5


@pytest.fixture
def hf():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=100,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture
def model(hf):
    return nnsight.NNsight(hf)


@pytest.fixture
def ids():
    return torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def ids2():
    return torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(2))


def hidden(output):
    """A GPT2Block's hidden states: transformers 5 returns a tensor, 4.x a tuple."""
    return output[0] if isinstance(output, tuple) else output


def block_returns_tuple(hf, ids):
    seen = []
    handle = hf.transformer.h[0].register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        hf(ids)
    handle.remove()
    return isinstance(seen[0], tuple)


def plain_run(hf, ids, zero_block=None):
    """Logits and each block's hidden states from a plain forward, optionally zeroing the
    output of block `zero_block` in place with a plain torch hook."""
    blocks = {}
    handles = []
    for index, block in enumerate(hf.transformer.h):

        def keep(module, args, output, index=index):
            if index == zero_block:
                hidden(output)[:] = 0
            blocks[index] = hidden(output).detach().clone()

        handles.append(block.register_forward_hook(keep))
    try:
        with torch.no_grad():
            logits = hf(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, blocks


def test_block_outputs_equal_plain_hooks(model, hf, ids, clean):
    with model.trace(ids):
        first = model.transformer.h[0].output.save()
        last = model.transformer.h[-1].output.save()

    logits, blocks = plain_run(hf, ids)
    assert torch.allclose(hidden(first), blocks[0], atol=ATOL)
    assert torch.allclose(hidden(last), blocks[1], atol=ATOL)
    assert not torch.allclose(hidden(first), hidden(last))
    assert clean(hf)


def test_block_output_equals_transformers_hidden_states(model, hf, ids):
    with model.trace(ids):
        first = model.transformer.h[0].output.save()

    with torch.no_grad():
        states = hf(ids, output_hidden_states=True).hidden_states
    assert len(states) == 3
    assert torch.allclose(hidden(first), states[1], atol=ATOL)


def test_negative_index_is_the_last_block(model, hf, ids):
    assert model.transformer.h[-1]._module is hf.transformer.h[1]
    assert len(model.transformer.h) == 2
    with model.trace(ids):
        by_negative = model.transformer.h[-1].output.save()
        by_positive = model.transformer.h[1].output.save()

    assert torch.equal(hidden(by_negative), hidden(by_positive))


def test_lm_head_output_is_the_logits(model, hf, ids):
    with model.trace(ids):
        logits = model.lm_head.output.save()
        result_logits = model.output.logits.save()

    expected, _ = plain_run(hf, ids)
    assert logits.shape == (1, 8, 100)
    assert torch.allclose(logits, expected, atol=ATOL)
    assert torch.allclose(result_logits, expected, atol=ATOL)


def test_attention_output(model, hf, ids):
    seen = []
    handle = hf.transformer.h[0].attn.register_forward_hook(
        lambda m, a, o: seen.append(hidden(o).detach().clone())
    )
    with torch.no_grad():
        hf(ids)
    handle.remove()

    with model.trace(ids):
        attention = model.transformer.h[0].attn.output.save()

    assert torch.allclose(hidden(attention), seen[0], atol=ATOL)


def test_zeroing_a_block_output_matches_a_plain_hook(model, hf, ids, clean):
    if block_returns_tuple(hf, ids):
        with model.trace(ids):
            model.transformer.h[0].output[0][:] = 0
            zeroed = model.transformer.h[0].output.save()
            logits = model.lm_head.output.save()
    else:
        with model.trace(ids):
            model.transformer.h[0].output[:] = 0
            zeroed = model.transformer.h[0].output.save()
            logits = model.lm_head.output.save()

    expected, _ = plain_run(hf, ids, zero_block=0)
    clean_logits, _ = plain_run(hf, ids)
    assert torch.count_nonzero(hidden(zeroed)) == 0
    assert torch.allclose(logits, expected, atol=ATOL)
    assert not torch.allclose(logits, clean_logits, atol=ATOL)
    assert clean(hf)


def test_two_invokes_run_as_one_batch(model, hf, ids2):
    first_ids, second_ids = ids2[:1], ids2[1:]
    calls = []
    handle = hf.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(args), with_kwargs=True
    )
    try:
        with model.trace() as tracer:
            with tracer.invoke(first_ids):
                first = model.lm_head.output.save()
            with tracer.invoke(second_ids):
                second = model.lm_head.output.save()
    finally:
        handle.remove()

    assert len(calls) == 1
    assert calls[0][0].shape == (2, 8)
    assert first.shape == second.shape == (1, 8, 100)
    assert torch.allclose(first, plain_run(hf, first_ids)[0], atol=ATOL)
    assert torch.allclose(second, plain_run(hf, second_ids)[0], atol=ATOL)


def test_an_edit_in_one_invoke_leaves_the_other_rows_alone(model, hf, ids2):
    first_ids, second_ids = ids2[:1], ids2[1:]
    tuple_output = block_returns_tuple(hf, first_ids)
    if tuple_output:
        with model.trace() as tracer:
            with tracer.invoke(first_ids):
                model.transformer.h[0].output[0][:] = 0
                edited = model.lm_head.output.save()
            with tracer.invoke(second_ids):
                untouched = model.lm_head.output.save()
    else:
        with model.trace() as tracer:
            with tracer.invoke(first_ids):
                model.transformer.h[0].output[:] = 0
                edited = model.lm_head.output.save()
            with tracer.invoke(second_ids):
                untouched = model.lm_head.output.save()

    assert torch.allclose(edited, plain_run(hf, first_ids, zero_block=0)[0], atol=ATOL)
    assert torch.allclose(untouched, plain_run(hf, second_ids)[0], atol=ATOL)


def test_replacing_a_block_output_in_one_invoke(model, hf, ids2):
    first_ids, second_ids = ids2[:1], ids2[1:]
    if block_returns_tuple(hf, first_ids):
        pytest.skip("replacement of a tuple block output is covered by the in-place edit tests")
    with model.trace() as tracer:
        with tracer.invoke(first_ids):
            model.transformer.h[0].output = model.transformer.h[0].output * 0
            edited = model.lm_head.output.save()
        with tracer.invoke(second_ids):
            untouched = model.lm_head.output.save()

    assert torch.allclose(edited, plain_run(hf, first_ids, zero_block=0)[0], atol=ATOL)
    assert torch.allclose(untouched, plain_run(hf, second_ids)[0], atol=ATOL)


def test_prompt_less_invoke_sees_the_whole_batch(model, hf, ids2):
    with model.trace() as tracer:
        with tracer.invoke(ids2[:1]):
            pass
        with tracer.invoke(ids2[1:]):
            pass
        with tracer.invoke():
            states = model.transformer.h[0].output.save()
            logits = model.lm_head.output.save()

    expected_logits, blocks = plain_run(hf, ids2)
    assert hidden(states).shape == (2, 8, 32)
    assert logits.shape == (2, 8, 100)
    assert torch.allclose(hidden(states), blocks[0], atol=ATOL)
    assert torch.allclose(logits, expected_logits, atol=ATOL)


def test_hooks_only_on_touched_modules_and_none_after(model, hf, ids, clean):
    forward_hooked: set[int] = set()  # modules that had hooks of their own while they ran
    pre_hooked: set[int] = set()

    def look(module, args, output=None):
        if module._forward_hooks:
            forward_hooked.add(id(module))
        if module._forward_pre_hooks:
            pre_hooked.add(id(module))

    watch = torch.nn.modules.module.register_module_forward_pre_hook(look)
    try:
        for _ in range(2):  # the first run also learns the model; the second uses what it learnt
            forward_hooked.clear()
            pre_hooked.clear()
            with model.trace(ids):
                block_input = model.transformer.h[0].input.save()
                model.transformer.h[1].output.save()
                model.lm_head.output.save()

            blocks = hf.transformer.h
            assert forward_hooked == {id(blocks[1]), id(hf.lm_head)}
            assert pre_hooked == {id(blocks[0])}
            assert clean(hf, ignore=[watch])  # only the watcher is left, and it is global
    finally:
        watch.remove()
    assert clean(hf)

    with torch.no_grad():
        embeddings = hf.transformer.wte(ids) + hf.transformer.wpe(torch.arange(8))
    assert torch.allclose(block_input, embeddings, atol=ATOL)


def test_invokes_of_different_lengths_cannot_be_batched(model, hf, ids, clean):
    with pytest.raises(nnsight.BatchError, match="shape"):
        with model.trace() as tracer:
            with tracer.invoke(ids):
                model.lm_head.output.save()
            with tracer.invoke(ids[:, :5]):
                model.lm_head.output.save()

    assert clean(hf)
    with model.trace(ids):
        logits = model.lm_head.output.save()
    assert torch.allclose(logits, plain_run(hf, ids)[0], atol=ATOL)
