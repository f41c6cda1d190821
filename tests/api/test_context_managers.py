"""A trace beside other context managers: in one `with` statement (before or after the
trace's item), under a decorator, inside helpers and methods, and through an ExitStack.

Items before the trace's are entered first and are in effect while the model runs (as in
nnsight). Items after it are entered by the trace's body while it is recorded, so they are
open while the body's own code runs (in nnsight 0.8.1 they are already closed then) and
closed before the model runs (as in nnsight: `with model.trace(x), torch.no_grad():` does
not run the model under no_grad).
"""

import contextlib
import functools
import importlib.util
import textwrap

import pytest
import torch

import nnsight_graph as nnsight


@pytest.fixture
def grad_model(make_net) -> nnsight.NNsight:
    """The walkthrough net with parameters that require grad: its outputs do too."""
    return nnsight.NNsight(make_net().requires_grad_(True))


class Recording:
    """A context manager that logs its enter and exit (with the exception type it saw)."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def __enter__(self) -> "Recording":
        self.log.append(f"enter {self.name}")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.log.append(f"exit {self.name} {exc_type.__name__ if exc_type else None}")
        return False


# items before the trace's ----------------------------------------------------------------------


def test_no_grad_before_the_trace_is_in_effect_while_the_model_runs(grad_model, x):
    with torch.no_grad(), grad_model.trace(x):
        hidden = grad_model.layer1.output.save()
    with grad_model.trace(x):
        plain = grad_model.layer1.output.save()
    assert hidden.requires_grad is False
    assert plain.requires_grad is True  # the check above is not vacuous
    assert torch.equal(hidden, plain)
    assert torch.is_grad_enabled()


def test_inference_mode_before_the_trace_makes_inference_tensors(grad_model, x):
    with torch.inference_mode(), grad_model.trace(x) as tracer:
        hidden = grad_model.layer1.output.save()
        out = grad_model.output.save()
    assert isinstance(tracer, nnsight.Tracer)
    assert hidden.is_inference() and out.is_inference()
    assert not torch.is_inference_mode_enabled()


def test_items_before_the_trace_are_bound_and_exit_after_it_ran(model, x):
    log: list[str] = []
    with Recording("a", log) as a, Recording("b", log) as b, model.trace(x) as tracer:
        log.append("body")
        out = model.output.save()
    assert log == ["enter a", "enter b", "body", "exit b None", "exit a None"]
    assert (a.name, b.name) == ("a", "b")
    assert isinstance(tracer, nnsight.Tracer) and out.shape == (1, 2)


def test_open_file_before_the_trace_is_open_in_the_body(model, x):
    with open(__file__) as handle, model.trace(x):
        first = handle.readline()
        out = model.layer2.output.save()
    assert first.startswith('"""A trace beside')
    assert handle.closed and out.shape == (1, 2)


# items after the trace's ------------------------------------------------------------------------


def test_items_after_the_trace_are_entered_once_around_its_body(model, x):
    log: list[str] = []
    with model.trace(x) as tracer, Recording("c", log) as c:
        log.append("body")
        out = model.output.save()
    assert log == ["enter c", "body", "exit c None"]
    assert c.name == "c" and isinstance(tracer, nnsight.Tracer)
    assert out.shape == (1, 2)


def test_open_file_after_the_trace_is_open_in_the_body(model, x):
    # nnsight 0.8.1 runs this body after the file was closed: "I/O operation on closed file"
    with model.trace(x) as tracer, open(__file__) as handle:
        first = handle.readline()
        out = model.layer1.output.save()
    assert first.startswith('"""A trace beside')
    assert handle.closed
    assert out.shape == (1, 10) and isinstance(tracer, nnsight.Tracer)


def test_items_on_both_sides_of_the_trace(grad_model, x):
    log: list[str] = []
    with (
        Recording("a", log),
        torch.no_grad(),
        grad_model.trace(x),
        Recording("c", log) as c,
    ):
        log.append("body")
        hidden = grad_model.layer1.output.save()
    assert log == ["enter a", "enter c", "body", "exit c None", "exit a None"]
    assert c.name == "c" and hidden.requires_grad is False


def test_no_grad_after_the_trace_covers_the_recording_not_the_model(grad_model, x):
    # as in nnsight 0.8.1: the item after the trace has exited before the model runs
    with grad_model.trace(x), torch.no_grad():
        hidden = grad_model.layer1.output.save()
    assert hidden.requires_grad is True


def test_an_error_in_the_body_reaches_the_other_items_and_names_its_line(model, x, line_of):
    log: list[str] = []
    with pytest.raises(IndexError) as caught:
        with Recording("a", log), model.trace(x), Recording("c", log):
            model.layer1.output[0, 99].save()  # mark: bad index
    assert log == ["enter a", "enter c", "exit c None", "exit a IndexError"]
    assert any(line_of("bad index") in note for note in caught.value.__notes__)


# functions, decorators, methods, helpers ----------------------------------------------------------


@torch.no_grad()
def _decorated(model, x):
    with model.trace(x):
        hidden = model.layer1.output.save()
    return hidden


def test_trace_in_a_no_grad_decorated_function(grad_model, x):
    hidden = _decorated(grad_model, x)
    assert hidden.requires_grad is False and hidden.shape == (1, 10)


def _helper_trace(model, x, scale):
    with torch.no_grad(), model.trace(x) as tracer:
        doubled = (model.layer1.output * scale).save()
    return doubled, tracer


