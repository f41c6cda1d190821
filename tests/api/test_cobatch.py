"""Co-batching in-process: jobs merged into one forward pass give each job exactly what it
gets alone, see only their own rows, and an error fails only its own job."""

from dataclasses import replace

import pytest
import torch

from nnsight_graph.ir.limits import SERVER
from nnsight_graph.ir.results import loads_results
from nnsight_graph.ir.wire import dumps
from nnsight_graph.remote.cobatch import input_widths, merge, merge_key, run_batch, split
from nnsight_graph.remote.execution import run_graph

PROMPTS = ["The Eiffel Tower is in the city of", "Buckingham Palace is in the city of",
           "The Colosseum is in the city of"]
WIDTH = 6


def _ids(llm, prompt):
    return torch.tensor([llm.tokenizer(prompt)["input_ids"][:WIDTH]])


def _jobs(llm):
    """Three users' traces, each with its own interventions."""
    with llm.trace(_ids(llm, PROMPTS[0])) as a:
        llm.transformer.h[1].output[:] = 0
        llm.lm_head.output.save()
    with llm.trace(_ids(llm, PROMPTS[1])) as b:
        llm.transformer.h[0].output[:, -1] = llm.transformer.h[0].output[:, 0]
        llm.transformer.h[2].output.save()
        llm.lm_head.output.argmax(dim=-1).save()
    with llm.trace(torch.cat([_ids(llm, PROMPTS[2]), _ids(llm, PROMPTS[0])])) as c:
        llm.transformer.h[3].output.mean(dim=-1).save()  # two rows
    return [a.graph, b.graph, c.graph]


def test_merged_jobs_get_what_each_gets_alone(llm):
    graphs = _jobs(llm)
    keys = {merge_key(g, input_widths(llm, g)) for g in graphs}
    assert len(keys) == 1 and None not in keys
    alone = [run_graph(llm, replace(g, trusted=False), SERVER) for g in graphs]
    merged, spans = merge(graphs)
    assert len(merged.invokes) == 3 and merged.invokes[-1].stop == 4  # rows 0, 1, 2-3
    together = split(run_graph(llm, merged, SERVER), spans)
    for one, other in zip(alone, together, strict=True):
        assert sorted(one) == sorted(other)
        for node in one:
            assert torch.allclose(one[node], other[node], atol=1e-5), node


def test_a_job_cannot_name_a_row_it_does_not_own(llm):
    from nnsight_graph.ir import BatchIndexError

    with pytest.raises(BatchIndexError, match="owns 1 row"):  # refused before any run
        with llm.trace(_ids(llm, PROMPTS[1])):
            llm.transformer.h[0].output[1].save()  # in a merged batch: another job's row


def test_an_error_in_one_job_fails_only_that_job(llm):
    graphs = _jobs(llm)
    bad = llm.trace(_ids(llm, PROMPTS[1]))
    with pytest.raises(IndexError), bad:
        llm.transformer.h[0].output[:, 99].save()  # past the end: IndexError when it runs
    payloads = [dumps(graphs[0]), dumps(bad.graph), dumps(graphs[2])]
    first, error, third = run_batch(llm, payloads, SERVER)
    assert isinstance(error, IndexError)
    assert loads_results(first) and loads_results(third)
    alone = loads_results(run_batch(llm, [payloads[0]], SERVER)[0])
    (logits,) = alone.values()
    assert torch.allclose(next(iter(loads_results(first).values())), logits, atol=1e-5)


@pytest.mark.parametrize("body", ["stop", "skip", "print", "result", "width", "generate"])
def test_jobs_that_reach_beyond_their_rows_run_alone(llm, body):
    ids = _ids(llm, PROMPTS[0])
    method = llm.generate if body == "generate" else llm.trace
    with method(ids if body != "width" else PROMPTS[0], max_new_tokens=2) \
            if body == "generate" else method(ids if body != "width" else [PROMPTS[0], "Hi"]) \
            as tracer:
        if body == "stop":
            llm.transformer.h[0].output.save()
            tracer.stop()
        elif body == "skip":
            llm.transformer.h[1].skip(llm.transformer.h[0].output)
        elif body == "print":
            print(llm.transformer.h[0].output.shape)
        elif body == "result":
            tracer.result.save()
        else:
            llm.lm_head.output.save()
    assert merge_key(tracer.graph, input_widths(llm, tracer.graph)) is None
