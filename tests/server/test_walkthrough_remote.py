"""Walkthrough sections 1-8, remote equals local: each cell runs on the shipped GPT-2 here and
with remote=True against a real server hosting it, and gives the same values.

The walkthrough's tiny net (sections 1-4) is not served, so its cells run on GPT-2: `layer1`
is `transformer.h[0]`, `layer2` is `transformer.h[1]`, the net's output is `lm_head`'s. Cells
that cannot run remotely say so with an NNsightError that names what to do instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import nnsight_graph as nnsight

PROMPT = "The Eiffel Tower is in the city of"
OTHER = "Buckingham Palace is in the city of"  # as many tokens as PROMPT
ATOL = 1e-4  # two processes: a busy machine may sum a matmul in another order (1e-4 seen)

Cell = Callable[[nnsight.LanguageModel, Any], dict[str, Any]]


def assert_same(remote: Any, local: Any, where: str = "") -> None:
    if isinstance(local, torch.Tensor):
        assert isinstance(remote, torch.Tensor), f"{where}: {type(remote)}"
        assert remote.shape == local.shape, f"{where}: {remote.shape} != {local.shape}"
        assert remote.dtype == local.dtype, f"{where}: {remote.dtype} != {local.dtype}"
        assert torch.allclose(remote.float(), local.float(), atol=ATOL, rtol=ATOL), where
    elif isinstance(local, dict):
        assert sorted(remote) == sorted(local), where
        for key in local:
            assert_same(remote[key], local[key], f"{where}[{key!r}]")
    elif isinstance(local, (list, tuple)):
        assert type(remote) is type(local) and len(remote) == len(local), where
        for index, (a, b) in enumerate(zip(remote, local)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert remote == local, where


def remote_equals_local(tiny: nnsight.LanguageModel, cell: Cell) -> dict[str, Any]:
    """Run `cell` here and on the server; assert the same values; the remote ones."""
    local = cell(tiny, False)
    remote = cell(tiny, True)
    assert sorted(remote) == sorted(local)
    for name in local:
        assert_same(remote[name], local[name], name)
    return remote


# 2. Accessing activations ------------------------------------------------------------------


def test_saving_the_output(alice, tiny):
    def cell(llm, remote):
        with llm.trace(PROMPT, remote=remote):
            lm_head = nnsight.save(llm.lm_head.output)
            output = llm.output.save()
        return {"lm_head": lm_head, "logits": output.logits, "output": output}

    local, remote = cell(tiny, False), cell(tiny, True)
    assert_same(remote["lm_head"], local["lm_head"])
    assert_same(remote["logits"], local["logits"])
    assert torch.equal(remote["output"]["logits"], remote["logits"])
    # the model's KV cache object has no wire form: it stays on the server, and says so
    with pytest.raises(nnsight.UnsavedValueError, match="has no wire form.*save the tensors"):
        len(remote["output"].past_key_values)


def test_submodule_outputs_and_inputs(alice, tiny):
    def cell(llm, remote):
        with llm.trace(PROMPT, remote=remote):
            layer1_output = llm.transformer.h[0].output.save()
            layer2_input = llm.transformer.h[1].input.save()
            layer2_output = llm.transformer.h[1].output.save()
            lm_head_inputs = llm.lm_head.inputs.save()
        return {"layer1": layer1_output, "layer2_input": layer2_input,
                "layer2": layer2_output, "inputs": lm_head_inputs}

    values = remote_equals_local(tiny, cell)
    assert torch.equal(values["layer2_input"], values["layer1"])


def test_operations_on_values(alice, tiny):
    def cell(llm, remote):
        with llm.trace(PROMPT, remote=remote):
            layer1_out = llm.transformer.h[0].output
            max_idx = torch.argmax(layer1_out, dim=1).save()
            total = (llm.transformer.h[0].output.sum() + llm.transformer.h[1].output.sum()).save()
        return {"max_idx": max_idx, "total": total}

    remote_equals_local(tiny, cell)


def test_a_value_not_saved_fails_the_same(alice, tiny):
    for remote in (False, True):
        with tiny.trace(PROMPT, remote=remote):
            output = tiny.lm_head.output
        with pytest.raises(nnsight.UnsavedValueError):
            output.shape


def test_out_of_order_access_fails_the_same(alice, tiny):
    for remote in (False, True):
        with pytest.raises(nnsight.OutOfOrderError, match="transformer.h.0") as caught:
            with tiny.trace(PROMPT, remote=remote):
                tiny.transformer.h[3].output.save()
                tiny.transformer.h[0].output.save()
        assert "test_walkthrough_remote.py:" in str(caught.value) + "".join(
            getattr(caught.value, "__notes__", []))


# 3. Modifying activations ------------------------------------------------------------------


def test_in_place_modification(alice, tiny):
    def cell(llm, remote):
        with llm.trace(PROMPT, remote=remote):
            before = llm.transformer.h[0].output.clone().save()
            llm.transformer.h[0].output[:, 0] = 0
            after = llm.transformer.h[0].output.save()
            logits = llm.lm_head.output.save()
        return {"before": before, "after": after, "logits": logits}

    values = remote_equals_local(tiny, cell)
    assert (values["after"][:, 0] == 0).all() and not (values["before"][:, 0] == 0).all()


def test_replacement(alice, tiny):
    def cell(llm, remote):
        with llm.trace(PROMPT, remote=remote):
            original = llm.transformer.h[0].output.clone()
            llm.transformer.h[0].output = original + 0.5
            modified = llm.transformer.h[0].output.save()
            logits = llm.lm_head.output.save()
        return {"modified": modified, "logits": logits}

    remote_equals_local(tiny, cell)


def test_replacement_with_noise(alice, tiny):
    """The walkthrough's cell: randn_like draws other numbers on the server, so only the
    size of the change is compared."""
    def cell(llm, remote):
        with llm.trace(PROMPT, remote=remote):
            original = llm.transformer.h[0].output.clone()
            noise = 0.1 * torch.randn_like(original)
            llm.transformer.h[0].output = original + noise
            modified = llm.transformer.h[0].output.save()
            original = original.save()
        return {"original": original, "modified": modified}

    local, remote = cell(tiny, False), cell(tiny, True)
    assert_same(remote["original"], local["original"])
    for values in (local, remote):
        change = values["modified"] - values["original"]
        assert 0.05 < change.std().item() < 0.2


def test_an_index_error_keeps_its_type(alice, tiny):
    hidden_dims = tiny.config.n_embd
    for remote in (False, True):
        with pytest.raises(IndexError) as caught:
            with tiny.trace(PROMPT, remote=remote):
                tiny.transformer.h[0].output[:, :, hidden_dims] = 0  # out of bounds
        assert "test_walkthrough_remote.py:" in "\n".join(caught.value.__notes__)


# 4. Invokers and batching ------------------------------------------------------------------


def test_two_invokes(alice, tiny):
    def cell(llm, remote):
        with llm.trace(remote=remote) as tracer:
            with tracer.invoke(PROMPT):
                out1 = llm.lm_head.output.save()
            with tracer.invoke(OTHER):
                out2 = llm.lm_head.output.save()
        return {"out1": out1, "out2": out2}

    remote_equals_local(tiny, cell)


def test_a_later_invoke_uses_an_earlier_ones_value(alice, tiny):
    def cell(llm, remote):
        with llm.trace(remote=remote) as tracer:
            with tracer.invoke(PROMPT):
                layer1_out = llm.transformer.h[0].output.save()
            with tracer.invoke(PROMPT):
                llm.transformer.h[0].output[:] = layer1_out * 0
                modified_out = llm.lm_head.output.save()
            with tracer.invoke(PROMPT):
                original_out = llm.lm_head.output.save()
        return {"layer1": layer1_out, "modified": modified_out, "original": original_out}

    values = remote_equals_local(tiny, cell)
    assert not torch.allclose(values["modified"], values["original"])


def test_a_prompt_less_invoke_sees_the_whole_batch(alice, tiny):
    def cell(llm, remote):
        with llm.trace(remote=remote) as tracer:
            with tracer.invoke(PROMPT):
                pass
            with tracer.invoke(OTHER):
                pass
            with tracer.invoke():
                all_outputs = llm.lm_head.output.save()
        return {"all": all_outputs}

    values = remote_equals_local(tiny, cell)
    assert values["all"].shape[0] == 2


# 5. Multi-token generation -----------------------------------------------------------------


def test_hidden_states_and_logits(alice, tiny):
    def cell(llm, remote):
        with llm.trace(PROMPT, remote=remote):
            hidden_states = llm.transformer.h[-1].output[0].save()
            logits = llm.lm_head.output.save()
        return {"hidden": hidden_states, "logits": logits}

    values = remote_equals_local(tiny, cell)
    assert tiny.tokenizer.decode(values["logits"][0, -1].argmax()) == " Paris"


def test_generate(alice, tiny):
    def cell(llm, remote):
        with llm.generate("The Eiffel Tower is in", max_new_tokens=3, remote=remote):
            output = llm.generator.output.save()
        return {"output": output}

    remote_equals_local(tiny, cell)


def test_iterating_over_all_steps(alice, tiny):
    def cell(llm, remote):
        with llm.generate("The Eiffel Tower is in", max_new_tokens=3, remote=remote) as tracer:
            tokens_per_step = list().save()
            with tracer.iter[:]:
                token = llm.lm_head.output[0, -1].argmax(dim=-1)
                tokens_per_step.append(token)
        return {"tokens": tokens_per_step}

    values = remote_equals_local(tiny, cell)
    assert len(values["tokens"]) == 3


@pytest.mark.parametrize("steps, count", [(0, 1), (slice(1, 3), 2), (slice(None, None, 2), 2)],
                         ids=["iter[0]", "iter[1:3]", "iter[::2]"])
def test_iteration_patterns(alice, tiny, steps, count):
    def cell(llm, remote):
        with llm.generate("Hello", max_new_tokens=4, remote=remote) as tracer:
            hidden = list().save()
            with tracer.iter[steps]:
                hidden.append(llm.transformer.h[-1].output[0].clone())
        return {"hidden": hidden}

    values = remote_equals_local(tiny, cell)
    assert len(values["hidden"]) == count


def test_a_conditional_per_step_intervention(alice, tiny):
    def cell(llm, remote):
        with llm.generate("Hello", max_new_tokens=5, remote=remote) as tracer:
            hidden_states = list().save()
            with tracer.iter[:] as step_idx:
                if step_idx == 2:
                    llm.transformer.h[0].output[0][:] = 0
                hidden_states.append(llm.transformer.h[-1].output[0].clone())
            output = llm.generator.output.save()
        return {"hidden": hidden_states, "output": output}

    values = remote_equals_local(tiny, cell)
    assert len(values["hidden"]) == 5


def test_tracer_all(alice, tiny):
    def cell(llm, remote):
        with llm.generate("Hello", max_new_tokens=3, remote=remote) as tracer:
            tokens = list().save()
            with tracer.all():
                tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
        return {"tokens": tokens}

    remote_equals_local(tiny, cell)


def test_tracer_next(alice, tiny):
    def cell(llm, remote):
        with llm.generate("Hello", max_new_tokens=3, remote=remote) as tracer:
            hs0 = llm.transformer.h[-1].output[0].save()
            tracer.next()
            hs1 = llm.transformer.h[-1].output[0].save()
        return {"hs0": hs0, "hs1": hs1}

    values = remote_equals_local(tiny, cell)
    assert not torch.allclose(values["hs0"][-1], values["hs1"][-1])  # two steps


# 6. Gradients ------------------------------------------------------------------------------


def test_gradients(alice, tiny):
    def cell(llm, remote):
        with llm.trace("Hello", remote=remote):
            hs = llm.transformer.h[-1].output[0]
            hs.requires_grad_(True)
            logits = llm.lm_head.output
            loss = logits.sum()
            with loss.backward():
                grad = hs.grad.save()
        return {"grad": grad}

    remote_equals_local(tiny, cell)


def test_modifying_gradients(alice, tiny):
    def cell(llm, remote):
        with llm.trace("Hello", remote=remote):
            hs = llm.transformer.h[-1].output[0]
            hs.requires_grad_(True)
            logits = llm.lm_head.output
            loss = logits.sum()
            with loss.backward():
                original_grad = hs.grad.clone().save()
                hs.grad[:] = 0
                modified_grad = hs.grad.save()
        return {"original": original_grad, "modified": modified_grad}

    values = remote_equals_local(tiny, cell)
    assert values["modified"].abs().sum() == 0 and values["original"].abs().sum() > 0


# 7. Advanced features ----------------------------------------------------------------------


def test_source_access(alice, tiny):
    def cell(llm, remote):
        with llm.trace("Hello", remote=remote):
            attn_output = llm.transformer.h[0].attn.source.attention_interface_0.output.save()
        return {"attn": attn_output}

    remote_equals_local(tiny, cell)


def test_cache(alice, tiny):
    def cell(llm, remote):
        with llm.trace("Hello", remote=remote) as tracer:
            cache = tracer.cache()
        return {"h0": cache["model.transformer.h.0"].output,
                "h0_attribute": cache.model.transformer.h[0].output}

    remote_equals_local(tiny, cell)


def test_cache_options(alice, tiny):
    def cell(llm, remote):
        with llm.trace("Hello", remote=remote) as tracer:
            cache = tracer.cache(include_inputs=True, modules=[llm.transformer.h[0],
                                                               llm.transformer.h[1]])
        return {"h0": cache["model.transformer.h.0"].output,
                "h1_input": cache["model.transformer.h.1"].input,
                "names": sorted(cache.keys())}

    values = remote_equals_local(tiny, cell)
    assert values["names"] == ["model.transformer.h.0", "model.transformer.h.1"]


def test_barrier(alice, tiny):
    def cell(llm, remote):
        with llm.trace(remote=remote) as tracer:
            barrier = tracer.barrier(2)
            with tracer.invoke("The Eiffel Tower is in"):
                embeddings = llm.transformer.wte.output
                barrier()
            with tracer.invoke("_ _ _ _ _ _ _"):
                barrier()
                llm.transformer.wte.output = embeddings
                out = llm.lm_head.output.argmax(dim=-1).save()
        return {"out": out}

    remote_equals_local(tiny, cell)


def test_tracer_result(alice, tiny):
    def cell(llm, remote):
        with llm.trace("Hello", remote=remote) as tracer:
            hidden = llm.transformer.h[-1].output[0].save()
            result = tracer.result().save()
        return {"hidden": hidden, "logits": result.logits}

    remote_equals_local(tiny, cell)


def test_module_skip(alice, tiny):
    def cell(llm, remote):
        with llm.trace("Hello", remote=remote):
            layer0_out = llm.transformer.h[0].output
            llm.transformer.h[1].skip(layer0_out)
            layer1_out = llm.transformer.h[1].output.save()
            logits = llm.lm_head.output.save()
        return {"layer1": layer1_out, "logits": logits}

    remote_equals_local(tiny, cell)


def test_early_stop(alice, tiny):
    def cell(llm, remote):
        with llm.trace("Hello", remote=remote) as tracer:
            layer0 = llm.transformer.h[0].output[0].save()
            tracer.stop()
        return {"layer0": layer0}

    remote_equals_local(tiny, cell)


def test_scan_is_local_only():
    pytest.skip("scan runs on meta tensors here to infer shapes: there is nothing to send")


# 8. Model editing --------------------------------------------------------------------------


def test_an_edited_model(alice, tiny):
    with tiny.trace(PROMPT):
        paris_hidden = tiny.transformer.h[-1].output[:, -1, :].save()
    with tiny.edit() as edited:
        tiny.transformer.h[-1].output[:, -1, :] = paris_hidden

    def cell(llm, remote):
        with llm.trace("Vatican is in the city of", remote=remote):
            original = llm.lm_head.output.argmax(dim=-1).save()
        with edited.trace("Vatican is in the city of", remote=remote):
            modified = llm.lm_head.output.argmax(dim=-1).save()
        return {"original": original, "modified": modified}

    values = remote_equals_local(tiny, cell)
    assert tiny.tokenizer.decode(values["modified"][0, -1]) == " Paris"


def test_an_in_place_edit_and_clearing_it(alice, tiny):
    def cell(llm, remote):
        with llm.edit(inplace=True):
            llm.transformer.h[0].output[0][:] = 0
        try:
            with llm.trace(PROMPT, remote=remote):
                edited = llm.lm_head.output.save()
        finally:
            llm.clear_edits()
        with llm.trace(PROMPT, remote=remote):
            cleared = llm.lm_head.output.save()
        return {"edited": edited, "cleared": cleared}

    values = remote_equals_local(tiny, cell)
    assert not torch.allclose(values["edited"], values["cleared"])
