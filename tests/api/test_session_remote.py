"""model.session(remote="local"): a session's traces as one payload (walkthrough section 9)."""

import json

import pytest
import torch
import zstandard

import nnsight_graph as nnsight
from nnsight_graph.ir import Const, Graph, Invoke, Node, Op, Ref, SessionGraph, TraceRef
from nnsight_graph.ir.errors import WireFormatError
from nnsight_graph.ir.results import loads_session_results
from nnsight_graph.ir.wire import (
    MAGIC,
    SCHEMA_VERSION,
    dumps,
    dumps_session,
    loads,
    loads_any,
    loads_session,
)
from nnsight_graph.remote.execution import check_payload, run_payload


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    return nnsight.NNsight(net)


@pytest.mark.parametrize("remote", [False, "local"])
def test_a_later_trace_uses_an_unsaved_value_of_an_earlier_one(llm, remote):
    with llm.session(remote=remote):
        with llm.trace("The Eiffel Tower is in the city of"):
            hs = llm.transformer.h[-1].output[:, -1, :]
            t1_out = llm.lm_head.output.argmax(dim=-1).save()
        with llm.trace("Buckingham Palace is in the city of"):
            llm.transformer.h[-1].output[:, -1, :] = hs
            t2_out = llm.lm_head.output.argmax(dim=-1).save()
    assert llm.tokenizer.decode(t1_out[0, -1]) == " Paris"
    assert llm.tokenizer.decode(t2_out[0, -1]) == " Paris"


def test_a_remote_session_equals_the_local_one_on_the_walkthrough_net():
    model = _net()
    x = torch.randn(2, 3)
    outs = []
    for remote in (False, "local"):
        with model.session(remote=remote):
            with model.trace(x):
                h = model[0].output
                first = model.output.save()
            with model.trace(x):
                model[0].output[:] = h * 2
                second = model.output.save()
        outs.append((first, second))
    (a1, a2), (b1, b2) = outs
    assert torch.allclose(a1, b1) and torch.allclose(a2, b2)
    assert not torch.allclose(a1, a2)  # the second trace's edit changed its output


@pytest.mark.parametrize("remote", [False, "local"])
def test_skip_in_one_trace_then_read_the_input_in_the_next(remote):
    model = _net()
    x = torch.randn(2, 3)
    with model.session(remote=remote):
        with model.trace(x):
            model[1].skip(model[0].output)
            skipped = model.output.save()
        with model.trace(x):
            seen = model[1].input.save()
    assert torch.allclose(seen, model._module[0](x))
    assert skipped.shape == (2, 2)


def _payload_of_a_session(model, x):
    """The payload a remote session sends, and its session graph, recorded on `model`."""
    captured = {}

    import nnsight_graph.session as session_module

    original = session_module._submit

    def submit(session, payload):
        captured["payload"] = payload
        return original(session, payload)

    session_module._submit = submit
    try:
        with model.session(remote="local"):
            with model.trace(x):
                h = model[0].output
            with model.trace(x):
                model[0].output[:] = h
                out = model.output.save()
    finally:
        session_module._submit = original
    return captured["payload"], out


def test_only_saved_values_come_back():
    model = _net()
    x = torch.randn(2, 3)
    payload, out = _payload_of_a_session(model, x)
    session = loads_session(payload)
    assert len(session.traces) == 2
    assert session.keep[0] and not session.keep[1]  # trace 0 keeps h for trace 1 only
    results = loads_session_results(run_payload(model, payload))
    assert results[0] == {}  # h stayed on the server
    assert list(results[1].values())[0].shape == out.shape


def test_session_payloads_round_trip():
    model = _net()
    payload, _ = _payload_of_a_session(model, torch.randn(2, 3))
    session = loads_any(payload)
    assert isinstance(session, SessionGraph)
    again = loads_session(dumps_session(session))
    assert [len(g.nodes) for g in again.traces] == [len(g.nodes) for g in session.traces]
    assert again.keep == session.keep
    refs = [c for c in again.traces[1].constants if type(c) is TraceRef]
    assert refs and refs[0].trace == 0
    checked = check_payload(payload, ["", "0", "1", "2"])
    assert isinstance(checked, SessionGraph)
    with pytest.raises(WireFormatError, match="loads_session"):
        loads(payload)


def _graph(constants=()):
    nodes = [Node(0, Op.READ, "0.output"), Node(1, Op.SAVE, "", (Ref(0),))]
    return Graph(nodes, list(constants), [Invoke(0, (Const(0),), {}, 0, 1)])


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        (TraceRef(1, 0), "earlier traces only"),  # itself
        (TraceRef(2, 0), "earlier traces only"),  # a forward reference
        (TraceRef(0, 7), "does not save"),  # a missing node
        (TraceRef(0, 1), "does not save"),  # a node that is not saved
    ],
)
def test_bad_cross_trace_refs_are_refused(ref, match):
    x = torch.zeros(1, 3)
    session = SessionGraph([_graph([x]), _graph([x, ref]), _graph([x])], [frozenset()] * 3)
    with pytest.raises(WireFormatError, match=match):
        dumps_session(session)
    good = SessionGraph([_graph([x]), _graph([x, TraceRef(0, 0)]), _graph([x])], [frozenset()] * 3)
    payload = dumps_session(good)
    container = zstandard.ZstdDecompressor().decompress(payload)
    length = int.from_bytes(container[8:16], "little")
    header = json.loads(container[16 : 16 + length])
    header["traces"][1]["graph"]["constants"][1] = {"kind": "trace_ref", **ref._asdict()}
    text = json.dumps(header).encode()
    bad = MAGIC + len(text).to_bytes(8, "little") + text + container[16 + length :]
    with pytest.raises(WireFormatError, match=match):
        loads_session(zstandard.ZstdCompressor(write_content_size=True).compress(bad))


def test_a_trace_ref_outside_a_session_is_refused():
    with pytest.raises(WireFormatError, match="dumps_session"):
        dumps(_graph([torch.zeros(1, 3), TraceRef(0, 0)]))


def test_a_version_1_graph_payload_is_still_read():
    payload = dumps(_graph([torch.zeros(1, 3)]))
    container = zstandard.ZstdDecompressor().decompress(payload)
    length = int.from_bytes(container[8:16], "little")
    header = json.loads(container[16 : 16 + length])
    assert header["schema_version"] == SCHEMA_VERSION == 4
    header["schema_version"] = 1
    text = json.dumps(header).encode()
    old = MAGIC + len(text).to_bytes(8, "little") + text + container[16 + length :]
    graph = loads(zstandard.ZstdCompressor(write_content_size=True).compress(old))
    assert [n.op for n in graph.nodes] == [Op.READ, Op.SAVE]


def test_remote_true_on_a_session_of_a_model_built_here_says_what_to_do():
    net = _net()
    with pytest.raises(nnsight.NNsightError, match=r"LanguageModel\(NAME\)"):
        with net.session(remote=True):
            with net.trace(torch.ones(1, 3)):
                net[2].output.save()
