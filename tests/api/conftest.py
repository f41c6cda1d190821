"""Fixtures for the API tests: the walkthrough's tiny net, its input, and source-line lookup."""

from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch.nn.modules import module as torch_module

import nnsight_graph as nnsight


def make_net() -> torch.nn.Sequential:
    """The walkthrough's 2-layer net (section 1), seeded."""
    torch.manual_seed(0)
    layers = OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    return torch.nn.Sequential(layers).requires_grad_(False)


@pytest.fixture
def net() -> torch.nn.Sequential:
    return make_net()


@pytest.fixture
def model(net: torch.nn.Sequential) -> nnsight.NNsight:
    return nnsight.NNsight(net)


@pytest.fixture
def x() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand((1, 5), generator=generator)


def no_hooks_left(root: torch.nn.Module) -> bool:
    """No module (and no global registration) still carries a forward hook."""
    local = all(not m._forward_hooks and not m._forward_pre_hooks for m in root.modules())
    registered = torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
    return local and not registered


@pytest.fixture
def clean() -> Callable[[torch.nn.Module], bool]:
    """`clean(net)`: whether no forward hook is left on `net` or registered globally."""
    return no_hooks_left


@pytest.fixture
def line_of(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """`line_of("name")`: "file.py:N" for the line of the test file ending in `# mark: name`."""
    path = request.path
    lines = path.read_text().splitlines()

    def find(marker: str) -> str:
        tag = "# mark: " + marker
        hits = [n for n, text in enumerate(lines, 1) if text.rstrip().endswith(tag)]
        assert len(hits) == 1, f"marker {tag!r} found {len(hits)} times in {path.name}"
        return f"{path.name}:{hits[0]}"

    return find


class CallCounter:
    """Counts calls of a module with a plain forward pre-hook; `remove()` takes it off."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.batch_sizes: list[int] = []
        self._handle = module.register_forward_pre_hook(self._count)

    def _count(self, module: torch.nn.Module, args: tuple) -> None:
        self.calls += 1
        if args and isinstance(args[0], torch.Tensor):
            self.batch_sizes.append(args[0].shape[0])

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture
def count_calls() -> Callable[[torch.nn.Module], CallCounter]:
    """`count_calls(module)`: a CallCounter on the module, removed after the test."""
    counters: list[CallCounter] = []

    def make(module: torch.nn.Module) -> CallCounter:
        counter = CallCounter(module)
        counters.append(counter)
        return counter

    yield make
    for counter in counters:
        counter.remove()


# the shipped tiny GPT-2 ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def path() -> str:
    """The tiny GPT-2 that ships with the package."""
    from nnsight_graph.models import tiny_gpt2_path

    return tiny_gpt2_path()


@pytest.fixture(scope="module")
def llm(path: str) -> nnsight.LanguageModel:
    """The shipped GPT-2, loaded once per test module."""
    return nnsight.LanguageModel(path, dispatch=True)


@pytest.fixture(scope="module")
def hf(path: str) -> torch.nn.Module:
    """The same weights as a plain transformers model, never wrapped."""
    import transformers

    return transformers.GPT2LMHeadModel.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def tokenizer(path: str) -> object:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path)
