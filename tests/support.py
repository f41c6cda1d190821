"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path, see
pyproject.toml): the walkthrough net as script source, importing such a script, and the
torch dicts a forward hook can sit in."""

import importlib.util
import textwrap
from pathlib import Path
from types import ModuleType

NET_SOURCE = """\
from collections import OrderedDict

import torch

import nnsight_graph as nnsight

torch.manual_seed(0)
net = torch.nn.Sequential(
    OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
).requires_grad_(False)
model = nnsight.NNsight(net)
x = torch.rand(1, 5)
"""
"""The walkthrough net's set-up as a script, for tests that need a trace in a real file."""

# every dict a forward hook can sit in: a run puts its hooks straight into the module's own
# dicts (backends/hooks.py), so all of them are looked at, not only the registered ones
MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
)


def import_file(path: Path, name: str) -> ModuleType:
    """Import a real .py file as a module (so that a trace in it can read its source)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_net_script(folder: Path, name: str, body: str) -> Path:
    """A .py file made of the net's set-up and `body` (dedented)."""
    path = folder / f"{name}.py"
    path.write_text(NET_SOURCE + textwrap.dedent(body))
    return path


def import_net_script(folder: Path, name: str, body: str) -> ModuleType:
    """Write and import a script of the net's set-up and `body`."""
    return import_file(write_net_script(folder, name, body), name)
