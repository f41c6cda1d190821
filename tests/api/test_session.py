"""model.session() (walkthrough section 9, run locally): traces that share values."""

import pytest
import torch

import nnsight_graph as nnsight


def test_a_later_trace_uses_an_unsaved_value_of_an_earlier_one(llm):
    with llm.session():
        with llm.trace("The Eiffel Tower is in the city of"):
            hs = llm.transformer.h[-1].output[:, -1, :]
            t1_out = llm.lm_head.output.argmax(dim=-1).save()
        with llm.trace("Buckingham Palace is in the city of"):
            llm.transformer.h[-1].output[:, -1, :] = hs
            t2_out = llm.lm_head.output.argmax(dim=-1).save()
    assert llm.tokenizer.decode(t1_out[0, -1]) == " Paris"
    assert llm.tokenizer.decode(t2_out[0, -1]) == " Paris"  # London's state was replaced


def test_traces_run_in_order_when_the_session_ends(llm):
    order = []
    handle = llm._module.lm_head.register_forward_hook(lambda m, i, o: order.append(o.shape[1]))
    try:
        with llm.session():
            with llm.trace("Hello"):
                first = llm.lm_head.output.save()
            assert order == []  # recorded, not run yet
            with llm.trace("The Eiffel Tower is in"):
                second = llm.lm_head.output.save()
    finally:
        handle.remove()
    assert len(order) == 2 and order[0] == first.shape[1] and order[1] == second.shape[1]


def test_values_outside_a_session_still_need_save(llm):
    with llm.trace("Hello"):
        hs = llm.transformer.h[0].output
    with pytest.raises(nnsight.UnsavedValueError, match="save"):
        with llm.trace("Hello"):
            llm.transformer.h[0].output[:] = hs


def test_a_bad_remote_value_says_what_to_write(llm):
    with pytest.raises(nnsight.NNsightError, match="remote=True"):
        llm.session(remote="nowhere")


def test_session_matches_separate_runs(llm):
    with llm.session():
        with llm.trace("Hello"):
            a = llm.lm_head.output.save()
    with llm.trace("Hello"):
        b = llm.lm_head.output.save()
    assert torch.allclose(a, b)


def test_a_name_set_only_on_an_untaken_branch_is_not_bound_in_a_session(llm):
    with llm.session():
        with llm.trace("Hello"):
            hidden = llm.transformer.h[0].output
            if hidden.norm() > 1e9:
                only_then = hidden.save()
            kept = llm.lm_head.output.save()
    assert "only_then" not in locals()
    assert kept.shape[0] == 1
