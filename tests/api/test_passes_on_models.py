"""The optimizing passes on real models: every recorded trace gives the same saved values with
the full pipeline as with validation only (and as the executor on the recorded graph)."""

from collections.abc import Callable
from typing import Any

import pytest
import torch

import nnsight_graph as nnsight
import nnsight_graph.model as model_module
from nnsight_graph.backends import execute_graph
from nnsight_graph.ir import Graph, Node, Op, ref
from nnsight_graph.passes import VALIDATION, run_passes

transformers = pytest.importorskip("transformers")


def validate_only(graph: Graph, facts: Any = None, debug: bool = False) -> Graph:
    for validate in VALIDATION:
        graph = validate(graph, facts)
    return graph


def assert_same(expected: Any, got: Any) -> None:
    if isinstance(expected, dict):
        assert expected.keys() == got.keys()
        for key in expected:
            assert_same(expected[key], got[key])
    elif isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor)
        assert expected.shape == got.shape
        assert torch.equal(expected, got)
    else:
        assert type(expected) is type(got)
        assert expected == got


Trace = Callable[[nnsight.NNsight, Any], tuple[dict[str, Any], Graph]]


def check(
    trace: Trace,
    make_module: Callable[[], torch.nn.Module],
    inputs: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[dict[str, Any], Graph]:
    """Run `trace` with the full pipeline and with validation only; the saved values must be
    the same, and so must a rerun of its graph and the executor on the un-optimized graph.
    Returns the optimized values and the recorded graph."""
    torch.manual_seed(0)
    model = nnsight.NNsight(make_module())
    optimized, graph = trace(model, inputs)
    with monkeypatch.context() as patched:
        patched.setattr(model_module, "run_passes", validate_only)
        torch.manual_seed(0)
        plain, _ = trace(nnsight.NNsight(make_module()), inputs)
    assert_same(plain, optimized)

    torch.manual_seed(0)
    rerun = model.run(graph)  # the model has facts now: validated against the call order
    module = make_module()
    torch.manual_seed(0)
    baseline = execute_graph(graph, module, lambda: module(inputs), inputs.shape[0])
    assert_same(baseline, rerun)

    smaller = run_passes(graph, model._facts, debug=True)
    assert len(smaller) < len(graph), "the pipeline was expected to simplify this graph"
    return optimized, graph


# the walkthrough's 2-layer net ----------------------------------------------------------------


@pytest.fixture
def inputs() -> torch.Tensor:
    return torch.rand((3, 5), generator=torch.Generator().manual_seed(1))


def repeated_reads(model: nnsight.NNsight, x: torch.Tensor) -> tuple[dict[str, Any], Graph]:
    with model.trace(x) as tracer:
        a = model.layer1.output
        b = model.layer1.output
        total = (a.sum() + b.sum()).save()
        double = (a * 2 + b * 2).save()
        width = (model.layer1.output.shape[-1] + model.layer1.output.shape[-1]).save()
        out = model.layer2.output.save()
    return {"total": total, "double": double, "width": width, "out": out}, tracer.graph


def test_repeated_reads_are_merged_with_the_same_results(monkeypatch, inputs, make_net):
    values, graph = check(repeated_reads, make_net, inputs, monkeypatch)
    optimized = run_passes(graph, None, debug=True)
    reads = [n for n in optimized.nodes if n.op is Op.READ and n.target == "layer1.output"]
    assert len(reads) == 1
    assert values["width"] == 20
    assert torch.allclose(values["total"], make_net().layer1(inputs).sum() * 2)


def edit_between_reads(model: nnsight.NNsight, x: torch.Tensor) -> tuple[dict[str, Any], Graph]:
    with model.trace(x) as tracer:
        first = model.layer1.output.sum()
        again = model.layer1.output.sum()
        before = model.layer1.output.clone().save()
        model.layer1.output[:, 0] = 0
        after = model.layer1.output.save()
        sums = (first + again).save()
        edited = (model.layer1.output.sum() + model.layer1.output.sum()).save()
        out = model.layer2.output.save()
    names = {"before": before, "after": after, "sums": sums, "edited": edited, "out": out}
    return names, tracer.graph


def test_reads_around_an_in_place_edit_see_different_values(monkeypatch, inputs, make_net):
    values, _ = check(edit_between_reads, make_net, inputs, monkeypatch)
    assert not torch.equal(values["before"], values["after"])
    assert torch.equal(values["after"][:, 0], torch.zeros(3))
    assert torch.allclose(values["sums"], values["before"].sum() * 2)
    assert torch.allclose(values["edited"], values["after"].sum() * 2)


def constant_arithmetic(model: nnsight.NNsight, x: torch.Tensor) -> tuple[dict[str, Any], Graph]:
    with model.trace(x) as tracer:
        scaled = (model.layer1.output * (2 * 3)).save()
        rows = (model.layer1.output.shape[0] * 2 + model.layer1.output.shape[0] * 2).save()
        model.layer2.input = model.layer1.output * (2 * 3)
        out = model.layer2.output.save()
    return {"scaled": scaled, "rows": rows, "out": out}, tracer.graph


def test_constant_arithmetic_gives_the_same_results(monkeypatch, inputs, make_net):
    values, _ = check(constant_arithmetic, make_net, inputs, monkeypatch)
    net = make_net()
    assert values["rows"] == 12
    assert torch.allclose(values["out"], net.layer2(net.layer1(inputs) * 6))


def test_constants_folded_in_a_recorded_graph_give_the_same_results(inputs, make_net):
    model = nnsight.NNsight(make_net())
    with model.trace(inputs) as tracer:
        scaled = (model.layer1.output * 6).save()
    recorded = tracer.graph
    # the same graph with 6 computed by nodes: %100 = 2 * 3, used where the literal was
    product = Node(100, Op.CALL, "operator.mul", (2, 3), {}, 0, 0, recorded.nodes[1].loc)
    uses = [n._replace(args=(n.args[0], ref(100))) if n.args[1:] == (6,) else n for n in recorded]
    computed = recorded.with_nodes([product, *uses])
    assert "call operator.mul(%0, %100)" in str(computed)
    optimized = run_passes(computed, None, debug=True)
    assert str(optimized) == str(run_passes(recorded, None, debug=True))
    saved = model.run(computed)
    net = make_net()
    baseline = execute_graph(computed, net, lambda: net(inputs), 3)
    assert_same(baseline, saved)
    assert torch.equal(saved[1], scaled)


def random_values(model: nnsight.NNsight, x: torch.Tensor) -> tuple[dict[str, Any], Graph]:
    with model.trace(x) as tracer:
        hidden = model.layer1.output
        first = torch.randn_like(hidden).save()
        second = torch.randn_like(hidden).save()
        torch.randn_like(hidden)  # unused, but it draws: what follows must not change
        model.layer1.output = hidden + 0.1 * torch.randn_like(model.layer1.output)
        third = torch.rand_like(model.layer1.output).save()
        spread = (first.std() + first.std()).save()
        out = model.layer2.output.save()
    names = {"first": first, "second": second, "third": third, "spread": spread, "out": out}
    return names, tracer.graph


def test_random_calls_are_not_merged_and_draw_the_same_values(monkeypatch, inputs, make_net):
    values, graph = check(random_values, make_net, inputs, monkeypatch)
    assert values["first"].shape == values["second"].shape == (3, 10)
    assert not torch.equal(values["first"], values["second"])
    optimized = run_passes(graph, None, debug=True)
    assert sum(n.target == "torch.randn_like" for n in optimized.nodes) == 4


def test_a_traced_list_changed_in_place_keeps_the_change(model, x, make_net):
    with model.trace(x):
        values = model.layer2.output[0].tolist()
        values.append(123.0)
        values.save()

    assert values == [*make_net()(x)[0].tolist(), 123.0]


def two_invokes(model: nnsight.NNsight, x: torch.Tensor) -> tuple[dict[str, Any], Graph]:
    with model.trace() as tracer:
        with tracer.invoke(x[:1]):
            a = (model.layer1.output.sum() + model.layer1.output.sum()).save()
        with tracer.invoke(x[1:]):
            b = (model.layer1.output.mean() * model.layer1.output.mean()).save()
            out = model.layer2.output.save()
    return {"a": a, "b": b, "out": out}, tracer.graph


def test_repeats_inside_each_invoke_are_merged_with_the_same_results(monkeypatch, inputs, make_net):
    values, graph = check(two_invokes, make_net, inputs, monkeypatch)
    optimized = run_passes(graph, None, debug=True)
    assert sorted(n.invoke for n in optimized.nodes if n.op is Op.READ) == [0, 1, 1]
    assert values["out"].shape == (2, 2)


# a small GPT-2 --------------------------------------------------------------------------------


def make_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(2))


