"""Binding saved values back into the caller: module level, functions, closures, methods,
IPython cells; and capture failures when there is no source to read."""

import subprocess
import sys

import pytest
import torch
from support import NET_SOURCE, import_file, write_net_script

import nnsight_graph as nnsight


def write_module(tmp_path, name, body):
    return write_net_script(tmp_path, name, body)


# module level ------------------------------------------------------------------------------


def test_module_level_binding(tmp_path):
    path = write_module(
        tmp_path,
        "module_level_binding",
        """
        counter = 1
        with model.trace(x):
            hidden = model.layer1.output
            pair = nnsight.save((model.layer1.output, model.layer2.output))
            out = model.output.save()
            n = nnsight.save(3)
            plain = 7
            real = torch.ones(2)
            counter = counter + 1
        """,
    )
    module = import_file(path, "module_level_binding")
    net, x = module.net, module.x

    assert type(module.out) is torch.Tensor
    assert torch.equal(module.out, net(x))
    assert module.n == 3 and type(module.n) is int
    assert type(module.pair) is tuple and len(module.pair) == 2
    assert torch.equal(module.pair[0], net.layer1(x))
    assert torch.equal(module.pair[1], net(x))
    assert module.plain == 7
    assert torch.equal(module.real, torch.ones(2))
    assert module.counter == 2
    with pytest.raises(nnsight.UnsavedValueError, match="hidden"):
        module.hidden + 1


def test_module_level_read_and_reassign(tmp_path):
    path = write_module(
        tmp_path,
        "module_level_reassign",
        """
        total = torch.zeros(1, 2)
        for _ in range(3):
            with model.trace(x):
                total = total + model.output
                total.save()
        """,
    )
    module = import_file(path, "module_level_reassign")
    assert type(module.total) is torch.Tensor
    assert torch.allclose(module.total, 3 * module.net(module.x))


def test_module_level_unsaved_name_raises_on_use(tmp_path):
    path = write_module(
        tmp_path,
        "module_level_unsaved",
        """
        with model.trace(x):
            out = model.output
        try:
            str(out)
        except nnsight.UnsavedValueError as error:
            caught = error
        """,
    )
    module = import_file(path, "module_level_unsaved")
    assert isinstance(module.caught, nnsight.UnsavedValueError)
    assert "module_level_unsaved.py:15" in str(module.caught)


# functions ---------------------------------------------------------------------------------


def test_function_binding(model, net, x):
    counter = 5
    real = None
    with model.trace(x):
        hidden = model.layer1.output
        pair = (model.layer1.output.save(), model.layer2.output.save())
        out = model.output.save()
        n = nnsight.save(3)
        plain = 7
        real = torch.ones(2)
        counter = counter + 1

    assert type(out) is torch.Tensor and torch.equal(out, net(x))
    assert n == 3 and type(n) is int
    assert type(pair) is tuple
    assert torch.equal(pair[0], net.layer1(x)) and torch.equal(pair[1], net(x))
    assert plain == 7
    assert torch.equal(real, torch.ones(2))
    assert counter == 6
    with pytest.raises(nnsight.UnsavedValueError):
        hidden.sum()


def test_function_reads_and_reassigns_a_variable(model, net, x):
    def accumulate(times):
        total = torch.zeros(1, 2)
        for _ in range(times):
            with model.trace(x):
                total = total + model.output
                total.save()
        return total

    assert torch.allclose(accumulate(3), 3 * net(x))


def test_saved_list_built_in_the_body(model, net, x):
    with model.trace(x):
        values = list().save()
        values.append(model.layer1.output)
        values.append(model.layer2.output)

    assert len(values) == 2
    assert all(type(v) is torch.Tensor for v in values)
    assert torch.equal(values[0], net.layer1(x)) and torch.equal(values[1], net(x))


def test_nested_function_reads_a_closure_variable(model, net, x):
    scale = 3.0

    def inner():
        with model.trace(x):
            model.layer1.output[:] = model.layer1.output * scale
            out = model.output.save()
        return out

    assert torch.allclose(inner(), net.layer2(net.layer1(x) * scale))


def test_nested_function_assigns_a_nonlocal(model, net, x):
    result = None

    def inner():
        nonlocal result
        with model.trace(x):
            result = model.output.save()

    inner()
    assert type(result) is torch.Tensor
    assert torch.equal(result, net(x))


def test_saved_name_that_is_a_cell_variable(model, net, x):
    with model.trace(x):
        hidden = model.layer1.output.save()

    total = lambda: hidden.sum()  # noqa: E731  # makes `hidden` a cell variable
    assert type(hidden) is torch.Tensor
    assert torch.allclose(total(), net.layer1(x).sum())


def test_cell_variable_read_and_reassigned(model, net, x):
    count = 0

    def bump():
        return count + 1

    with model.trace(x):
        out = model.output.save()
        count = count + 10

    assert count == 10 and bump() == 11
    assert torch.equal(out, net(x))


GLOBAL_OUTPUT = None


def test_name_declared_global_in_the_function(model, net, x):
    global GLOBAL_OUTPUT
    with model.trace(x):
        GLOBAL_OUTPUT = model.output.save()

    assert type(GLOBAL_OUTPUT) is torch.Tensor
    assert torch.equal(GLOBAL_OUTPUT, net(x))


