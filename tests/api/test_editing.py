"""Model editing (walkthrough section 8): edited copies, in-place edits, clearing."""

import torch


def _predict(llm, model, prompt):
    with model.trace(prompt):
        token = llm.lm_head.output[0, -1].argmax(dim=-1).save()
    return llm.tokenizer.decode(token)


def test_edited_model_says_paris_for_the_vatican(llm):
    # transformers 5: a GPT-2 block returns a tensor, so the walkthrough's output[0] is dropped
    with llm.trace("The Eiffel Tower is in the city of"):
        paris_hidden = llm.transformer.h[-1].output[:, -1, :].save()

    with llm.edit() as llm_edited:
        llm.transformer.h[-1].output[:, -1, :] = paris_hidden

    assert _predict(llm, llm, "Vatican is in the city of") == " Rome"
    assert _predict(llm, llm_edited, "Vatican is in the city of") == " Paris"
    assert llm_edited._module is llm._module  # the weights are shared
    assert _predict(llm, llm, "Vatican is in the city of") == " Rome"  # original untouched


def test_edits_compose_with_a_trace_s_own_interventions(llm):
    with llm.edit() as zeroed:
        llm.transformer.h[0].output[:] = 0
    with zeroed.trace("Hello"):
        seen = llm.transformer.h[0].output.clone().save()  # the edit ran first
        llm.transformer.h[1].output[:] = 1
        after = llm.transformer.h[1].output.save()
    assert seen.abs().sum() == 0
    assert torch.all(after == 1)


def test_an_edit_applies_to_every_invoke(llm):
    with llm.edit() as zeroed:
        llm.transformer.h[0].output[:] = 0
    with zeroed.trace() as tracer:
        with tracer.invoke("Hello"):
            first = llm.transformer.h[0].output.save()
        with tracer.invoke("The Eiffel Tower is in"):
            second = llm.transformer.h[0].output.save()
    assert first.abs().sum() == 0 and second.abs().sum() == 0


def test_in_place_edit_and_clear(llm):
    with llm.trace("The Eiffel Tower is in the city of"):
        paris_hidden = llm.transformer.h[-1].output[:, -1, :].save()
    try:
        with llm.edit(inplace=True):
            llm.transformer.h[-1].output[:, -1, :] = paris_hidden
        assert _predict(llm, llm, "Vatican is in the city of") == " Paris"
    finally:
        llm.clear_edits()
    assert _predict(llm, llm, "Vatican is in the city of") == " Rome"