def gpt2_repeated_reads(model: nnsight.NNsight, ids: torch.Tensor):
    with model.trace(ids) as tracer:
        mlp = model.transformer.h[0].mlp.output
        both = (mlp.sum() + model.transformer.h[0].mlp.output.sum()).save()
        norm = (model.transformer.ln_f.output * model.transformer.ln_f.output).save()
        logits = model.lm_head.output.save()
    return {"both": both, "norm": norm, "logits": logits}, tracer.graph


def test_gpt2_repeated_reads(monkeypatch, ids):
    values, _ = check(gpt2_repeated_reads, make_gpt2, ids, monkeypatch)
    assert torch.allclose(values["logits"], make_gpt2()(ids).logits)


def gpt2_edit_between_reads(model: nnsight.NNsight, ids: torch.Tensor):
    with model.trace(ids) as tracer:
        first = model.transformer.h[0].mlp.output.sum()
        before = model.transformer.h[0].mlp.output.clone().save()
        model.transformer.h[0].mlp.output[:, 0] = 0
        after = model.transformer.h[0].mlp.output.save()
        edited = (model.transformer.h[0].mlp.output.sum() + first).save()
        scaled = model.transformer.h[1].mlp.output * (2 * 3)
        model.transformer.h[1].mlp.output = scaled
        shape = (model.transformer.h[1].mlp.output.shape[-1] * 2).save()
        logits = model.lm_head.output.save()
    names = {"before": before, "after": after, "edited": edited, "shape": shape}
    return {**names, "logits": logits}, tracer.graph


