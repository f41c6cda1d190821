"""`tracer.cache()` as in nnsight 0.8.1: per-call entries, keys, navigation, invoke rows,
generation steps, device/dtype/detach, and the errors of a wrong request."""

import pickle

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph import Graph, NNsight

PROMPT = "The Eiffel Tower is in"


def _plain_outputs(llm, prompt, paths):
    """Each module's first output on a plain run of the wrapped model (no tracing)."""
    outputs = {}
    modules = llm._module
    handles = [
        modules.get_submodule(p).register_forward_hook(
            lambda m, i, o, p=p: outputs.setdefault(p, o)
        )
        for p in paths
    ]
    try:
        modules(llm.tokenizer(prompt, return_tensors="pt").input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


class _Partly(torch.nn.Module):
    """A net whose `unused` submodule never runs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = torch.nn.Linear(5, 5)
        self.unused = torch.nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


# keys, entries and their fields ----------------------------------------------------------


def test_keys_follow_the_order_modules_finished_and_the_root_is_model(model):
    with model.trace(torch.rand(3, 5)) as tracer:
        cache = tracer.cache()
    assert cache.keys() == ["model.layer1", "model.layer2", "model"]  # nnsight 0.8.1's order
    assert list(cache) == cache.keys() and len(cache) == 3
    assert repr(cache) == "CacheView(root, cached=['model.layer1', 'model.layer2', 'model'])"
    assert repr(cache["model.layer1"]) == "CacheView('model.layer1', cached=['model.layer1'])"
    assert cache["model"].output.shape == (3, 2)


def test_an_entry_holds_output_and_none_for_what_was_not_cached(llm):
    with llm.trace(PROMPT) as tracer:
        cache = tracer.cache()
    expected = _plain_outputs(llm, PROMPT, ["transformer.h.0", "lm_head"])
    entry = cache["model.transformer.h.0"]
    assert torch.allclose(entry.output, expected["transformer.h.0"])
    assert entry.inputs is None and entry.input is None  # include_inputs=False
    assert len(entry) == 1
    assert torch.allclose(cache.model.lm_head.output, expected["lm_head"])
    assert type(cache["model"].output).__name__ == "CausalLMOutputWithCrossAttentions"
    paths = [name for name, _ in llm._module.named_modules() if name]
    ran = _plain_outputs(llm, PROMPT, paths)
    assert set(cache.keys()) == {f"model.{p}" for p in ran} | {"model"}  # those that ran


def test_inputs_only_with_modules_named_by_strings_and_envoys(llm):
    with llm.trace(PROMPT) as tracer:
        cache = tracer.cache(
            modules=["model.transformer.h.0", "transformer.h.1", llm.lm_head],
            include_output=False,
            include_inputs=True,
        )
    assert cache.keys() == ["model.transformer.h.0", "model.transformer.h.1", "model.lm_head"]
    expected = _plain_outputs(llm, PROMPT, ["transformer.h.0", "transformer.h.1"])
    block = cache["model.transformer.h.1"]
    assert block.output is None
    args, kwargs = block.inputs
    assert isinstance(args, tuple) and isinstance(kwargs, dict)
    assert torch.allclose(args[0], expected["transformer.h.0"])
    assert block.input is args[0]
    final_norm = _plain_outputs(llm, PROMPT, ["transformer.ln_f"])["transformer.ln_f"]
    assert torch.allclose(cache.model.lm_head.input, final_norm)


def test_values_are_kept_after_the_interventions_at_each_module(model):
    with model.trace(torch.rand(2, 5)) as tracer:
        cache = tracer.cache(modules=[model.layer1])
        model.layer1.output[:] = 1
    assert torch.equal(cache["model.layer1"].output, torch.ones(2, 10))


def test_modules_that_never_ran_are_not_listed():
    model = NNsight(_Partly())
    with model.trace(torch.rand(2, 5)) as tracer:
        every = tracer.cache()
        chosen = tracer.cache(modules=[model.unused])
    assert every.keys() == ["model.used", "model"]
    assert chosen.keys() == [] and "model.unused" not in chosen
    with pytest.raises(KeyError, match="'model.unused' was not cached: it never ran"):
        _ = chosen.model.unused.output


def test_tracer_stop_keeps_the_module_it_stopped_at(model):
    with model.trace(torch.rand(2, 5)) as tracer:
        cache = tracer.cache()
        hidden = model.layer1.output.save()
        tracer.stop()
    assert cache.keys() == ["model.layer1"]
    assert torch.equal(cache["model.layer1"].output, hidden)


# navigation ---------------------------------------------------------------------------------


def test_paths_attributes_and_indices_reach_the_same_entry(llm):
    with llm.trace(PROMPT) as tracer:
        cache = tracer.cache()
    value = cache["model.transformer.h.0"].output
    assert cache.model.transformer.h[0].output is value
    assert cache.transformer.h[0].output is value  # nnsight's short form
    assert cache["transformer.h.0"].output is value
    assert cache["model.transformer"]["h.0"].output is value  # below a node (nnsight fails)
    assert cache["model.transformer"].h[0].output is value
    assert cache["model.transformer.h"][0].output is value
    assert cache.model.transformer.h["0"].output is value
    assert [layer.output for layer in cache.model.transformer.h][0] is value
    assert "model.transformer.h.3.mlp" in cache and "transformer.h.3.mlp" in cache
    assert "model.transformer.h" not in cache and "model.nothing" not in cache
    assert cache.model.transformer.h[3].mlp.keys() == [
        "model.transformer.h.3.mlp.c_fc",
        "model.transformer.h.3.mlp.act",
        "model.transformer.h.3.mlp.c_proj",
        "model.transformer.h.3.mlp.dropout",
        "model.transformer.h.3.mlp",
    ]
    with pytest.raises(AttributeError, match="is not a module of the model"):
        _ = cache.model.config
    with pytest.raises(KeyError, match="the cache root is not a module"):
        _ = cache.output


def test_a_pickled_cache_is_read_by_key_without_the_model(llm):
    with llm.trace(PROMPT) as tracer:
        cache = tracer.cache(modules=[llm.transformer.h[0]])
    loaded = pickle.loads(pickle.dumps(cache))
    value = cache["model.transformer.h.0"].output
    assert torch.equal(loaded["model.transformer.h.0"].output, value)
    assert torch.equal(loaded.model.transformer.h[0].output, value)
    assert loaded.keys() == ["model.transformer.h.0"]


def test_the_cache_is_read_after_the_block(model):
    with pytest.raises(KeyError, match="filled when the trace has run"):
        with model.trace(torch.rand(2, 5)) as tracer:
            cache = tracer.cache()
            print(cache["model.layer1"].output)
    with model.trace(torch.rand(2, 5), run=False) as tracer:
        cache = tracer.cache()
    with pytest.raises(KeyError, match="filled when the trace has run"):
        _ = cache.model.layer1.output


# invokes and steps ----------------------------------------------------------------------


def test_a_cache_in_an_invoke_holds_only_that_invoke_s_rows(llm):
    with llm.trace() as tracer:
        with tracer.invoke(PROMPT):
            first = tracer.cache(modules=[llm.transformer.h[0]])
        with tracer.invoke(["Hello world", "A b c d e f g"]):
            second = tracer.cache(modules=[llm.transformer.h[1]])
            llm.transformer.h[0].output[:] = 0
        with tracer.invoke():
            everyone = tracer.cache(modules=[llm.transformer.h[0]])
    with llm.trace(PROMPT):
        alone = llm.transformer.h[0].output.save()
    assert first.keys() == ["model.transformer.h.0"] and second.keys() == ["model.transformer.h.1"]
    own = first["model.transformer.h.0"].output
    assert own.shape[0] == 1 and second["model.transformer.h.1"].output.shape[0] == 2
    assert torch.allclose(own[:, -alone.shape[1] :], alone, atol=1e-5)  # left-padded prompt
    whole = everyone["model.transformer.h.0"].output
    assert whole.shape[0] == 3
    assert torch.equal(whole[:1], own) and whole[1:].abs().sum() == 0  # after the 2nd's edit


def test_in_generate_an_entry_is_a_list_per_step(llm):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        cache = tracer.cache(modules=[llm.transformer.h[0], "model.lm_head"], include_inputs=True)
        outputs = list().save()
        for _ in tracer.iter[:]:
            outputs.append(llm.transformer.h[0].output)
    block = cache["model.transformer.h.0"]
    assert len(block) == 3 and len(cache.model.lm_head) == 3
    assert [tuple(o.shape) for o in block.output] == [(1, 5, 128), (1, 1, 128), (1, 1, 128)]
    assert all(torch.equal(c, o) for c, o in zip(block.output, outputs, strict=True))
    assert [i.shape for i in block.input] == [o.shape for o in block.output]
    assert all(isinstance(i, tuple) and len(i) == 2 for i in block.inputs)
    with llm.generate(PROMPT, max_new_tokens=1) as tracer:
        once = tracer.cache(modules=[llm.transformer.h[0]])
    assert isinstance(once["model.transformer.h.0"].output, torch.Tensor)  # one call: no list


def test_a_generate_cache_of_every_module_has_the_generator_and_its_streamer(llm):
    with llm.generate(PROMPT, max_new_tokens=2) as tracer:
        cache = tracer.cache()
        ids = tracer.result.save()
    assert cache.keys()[0] == "model.generator.streamer"  # the prompt reaches it first
    assert cache.keys()[-2:] == ["model", "model.generator"]
    assert torch.equal(cache["model.generator"].output, ids)
    streamed = cache.model.generator.streamer.output
    assert torch.equal(torch.cat([streamed[0][0], *streamed[1:]]), ids[0])
    assert len(cache["model"]) == 2  # one forward pass per new token


# options and errors ---------------------------------------------------------------------


def test_cached_tensors_are_detached_and_cast_as_asked(make_net):
    model = NNsight(make_net().requires_grad_(True))
    with model.trace(torch.rand(2, 5)) as tracer:
        detached = tracer.cache(modules=[model.layer1])
        attached = tracer.cache(modules=[model.layer1], detach=False, device=None)
        halves = tracer.cache([model.layer1], "cpu", torch.float16)  # nnsight's positions
    assert not detached["model.layer1"].output.requires_grad
    assert attached["model.layer1"].output.requires_grad
    assert halves["model.layer1"].output.dtype == torch.float16
    assert torch.allclose(
        halves["model.layer1"].output.float(), detached["model.layer1"].output, atol=1e-2
    )


def test_a_wrong_module_names_the_line_and_close_keys(model, line_of):
    with pytest.raises(nnsight.GraphBuildError) as error:
        with model.trace(torch.rand(2, 5)) as tracer:
            tracer.cache(modules=["model.layr1"])  # mark: typo
    message = str(error.value)
    assert message.startswith(line_of("typo")) or line_of("typo") in message
    assert "no module 'model.layr1'" in message and "Did you mean 'model.layer1'" in message
    with pytest.raises(nnsight.GraphBuildError, match="takes modules .* not Proxy"):
        with model.trace(torch.rand(2, 5)) as tracer:
            tracer.cache(modules=[model.layer1.output])
    with pytest.raises(nnsight.GraphBuildError, match="pass a torch dtype"):
        with model.trace(torch.rand(2, 5)) as tracer:
            tracer.cache(dtype="half")
    with pytest.raises(nnsight.GraphBuildError, match="caches nothing"):
        with model.trace(torch.rand(2, 5)) as tracer:
            tracer.cache(include_output=False)


def test_a_cache_node_survives_the_wire_format(model, tmp_path):
    x = torch.rand(2, 5)
    with model.trace(x) as tracer:
        tracer.cache(modules=[model.layer2], dtype=torch.float64, include_inputs=True)
    path = tmp_path / "graph.nnsg"
    tracer.graph.save(path)
    loaded = Graph.load(path)
    assert loaded.nodes == tracer.graph.nodes
    (values,) = model.run(loaded).values()
    assert values[("layer2", "output")][0].dtype == torch.float64
    assert torch.allclose(values[("layer2", "input")][0][0][0], model._module.layer1(x).double())


def test_an_edit_cannot_hold_a_cache(model):
    with pytest.raises(nnsight.GraphBuildError, match="cannot be part of an edit"):
        with model.edit() as (tracer, edited):
            tracer.cache()


def test_a_loaded_cache_node_may_name_only_a_dtype(model):
    from dataclasses import replace

    with model.trace(torch.rand(2, 5), run=False) as tracer:
        tracer.cache(modules=[model.layer1])
    graph = tracer.graph
    nodes = [
        n._replace(kwargs={**n.kwargs, "dtype": "load"}) if n.op == "cache" else n
        for n in graph.nodes
    ]
    with pytest.raises(nnsight.ValidationError, match="'load' as its dtype, which is not a torch"):
        model.run(replace(graph, nodes=nodes))
