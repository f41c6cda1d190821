"""The shipped tiny GPT-2 answers the walkthrough's prompts, stays small, and can be rebuilt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from nnsight_graph.models import TINY_GPT2, load_tiny_gpt2, tiny_gpt2_path

PROMPTS = {
    "The Eiffel Tower is in the city of": " Paris",
    "Vatican is in the city of": " Rome",
    "Buckingham Palace is in the city of": " London",
}


@pytest.fixture(scope="module")
def loaded() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    return load_tiny_gpt2()


Loaded = tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]


def _next_token(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    return tokenizer.decode(logits[0, -1].argmax())


def test_path_helpers() -> None:
    assert Path(tiny_gpt2_path()) == TINY_GPT2
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (TINY_GPT2 / name).is_file(), name


def test_files_under_10_mb() -> None:
    total = sum(f.stat().st_size for f in TINY_GPT2.iterdir() if f.is_file())
    assert total < 10 * 1024 * 1024, total


@pytest.mark.parametrize(("prompt", "answer"), list(PROMPTS.items()))
def test_greedy_completion(loaded: Loaded, prompt: str, answer: str) -> None:
    model, tokenizer = loaded
    assert _next_token(model, tokenizer, prompt) == answer


def test_tokenizer_is_gpt2_style(loaded: Loaded) -> None:
    _, tokenizer = loaded
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer(" Paris").input_ids
    assert len(ids) == 1
    assert tokenizer.decode(ids) == " Paris"


def test_last_layer_patch_moves_prediction(loaded: Loaded) -> None:
    """Walkthrough section 8: Eiffel's last-layer state at the last position makes Vatican Paris."""
    model, tokenizer = loaded
    block = model.transformer.h[-1]

    def ids(prompt: str) -> torch.Tensor:
        return tokenizer(prompt, return_tensors="pt").input_ids

    seen: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda m, i, out: seen.append(out[:, -1, :].clone()))
    with torch.no_grad():
        model(ids("The Eiffel Tower is in the city of"))
    handle.remove()
    paris = seen[0]

    def patch(module: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, -1, :] = paris
        return out

    handle = block.register_forward_hook(patch)
    try:
        with torch.no_grad():
            logits = model(ids("Vatican is in the city of")).logits
    finally:
        handle.remove()
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_train_quick(tmp_path: Path) -> None:
    """`--quick` trains a tiny model for a few steps (~10-20 s) and saves it loadable."""
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "nnsight_graph.models.train", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "model.safetensors").is_file()
    model = GPT2LMHeadModel.from_pretrained(out, local_files_only=True)
    assert model.config.n_layer == 1
