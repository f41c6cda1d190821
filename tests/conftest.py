"""Fixtures for every test directory: the walkthrough's tiny net and the no-hooks-left check."""

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch
from support import GLOBAL_HOOK_DICTS, MODULE_HOOK_DICTS
from torch.nn.modules import module as torch_module
from torch.utils.hooks import RemovableHandle

import nnsight_graph as nnsight


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With NNSIGHT_GRAPH_FORCE_REMOTE set, skip the tests about the local path (CI deselects
    them with -m "not local_only"; this keeps a plain forced run from failing on them)."""
    if not nnsight.CONFIG.APP.FORCE_REMOTE:
        return
    skip = pytest.mark.skip(reason="local_only, and NNSIGHT_GRAPH_FORCE_REMOTE forces remote")
    for item in items:
        if item.get_closest_marker("local_only"):
            item.add_marker(skip)


def no_hooks_left(root: torch.nn.Module, *, ignore: Iterable[RemovableHandle] = ()) -> bool:
    """No module under `root` carries a forward hook, and none is registered globally except
    the global hooks of the handles in `ignore` (a test's own watcher, still registered)."""
    if any(getattr(module, name) for module in root.modules() for name in MODULE_HOOK_DICTS):
        return False
    allowed = {handle.id for handle in ignore}
    return all(set(getattr(torch_module, name)) <= allowed for name in GLOBAL_HOOK_DICTS)


@pytest.fixture
def clean() -> Callable[..., bool]:
    """`clean(root)`: whether no forward hook is left under `root` or registered globally;
    `clean(root, ignore=[handle])` allows the global hook of that handle."""
    return no_hooks_left


def walkthrough_net() -> torch.nn.Sequential:
    """The walkthrough's 2-layer net (section 1), seeded: the same weights every time."""
    torch.manual_seed(0)
    layers = OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    return torch.nn.Sequential(layers).requires_grad_(False)


@pytest.fixture
def make_net() -> Callable[[], torch.nn.Sequential]:
    """`make_net()`: a fresh walkthrough net, for tests that need more than one copy."""
    return walkthrough_net


@pytest.fixture
def net() -> torch.nn.Sequential:
    return walkthrough_net()


@pytest.fixture
def model(net: torch.nn.Sequential) -> nnsight.NNsight:
    return nnsight.NNsight(net)


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch) -> list[list[dict]]:
    """The declarations (nnsight_graph.local_shapes) of the LOCAL nodes of each trace with
    nnsight.local() blocks that runs elsewhere, one list per trace, in order."""
    import nnsight_graph.tracer as tracer_module

    seen: list[list[dict]] = []
    real = tracer_module.declare

    def spy(*args: Any) -> Any:
        graph = real(*args)
        locals_ = [n for n in graph.nodes if n.op.value == "local"]
        if locals_:  # a trace without blocks (a local reference, run remote when forced) is not
            seen.append([e for n in locals_ for e in n.kwargs.get("declared", [])])
        return graph

    monkeypatch.setattr(tracer_module, "declare", spy)
    return seen


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """`passes[0]`: how many times the nnsight.local() shape pass ran."""
    from nnsight_graph import local_shapes

    count = [0]
    real = local_shapes._run_pass

    def counted(*args: Any) -> Any:
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(local_shapes, "_run_pass", counted)
    return count