def test_gpt2_edits_and_constant_arithmetic(monkeypatch, ids):
    values, _ = check(gpt2_edit_between_reads, make_gpt2, ids, monkeypatch)
    assert not torch.equal(values["before"], values["after"])
    assert torch.equal(values["after"][:, 0], torch.zeros(2, 32))
    assert values["shape"] == 64
    assert not torch.allclose(values["logits"], make_gpt2()(ids).logits)


def gpt2_random(model: nnsight.NNsight, ids: torch.Tensor):
    with model.trace(ids) as tracer:
        hidden = model.transformer.h[0].mlp.output
        noise = torch.randn_like(hidden).save()
        other = torch.randn_like(hidden).save()
        model.transformer.h[0].mlp.output = hidden + noise
        logits = model.lm_head.output.save()
        again = model.lm_head.output.save()
        total = (model.lm_head.output.sum() + model.lm_head.output.sum()).save()
    names = {"noise": noise, "other": other, "logits": logits, "again": again, "total": total}
    return names, tracer.graph


def test_gpt2_random_noise_is_not_merged(monkeypatch, ids):
    values, _ = check(gpt2_random, make_gpt2, ids, monkeypatch)
    assert values["noise"].shape == (2, 8, 32)
    assert not torch.equal(values["noise"], values["other"])
    assert torch.equal(values["logits"], values["again"])
