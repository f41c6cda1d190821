"""An input the model cannot take (a dict or a string for a module that takes a tensor, a wrong
width) keeps torch's error and type, with a note naming the module that failed, the trace's
line and the input. nnsight 0.8.1 raises torch's error alone."""

import pytest
import torch

import nnsight_graph as nnsight


def only_note(error: BaseException) -> str:
    notes = getattr(error, "__notes__", [])
    assert len(notes) == 1, notes
    return notes[0]


@pytest.mark.parametrize(
    "value, kind, described",
    [
        (torch.rand(1, 7), RuntimeError, "on the input Tensor[1, 7] float32"),
        ({"x": torch.rand(1, 5)}, TypeError, "on the input dict with keys 'x'"),
        ("hello", TypeError, "on the input str 'hello'"),
    ],
    ids=["wrong-width", "dict", "string"],
)
# local only: the note names the line of the trace, which a server does not know (the remote
# path's note, with the module and the input, is checked in test_remote_local.py)
@pytest.mark.local_only
def test_a_bad_input_names_the_module_the_trace_and_the_input(
    model, net, x, value, kind, described, line_of, clean
):
    with pytest.raises(kind) as caught:
        with model.trace(value):  # mark: bad-input
            model.layer1.output.save()
    note = only_note(caught.value)
    assert note.startswith("  while model.layer1 (Linear) ran (the trace at ")
    assert line_of("bad-input") in note
    assert described in note
    assert "give it what Sequential.forward takes" in note
    assert "intervention code wrote" not in note  # this trace writes nothing
    assert clean(net)
    with model.trace(x):
        output = model.output.save()
    assert torch.equal(output, net(x))


def test_a_bad_input_of_an_invoke(model):
    with pytest.raises(RuntimeError, match="mat1 and mat2") as caught:
        with model.trace() as tracer:
            with tracer.invoke(torch.rand(2, 3)):
                model.layer2.output.save()
    assert "on the input Tensor[2, 3] float32" in only_note(caught.value)


def test_a_value_written_into_the_model_may_be_what_failed(model, x):
    with pytest.raises(RuntimeError) as caught:
        with model.trace(x):
            model.layer1.output = torch.rand(1, 3)
    note = only_note(caught.value)
    assert note.startswith("  while model.layer2 (Linear) ran")
    assert "or on a value the intervention code wrote into the model" in note


def test_an_error_in_intervention_code_keeps_its_own_note(model, x, line_of):
    with pytest.raises(IndexError) as caught:
        with model.trace(x):
            model.layer1.output[5].save()  # mark: bad-index
    notes = caught.value.__notes__
    assert len(notes) == 1 and line_of("bad-index") in notes[0]
    assert "while model" not in notes[0]


def test_our_own_errors_get_no_note(model, x):
    with pytest.raises(nnsight.NNsightError) as caught:
        with model.trace(x):
            model.layer2.output.save()
            model.layer1.output.save()
    assert not any("while model" in n for n in getattr(caught.value, "__notes__", []))


def test_a_language_models_note_names_the_module_without_a_forward_hint(llm):
    with pytest.raises(RuntimeError) as caught:
        with llm.trace("Hello"):
            llm.transformer.h[0].output = torch.rand(1, 1, 7)
    note = only_note(caught.value)
    assert note.startswith("  while model.transformer.h.1")
    assert "on the input str 'Hello'" in note and "forward takes" not in note
