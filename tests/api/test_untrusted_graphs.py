"""Graphs that were not recorded in this process run only what the registry allows.

Each hostile graph starts as a real recorded one, is changed, written and read back
(`loads(dumps(...))` marks it untrusted, as `Graph.load` does), and must be refused with one
RegistryError before anything of it runs.
"""

import sys

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph.ir import Op
from nnsight_graph.ir.registry import RegistryError
from nnsight_graph.ir.wire import dumps, loads


@pytest.fixture
def model(net):
    return nnsight.NNsight(net)


def _recorded(model, x):
    with model.trace(x, run=False) as tracer:
        hidden = model.layer1.output
        torch.sum(hidden).save()
        model.output.clone().save()
    return tracer.graph


def _with_node(graph, index, **changes):
    nodes = list(graph.nodes)
    nodes[index] = nodes[index]._replace(**changes)
    return loads(dumps(graph.with_nodes(nodes)))


def _index(graph, op):
    return next(i for i, node in enumerate(graph.nodes) if node.op is op)


def test_a_loaded_graph_runs_and_equals_the_recorded_one(model, x):
    graph = _recorded(model, x)
    loaded = loads(dumps(graph))
    assert graph.trusted and not loaded.trusted
    ours, theirs = model.run(graph), model.run(loaded)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key])


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.exec",
        "builtins.eval",
        "builtins.__import__",
        "builtins.open",
        "subprocess.run",
        "pickle.loads",
        "torch.load",
        "torch.save",
        "torch.from_file",
        "torch.os.system",
        "shutil.rmtree",
        "os._exit",
        "torch._C._get_tracing_state",
        "nnsight_graph_payload_module.run",
    ],
)
def test_a_function_outside_the_registry_is_refused_before_import(model, x, target, tmp_path):
    graph = _recorded(model, x)
    hostile = _with_node(graph, _index(graph, Op.CALL), target=target)
    before = set(sys.modules)
    with pytest.raises(RegistryError, match="not in the registry") as error:
        model.run(hostile)
    assert repr(target) in str(error.value)
    assert "nnsight_graph_payload_module" not in sys.modules
    assert set(sys.modules) - before == set()  # nothing was imported to find out


@pytest.mark.parametrize("name", ["__class__", "_modules", "__globals__", "tofile", "numpy"])
def test_a_method_outside_the_registry_is_refused(model, x, name):
    graph = _recorded(model, x)
    index = next(i for i, n in enumerate(graph.nodes) if n.op is Op.METHOD)
    with pytest.raises(RegistryError, match=repr(name)):
        model.run(_with_node(graph, index, target=name))


def test_an_attribute_with_an_underscore_is_refused(model, x):
    graph = _recorded(model, x)
    index = next(i for i, n in enumerate(graph.nodes) if n.op is Op.METHOD)
    with pytest.raises(RegistryError, match="never allowed"):
        model.run(_with_node(graph, index, op=Op.GETATTR, target="__class__"))


def test_a_method_allowed_for_another_kind_is_refused_on_a_tensor(model, x):
    """`append` is a list method: on a tensor value it is refused when the node runs."""
    graph = _recorded(model, x)
    index = next(i for i, n in enumerate(graph.nodes) if n.op is Op.METHOD)
    with pytest.raises(RegistryError, match="'append' on a tensor"):
        model.run(_with_node(graph, index, target="append"))


def test_a_module_path_the_model_does_not_have_is_refused(model, x):
    graph = _recorded(model, x)
    index = _index(graph, Op.READ)
    with pytest.raises(RegistryError, match="'layer9'"):
        model.run(_with_node(graph, index, target="layer9.output"))


def test_an_unknown_option_is_refused(model, x):
    graph = _recorded(model, x)
    graph.options = {"trust_remote_code": True}
    with pytest.raises(RegistryError, match="trust_remote_code"):
        model.run(loads(dumps(graph)))


