"""Misuse of the tracing API that nnsight 0.8.1 reports as ValueError is a ValueError here too
(`except ValueError` keeps working), and still a GraphBuildError (or TraceCaptureError), with a
message that names the fix and the user's line.

nnsight 0.8.1, for reference: "Cannot access `model.layer1.output` outside of interleaving"
(a module read with no input, before any invoke, or outside a trace), "Cannot invoke while the
model is already running." (an invoke in an invoke, or in a trace with its own input), "trace()
needs an input, or at least one `with tracer.invoke(...)` block" (an empty trace with no
input), "Cannot access `result` outside of interleaving", "A barrier was never reached by
every block it waits for", and "The body of a traced `with` must start on its own line".
"""

import traceback

import pytest

import nnsight_graph as nnsight


def user_lines(error: BaseException) -> list[int]:
    """The line numbers of this file in the error's traceback."""
    return [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == __file__]


def line_number(line_of, marker: str) -> int:
    return int(line_of(marker).rsplit(":", 1)[1])


def test_the_new_errors_are_value_errors_and_ours():
    for error in (nnsight.InvokeError, nnsight.BarrierError):
        assert issubclass(error, ValueError) and issubclass(error, nnsight.GraphBuildError)
    assert issubclass(nnsight.TraceLayoutError, ValueError)
    assert issubclass(nnsight.TraceLayoutError, nnsight.TraceCaptureError)


def test_module_read_in_a_trace_with_no_input(model, line_of):
    with pytest.raises(ValueError, match="outside an invoke: pass an input") as caught:
        with model.trace():
            model.layer1.output.save()  # mark: no input
    assert isinstance(caught.value, nnsight.InvokeError)
    assert line_number(line_of, "no input") in user_lines(caught.value)


def test_module_read_before_the_first_invoke(model, x, line_of):
    with pytest.raises(ValueError, match=r"wrap this code in `with tracer.invoke\(input\):`") as e:
        with model.trace() as tracer:
            model.layer1.output.save()  # mark: before invoke
            with tracer.invoke(x):
                pass
    assert line_number(line_of, "before invoke") in user_lines(e.value)


def test_module_read_outside_any_trace(model):
    with pytest.raises(ValueError, match=r"only available inside `with model.trace"):
        model.layer1.output  # noqa: B018


def test_invoke_inside_an_invoke(model, x, line_of):
    with pytest.raises(ValueError, match="invokes cannot be nested: close one") as caught:
        with model.trace() as tracer:
            with tracer.invoke(x):
                with tracer.invoke(x):  # mark: inner invoke
                    model.output.save()
    assert isinstance(caught.value, nnsight.GraphBuildError)
    assert line_number(line_of, "inner invoke") in user_lines(caught.value)


def test_invoke_inside_a_trace_that_has_its_own_input(llm, line_of):
    with pytest.raises(ValueError, match="pass inputs either to trace.. or to invoke") as caught:
        with llm.trace("Hello") as tracer:
            with tracer.invoke("World"):  # mark: invoke with input
                llm.lm_head.output.save()
    assert line_number(line_of, "invoke with input") in user_lines(caught.value)


def test_trace_with_no_input_and_no_invoke(model, line_of):
    with pytest.raises(ValueError, match=r"no input.*model.trace\(input\).*tracer.invoke") as e:
        with model.trace() as tracer:  # mark: empty trace
            pass
    assert isinstance(e.value, nnsight.InvokeError)
    assert line_of("empty trace") in str(e.value)
    with pytest.raises(nnsight.InvokeError, match="the trace has no input") as e:
        with model.trace() as tracer:  # mark: saves nothing
            data = [1, 2]
            data.append(tracer)
    assert line_of("saves nothing") in str(e.value)


def test_generate_with_no_input_names_generate(llm):
    with pytest.raises(ValueError, match=r"model.generate\(input\)"):
        with llm.generate(max_new_tokens=2):
            pass


def test_result_outside_an_invoke(model, x, line_of):
    with pytest.raises(ValueError, match=r"use tracer.result inside an invoke") as caught:
        with model.trace() as tracer:
            tracer.result()  # mark: result
            with tracer.invoke(x):
                pass
    assert line_number(line_of, "result") in user_lines(caught.value)


def test_barrier_reached_by_too_few_invokes(model, x, line_of):
    with pytest.raises(ValueError, match=r"barrier\(2\) at .* was called by 1 invoke") as caught:
        with model.trace() as tracer:
            barrier = tracer.barrier(2)
            with tracer.invoke(x):
                barrier()  # mark: barrier
    assert isinstance(caught.value, nnsight.BarrierError)
    assert line_of("barrier") in str(caught.value)


def test_body_on_the_with_line_is_a_value_error(tmp_path):
    path = tmp_path / "one_line.py"
    path.write_text(
        "import torch\nimport nnsight_graph as nnsight\n"
        "model = nnsight.NNsight(torch.nn.Linear(2, 2))\n"
        "with model.trace(torch.ones(1, 2)): out = model.output.save()\n"
    )
    code = compile(path.read_text(), str(path), "exec")
    with pytest.raises(ValueError, match="put the body of the `with` block on its own") as e:
        exec(code, {"__name__": "one_line"})
    assert isinstance(e.value, nnsight.TraceCaptureError)
    assert f"{path}:4" in str(e.value)


def test_except_graph_build_error_still_catches_them(model, x):
    caught = []
    for attempt in range(2):
        try:
            with model.trace() as tracer:
                with tracer.invoke(x):
                    if attempt:
                        with tracer.invoke(x):
                            pass
                    else:
                        tracer.barrier(3)()
        except nnsight.GraphBuildError as error:
            caught.append(type(error))
    assert caught == [nnsight.BarrierError, nnsight.InvokeError]


def test_stop_and_next_outside_an_invoke(model, x, line_of):
    with pytest.raises(ValueError, match=r"call tracer.stop\(\) inside an invoke") as caught:
        with model.trace() as tracer:
            with tracer.invoke(x):
                model.layer1.output.save()
            tracer.stop()  # mark: stop outside
    assert line_number(line_of, "stop outside") in user_lines(caught.value)
    with pytest.raises(nnsight.InvokeError, match=r"call tracer.next\(\) inside an invoke"):
        with model.trace() as tracer:
            tracer.next()
            with tracer.invoke(x):
                model.layer1.output.save()


@pytest.mark.parametrize("steps", ["iter[-1]", "iter[-2:]", "iter[0:-1]", "iter[[0, -1]]"])
def test_negative_steps_are_a_value_error_that_says_to_count_from_zero(model, x, tmp_path, steps):
    script = tmp_path / "negative.py"
    script.write_text(
        "import torch\nfrom nnsight_graph import NNsight\n"
        "model = NNsight(torch.nn.Sequential(torch.nn.Linear(5, 2)))\n"
        "with model.trace(torch.rand(1, 5)) as tracer:\n"
        f"    for step in tracer.{steps}:\n"
        "        model.output.save()\n"
    )
    import runpy

    with pytest.raises(ValueError, match="negative step .*Give steps from 0") as caught:
        runpy.run_path(str(script))
    assert isinstance(caught.value, nnsight.StepError)
    assert isinstance(caught.value, nnsight.GraphBuildError)
