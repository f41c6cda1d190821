"""After `tracer.stop()`: the statements after it never run, so the names they assign are not
bound (a name bound before the trace keeps its value), as in nnsight 0.8.1.

A stop that depends on a traced value (`if proxy: tracer.stop()`) is only known at run time:
then the saved values the run never reached are not bound, and plain values are.
"""

import pytest
import torch
from support import import_net_script as import_body

import nnsight_graph as nnsight

# unconditional stops: the rest of the body does not run --------------------------------------


def test_module_level_names_after_stop_are_not_bound(tmp_path):
    module = import_body(
        tmp_path,
        "stop_module_level",
        """
        late = "before the trace"
        with model.trace(x) as tracer:
            early = model.layer1.output.save()
            plain_early = 1
            tracer.stop()
            late = model.layer2.output.save()
            fresh = model.output.save()
            plain_late = 2
        try:
            fresh
        except NameError as error:
            caught = error
        """,
    )
    assert torch.equal(module.early, module.net.layer1(module.x))
    assert module.plain_early == 1
    assert module.late == "before the trace"  # its assignment never ran
    assert not hasattr(module, "fresh") and not hasattr(module, "plain_late")
    assert type(module.caught) is NameError and "'fresh'" in str(module.caught)


def test_function_names_after_stop_are_unbound_locals(model, net, x):
    late = "before the trace"
    with model.trace(x) as tracer:
        early = model.layer1.output.save()
        tracer.stop()
        late = model.layer2.output.save()
        fresh = model.output.save()
        plain = 2
    assert torch.equal(early, net.layer1(x))
    assert late == "before the trace"
    assert "fresh" not in locals() and "plain" not in locals()
    with pytest.raises(UnboundLocalError, match="fresh"):
        fresh.shape  # noqa: B018
    assert isinstance(tracer, nnsight.Tracer) and tracer.graph is not None
    assert "read layer2" not in str(tracer.graph)  # nothing after the stop was recorded


def test_stop_in_a_loop_ends_the_loop_and_the_body(model, x):
    steps: list[int] = []
    with model.trace(x) as tracer:
        for i in range(4):
            steps.append(i)
            if i == 1:
                tracer.stop()
        after = True
    assert steps == [0, 1]  # as in nnsight: the loop never reached 2
    assert "after" not in locals()


def test_stop_in_a_helper_ends_the_helper_too(model, x, capsys):
    def halt(tracer):
        tracer.stop()
        print("after the stop, in the helper")

    with model.trace(x) as tracer:
        early = model.layer1.output.save()
        halt(tracer)
        late = model.layer2.output.save()
    assert capsys.readouterr().out == ""
    assert early.shape == (1, 10) and "late" not in locals()


def test_stop_really_ends_the_model_run(model, x, count_calls):
    layer2 = count_calls(model._module.layer2)
    with model.trace(x) as tracer:
        early = model.layer1.output.save()
        tracer.stop()
    assert layer2.calls == 0 and early.shape == (1, 10)


# a stop that depends on a traced value ------------------------------------------------------


def test_guarded_stop_leaves_out_the_saved_values_it_cut_off(model, net, x):
    late = "before the trace"
    with model.trace(x) as tracer:
        hidden = model.layer1.output
        if hidden.sum() > -1000:  # true: the run stops at layer1
            tracer.stop()
        late = model.layer2.output.save()
        pair = nnsight.save((model.layer2.output, model.output))
        plain = 3
    assert late == "before the trace"
    assert plain == 3  # the body itself ran to its end; only the model stopped
    with pytest.raises(nnsight.UnsavedValueError, match=r"tracer\.stop\(\) ended the run"):
        pair[1].sum()


def test_guarded_stop_that_does_not_fire_binds_everything(model, net, x):
    with model.trace(x) as tracer:
        hidden = model.layer1.output
        if hidden.sum() > 1000:  # false: no stop
            tracer.stop()
        late = model.layer2.output.save()
    assert torch.equal(late, net(x))


# invokes, sessions, generation ----------------------------------------------------------------


def test_stop_in_an_invoke_ends_that_invoke_block(llm):
    with llm.trace() as tracer:
        with tracer.invoke("Hello"):
            first = llm.transformer.h[0].output.save()
            first_later = llm.transformer.h[1].output.save()
        with tracer.invoke("World"):
            second = llm.transformer.h[0].output.save()
            tracer.stop()
            second_later = llm.transformer.h[1].output.save()
        after = 1
    assert first.shape[-1] == second.shape[-1] == 128
    assert after == 1  # the statements after the invoke's block ran
    # the run stopped at layer 0, in the second invoke's turn: layer 1 never ran
    assert "first_later" not in locals() and "second_later" not in locals()


def test_stop_in_a_session_trace_ends_that_trace_block(model, net, x):
    with model.session():
        with model.trace(x) as tracer:
            early = model.layer1.output.save()
            tracer.stop()
            late = model.layer2.output.save()
        with model.trace(x):
            out = model.output.save()
    assert torch.equal(early, net.layer1(x)) and torch.equal(out, net(x))
    assert "late" not in locals()


def test_stop_at_a_generation_step(llm):
    with llm.generate("Hello", max_new_tokens=4) as tracer:
        tokens = list().save()
        for step in tracer.iter[:]:
            tokens.append(llm.lm_head.output[0, -1].argmax())
            if step == 1:
                tracer.stop()
        after = True
    assert len(tokens) == 2 and all(type(t) is torch.Tensor for t in tokens)
    assert "after" not in locals()


def test_a_stop_in_one_invoke_lets_the_later_invokes_take_their_turn_at_that_module(
    llm, count_calls
):
    """As in nnsight 0.8.1: the run ends after the module where the stop was reached, once
    every invoke had its turn there; nothing later runs."""
    with llm.trace("World"):
        alone = llm.transformer.h[0].output.save()
    later = count_calls(llm._module.transformer.h[1])
    with llm.trace() as tracer:
        with tracer.invoke("Hello"):
            first = llm.transformer.h[0].output.save()
            tracer.stop()
        with tracer.invoke("World"):
            second = llm.transformer.h[0].output.save()
            never = llm.transformer.h[1].output.save()
    assert later.calls == 0
    assert first.shape[0] == 1 and torch.allclose(second, alone, atol=1e-5)
    with pytest.raises(NameError):
        never  # noqa: B018 - never computed, so never bound
