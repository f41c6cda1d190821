"""Traces in several threads at once: each trace sees only its own values.

Every interleaving here is forced, not left to luck: a worker thread is held at a gate (a
module whose forward waits on an event the test controls, or a plain call in a trace body
that waits while the body is recorded) while the test's own thread traces, and is released
afterwards. Every wait has a timeout, so a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import torch

from nnsight_graph import ModuleNotCalledError, NNsight, capture
from nnsight_graph.ir import node as ir_node

TIMEOUT = 10.0  # seconds any wait may take before the test fails


class Gate(torch.nn.Module):
    """The identity; in a thread that a Worker holds, its forward waits for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.local()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        events = getattr(self.held, "events", None)
        if events is not None:
            wait(*events)
        return x


def wait(arrived: threading.Event, release: threading.Event) -> None:
    """Say that this thread arrived, then wait until the test releases it."""
    arrived.set()
    if not release.wait(TIMEOUT):
        raise TimeoutError("the test never released this thread")


class Block(torch.nn.Module):
    """gate -> layer1 -> layer2: a worker held at the gate has its hooks in place already."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()
        self.layer1 = torch.nn.Linear(5, 10)
        self.layer2 = torch.nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.gate(x)
        hidden = self.layer1(hidden)
        return self.layer2(hidden)


def make_block_net(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(OrderedDict([("block", Block())])).requires_grad_(False)


class Worker:
    """Runs `function` in a thread of its own; with a gate, its forwards wait there."""

    def __init__(self, function: Callable[[], Any], gate: Gate | None = None) -> None:
        self.function = function
        self.gate = gate
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.gate is not None:
            self.gate.held.events = (self.arrived, self.release)
        try:
            self.result = self.function()
        except BaseException as error:  # handed to the test's thread by finish()
            self.error = error

    def start_and_hold(self) -> Worker:
        """Start the thread and return once it waits at its gate."""
        self.thread.start()
        if not self.arrived.wait(TIMEOUT):
            self.release.set()
            self.thread.join(TIMEOUT)
            raise AssertionError(f"the worker never reached its gate: {self.error!r}")
        return self

    def finish(self) -> Any:
        """Release the thread, wait for it to end; its result (or its error, raised here)."""
        self.release.set()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the worker did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


def inputs(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.rand((1, 5), generator=generator) for _ in range(count)]


def expected(net: torch.nn.Sequential, x: torch.Tensor, zero_first: bool = False) -> tuple:
    """layer1's output (with its column 0 zeroed if asked) and layer2's, computed directly."""
    hidden = net.block.layer1(x)
    if zero_first:
        hidden = hidden.clone()
        hidden[:, 0] = 0
    return hidden, net.block.layer2(hidden)


# the same model in two threads ----------------------------------------------------------


def test_same_model_two_threads_each_trace_gets_its_own_values(clean):
    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)

    def trace_a():
        with model.trace(xa):
            model.block.layer1.output[:, 0] = 0
            a1 = model.block.layer1.output.clone().save()
            a2 = model.block.layer2.output.save()
        return a1, a2

    worker = Worker(trace_a, net.block.gate).start_and_hold()  # A's hooks are in place
    with model.trace(xb):
        b1 = model.block.layer1.output.clone().save()
        b2 = model.block.layer2.output.save()
    a1, a2 = worker.finish()

    want_a1, want_a2 = expected(net, xa, zero_first=True)
    want_b1, want_b2 = expected(net, xb)
    assert torch.equal(b1, want_b1) and torch.equal(b2, want_b2)  # A's edit did not reach B
    assert torch.equal(a1, want_a1) and torch.equal(a2, want_a2)  # B's values did not reach A
    assert clean(net)


def test_a_plain_forward_in_another_thread_is_not_changed_by_a_held_trace(clean):
    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)
    _, want_b = expected(net, xb)

    def trace_a():
        with model.trace(xa):
            model.block.layer1.output[:] = 0
            out = model.block.layer2.output.save()
        return out

    worker = Worker(trace_a, net.block.gate).start_and_hold()
    plain = net(xb)  # runs through A's hooks, which must pass it on untouched
    out = worker.finish()

    assert torch.equal(plain, want_b)
    assert torch.equal(out, net.block.layer2(torch.zeros(1, 10)))
    assert clean(net)


def test_same_model_general_executor_two_invokes_in_two_threads(clean):
    net = make_block_net()
    model = NNsight(net)
    xa, xb, xc = inputs(3)

    def trace_a():
        with model.trace() as tracer:
            with tracer.invoke(xa):
                a = model.block.layer2.output.save()
            with tracer.invoke(xb):
                model.block.layer1.output[:] = 1
                b = model.block.layer2.output.save()
        return a, b

    worker = Worker(trace_a, net.block.gate).start_and_hold()
    with model.trace(xc):
        c = model.block.layer2.output.save()
    a, b = worker.finish()

    assert torch.equal(c, net(xc))
    assert torch.allclose(a, net(xa))
    assert torch.allclose(b, net.block.layer2(torch.ones(1, 10)))
    assert clean(net)


def test_a_forward_that_found_the_hook_of_a_run_that_ended_since_passes_through(clean):
    """torch takes a copy of a module's pre-hooks, then asks for each whether it wants keyword
    arguments: a run that ends in between leaves its hook in the copy but not that mark."""
    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)
    in_copy, a_done = threading.Event(), threading.Event()
    b_thread: list[int] = []

    def pause_b(module, args):  # registered first: runs before the run's own pre-hook
        if b_thread and threading.get_ident() == b_thread[0]:
            in_copy.set()
            a_done.wait(TIMEOUT)

    handle = net.block.layer1.register_forward_pre_hook(pause_b)

    def trace_a():
        with model.trace(xa):
            given = model.block.layer1.input.clone().save()
        a_done.set()
        return given

    def forward_b():
        b_thread.append(threading.get_ident())
        return net(xb)

    try:
        a = Worker(trace_a, net.block.gate).start_and_hold()  # A's pre-hook is on layer1
        b = Worker(forward_b)
        b.thread.start()
        assert in_copy.wait(TIMEOUT)  # B has copied the hooks, A's among them
        given = a.finish()  # A ends and takes its hook and its mark out
        plain = b.finish()  # B calls A's hook without keyword arguments
    finally:
        handle.remove()
    assert torch.equal(given, xa)
    assert torch.equal(plain, net(xb))
    assert clean(net)


def test_first_runs_in_two_threads_each_learn_the_true_call_order():
    solo = NNsight(make_block_net())
    with solo.trace(inputs(1)[0]):
        solo.block.layer2.output.save()
    assert solo._facts is not None and solo._facts.order  # what a run on its own learns

    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)

    def trace_a():
        with model.trace(xa):
            out = model.block.layer2.output.save()
        return out

    worker = Worker(trace_a, net.block.gate).start_and_hold()  # A's first run is watched
    net(torch.cat([xb, xb]))  # calls every module again, in this thread
    out = worker.finish()

    assert torch.equal(out, net(xa))
    assert model._facts == solo._facts


def test_a_held_scan_leaves_real_traces_in_another_thread_real():
    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)
    kinds: list[str] = []
    handle = net.block.layer2.register_forward_hook(lambda m, i, o: kinds.append(type(o).__name__))

    def scan_a():
        with model.scan(xa):
            width = model.block.layer1.output.shape[-1]
            model.block.layer1.output[:] = 0  # in A's fake run only
            out = model.block.layer2.output
        return width, out

    try:
        worker = Worker(scan_a, net.block.gate).start_and_hold()  # fake tensors in A only
        with model.trace(xb):
            b = model.block.layer2.output.save()
        width, out = worker.finish()
    finally:
        handle.remove()
    assert type(b) is torch.Tensor and torch.equal(b, net(xb))
    assert width == 10 and tuple(out.shape) == (1, 2)
    assert sorted(kinds) == ["FakeTensor", "Tensor"]


@pytest.mark.parametrize("seed", [0, 1])
def test_many_threads_trace_one_model_at_random_switch_points(seed, clean):
    """Not forced: four threads, 40 traces each, with the interpreter switching threads
    every few microseconds; a complement to the forced tests above."""
    net = make_block_net()
    model = NNsight(net)
    generator = torch.Generator().manual_seed(seed)
    xs = [torch.rand((1, 5), generator=generator) for _ in range(4)]
    wants = [(net.block.layer1(x), net.block.layer2(net.block.layer1(x) * 0.5)) for x in xs]

    def traces(index: int) -> Callable[[], Any]:
        def run():
            x = xs[index]
            for _ in range(40):
                with model.trace(x):
                    hidden = model.block.layer1.output.clone().save()
                    model.block.layer1.output[:] = model.block.layer1.output * 0.5
                    out = model.block.layer2.output.save()
                want_hidden, want_out = wants[index]
                if not (torch.equal(hidden, want_hidden) and torch.allclose(out, want_out)):
                    return "wrong values"
            return "ok"

        return run

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [Worker(traces(i)) for i in range(4)]
        for worker in workers:
            worker.thread.start()
        results = [worker.finish() for worker in workers]
    finally:
        sys.setswitchinterval(interval)
    assert results == ["ok"] * 4
    assert clean(net)


# two models in two threads --------------------------------------------------------------


def test_two_models_record_at_once_without_a_nested_trace_error():
    first, second = NNsight(make_block_net(0)), NNsight(make_block_net(1))
    xa, xb = inputs(2)
    arrived, release = threading.Event(), threading.Event()

    def trace_a():
        with first.trace(xa) as tracer:
            hidden = first.block.layer1.output.save()
            wait(arrived, release)  # plain code: runs while the body is recorded
            out = first.block.layer2.output.save()
        return hidden, out, str(tracer.graph)

    worker = Worker(trace_a)
    worker.thread.start()
    assert arrived.wait(TIMEOUT)  # A is recording its body
    with second.trace(xb) as tracer_b:
        b = second.block.layer2.output.save()
    release.set()
    hidden, out, graph_a = worker.finish()

    assert torch.equal(b, second._module(xb))
    assert torch.equal(hidden, first._module.block.layer1(xa))
    assert torch.equal(out, first._module(xa))
    assert len(tracer_b.graph.nodes) == 2  # B's read and save only: nothing went to A
    assert graph_a.count(" = read ") == 2


def test_same_model_records_in_two_threads_at_once():
    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)
    arrived, release = threading.Event(), threading.Event()

    def trace_a():
        with model.trace(xa):
            wait(arrived, release)
            out = model.block.layer2.output.save()
        return out

    worker = Worker(trace_a)
    worker.thread.start()
    assert arrived.wait(TIMEOUT)
    with model.trace(xb):
        b = model.block.layer2.output.save()
    release.set()
    assert torch.equal(worker.finish(), net(xa))
    assert torch.equal(b, net(xb))


def test_two_models_run_at_once_in_two_threads(clean):
    first_net, second_net = make_block_net(0), make_block_net(1)
    first, second = NNsight(first_net), NNsight(second_net)
    xa, xb = inputs(2)

    def trace_a():
        with first.trace(xa):
            out = first.block.layer1.output.save()
        return out

    worker = Worker(trace_a, first_net.block.gate).start_and_hold()
    with second.trace(xb):
        b = second.block.layer1.output.save()
    assert torch.equal(worker.finish(), first_net.block.layer1(xa))
    assert torch.equal(b, second_net.block.layer1(xb))
    assert clean(first_net) and clean(second_net)


def test_a_trace_in_another_thread_does_not_join_a_session_being_recorded():
    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)
    arrived, release = threading.Event(), threading.Event()

    def session_a():
        with model.session():
            with model.trace(xa):
                a = model.block.layer2.output.save()
            wait(arrived, release)  # the session body is being recorded
        return a

    worker = Worker(session_a)
    worker.thread.start()
    assert arrived.wait(TIMEOUT)
    with model.trace(xb):
        b = model.block.layer2.output.save()
    assert torch.equal(b, net(xb))  # ran at the end of its own block, not at A's session end
    release.set()
    assert torch.equal(worker.finish(), net(xa))


# forwards replaced during a run: .source and .skip() ------------------------------------


def trace_source(model: NNsight, x: torch.Tensor, scale: float) -> Callable[[], Any]:
    def run():
        with model.trace(x):
            hidden = model.block.source.self_layer1_0.output
            hidden[:] = hidden * scale
            seen = hidden.clone().save()
            out = model.block.output.save()
        return seen, out

    return run


@pytest.mark.parametrize("first_to_finish", ["A", "B"])
def test_overlapping_source_traces_see_their_own_sites_and_restore_the_forward(
    first_to_finish, clean
):
    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)
    gate = net.block.gate
    a = Worker(trace_source(model, xa, 2.0), gate).start_and_hold()  # inside A's forward
    b = Worker(trace_source(model, xb, 3.0), gate).start_and_hold()  # and inside B's
    if first_to_finish == "A":
        seen_a, out_a = a.finish()
        seen_b, out_b = b.finish()
    else:
        seen_b, out_b = b.finish()
        seen_a, out_a = a.finish()

    for (seen, out), x, scale in (((seen_a, out_a), xa, 2.0), ((seen_b, out_b), xb, 3.0)):
        hidden = net.block.layer1(x) * scale
        assert torch.allclose(seen, hidden)
        assert torch.allclose(out, net.block.layer2(hidden))
    assert "forward" not in net.block.__dict__  # no patched forward left behind
    assert torch.equal(net(xa), net.block.layer2(net.block.layer1(xa)))
    assert clean(net)


def test_a_plain_trace_does_not_see_a_held_source_trace_of_another_thread():
    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)
    worker = Worker(trace_source(model, xa, 2.0), net.block.gate).start_and_hold()
    with model.trace(xb):
        out = model.block.output.save()
    seen_a, out_a = worker.finish()
    assert torch.equal(out, net(xb))
    assert torch.allclose(out_a, net.block.layer2(net.block.layer1(xa) * 2))
    assert "forward" not in net.block.__dict__


def trace_skip(model: NNsight, x: torch.Tensor, fill: float | None) -> Callable[[], Any]:
    def run():
        with model.trace(x):
            if fill is not None:
                model.block.layer1.skip(torch.full((1, 10), fill))
            out = model.block.layer2.output.save()
        return out

    return run


@pytest.mark.parametrize("first_to_finish", ["A", "B"])
@pytest.mark.parametrize("fill_b", [None, 2.0], ids=["B-plain", "B-skips"])
def test_overlapping_skips_keep_to_their_own_thread(first_to_finish, fill_b, clean):
    net = make_block_net()
    model = NNsight(net)
    xa, xb = inputs(2)
    gate = net.block.gate
    a = Worker(trace_skip(model, xa, 1.0), gate).start_and_hold()
    b = Worker(trace_skip(model, xb, fill_b), gate).start_and_hold()
    first, second = (a, b) if first_to_finish == "A" else (b, a)
    first.finish()
    second.finish()

    assert torch.equal(a.result, net.block.layer2(torch.full((1, 10), 1.0)))
    if fill_b is None:
        assert torch.equal(b.result, net(xb))  # A's skip did not reach B
    else:
        assert torch.equal(b.result, net.block.layer2(torch.full((1, 10), fill_b)))
    assert "forward" not in net.block.layer1.__dict__
    assert torch.equal(net(xa), net.block.layer2(net.block.layer1(xa)))
    assert clean(net)


def test_a_skip_keeps_a_forward_the_module_had_of_its_own():
    net = make_block_net()
    layer1 = net.block.layer1
    plain = layer1.forward

    def own(x):  # a forward set on the instance, as some libraries do
        return plain(x) + 100

    layer1.forward = own  # type: ignore[method-assign]
    model = NNsight(net)
    (x,) = inputs(1)
    with model.trace(x):
        model.block.layer1.skip(torch.zeros(1, 10))
        skipped = model.block.layer2.output.save()
    with model.trace(x):
        kept = model.block.layer2.output.save()
    assert torch.equal(skipped, net.block.layer2(torch.zeros(1, 10)))
    assert torch.equal(kept, net.block.layer2(plain(x) + 100))  # its own forward ran
    assert layer1.__dict__["forward"] is own  # and is back in place


# shared state below the API ---------------------------------------------------------------


def test_skipping_a_body_restores_each_threads_own_trace_function():
    """`sys.settrace` is per thread: two bodies skipped in two threads at once, the first
    one ending first, must give each thread back the trace function it had."""
    captured = types.SimpleNamespace(empty=False)
    mine, theirs = (lambda *args: None), (lambda *args: None)
    a_skipped, b_skipped, a_ended = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def suspended_frame():
        def body():
            yield

        generator = body()
        return generator, generator.gi_frame

    def thread_a():
        sys.settrace(theirs)
        try:
            generator, frame = suspended_frame()
            capture.skip_body(frame)
            a_skipped.set()
            b_skipped.wait(TIMEOUT)
            capture.end(frame, captured, capture.SkipBody)  # ends while B's skip is open
            seen["a"] = sys.gettrace()
        finally:
            sys.settrace(None)
            a_ended.set()

    worker = Worker(thread_a)
    previous = sys.gettrace()
    worker.thread.start()
    assert a_skipped.wait(TIMEOUT)
    sys.settrace(mine)
    try:
        generator, frame = suspended_frame()
        capture.skip_body(frame)
        b_skipped.set()
        a_ended.wait(TIMEOUT)
        capture.end(frame, captured, capture.SkipBody)
        seen["b"] = sys.gettrace()
    finally:
        sys.settrace(previous)
        b_skipped.set()
    worker.finish()
    assert seen == {"a": theirs, "b": mine}


def test_growing_the_shared_ref_table_from_two_threads_keeps_each_id_at_its_index(monkeypatch):
    """A thread that grows the table while another one is half-way through growing it."""
    real = ir_node.Ref
    start = len(ir_node._REFS)
    pausing, other_started = threading.Event(), threading.Event()
    holder = threading.get_ident()

    def slow_ref(id: int) -> ir_node.Ref:
        if threading.get_ident() == holder and not pausing.is_set():
            pausing.set()  # pause once, inside the growth, until the other thread tried
            other_started.wait(TIMEOUT)
            threading.Event().wait(0.05)  # let the other thread run into its own growth
        return real(id)

    monkeypatch.setattr(ir_node, "Ref", slow_ref)
    try:

        def other():
            assert pausing.wait(TIMEOUT)
            other_started.set()
            return ir_node.ref(start + 40)

        worker = Worker(other)
        worker.thread.start()
        mine = ir_node.ref(start + 20)
        theirs = worker.finish()
        assert mine == real(start + 20) and theirs == real(start + 40)
        table = ir_node._REFS
        assert all(table[i].id == i for i in range(len(table)))
    finally:
        del ir_node._REFS[start:]


def test_first_traces_of_a_lazy_model_in_two_threads_load_it_once(path, monkeypatch):
    from nnsight_graph import LanguageModel, language

    real_load = language._load
    loads: list[int] = []
    b_started = threading.Event()

    def slow_load(*args: Any) -> Any:
        loads.append(threading.get_ident())
        if len(loads) == 1:  # the first loader waits until the other thread wants weights too
            b_started.wait(TIMEOUT)
            threading.Event().wait(0.2)
        return real_load(*args)

    monkeypatch.setattr(language, "_load", slow_load)
    lazy = LanguageModel(path)

    def trace(prompt: str) -> Callable[[], Any]:
        def run():
            with lazy.trace(prompt):
                logits = lazy.lm_head.output.save()
            return logits

        return run

    def second():
        b_started.set()
        return trace("The Colosseum is in")()

    a, b = Worker(trace("The Eiffel Tower is in")), Worker(second)
    a.thread.start()
    b.thread.start()
    logits_a, logits_b = a.finish(), b.finish()

    assert len(loads) == 1  # one thread loaded; the other used its weights
    want_a, want_b = trace("The Eiffel Tower is in")(), trace("The Colosseum is in")()
    assert torch.allclose(logits_a, want_a, atol=1e-5)
    assert torch.allclose(logits_b, want_b, atol=1e-5)


class Pooled(torch.nn.Module):
    """Runs layer1 in a worker thread of its own, as some model code does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = torch.nn.Linear(5, 10)
        self.layer2 = torch.nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box: list[torch.Tensor] = []
        worker = threading.Thread(target=lambda: box.append(self.layer1(x)))
        worker.start()
        worker.join(TIMEOUT)
        return self.layer2(box[0])


