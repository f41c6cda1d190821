"""Calling a module on traced values (`llm.lm_head(llm.transformer.ln_f(h))`): a call_module
node whose target is the module's path, so the graph is data and serializes."""

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph.ir import Op
from nnsight_graph.ir.registry import RegistryError
from nnsight_graph.ir.wire import dumps, loads

PROMPT = "The Eiffel Tower is in the city of"


def _logit_lens(llm):
    with llm.trace(PROMPT, run=False) as tracer:
        hidden = llm.transformer.h[1].output
        llm.lm_head(llm.transformer.ln_f(hidden)).save()
        llm.lm_head.output.save()
    return tracer.graph


def test_a_module_call_is_recorded_by_its_path(llm):
    graph = _logit_lens(llm)
    calls = [node for node in graph.nodes if node.op is Op.CALL_MODULE]
    assert [node.target for node in calls] == ["transformer.ln_f", "lm_head"]
    assert "call_module lm_head(%" in str(graph)
    assert not any(isinstance(c, torch.nn.Module) for c in graph.constants)


def test_the_call_equals_the_plain_modules_and_is_not_one_of_their_steps(llm, hf, tokenizer):
    with llm.trace(PROMPT):
        hidden = llm.transformer.h[1].output
        lens = llm.lm_head(llm.transformer.ln_f(hidden)).save()
        logits = llm.lm_head.output.save()  # still the model's own (first) call of lm_head
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        states = hf(ids, output_hidden_states=True)
        expected = hf.lm_head(hf.transformer.ln_f(states.hidden_states[2]))
    assert torch.allclose(lens, expected, atol=1e-5)
    assert torch.allclose(logits, states.logits, atol=1e-5)


def test_a_graph_with_module_calls_is_saved_loaded_and_run_with_the_same_results(llm):
    graph = _logit_lens(llm)
    loaded = loads(dumps(graph))
    assert not loaded.trusted
    ours, theirs = llm.run(graph), llm.run(loaded)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key])


def test_a_loaded_call_of_a_module_the_model_lacks_is_refused(llm):
    graph = _logit_lens(llm)
    nodes = [n._replace(target="nope") if n.op is Op.CALL_MODULE else n for n in graph.nodes]
    with pytest.raises(RegistryError, match="'nope'"):
        llm.run(loads(dumps(graph.with_nodes(nodes))))


# local only: about what a local trace may call; test_remote_local.py checks the remote error
@pytest.mark.local_only
def test_another_models_module_is_a_local_function_that_does_not_serialize(make_net):
    first, second = make_net(), make_net()
    model, other = nnsight.NNsight(first), nnsight.NNsight(second)
    x = torch.rand(1, 5)
    with model.trace(x) as tracer:
        out = other.layer2(model.layer1.output).save()
    assert torch.allclose(out, second.layer2(first.layer1(x)))
    with pytest.raises(nnsight.WireFormatError, match="no wire form"):
        dumps(tracer.graph)
