"""Memory: a trace keeps no tensor alive after it ends beyond the values it saved.

Plans are cached per code location and reused; they must hold the graph's structure only, not
the first trace's inputs or the values it wrote into the model.
"""

from __future__ import annotations

import gc
import weakref
from collections import OrderedDict

import torch

import nnsight_graph as nnsight


def make_model() -> tuple[torch.nn.Module, nnsight.NNsight]:
    torch.manual_seed(0)
    layers = OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    net = torch.nn.Sequential(layers).requires_grad_(False)
    return net, nnsight.NNsight(net)


def one_input(model: nnsight.NNsight, x: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    with model.trace(x):
        model.layer1.output = patch
        out = model.layer2.output.save()
    return out


def two_invokes(model: nnsight.NNsight, x: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    with model.trace() as tracer:
        with tracer.invoke(x):
            model.layer1.output = patch
        with tracer.invoke(x):
            out = model.layer2.output.save()
    return out


def test_inputs_and_written_values_are_not_kept_after_the_trace():
    for trace in (one_input, two_invokes):  # the straight and the general executor
        _, model = make_model()
        for _ in range(3):  # the first run builds and caches the plan, later runs reuse it
            x, patch = torch.rand(1, 5), torch.rand(1, 10)
            x_ref, patch_ref = weakref.ref(x), weakref.ref(patch)
            out = trace(model, x, patch)
            assert isinstance(out, torch.Tensor)
            del x, patch, out
            gc.collect()
            assert x_ref() is None, trace.__name__
            assert patch_ref() is None, trace.__name__
        assert len(model._plans) == 1


def test_unsaved_intermediates_are_not_kept_after_the_trace():
    net, model = make_model()
    seen: list[weakref.ref] = []
    watch = net.layer1.register_forward_hook(
        lambda m, args, output: seen.append(weakref.ref(output))
    )
    try:
        with model.trace(torch.rand(1, 5)):
            doubled = model.layer1.output * 2  # used, never saved
            model.layer2.input = doubled
            out = model.layer2.output.save()
    finally:
        watch.remove()
    gc.collect()
    assert isinstance(out, torch.Tensor)
    assert len(seen) == 1 and seen[0]() is None


def test_repeated_traces_keep_only_the_last_saved_value():
    _, model = make_model()
    outputs: list[weakref.ref] = []
    for _ in range(20):
        with model.trace(torch.rand(1, 5)):
            out = model.layer2.output.save()
        outputs.append(weakref.ref(out))
    gc.collect()
    alive = [ref for ref in outputs if ref() is not None]
    assert alive == [outputs[-1]]  # only the value still bound to `out`


def test_the_transform_binds_no_names_of_its_own_in_the_caller():
    """Its temporaries (`with` contexts, `if` tests) would pin invokes and inputs in globals."""
    _, model = make_model()
    before = set(globals())

    def traced() -> dict:
        with model.trace() as tracer:
            with tracer.invoke(torch.rand(1, 5)):
                hidden = model.layer1.output
                if hidden.sum() > 0:
                    out = model.layer2.output.save()
        return dict(locals())

    names = traced()
    internal = [n for n in (*names, *globals()) if n.startswith("__nnsight")]
    assert internal == []
    assert set(globals()) == before
    assert {"tracer", "hidden"} <= set(names) <= {"tracer", "hidden", "out", "model"}