# local only: about what a local trace may call; test_remote_local.py checks the remote error
@pytest.mark.local_only
def test_a_local_trace_may_call_any_importable_function_but_not_once_loaded(model, x):
    with model.trace(x) as tracer:
        value = torch.special.bessel_j0(model.layer1.output).save()  # not in the registry
    assert torch.allclose(value, torch.special.bessel_j0(model._module.layer1(x)))
    with pytest.raises(RegistryError, match="torch.special.bessel_j0"):
        model.run(loads(dumps(tracer.graph)))


def test_error_notes_quote_the_recorded_line_and_never_read_the_named_file(
    model, x, tmp_path, monkeypatch
):
    import linecache

    with model.trace(x, run=False) as tracer:
        model.layer1.output[:, 99].save()  # mark: out of range
    secret = tmp_path / "secret.py"
    secret.write_text("SECRET = 'the server file'\n")
    node = next(n for n in tracer.graph.nodes if n.op is Op.GETITEM)
    assert node.loc.text == "model.layer1.output[:, 99].save()  # mark: out of range"
    moved = node.loc.__class__(str(secret), 1, node.loc.text)
    hostile = _with_node(tracer.graph, tracer.graph.nodes.index(node), loc=moved)

    def never(*args, **kwargs):
        raise AssertionError("a file named by a graph was read")

    monkeypatch.setattr(linecache, "getline", never)
    monkeypatch.setattr(linecache, "getlines", never)
    with pytest.raises(IndexError) as error:
        model.run(hostile)
    notes = "\n".join(error.value.__notes__)
    assert "model.layer1.output[:, 99].save()" in notes
    assert "SECRET" not in notes


# bounds while a loaded graph runs (backends.guard) -------------------------------------------


@pytest.mark.parametrize(
    ("target", "args", "size"),
    [
        ("torch.ones", (2**31,), 2**31),
        ("torch.zeros", ((2**16, 2**16),), 2**32),
        ("torch.arange", (10**12,), 10**12),
        ("operator.pow", (10, 10**10), None),
        ("operator.mul", ("ab", 10**10), 2 * 10**10),
        ("operator.lshift", (1, 10**11), None),
    ],
)
def test_a_node_that_would_create_a_huge_value_is_refused_before_it_runs(
    model, x, target, args, size
):
    from nnsight_graph.backends.guard import LimitError

    graph = _recorded(model, x)
    hostile = _with_node(graph, _index(graph, Op.CALL), target=target, args=args)
    with pytest.raises(LimitError, match="more than the limit of") as error:
        model.run(hostile)
    if size is not None:
        assert f"a value of {size} elements" in str(error.value)


def test_an_op_on_traced_values_is_sized_on_meta_tensors(model, x):
    from nnsight_graph.backends.guard import LimitError
    from nnsight_graph.ir.limits import Limits

    with model.trace(x, run=False) as tracer:
        hidden = model.layer1.output.flatten()
        torch.outer(hidden, hidden).save()  # 10 x 10 = 100 elements
    loaded = loads(dumps(tracer.graph))
    model.run(loaded, limits=Limits(tensor_elements=100))
    with pytest.raises(LimitError, match="a value of 100 elements, more than the limit of 99"):
        model.run(loaded, limits=Limits(tensor_elements=99))


def test_a_run_past_its_deadline_stops_at_the_next_node(model, x):
    from nnsight_graph.backends.guard import LimitError
    from nnsight_graph.ir.limits import Limits

    loaded = loads(dumps(_recorded(model, x)))
    with pytest.raises(LimitError, match="deadline of 0 s"):
        model.run(loaded, limits=Limits(deadline_s=0.0))


def test_generate_may_ask_for_at_most_the_limits_tokens(llm):
    from nnsight_graph.ir.limits import SERVER

    with llm.generate("Hello", max_new_tokens=2, run=False) as tracer:
        llm.generator.output.save()
    graph = tracer.graph
    graph.options = {**graph.options, "max_new_tokens": 10**6}
    with pytest.raises(RegistryError, match="more than the 1024 tokens"):
        llm.run(loads(dumps(graph)), limits=SERVER)
