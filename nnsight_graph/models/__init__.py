"""A tiny GPT-2 shipped with nnsight_graph for tests, examples and the demo.

The nnsight walkthrough runs on `openai-community/gpt2`, which needs a download. This package
ships a small GPT-2 (`GPT2LMHeadModel`, 4 layers, 128 dims, byte-level BPE tokenizer) trained
on a template corpus of simple English (see `corpus.py`, and `train.py` to rebuild it), so that
the walkthrough's prompts give meaningful answers offline::

    >>> from nnsight_graph.models import load_tiny_gpt2
    >>> model, tokenizer = load_tiny_gpt2()
    >>> ids = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    >>> tokenizer.decode(model(ids).logits[0, -1].argmax())
    ' Paris'

`tiny_gpt2_path()` gives the directory, for anything that takes a model name or path (such as
`LanguageModel(tiny_gpt2_path())`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

__all__ = ["TINY_GPT2", "load_tiny_gpt2", "tiny_gpt2_path"]

TINY_GPT2: Path = Path(__file__).resolve().parent / "tiny_gpt2"
"""The directory holding the tiny GPT-2's config, safetensors weights and tokenizer."""


def tiny_gpt2_path() -> str:
    """The tiny GPT-2's directory as a string (what `from_pretrained` takes)."""
    return str(TINY_GPT2)


def load_tiny_gpt2() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Load the tiny GPT-2 and its tokenizer from the package, offline, in eval mode."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(TINY_GPT2, local_files_only=True)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(TINY_GPT2, local_files_only=True)
    # the shipped tokenizer.json is a fast (tokenizers) one
    return model, cast("PreTrainedTokenizerFast", tokenizer)
