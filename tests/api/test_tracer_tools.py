"""Tracer tools of walkthrough section 7: cache, barrier, result, skip, stop."""

import pytest
import torch

import nnsight_graph as nnsight

PROMPT = "The Eiffel Tower is in the city of"


def _calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def _plain_outputs(llm, prompt, paths):
    outputs = {}
    handles = [
        llm._module.get_submodule(p).register_forward_hook(
            lambda m, i, o, p=p: outputs.setdefault(p, o)
        )
        for p in paths
    ]
    ids = llm.tokenizer(prompt, return_tensors="pt").input_ids
    try:
        logits = llm._module(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    return outputs, logits


def test_cache_every_module(llm, clean):
    with llm.trace(PROMPT) as tracer:
        cache = tracer.cache()
    expected, _ = _plain_outputs(llm, PROMPT, ["transformer.h.0", "lm_head"])
    assert torch.allclose(cache["model.transformer.h.0"].output, expected["transformer.h.0"])
    assert cache.model.transformer.h[0].output is cache["model.transformer.h.0"].output
    assert torch.allclose(cache.model.lm_head.output, expected["lm_head"])
    assert "model.transformer.h.3.mlp" in cache
    assert clean(llm._module)


def test_cache_selected_modules_with_inputs(llm):
    with llm.trace(PROMPT) as tracer:
        cache = tracer.cache(modules=[llm.transformer.h[1]], include_inputs=True)
    assert list(cache) == ["model.transformer.h.1"]
    expected, _ = _plain_outputs(llm, PROMPT, ["transformer.h.0", "transformer.h.1"])
    entry = cache["model.transformer.h.1"]
    assert torch.allclose(entry.input, expected["transformer.h.0"])
    assert torch.allclose(entry.output, expected["transformer.h.1"])
    assert "model.lm_head" not in cache
    with pytest.raises(KeyError, match="'model.lm_head' was not cached"):  # as nnsight 0.8.1:
        _ = cache["model.lm_head"].output  # the lookup gives a view, reading it raises


def test_cache_during_generation_has_one_entry_per_step(llm):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        cache = tracer.cache(modules=[llm.lm_head])
    outputs = cache["model.lm_head"].output
    assert isinstance(outputs, list) and len(outputs) == 3


def test_barrier_transplants_embeddings_between_invokes(llm):
    with llm.trace() as tracer:
        barrier = tracer.barrier(2)
        with tracer.invoke("The Eiffel Tower is in"):
            embeddings = llm.transformer.wte.output
            barrier()
        with tracer.invoke("_ _ _ _ _ _ _"):
            barrier()
            llm.transformer.wte.output = embeddings
            hidden = llm.transformer.wte.output.save()
            out = llm.lm_head.output.argmax(dim=-1).save()
    with llm.trace() as tracer:
        with tracer.invoke("The Eiffel Tower is in"):
            reference = llm.transformer.wte.output.save()
        with tracer.invoke("_ _ _ _ _ _ _"):
            pass
    assert torch.equal(hidden, reference)
    assert out.shape[0] == 1


def test_barrier_with_the_wrong_participant_count_is_an_error_not_a_hang(llm, clean):
    with pytest.raises(nnsight.GraphBuildError, match=r"barrier\(3\).*2 invoke"):
        with llm.trace() as tracer:
            barrier = tracer.barrier(3)
            with tracer.invoke("Hello"):
                barrier()
            with tracer.invoke("Hello"):
                barrier()
    assert clean(llm._module)


def test_result_is_the_model_output(llm):
    with llm.trace("Hello") as tracer:
        result = tracer.result().save()
    _, logits = _plain_outputs(llm, "Hello", [])
    assert torch.allclose(result.logits, logits)


def test_skip_substitutes_the_output_and_does_not_run_the_module(llm):
    calls, handle = _calls(llm._module.transformer.h[1].attn)
    try:
        with llm.trace("Hello"):
            layer0_out = llm.transformer.h[0].output
            llm.transformer.h[1].skip(layer0_out)
            layer1_out = llm.transformer.h[1].output.save()
            layer0_saved = layer0_out.save()
    finally:
        handle.remove()
    assert calls == []  # the block's attention never ran
    assert torch.equal(layer1_out, layer0_saved)
    assert "forward" not in llm._module.transformer.h[1].__dict__  # original forward is back
    with llm.trace("Hello"):
        normal = llm.transformer.h[1].output.save()
    assert not torch.equal(normal, layer0_saved)


def test_skip_after_reading_the_output_is_an_error(llm):
    with pytest.raises(nnsight.GraphBuildError, match="Skip it before reading"):
        with llm.trace("Hello"):
            out = llm.transformer.h[1].output
            llm.transformer.h[1].skip(out)


def test_stop_ends_the_run_and_keeps_what_was_saved(llm, clean):
    calls, handle = _calls(llm._module.lm_head)
    later, later_handle = _calls(llm._module.transformer.h[2])
    try:
        with llm.trace("Hello") as tracer:
            layer0 = llm.transformer.h[0].output[0].save()
            tracer.stop()
            never = llm.lm_head.output.save()
    finally:
        handle.remove()
        later_handle.remove()
    assert calls == [] and later == []  # nothing after the stop point ran
    assert layer0.shape == (1, 128)
    assert "never" not in locals() or isinstance(never, nnsight.saving.Unsaved)
    assert clean(llm._module)


def test_calling_a_module_inside_a_trace_is_not_one_of_its_steps(llm):
    with llm.trace(PROMPT):
        lens = []
        for i in range(4):
            hidden = llm.transformer.h[i].output
            lens.append(llm.lm_head(llm.transformer.ln_f(hidden))[0, -1].save())
        final = llm.lm_head.output[0, -1].save()
    module = llm._module
    outputs, logits = _plain_outputs(llm, PROMPT, [f"transformer.h.{i}" for i in range(4)])
    for i in range(4):
        expected = module.lm_head(module.transformer.ln_f(outputs[f"transformer.h.{i}"]))
        assert torch.allclose(lens[i], expected[0, -1], atol=1e-5)
    assert torch.allclose(final, logits[0, -1], atol=1e-5)  # the real lm_head call, step 0
    assert torch.allclose(lens[3], final, atol=1e-5)
