"""Fixtures for the API tests: the walkthrough net's input, source-line lookup, call counting
and the shipped GPT-2 (the net itself and `clean` are in tests/conftest.py)."""

from collections.abc import Callable

import pytest
import torch

import nnsight_graph as nnsight


@pytest.fixture
def x() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand((1, 5), generator=generator)


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
