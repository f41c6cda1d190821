"""`remote="local"`: the whole remote path in this process (serialize, read back untrusted with
the server's limits, run, send the saved values back through the results format, bind) gives
the same values as a local run."""

import socket

import pytest
import torch

import nnsight_graph as nnsight
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
