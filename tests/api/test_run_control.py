"""What a server's worker controls in a run: generation steps reported as they begin, and a
cancelled run stopped at its next node or step (backends.guard.cancellable)."""

import pytest

from nnsight_graph.backends.guard import RunCancelled, cancellable
from nnsight_graph.ir.results import loads_results
from nnsight_graph.ir.wire import dumps
from nnsight_graph.remote.execution import run_payload

PROMPT = "The Eiffel Tower is in the city of"


def _payload(llm, steps, body):
    with llm.generate(PROMPT, max_new_tokens=steps) as tracer:
        body()
    return dumps(tracer.graph)


def test_each_step_of_a_generation_is_reported_as_it_begins(llm):
    payload = _payload(llm, 4, lambda: llm.generator.output.save())
    seen = []
    values = loads_results(run_payload(llm, payload, on_step=lambda n, total: seen.append((n, total))))
    (tokens,) = values.values()
    made = tokens.shape[-1] - len(llm.tokenizer(PROMPT)["input_ids"])
    assert made >= 2  # the shipped model may end early at its end-of-text token
    assert seen == [(n, 4) for n in range(1, made + 1)]


def test_a_cancelled_generation_stops_at_its_next_step_without_nodes_between(llm):
    payload = _payload(llm, 50, lambda: llm.generator.output.save())
    seen = []
    with cancellable(lambda: len(seen) >= 2), pytest.raises(RunCancelled, match="cancelled"):
        run_payload(llm, payload, on_step=lambda n, total: seen.append(n))
    assert seen == [1, 2]


def test_a_cancelled_trace_stops_at_its_next_node(llm):
    with llm.trace(PROMPT) as tracer:
        llm.transformer.h[0].output.save()
    payload = dumps(tracer.graph)
    with cancellable(lambda: True), pytest.raises(RunCancelled):
        run_payload(llm, payload)
    assert loads_results(run_payload(llm, payload))  # not cancelled: it runs
