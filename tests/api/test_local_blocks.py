"""`with nnsight.local():` in a trace that runs elsewhere: the block runs in this process on
the values the run sends, and what it makes goes back when later code uses it. Run here
through the whole remote path in-process (remote="local"); tests/server runs it over HTTP."""

import pytest
import torch

import nnsight_graph as nnsight

PROMPT = "The Eiffel Tower is in the city of"


@pytest.mark.parametrize("remote", [False, "local"])
def test_the_walkthrough_cell_prints_a_value_of_the_run_here(llm, remote, capsys):
    with llm.trace(PROMPT):
        expected = llm.transformer.h[-1].output[0][0, 0].save()
    with llm.trace("Hello", remote=remote) as tracer:
        with nnsight.local():
            hs = llm.transformer.h[-1].output[0]
            print("Local computation:", hs[0, 0])  # (seq, hidden) on transformers 5
        out = llm.lm_head.output.save()
    printed = capsys.readouterr().out
    assert printed.startswith("Local computation: tensor(")
    assert out.shape[-1] == llm.config.vocab_size
    del expected, tracer


@pytest.mark.parametrize("remote", [False, "local"])
def test_a_value_made_in_the_block_is_used_by_the_run(llm, remote):
    with llm.trace(PROMPT):
        hidden = llm.transformer.h[1].output
        llm.transformer.h[1].output[:] = hidden * 2 + 1
        expected = llm.lm_head.output.save()
    with llm.trace(PROMPT, remote=remote):
        hidden = llm.transformer.h[1].output
        with nnsight.local():
            doubled = hidden * 2 + 1  # runs here; the server waits for it
            norm = doubled.norm().save()
        llm.transformer.h[1].output[:] = doubled
        logits = llm.lm_head.output.save()
    assert torch.allclose(logits, expected, atol=1e-5)
    assert norm.ndim == 0 and norm > 0


def test_tracer_local_runs_any_python_here(llm, capsys):
    with llm.trace(PROMPT, remote="local") as tracer:
        with tracer.local():
            top = llm.lm_head.output[0, -1].argmax()
            print("token:", top)
        out = llm.lm_head.output.save()
    assert capsys.readouterr().out.startswith("token: tensor(")
    assert llm.tokenizer.decode(out[0, -1].argmax()) == " Paris"


def test_a_write_inside_a_block_says_to_move_it_after(llm):
    with pytest.raises(nnsight.GraphBuildError, match="after the block"):
        with llm.trace(PROMPT, remote="local"):
            with nnsight.local():
                llm.transformer.h[0].output[:] = 0


def test_local_outside_a_trace_says_where_it_belongs():
    with pytest.raises(nnsight.GraphBuildError, match="inside"):
        with nnsight.local():
            pass


def test_a_graph_with_a_block_does_not_run_where_it_was_not_recorded(llm):
    from nnsight_graph.ir.wire import dumps
    from nnsight_graph.remote.execution import run_payload

    with llm.trace(PROMPT, remote="local") as tracer:
        with nnsight.local():
            print(llm.transformer.h[0].output.shape)
        llm.lm_head.output.save()
    with pytest.raises(nnsight.ExecutionError, match="runs only in the client that recorded it"):
        run_payload(llm, dumps(tracer.graph))


def test_a_block_in_a_remote_session_says_what_to_do_instead(llm):
    with pytest.raises(nnsight.GraphBuildError, match="trace of its own"):
        with llm.session(remote="local"):
            with llm.trace(PROMPT):
                with nnsight.local():
                    print(llm.transformer.h[0].output.shape)


@pytest.mark.local_only  # a session that runs here: forced remote makes it a remote one
def test_a_block_in_a_local_session_runs_in_place(llm, capsys):
    with llm.session():
        with llm.trace(PROMPT):
            with nnsight.local():
                print("shape:", llm.transformer.h[0].output.shape)
    assert "shape: torch.Size([1, 8, 128])" in capsys.readouterr().out


def test_verify_refuses_a_local_node_whose_inputs_do_not_match_its_arguments(llm):
    from nnsight_graph.ir import Op, ValidationError
    from nnsight_graph.passes.verify import verify

    with llm.trace(PROMPT, remote="local") as tracer:
        with nnsight.local():
            print(llm.transformer.h[0].output.shape)
        llm.lm_head.output.save()
    graph = tracer.graph
    verify(graph)  # as recorded: accepted
    (position,) = [i for i, n in enumerate(graph.nodes) if n.op is Op.LOCAL]
    node = graph.nodes[position]
    bad = node._replace(kwargs={**node.kwargs, "inputs": [*node.kwargs["inputs"], 99]})
    nodes = [*graph.nodes[:position], bad, *graph.nodes[position + 1 :]]
    with pytest.raises(ValidationError, match="inputs= the ids of its arguments"):
        verify(graph.with_nodes(nodes))