def test_trace_in_helpers_methods_class_methods_and_lambdas(grad_model, x):
    class Probe:
        def __init__(self, model):
            self.model = model

        def read(self, x):
            with torch.no_grad(), self.model.trace(x):
                self.hidden = self.model.layer1.output.save()
            return self.hidden

        @classmethod
        def read_once(cls, model, x):
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.no_grad())
                stack.enter_context(model.trace(x))
                hidden = model.layer1.output.save()
            return hidden

        @staticmethod
        def read_static(model, x):
            with model.trace(x), contextlib.nullcontext() as nothing:
                hidden = model.layer1.output.save()
            return hidden, nothing

    expected = grad_model._module.layer1(x).detach()
    doubled, tracer = _helper_trace(grad_model, x, 2)
    assert torch.allclose(doubled, expected * 2) and isinstance(tracer, nnsight.Tracer)
    probe = Probe(grad_model)
    assert torch.allclose(probe.read(x), expected) and not probe.hidden.requires_grad
    assert torch.allclose(Probe.read_once(grad_model, x), expected)
    assert not Probe.read_once(grad_model, x).requires_grad
    static, nothing = Probe.read_static(grad_model, x)
    assert torch.allclose(static, expected) and nothing is None
    via_lambda = (lambda: _helper_trace(grad_model, x, 3))()[0]
    assert torch.allclose(via_lambda, expected * 3)
    via_partial = functools.partial(_helper_trace, grad_model, x)(4)[0]
    assert torch.allclose(via_partial, expected * 4)


# through contextlib.ExitStack ------------------------------------------------------------------


def test_exit_stack_enter_context_traces_the_rest_of_the_block(grad_model, x):
    log: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(Recording("a", log))
        stack.enter_context(torch.no_grad())
        tracer = stack.enter_context(grad_model.trace(x))
        log.append("body")
        hidden = grad_model.layer1.output.save()
        out = grad_model.output.save()
    assert log == ["enter a", "body", "exit a None"]
    assert isinstance(tracer, nnsight.Tracer)
    assert hidden.requires_grad is False  # no_grad, entered before the trace, still held
    assert torch.allclose(out, grad_model._module(x).detach())


def test_exit_stack_in_a_function_with_a_plain_statement(model, x):
    def run():
        with contextlib.ExitStack() as stack:
            stack.enter_context(model.trace(x))
            hidden = model.layer1.output.save()
        return hidden

    assert run().shape == (1, 10)


def test_exit_stack_error_keeps_its_type(model, x):
    with pytest.raises(IndexError) as caught:
        with contextlib.ExitStack() as stack:
            stack.enter_context(model.trace(x))
            model.layer1.output[0, 99].save()
    assert caught.value.__context__ is None  # not "during handling of SkipBody"


def test_exit_stack_entered_elsewhere_says_how_to_enter_it(model, x, line_of):
    stack = contextlib.ExitStack()
    with pytest.raises(nnsight.TraceCaptureError, match="directly inside the stack's `with`") as e:
        stack.enter_context(model.trace(x))  # mark: loose stack
    stack.close()
    assert line_of("loose stack") in str(e.value)


# the shipped GPT-2 --------------------------------------------------------------------------


def test_language_model_beside_no_grad_and_inference_mode(llm):
    with llm.trace("Hello world"):
        plain = llm.transformer.h[0].output.save()
    with torch.no_grad(), llm.trace("Hello world"):
        quiet = llm.transformer.h[0].output.save()
    with torch.inference_mode(), llm.trace("Hello world") as tracer:
        inference = llm.transformer.h[0].output.save()
        logits = llm.lm_head.output.save()
    assert plain.requires_grad is True and quiet.requires_grad is False
    assert inference.is_inference() and logits.is_inference()
    assert isinstance(tracer, nnsight.Tracer)
    assert torch.allclose(plain, quiet) and torch.allclose(quiet, inference)


def test_language_model_through_an_exit_stack_and_after_items(llm):
    log: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(llm.trace("Hello world"))
        stacked = llm.lm_head.output.save()
    with llm.trace("Hello world") as tracer, Recording("c", log):
        after = llm.lm_head.output.save()
    assert log == ["enter c", "exit c None"] and isinstance(tracer, nnsight.Tracer)
    assert stacked.requires_grad is False
    assert torch.allclose(stacked, after)


def test_items_in_a_finally_block_whose_code_is_compiled_twice(grad_model, x):
    hidden = None
    try:
        pass
    finally:
        with torch.no_grad(), grad_model.trace(x):
            hidden = grad_model.layer1.output.save()
    assert hidden is not None and hidden.requires_grad is False


MODULE_SOURCE = """\
import contextlib

import torch

import nnsight_graph as nnsight

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(5, 10), torch.nn.Linear(10, 2))
model = nnsight.NNsight(net)
x = torch.rand(1, 5)
with torch.no_grad(), model.trace(x):
    quiet = model.output.save()
with model.trace(x) as tracer, open(__file__) as handle:
    first = handle.readline()
    loud = model.output.save()
with contextlib.ExitStack() as stack:
    stack.enter_context(torch.no_grad())
    stacked = stack.enter_context(model.trace(x))
    again = model.output.save()
"""


def test_module_level_forms(tmp_path):
    path = tmp_path / "module_forms.py"
    path.write_text(textwrap.dedent(MODULE_SOURCE))
    spec = importlib.util.spec_from_file_location("module_forms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.net(module.x)
    assert torch.allclose(module.quiet, expected) and not module.quiet.requires_grad
    assert torch.allclose(module.loud, expected) and module.loud.requires_grad
    assert module.first == "import contextlib\n" and module.handle.closed
    assert isinstance(module.tracer, nnsight.Tracer) and isinstance(module.stacked, nnsight.Tracer)
    assert torch.allclose(module.again, expected) and not module.again.requires_grad
