"""A real run's saved values survive the results format (ir/results.py) unchanged."""

import torch

from nnsight_graph.ir.results import dumps_results, loads_results


def test_a_generate_runs_saved_values_come_back_equal(llm):
    with llm.generate("The Eiffel Tower is in the city of", max_new_tokens=2, run=False) as t:
        hidden = list().save()
        with t.iter[:]:
            hidden.append(llm.transformer.h[-1].output[:, -1])
        llm.generator.output.save()
        t.result.save()
    saved = llm.run(t.graph)
    back = loads_results(dumps_results(saved))
    assert back.keys() == saved.keys()
    for key, value in saved.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(back[key], value)
        else:
            assert type(back[key]) is type(value)