@pytest.mark.parametrize("invokes", [1, 2], ids=["straight", "general"])
def test_a_module_run_in_a_worker_thread_is_an_error_that_says_so(invokes, line_of, clean):
    torch.manual_seed(0)
    net = Pooled().requires_grad_(False)
    model = NNsight(net)
    (x,) = inputs(1)
    with pytest.raises(ModuleNotCalledError) as caught:
        with model.trace() as tracer:
            for _ in range(invokes):
                with tracer.invoke(x):
                    hidden = model.layer1.output.save()  # mark: pooled
    message = str(caught.value)
    assert line_of("pooled") in message and "model.layer1" in message
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "model.layer1 ran in another thread during this run" in notes
    assert "thread that runs it" in notes
    assert clean(net)
    assert "hidden" not in locals()


def test_generations_in_two_threads_each_get_their_own_tokens(llm):
    """A generation held in its second forward (a pre-hook of the test's own) while another
    thread generates from a different prompt: each gets the tokens it gets alone."""
    block = llm._module.transformer.h[0]
    held: dict[int, int] = {}  # thread id -> forwards of block 0 seen
    arrived, release = threading.Event(), threading.Event()

    def hold_second_step(module, args):
        ident = threading.get_ident()
        if ident in held:
            held[ident] += 1
            if held[ident] == 2:
                wait(arrived, release)

    def generate(prompt: str, zero: bool) -> Callable[[], Any]:
        def run():
            with llm.generate(prompt, max_new_tokens=3) as tracer:
                with tracer.iter[:] as step:
                    if zero and step == 1:
                        llm.transformer.h[0].output[:] = 0
                output = llm.generator.output.save()
            return output

        return run

    def held_run():
        held[threading.get_ident()] = 0
        return generate("The Eiffel Tower is in", True)()

    handle = block.register_forward_pre_hook(hold_second_step)
    try:
        worker = Worker(held_run)
        worker.thread.start()
        assert arrived.wait(TIMEOUT)  # A is in step 1, its hooks on the model
        other = generate("The Colosseum is in", False)()
        release.set()
        mine = worker.finish()
    finally:
        handle.remove()
    assert torch.equal(other, generate("The Colosseum is in", False)())
    assert torch.equal(mine, generate("The Eiffel Tower is in", True)())
    assert not torch.equal(mine, generate("The Eiffel Tower is in", False)())  # the edit counts
