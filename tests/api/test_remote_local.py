"""`remote="local"`: the whole remote path in this process (serialize, read back untrusted with
the server's limits, run, send the saved values back through the results format, bind) gives
the same values as a local run."""

import socket

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph.ir.registry import RegistryError
from nnsight_graph.remote.client import RemoteError

PROMPT = "The Eiffel Tower is in the city of"


def test_a_trace_gives_the_same_values_as_a_local_one(llm):
    with llm.trace(PROMPT) as tracer:
        local_hidden = llm.transformer.h[-1].output.save()
        local_logits = llm.lm_head.output.save()
    with llm.trace(PROMPT, remote="local") as tracer:
        llm.transformer.h[0].output[:] = llm.transformer.h[0].output * 1  # an edit, no change
        hidden = llm.transformer.h[-1].output.save()
        logits = llm.lm_head.output.save()
        result = tracer.result.save()
        cache = tracer.cache(modules=[llm.transformer.h[1]])
    assert torch.equal(hidden, local_hidden) and torch.equal(logits, local_logits)
    assert torch.equal(result.logits, local_logits)
    assert cache["model.transformer.h.1"].output.shape == (1, 8, 128)
    assert llm.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_generation_steps_and_branches_come_back(llm):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        local = list().save()
        with tracer.all():
            local.append(llm.lm_head.output[0, -1].argmax())
    with llm.generate(PROMPT, max_new_tokens=3, remote="local") as tracer:
        top = llm.transformer.h[0].output[0, -1].max()
        if top > 0:  # a branch on a traced value: recorded, sent, decided on the "server"
            sign = nnsight.save(top * 0 + 1)
        tokens = list().save()
        with tracer.all():
            tokens.append(llm.lm_head.output[0, -1].argmax())
        output = llm.generator.output.save()
    assert [int(t) for t in tokens] == [int(t) for t in local]
    assert int(sign) == 1 and output.shape == (1, 11)


def test_edits_are_sent_with_the_trace(llm):
    with llm.edit() as edited:
        llm.transformer.h[1].output[:] = 0
    with edited.trace(PROMPT):
        local = edited.lm_head.output.save()
    with edited.trace(PROMPT, remote="local"):
        remote = edited.lm_head.output.save()
    assert torch.equal(local, remote)


def test_remote_local_on_a_scan_or_an_unknown_server_is_refused_with_what_to_do(llm):
    with pytest.raises(nnsight.NNsightError, match="runs on this machine only"):
        llm.scan(PROMPT, remote="local")
    with pytest.raises(nnsight.NNsightError, match="remote='local'"):
        llm.trace(PROMPT, remote="ftp://example.org")
    with pytest.raises(nnsight.NNsightError, match="blocking=False is for traces that run on"):
        llm.trace(PROMPT, blocking=False)


def test_remote_true_with_no_server_says_how_to_start_one(llm):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RemoteError, match="nnsight-graph serve") as caught:
        with llm.trace(PROMPT, remote=f"http://127.0.0.1:{port}"):
            llm.lm_head.output.save()
    assert caught.value.code == "unreachable"


def test_a_graph_that_cannot_be_sent_says_why(make_net):
    model, other = nnsight.NNsight(make_net()), nnsight.NNsight(make_net())
    with pytest.raises(nnsight.WireFormatError, match="no wire form"):
        with model.trace(torch.rand(1, 5), remote="local"):
            other.layer2(model.layer1.output).save()  # another model's module: local only


def test_a_function_outside_the_registry_is_refused_before_the_model_runs(
    model, x, count_calls, line_of
):
    calls = count_calls(model._module)
    with pytest.raises(RegistryError, match="torch.special.bessel_j0") as caught:
        with model.trace(x, remote="local"):
            torch.special.bessel_j0(model.layer1.output).save()  # mark: outside
    assert "compute it after the trace, on the saved values" in str(caught.value)
    assert any(line_of("outside") in note for note in caught.value.__notes__)
    assert calls.calls == 0


def test_a_streamer_of_the_user_cannot_be_sent_and_says_so(llm):
    class Collect:
        def put(self, value):
            pass

        def end(self):
            pass

    with pytest.raises(nnsight.WireFormatError, match="Collect, which has no wire form"):
        with llm.generate(PROMPT, max_new_tokens=2, streamer=Collect(), remote="local"):
            llm.generator.streamer.output.save()


def test_a_bad_input_keeps_its_type_with_a_note_naming_the_module_and_the_input(model, x):
    with pytest.raises(RuntimeError) as caught:
        with model.trace(torch.rand(1, 7), remote="local"):
            model.layer1.output.save()
    (note,) = caught.value.__notes__
    assert note.startswith("  while model.layer1 (Linear) ran, on the input Tensor[1, 7] float32")
    assert "give it what Sequential.forward takes" in note
    with model.trace(x, remote="local"):
        output = model.output.save()
    assert output.shape == (1, 2)


@pytest.mark.parametrize("mode", [None, "no_grad", "inference"])
def test_no_grad_or_inference_mode_around_a_trace_travel_with_it(make_net, x, mode, monkeypatch):
    from nnsight_graph.ir.grad_mode import grad_mode_context
    from nnsight_graph.ir.results import loads_results
    from nnsight_graph.ir.wire import loads
    from nnsight_graph.remote import execution

    model = nnsight.NNsight(make_net().requires_grad_(True))
    payloads: list[bytes] = []
    run_payload = execution.run_payload

    def keep(model, payload, limits):
        payloads.append(payload)
        return run_payload(model, payload, limits)

    monkeypatch.setattr(execution, "run_payload", keep)
    with grad_mode_context(mode), model.trace(x, remote="local"):
        here = model.layer1.output.save()
    (payload,) = payloads
    assert loads(payload).grad_mode == mode
    # a server runs it with grad enabled around it: the payload's mode is what counts
    (there,) = loads_results(run_payload(model, payload)).values()
    for value in (here, there):
        assert value.requires_grad is (mode is None)
        assert torch.allclose(value, model._module.layer1(x))
    assert here.is_inference() is (mode == "inference")  # read back inside the mode


def test_no_grad_around_a_remote_session_travels_with_it(make_net, x):
    from nnsight_graph.session import session_graph

    model = nnsight.NNsight(make_net().requires_grad_(True))
    with torch.no_grad(), model.session(remote="local") as session:
        with model.trace(x):
            first = model.layer1.output.save()
        with model.trace(x):
            second = model.output.save()
        graph = session_graph(session)
    assert [trace.grad_mode for trace in graph.traces] == ["no_grad", "no_grad"]
    assert not first.requires_grad and not second.requires_grad