def test_unsaved_value_used_in_python_operations(model, x):
    with model.trace(x):
        output = model.output
        pair = (model.layer1.output, model.layer2.output)

    for use in (
        lambda: output.sum(),
        lambda: output[0],
        lambda: x[:, :2] + output,
        lambda: bool(output),
        lambda: pair[0] * 2,
        lambda: f"{output}",
    ):
        with pytest.raises(nnsight.UnsavedValueError, match=r"\.save\(\)"):
            use()


def test_unsaved_value_passed_to_a_torch_function(model, x):
    with model.trace(x):
        output = model.output

    with pytest.raises(nnsight.UnsavedValueError):
        torch.softmax(output, dim=-1)


# methods -----------------------------------------------------------------------------------


class Probe:
    def __init__(self, model):
        self.model = model

    def hidden_and_output(self, x):
        with self.model.trace(x):
            hidden = self.model.layer1.output.save()
            output = self.model.output.save()
        return hidden, output

    def store_on_self(self, x):
        with self.model.trace(x):
            self.output = self.model.output.save()


def test_method_binding(model, net, x):
    hidden, output = Probe(model).hidden_and_output(x)
    assert torch.equal(hidden, net.layer1(x))
    assert torch.equal(output, net(x))


def test_method_saving_to_an_attribute(model, net, x):
    probe = Probe(model)
    probe.store_on_self(x)
    assert type(probe.output) is torch.Tensor
    assert torch.equal(probe.output, net(x))


def test_append_saved_value_to_a_list_from_before_the_trace(model, net, x):
    outputs = []
    with model.trace(x):
        outputs.append(model.output.save())

    assert type(outputs[0]) is torch.Tensor
    assert torch.equal(outputs[0], net(x))


def test_saved_values_put_into_a_dict_from_before_the_trace(model, net, x):
    found = {}
    with model.trace(x):
        found["hidden"] = model.layer1.output.save()
        found["output"] = model.output.save()

    assert set(found) == {"hidden", "output"}
    assert torch.equal(found["hidden"], net.layer1(x))
    assert torch.equal(found["output"], net(x))


# IPython -----------------------------------------------------------------------------------


@pytest.fixture
def shell():
    interactive = pytest.importorskip("IPython.core.interactiveshell")
    shell = interactive.InteractiveShell.instance()
    result = shell.run_cell(NET_SOURCE)
    assert result.success, result.error_in_exec
    yield shell
    interactive.InteractiveShell.clear_instance()


def test_ipython_cell_binding(shell):
    result = shell.run_cell(
        "with model.trace(x):\n"
        "    hidden = model.layer1.output.save()\n"
        "    out = nnsight.save(model.output)\n"
        "    n = nnsight.save(3)\n"
    )
    assert result.success, result.error_in_exec
    ns = shell.user_ns
    net, x = ns["net"], ns["x"]
    assert type(ns["out"]) is torch.Tensor
    assert torch.equal(ns["out"], net(x))
    assert torch.equal(ns["hidden"], net.layer1(x))
    assert ns["n"] == 3


def test_ipython_unsaved_name_raises_on_use(shell, capsys):
    result = shell.run_cell("with model.trace(x):\n    out = model.output\n")
    assert result.success, result.error_in_exec
    result = shell.run_cell("out + 1")
    capsys.readouterr()
    assert not result.success
    assert isinstance(result.error_in_exec, nnsight.UnsavedValueError)


def test_ipython_function_defined_in_a_cell(shell):
    result = shell.run_cell(
        "def run(scale):\n"
        "    with model.trace(x):\n"
        "        model.layer1.output[:] = model.layer1.output * scale\n"
        "        out = model.output.save()\n"
        "    return out\n"
        "y = run(2.0)\n"
    )
    assert result.success, result.error_in_exec
    ns = shell.user_ns
    net, x = ns["net"], ns["x"]
    assert torch.allclose(ns["y"], net.layer2(net.layer1(x) * 2.0))


# capture -----------------------------------------------------------------------------------


def test_multi_line_with_header(model, net, x):
    with model.trace(
        x,
    ):
        out = model.output.save()

    assert torch.equal(out, net(x))


def test_trace_nested_in_another_with_block(model, net, x):
    with torch.no_grad():
        with model.trace(x):
            out = model.output.save()

    assert torch.equal(out, net(x))


def test_body_that_starts_with_try(model, net, x):
    with model.trace(x):
        try:
            out = model.output.save()
        except AttributeError:
            out = None

    assert torch.equal(out, net(x))


# no source ---------------------------------------------------------------------------------


def test_python_dash_c_raises_trace_capture_error():
    code = NET_SOURCE + "with model.trace(x):\n    out = model.output.save()\nprint('ran')\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "TraceCaptureError" in result.stderr
    assert "source" in result.stderr
    assert "ran" not in result.stdout


def test_exec_of_a_string_raises_trace_capture_error():
    code = compile(
        NET_SOURCE + "with model.trace(x):\n    out = model.output.save()\n",
        "<string>",
        "exec",
    )
    with pytest.raises(nnsight.TraceCaptureError, match="source"):
        exec(code, {})
