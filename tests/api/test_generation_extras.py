"""Generation extras as in nnsight 0.8.1: `llm.generator.streamer`, `llm.dispatched`,
`tracer.result` (a property that can also be called), and the names `edit()` binds."""

import pytest
import torch

import nnsight_graph as nnsight

PROMPT = "The Eiffel Tower is in"


# the streamer ---------------------------------------------------------------------------


def test_an_open_iter_collects_the_prompt_then_each_new_token(llm):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        tokens = list().save()
        for _ in tracer.iter[:]:
            tokens.append(llm.generator.streamer.output)
        ids = tracer.result.save()
    assert [tuple(t.shape) for t in tokens] == [(1, 5), (1,), (1,), (1,)]  # as nnsight 0.8.1
    assert torch.equal(tokens[0], ids[:, :5])
    assert torch.equal(torch.cat(tokens[1:]), ids[0, 5:])


def test_all_on_a_batch_streams_one_token_per_row(llm):
    prompts = [PROMPT, "Hi"]
    with llm.generate(prompts, max_new_tokens=2) as tracer:
        tokens = list().save()
        with tracer.all():
            tokens.append(llm.generator.streamer.output)
        ids = tracer.result.save()
    width = ids.shape[1] - 2
    assert [tuple(t.shape) for t in tokens] == [(2, width), (2,), (2,)]
    assert torch.equal(tokens[0], ids[:, :width])
    assert torch.equal(torch.stack(tokens[1:], dim=1), ids[:, width:])


def test_the_streamer_at_a_chosen_step(llm):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        prompt = llm.generator.streamer.output.save()  # step 0: the prompt
        with tracer.iter[2]:
            second = llm.generator.streamer.output.save()
        ids = tracer.result.save()
    assert torch.equal(prompt, ids[:, :5])
    assert torch.equal(second, ids[:, 6])


def test_a_loop_reading_the_model_and_the_streamer_gets_every_value(llm):
    with pytest.warns(nnsight.StepsSkippedWarning, match="step 3 never happened"):
        with llm.generate(PROMPT, max_new_tokens=3) as tracer:
            values = list().save()
            for _ in tracer.iter[:]:
                values.append(llm.generator.streamer.output)
                values.append(llm.lm_head.output)
    # nnsight 0.8.1's order: the streamer sees each token before the next forward pass, and
    # the loop's fourth turn reaches the streamer's last call but no fourth forward pass
    shapes = [tuple(v.shape) for v in values]
    assert shapes == [(1, 5), (1, 1, 1583), (1,), (1, 1, 1583), (1,), (1, 1, 1583), (1,)]


def test_a_bounded_iter_runs_only_its_steps(llm):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        tokens = list().save()
        for _ in tracer.iter[0:3]:
            tokens.append(llm.generator.streamer.output)
    assert len(tokens) == 3


# local only: the user's streamer is a Python object of this process, which no payload can carry
# (test_remote_local.py checks the remote path's error)
@pytest.mark.local_only
def test_a_streamer_of_the_user_still_gets_every_value(llm):
    class Collect:
        def __init__(self):
            self.values, self.ended = [], False

        def put(self, value):
            self.values.append(value)

        def end(self):
            self.ended = True

    mine = Collect()
    with llm.generate(PROMPT, max_new_tokens=2, streamer=mine) as tracer:
        first = llm.generator.streamer.output.save()
        ids = tracer.result.save()
    assert mine.ended and len(mine.values) == 3
    assert torch.equal(mine.values[0], first) and torch.equal(mine.values[2], ids[:, -1])


def test_beam_search_runs_without_the_streamer(llm):
    with llm.generate(PROMPT, max_new_tokens=2, num_beams=2) as tracer:
        ids = tracer.result.save()
    assert ids.shape == (1, 7)


# dispatched -----------------------------------------------------------------------------


def test_dispatched_is_true_once_the_weights_are_loaded(path, llm):
    lazy = nnsight.LanguageModel(path)
    assert lazy.dispatched is False
    with lazy.trace("Hello"):
        pass
    assert lazy.dispatched is True
    assert llm.dispatched is True  # dispatch=True


# tracer.result --------------------------------------------------------------------------


def test_result_works_as_property_and_as_call(llm):
    with llm.trace("Hello") as tracer:
        as_property = tracer.result.save()
        as_call = tracer.result().save()
        logits = tracer.result.logits.save()
    assert as_property.logits.shape == (1, 1, 1583)
    assert torch.equal(as_call.logits, as_property.logits)
    assert torch.equal(logits, as_property.logits)
    with pytest.raises(nnsight.GraphBuildError, match=r"tracer.result can only be used inside"):
        _ = tracer.result


# edit() ---------------------------------------------------------------------------------


def _last_token(llm, model):
    with model.trace("Vatican is in the city of"):
        token = llm.lm_head.output[0, -1].argmax(dim=-1).save()
    return llm.tokenizer.decode(token)


def test_the_as_name_of_an_edit_is_the_edited_model_inside_and_after(llm):
    with llm.trace("The Eiffel Tower is in the city of"):
        paris = llm.transformer.h[-1].output[:, -1, :].save()
    with llm.edit() as llm_edited:
        inside = llm_edited
        llm_edited.transformer.h[-1].output[:, -1, :] = paris
    assert inside is llm_edited and isinstance(llm_edited, nnsight.LanguageModel)
    assert llm_edited is not llm and llm_edited._module is llm._module
    assert _last_token(llm, llm_edited) == " Paris"
    assert _last_token(llm, llm) == " Rome"


def test_an_edit_bound_as_tracer_and_edited_model(llm):
    with llm.edit() as (tracer, edited):
        for _ in tracer.iter[:]:
            edited.transformer.h[0].output[:] = 0
    assert isinstance(tracer, nnsight.Tracer) and isinstance(edited, nnsight.LanguageModel)
    with edited.trace("Hello"):
        zeroed = llm.transformer.h[0].output.save()
    with llm.trace("Hello"):
        normal = llm.transformer.h[0].output.save()
    assert zeroed.abs().sum() == 0 and normal.abs().sum() > 0


def test_an_in_place_edit_binds_its_tracer(llm):
    try:
        with llm.edit(inplace=True) as tracer:
            llm.transformer.h[0].output[:] = 0
        assert isinstance(tracer, nnsight.Tracer)  # nnsight 0.8.1 binds only the tracer
        with llm.trace("Hello"):
            zeroed = llm.transformer.h[0].output.save()
        assert zeroed.abs().sum() == 0
    finally:
        llm.clear_edits()


def test_two_names_for_a_plain_trace_is_an_error_naming_the_line(model, line_of):
    with pytest.raises(nnsight.TraceCaptureError) as error:
        with model.trace(torch.rand(1, 5)) as (tracer, other):  # mark: two names
            model.layer1.output.save()
    assert f"{line_of('two names')}: `as (tracer, other)` cannot unpack" in str(error.value)
