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


# declared shapes: what the blocks send back is declared at record time (a shape pass on fake
# values) and checked on both sides before the run uses it (fixtures `declared` and `passes`
# in tests/conftest.py)

def test_a_block_value_is_declared_by_its_shape_and_a_number_by_its_type(llm, declared, passes,
                                                                          capsys):
    with llm.trace(PROMPT):
        hidden = llm.transformer.h[1].output
        top = hidden[0, -1].argmax()
        llm.transformer.h[1].output[:] = hidden * 2 + 1
        expected = llm.lm_head.output[0, -1, : hidden.shape[-1] // 2].save()
        expected_top = (top + 1).save()
    with llm.trace(PROMPT, remote="local"):
        hidden = llm.transformer.h[1].output
        with nnsight.local():
            print("in the block")
            doubled = hidden * 2 + 1
            half = hidden.shape[-1] // 2  # a Python int
            top = hidden[0, -1].argmax()
        llm.transformer.h[1].output[:] = doubled
        logits = llm.lm_head.output[0, -1, :half].save()
        after = (top + 1).save()
    assert passes[0] == 1
    assert capsys.readouterr().out == "in the block\n"  # once: nothing prints in the pass
    (entries,) = declared
    assert [{k: v for k, v in e.items() if k != "id"} for e in entries] == [
        {"kind": "tensor", "shape": [1, 8, 128], "dtype": "floating"},
        {"kind": "value", "type": "int"},
        {"kind": "tensor", "shape": [], "dtype": "int64"},
    ]
    assert torch.allclose(logits, expected, atol=1e-5) and logits.shape == (64,)
    assert torch.equal(after, expected_top)


def test_a_block_that_only_prints_runs_no_shape_pass(llm, declared, passes, capsys):
    with llm.trace(PROMPT, remote="local"):
        with nnsight.local():
            print("shape:", llm.transformer.h[0].output.shape)
        llm.lm_head.output.save()
    assert capsys.readouterr().out == "shape: torch.Size([1, 8, 128])\n"
    assert passes[0] == 0 and declared == [[]]


def test_a_value_the_pass_cannot_decide_is_unknown_and_still_sent(llm, declared):
    with llm.trace(PROMPT):
        scale = llm.transformer.h[0].output.norm().item()
        expected = (llm.lm_head.output * scale).save()
    with llm.trace(PROMPT, remote="local"):
        hidden = llm.transformer.h[0].output
        with nnsight.local():
            scale = hidden.norm().item()  # data-dependent: fake tensors have no value for it
        logits = (llm.lm_head.output * scale).save()
    assert [e["kind"] for e in declared[0]] == ["unknown"]
    assert torch.allclose(logits, expected, rtol=1e-5)


def _write_a_block_value(llm):
    """A remote trace that writes what its block made into the run, then prints."""
    with llm.trace(PROMPT, remote="local"):
        hidden = llm.transformer.h[1].output
        with nnsight.local():
            doubled = hidden * 2
        llm.transformer.h[1].output[:] = doubled
        print("after the block", llm.transformer.h[2].output.shape)
        llm.lm_head.output.save()


def test_a_block_value_of_another_shape_is_not_sent(llm, monkeypatch, capsys):
    from nnsight_graph.local import LocalBlock

    real = LocalBlock.run

    def shrunk(self, downloads, saved):  # what the block made differs from the pass's
        env = real(self, downloads, saved)
        return {k: v[..., :3] if torch.is_tensor(v) and v.ndim == 3 else v
                for k, v in env.items()}

    monkeypatch.setattr(LocalBlock, "run", shrunk)
    with pytest.raises(nnsight.NNsightError) as caught:
        _write_a_block_value(llm)
    message = str(caught.value)
    assert "test_local_blocks.py:" in message and "doubled = hidden * 2" in message
    assert "shape [1, 8, 3]" in message and "shape [1, 8, 128] and dtype floating" in message
    assert "was not sent" in message and "depend only on the values" in message
    assert "after the block" not in capsys.readouterr().out


def test_the_run_refuses_a_block_value_that_is_not_what_was_declared(llm, monkeypatch, capsys):
    from nnsight_graph.local import LocalBlocks

    def lying(self, block, downloads, outputs):  # a client that skips its own check
        return {id: torch.zeros(3, dtype=torch.int32) for id in outputs}

    monkeypatch.setattr(LocalBlocks, "handle", lying)
    with pytest.raises(nnsight.ExecutionError) as caught:
        _write_a_block_value(llm)
    message = str(caught.value)
    assert "test_local_blocks.py:" in message
    assert "a tensor of shape [3] and dtype int32" in message
    assert "declared a tensor of shape [1, 8, 128] and dtype floating" in message
    assert "stopped before any node used it" in message
    assert "after the block" not in capsys.readouterr().out


def test_verify_reads_a_declaration_and_runs_a_local_node_without_one(llm):
    from nnsight_graph.ir import Op, ValidationError
    from nnsight_graph.passes.verify import verify

    with llm.trace(PROMPT, remote="local") as tracer:
        hidden = llm.transformer.h[0].output
        with nnsight.local():
            doubled = hidden * 2
        llm.transformer.h[0].output[:] = doubled
    graph = tracer.graph  # as recorded: the LOCAL node asks nothing back, declares nothing
    (position,) = [i for i, n in enumerate(graph.nodes) if n.op is Op.LOCAL]
    node = graph.nodes[position]

    def with_local(**kwargs):
        changed = node._replace(kwargs={**node.kwargs, **kwargs})
        return graph.with_nodes([*graph.nodes[:position], changed, *graph.nodes[position + 1:]])

    good = {"id": 7, "kind": "tensor", "shape": [1, 8, 128], "dtype": "floating"}
    verify(with_local(outputs=[7], declared=[good]))
    verify(with_local(outputs=[7, 8], declared=[good, {"id": 8, "kind": "unknown"}]))
    verify(with_local(outputs=[7]))  # no declaration: only the size caps apply
    for bad in (
        [],  # not one entry per output
        [{**good, "id": 8}],
        [{**good, "shape": [1, -8]}],
        [{**good, "shape": ["8"]}],
        [{**good, "dtype": "float32"}],  # floating dtypes are declared as "floating"
        [{"id": 7, "kind": "value", "type": "list"}],
        [{"id": 7, "kind": "value", "type": ["int"]}],
        [{**good, "extra": 1}],
        {"7": good},
    ):
        with pytest.raises(ValidationError, match="declared="):
            verify(with_local(outputs=[7], declared=bad))
