"""The straight-line executor: on the plans it takes, the same results, printed output and
errors as the general executor; which plans it refuses; values freed at their last use."""

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph.backends import local, straight
from nnsight_graph.backends.local import execute
from nnsight_graph.backends.plan import Plan
from nnsight_graph.backends.straight import StraightPlan, StraightRun
from nnsight_graph.ir import Graph, Invoke, Node, Op, Ref

model_module = importlib.import_module("nnsight_graph.model")  # where the API calls execute()


class WithUnused(torch.nn.Module):
    """layer1 then layer2; `unused` is a submodule the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer1 = torch.nn.Linear(5, 10)
        self.layer2 = torch.nn.Linear(10, 2)
        self.unused = torch.nn.Linear(2, 2)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(x))


class Twice(torch.nn.Module):
    """One submodule called twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = torch.nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(x))


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand((2, 5), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def llm() -> nnsight.LanguageModel:
    """The tiny GPT-2 that ships with the package, loaded once for this file."""
    from nnsight_graph.models import tiny_gpt2_path

    return nnsight.LanguageModel(tiny_gpt2_path(), dispatch=True)


def line_of(marker: str) -> str:
    """The "file.py:N" of the line of this file that ends in `# mark: marker`."""
    lines = Path(__file__).read_text().splitlines()
    tag = "# mark: " + marker
    hits = [n for n, text in enumerate(lines, 1) if text.rstrip().endswith(tag)]
    assert len(hits) == 1, f"marker {tag!r} found {len(hits)} times"
    return f"{Path(__file__).name}:{hits[0]}"


def assert_same(a: Any, b: Any) -> None:
    """Equal values of the same types, tensors bit for bit (recursing into containers)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):  # also transformers' ModelOutput
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for left, right in zip(a, b, strict=True):
            assert_same(left, right)
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        assert_same(vars(a), vars(b))  # an object such as a transformers cache
    else:
        assert a == b


def _fresh(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


class Executors:
    """Runs graphs through the API (`model.run`) with the straight or the general executor.

    `nnsight_graph.model.execute` is wrapped so that `general=True` hands it the same plan
    with `straight=None`; `local.execute_straight` is wrapped to count its runs.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        self.capsys = capsys
        self.general = False
        self.plans: list[Plan] = []
        self.straight_runs = 0
        real_execute = model_module.execute
        real_straight = local.execute_straight

        def wrapped_execute(plan: Plan, *args: Any) -> dict[int, Any]:
            self.plans.append(plan)
            if self.general:
                plan = dataclasses.replace(plan, straight=None)
            return real_execute(plan, *args)

        def counted_straight(*args: Any) -> dict[int, Any]:
            self.straight_runs += 1
            return real_straight(*args)

        monkeypatch.setattr(model_module, "execute", wrapped_execute)
        monkeypatch.setattr(local, "execute_straight", counted_straight)

    def run(self, model: nnsight.NNsight, graph: Graph, general: bool) -> tuple[dict, str]:
        """Saved values and printed output of one run (on copies of the graph's constants)."""
        self.general = general
        copy = dataclasses.replace(graph, constants=[_fresh(c) for c in graph.constants])
        before = self.straight_runs
        self.capsys.readouterr()
        saved = model.run(copy)
        printed = self.capsys.readouterr().out
        assert self.straight_runs - before == (0 if general else 1)
        return saved, printed

    def compare(self, model: nnsight.NNsight, graph: Graph) -> tuple[dict, str]:
        """Run the graph with both executors, assert identical results; return them."""
        assert Plan.build(graph).straight is not None  # the recorded graph is straight ...
        saved, printed = self.run(model, graph, general=False)
        assert self.plans[-1].straight is not None  # ... and so is the plan that ran
        general_saved, general_printed = self.run(model, graph, general=True)
        assert saved, "nothing was saved: the comparison would be empty"
        assert_same(saved, general_saved)
        assert printed == general_printed
        return saved, printed

    def error(self, run: Callable[[], Any], general: bool) -> BaseException:
        """The exception a trace raises with one executor (and that executor really ran)."""
        self.general = general
        before = self.straight_runs
        with pytest.raises(Exception) as caught:
            run()
        assert self.straight_runs - before == (0 if general else 1)
        return caught.value


@pytest.fixture
def executors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Executors:
    return Executors(monkeypatch, capsys)


# 1. the same results -------------------------------------------------------------------------
# Each body records a graph without running the model and returns it.


def reads_and_saves(model, x):
    with model.trace(x, run=False) as tracer:
        model.layer1.input.save()
        model.layer1.output.save()
        model.layer2.output.save()
        model.output.save()
    return tracer.graph


def in_place_edit(model, x):
    with model.trace(x, run=False) as tracer:
        model.layer1.output.clone().save()
        model.layer1.output[:, 0] = 0
        model.layer1.output.save()
        model.layer2.output.save()
    return tracer.graph


def replacement(model, x):
    with model.trace(x, run=False) as tracer:
        model.layer1.output = model.layer1.output * 2
        model.layer2.output.save()
    return tracer.graph


def input_reads_and_writes(model, x):
    with model.trace(x, run=False) as tracer:
        model.layer1.input.save()
        model.layer1.input = model.layer1.input * 3
        model.layer2.inputs.save()
        model.layer2.inputs = ((model.layer2.inputs[0][0] + 1,), {})
        model.layer2.input[:, 1] = -1
        model.layer2.input.clone().save()
        model.output.save()
    return tracer.graph


def operations(model, x):
    with model.trace(x, run=False) as tracer:
        hidden = model.layer1.output
        (hidden * 2 + 1 - hidden / 4).save()
        torch.relu(hidden).save()
        torch.cat([hidden, hidden], dim=1).save()  # list and keyword arguments
        hidden.sum(dim=1, keepdim=True).save()
        hidden.shape.save()
        hidden.shape[1].save()
        hidden[:, 2:5].save()
        hidden.T.save()
        (-hidden).abs().argmax(dim=-1).save()
    return tracer.graph


def prints(model, x):
    with model.trace(x, run=False) as tracer:
        hidden = model.layer1.output
        print("layer1", hidden.sum(), hidden.shape)
        model.layer1.output[:, 0] = 100
        print("edited", model.layer1.output[:, 0])
        print("layer2", model.layer2.output.sum())
        model.output.save()
    return tracer.graph


def nodes_after_the_last_access(model, x):
    with model.trace(x, run=False) as tracer:
        out = model.layer2.output
        total = (out * 2).sum()
        total.save()
        torch.stack([total, out.max()]).save()
    return tracer.graph


def nodes_after_the_invoke(model, x):
    with model.trace(run=False) as tracer:
        with tracer.invoke(x):
            hidden = model.layer1.output
            out = model.layer2.output.save()
        (out.sum() + hidden.mean()).save()  # recorded outside the invoke
        print("after", out.shape)
    return tracer.graph


def output_read_twice(model, x):
    with model.trace(x, run=False) as tracer:
        first = model.layer1.output.clone()
        second = model.layer1.output
        (first - second).save()
        second.save()
        model.layer2.output.save()
        model.layer2.output.sum().save()
    return tracer.graph


NET_BODIES = [
    reads_and_saves,
    in_place_edit,
    replacement,
    input_reads_and_writes,
    operations,
    prints,
    nodes_after_the_last_access,
    nodes_after_the_invoke,
    output_read_twice,
]


@pytest.mark.parametrize("body", NET_BODIES, ids=lambda body: body.__name__)
def test_the_net_gives_the_same_results_with_both_executors(body, model, x, executors):
    executors.compare(model, body(model, x))


def test_prints_run_in_program_order(model, x, executors):
    _, printed = executors.compare(model, prints(model, x))
    lines = printed.splitlines()
    assert [line.split()[0] for line in lines] == ["layer1", "edited", "layer2"]
    assert "tensor([100., 100.])" in lines[1]


def test_the_edits_really_happen_on_the_straight_path(net, model, x, executors):
    with model.trace(x):
        before = model.layer1.output.clone().save()
        model.layer1.output[:, 0] = 0
        after = model.layer1.output.save()
        out = model.layer2.output.save()
    assert executors.straight_runs == 1
    hidden = net.layer1(x)
    assert torch.equal(before, hidden)
    hidden[:, 0] = 0
    assert torch.equal(after, hidden) and torch.equal(out, net.layer2(hidden))


def gpt2_reads(llm):
    with llm.trace("The Eiffel Tower is in", run=False) as tracer:
        llm.transformer.h[0].output.save()
        llm.transformer.h[1].attn.output.save()
        llm.transformer.h[2].mlp.input.save()
        llm.lm_head.output.save()
        llm.output.save()
    return tracer.graph


def gpt2_edits(llm):
    with llm.trace(["Hello there", "The Eiffel Tower is in"], run=False) as tracer:
        hidden = llm.transformer.h[0].output.clone().save()
        llm.transformer.h[0].output[:, 0] = 0
        llm.transformer.h[1].mlp.output = llm.transformer.h[1].mlp.output * 2
        llm.transformer.h[2].output.clone().save()
        llm.transformer.ln_f.input[:, -1] = hidden[:, -1]
        logits = llm.lm_head.output
        logits[:, :-1].clone().save()
        logits.softmax(dim=-1)[:, -1].argmax(dim=-1).save()
        print("logits", logits.shape, logits[0, -1, :3])
    return tracer.graph


def gpt2_read_twice(llm):
    with llm.trace("Hello", run=False) as tracer:
        llm.transformer.h[3].input.shape.save()
        first = llm.transformer.h[3].output.norm()
        second = llm.transformer.h[3].output[:, -1]
        torch.stack([first, second.sum()]).save()
        llm.lm_head.output[0, -1].topk(3).indices.save()
    return tracer.graph


@pytest.mark.parametrize(
    "body", [gpt2_reads, gpt2_edits, gpt2_read_twice], ids=lambda body: body.__name__
)
def test_gpt2_gives_the_same_results_with_both_executors(body, llm, executors):
    executors.compare(llm, body(llm))


def test_a_normal_trace_goes_through_execute_straight(net, model, x, executors, clean):
    with model.trace(x):
        model.layer1.output[:, 1] = 0
        out = model.output.save()
    assert executors.straight_runs == 1
    hidden = net.layer1(x)
    hidden[:, 1] = 0
    assert torch.equal(out, net.layer2(hidden))
    with model.trace() as tracer:  # two invokes: the general executor
        with tracer.invoke(x):
            model.layer1.output.save()
        with tracer.invoke(x):
            model.layer2.output.save()
    assert executors.straight_runs == 1
    assert clean(net)


def test_an_invoke_over_part_of_the_batch_goes_to_the_general_executor(net, executors):
    nodes = [
        Node(0, Op.READ, "layer1.output"),
        Node(1, Op.SAVE, "", (Ref(0),)),
    ]
    plan = Plan.build(Graph(nodes=nodes, invokes=[Invoke(0, (), {}, 0, 1)]))
    assert plan.straight is not None
    x = torch.rand(2, 5)
    saved = execute(plan, [], net.get_submodule, lambda: net(x), 2)
    assert executors.straight_runs == 0
    assert torch.equal(saved[0], net.layer1(x)[:1])
    saved = execute(plan, [], net.get_submodule, lambda: net(x[:1]), 1)
    assert executors.straight_runs == 1
    assert torch.equal(saved[0], net.layer1(x[:1]))


def test_nodes_before_the_first_access_run_before_the_model(net):
    nodes = [
        Node(0, Op.CALL, "torch.full", ((2, 10), 0.5)),
        Node(1, Op.WRITE, "layer2.input", (Ref(0),)),
        Node(2, Op.READ, "layer2.output"),
        Node(3, Op.SAVE, "", (Ref(2),)),
    ]
    plan = Plan.build(Graph(nodes=nodes, invokes=[Invoke(0, (), {}, 0, 2)]))
    assert plan.straight is not None and [s.node.id for s in plan.straight.before] == [0]
    x = torch.rand(2, 5)
    saved = execute(plan, [], net.get_submodule, lambda: net(x), 2)
    general = execute(
        dataclasses.replace(plan, straight=None), [], net.get_submodule, lambda: net(x), 2
    )
    assert_same(saved, general)
    assert torch.equal(saved[2], net.layer2(torch.full((2, 10), 0.5)))


# 2. the plans it refuses ---------------------------------------------------------------------


def two_invokes(model, x):
    with model.trace(run=False) as tracer:
        with tracer.invoke(x):
            model.layer1.output.save()
        with tracer.invoke(x):
            model.layer2.output.save()
    return tracer.graph


def guard(model, x):
    with model.trace(x, run=False) as tracer:
        hidden = model.layer1.output
        if hidden.sum() > 0:
            hidden.save()
    return tracer.graph


def stop(model, x):
    with model.trace(x, run=False) as tracer:
        model.layer1.output.save()
        tracer.stop()
    return tracer.graph


def gradient(model, x):
    with model.trace(x, run=False) as tracer:
        hidden = model.layer1.output
        hidden.requires_grad_(True)
        loss = model.output.sum()
        with loss.backward():
            hidden.grad.save()
    return tracer.graph


def skip(model, x):
    with model.trace(x, run=False) as tracer:
        model.layer2.skip(torch.zeros(2, 2))
        model.output.save()
    return tracer.graph


def source(model, x):
    with model.trace(x, run=False) as tracer:
        model.layer1.source.F_linear_0.output.save()
    return tracer.graph


def cache(model, x):
    with model.trace(x, run=False) as tracer:
        tracer.cache()
    return tracer.graph


def result(model, x):
    with model.trace(x, run=False) as tracer:
        tracer.result().save()
    return tracer.graph


def module_called_on_a_traced_value(model, x):
    with model.trace(x, run=False) as tracer:
        model.layer2(model.layer1.output).save()
    return tracer.graph


def next_step(model, x):
    twice = nnsight.NNsight(Twice())
    with twice.trace(x, run=False) as tracer:
        twice.block.output.save()
        tracer.next()
        twice.block.output.save()
    return tracer.graph


@pytest.mark.parametrize(
    "body",
    [
        two_invokes,
        guard,
        stop,
        gradient,
        skip,
        source,
        cache,
        result,
        module_called_on_a_traced_value,
        next_step,
    ],
    ids=lambda body: body.__name__,
)
def test_plans_that_need_the_general_executor(body, model, x):
    plan = Plan.build(body(model, x))
    assert plan.straight is None
    assert StraightPlan.of(plan) is None


def test_generation_steps_need_the_general_executor(llm):
    with llm.generate("Hello", max_new_tokens=2, run=False) as tracer:
        with tracer.iter[:]:
            llm.lm_head.output.save()
    assert Plan.build(tracer.graph).straight is None


def test_a_value_from_outside_the_invoke_needs_the_general_executor():
    nodes = [
        Node(0, Op.CALL, "torch.zeros", (2, 10), invoke=-1),
        Node(1, Op.WRITE, "layer1.output", (Ref(0),), invoke=0),
    ]
    plan = Plan.build(Graph(nodes=nodes, invokes=[Invoke(0, (), {}, 0, 2)]))
    assert plan.straight is None


# 3. the same errors --------------------------------------------------------------------------


def out_of_order(model, x):
    with model.trace(x):
        model.layer2.output.save()
        model.layer1.output.save()


def never_called(model, x):
    with model.trace(x):
        model.layer1.output.save()
        model.unused.output.save()


def never_called_first(model, x):
    with model.trace(x):
        model.unused.output.save()
        model.layer2.output.save()


def bad_index(model, x):
    with model.trace(x):
        model.layer1.output[:, 10] = 0  # mark: bad index
        model.layer2.output.save()


@pytest.mark.parametrize(
    ("body", "error_type", "match"),
    [
        (out_of_order, nnsight.OutOfOrderError, "after reading model.layer2.output"),
        (never_called, nnsight.ModuleNotCalledError, "model.unused.output requested"),
        (never_called_first, nnsight.ModuleNotCalledError, "model.unused.output requested"),
        (bad_index, IndexError, "index 10 is out of bounds"),
    ],
    ids=["out_of_order", "never_called", "never_called_first", "bad_index"],
)
def test_errors_are_the_same_and_leave_no_hooks(body, error_type, match, x, executors, clean):
    # a fresh model each time: once it has run, validation would catch some of these first
    errors = []
    for general in (False, True):
        net = WithUnused()
        model = nnsight.NNsight(net)
        error = executors.error(lambda model=model: body(model, x), general)
        assert isinstance(error, error_type) and match in str(error)
        assert clean(net)
        with model.trace(x):  # the next trace works
            out = model.output.save()
        assert torch.equal(out, net(x))
        errors.append(error)
    straight_error, general_error = errors
    assert type(straight_error) is type(general_error)
    assert str(straight_error) == str(general_error)
    assert getattr(straight_error, "__notes__", []) == getattr(general_error, "__notes__", [])


def test_an_error_in_intervention_code_names_the_line_on_the_straight_path(x, executors):
    model = nnsight.NNsight(WithUnused())
    error = executors.error(lambda: bad_index(model, x), general=False)
    assert isinstance(error, IndexError)
    (note,) = error.__notes__
    assert line_of("bad index") in note
    assert "model.layer1.output[:, 10] = 0" in note


@pytest.mark.parametrize("debug", [True, False])
def test_errors_match_when_executed_directly(debug, net, clean):
    x = torch.rand(2, 5)
    nodes = [
        Node(0, Op.READ, "layer1.output"),
        Node(1, Op.SETITEM, "", (Ref(0), (slice(None), 10), 0)),
    ]
    graph = Graph(nodes=nodes, invokes=[Invoke(0, (), {}, 0, 2)])
    plan = Plan.build(graph)
    assert plan.straight is not None
    errors = []
    for each in (plan, dataclasses.replace(plan, straight=None)):
        with pytest.raises(IndexError) as caught:
            execute(each, [], net.get_submodule, lambda: net(x), 2, debug)
        errors.append(caught.value)
        assert clean(net)
    assert str(errors[0]) == str(errors[1])
    assert getattr(errors[0], "__notes__", []) == getattr(errors[1], "__notes__", [])


# 4. memory -----------------------------------------------------------------------------------


def early_use_graph() -> Graph:
    """%0 (layer1's output) is used only by %1, before layer2 runs."""
    nodes = [
        Node(0, Op.READ, "layer1.output"),
        Node(1, Op.METHOD, "sum", (Ref(0),)),
        Node(2, Op.READ, "layer2.output"),
        Node(3, Op.METHOD, "sum", (Ref(2),)),
        Node(4, Op.CALL, "operator.add", (Ref(1), Ref(3))),
        Node(5, Op.SAVE, "", (Ref(4),)),
    ]
    return Graph(nodes=nodes, invokes=[Invoke(0, (), {}, 0, 1)])


def test_each_value_is_freed_by_its_last_user():
    plan = Plan.build(early_use_graph()).straight
    assert plan is not None
    steps = [*plan.before, *plan.after]
    for access in plan.accesses:
        steps += [access, *access.then]
    frees = {step.node.id: set(step.frees) for step in steps if step.frees}
    assert frees == {1: {0}, 3: {2}, 4: {1, 3}, 5: {4}}
    assert {step.node.id for step in steps if step.keep} == {0, 1, 2, 3, 4}


def test_a_value_is_gone_from_the_env_after_its_last_use(net):
    plan = Plan.build(early_use_graph()).straight
    assert plan is not None
    run = StraightRun(plan, [], True)
    x = torch.rand(1, 5)
    hidden = net.layer1(x)
    out = net.layer2(hidden)
    run.fire(("layer1", "output"), hidden)
    assert set(run.env) == {1}  # the read %0 was freed by its only user, the sum
    run.fire(("layer2", "output"), out)
    assert run.env == {}
    assert torch.equal(run.saved[4], hidden.sum() + out.sum())


def test_values_are_freed_while_the_model_runs(net, model, x, monkeypatch):
    runs: list[StraightRun] = []

    class Spy(StraightRun):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            runs.append(self)

    monkeypatch.setattr(straight, "StraightRun", Spy)
    seen: list[dict[int, Any]] = []
    handle = net.layer2.register_forward_pre_hook(
        lambda module, args: seen.append(dict(runs[-1].env))
    )
    try:
        with model.trace(x) as tracer:
            early = model.layer1.output.sum()
            total = (model.layer2.output.sum() + early).save()
    finally:
        handle.remove()
    assert len(runs) == 1
    graph = str(tracer.graph).splitlines()
    assert graph[0].startswith("%0 = read layer1.output") and graph[1].startswith("%1 = method sum")
    assert list(seen[0]) == [1]  # layer1's output is not held while layer2 runs
    assert runs[0].env == {}  # nothing is left once the run is over
    hidden = net.layer1(x)
    assert torch.equal(total, net.layer2(hidden).sum() + hidden.sum())
