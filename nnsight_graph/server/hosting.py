"""What a `--model NAME=SPEC` loads: a LanguageModel from a directory or hub id, or a plain
torch module that the operator's own factory (`package.module:factory`) builds."""

from __future__ import annotations

import importlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

_FACTORY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def is_factory(spec: str) -> bool:
    """Whether `spec` names a factory (`package.module:function`) rather than a model path."""
    return bool(_FACTORY.fullmatch(spec)) and not os.path.exists(spec)


def build_module(spec: str) -> Any:
    """The torch module the factory `package.module:function` returns (the operator's code,
    imported and called here: never anything a client sent)."""
    import torch

    module_name, _, function_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--model ...={spec}: cannot import {function_name} from "
                         f"{module_name} ({error}); put the module on PYTHONPATH") from error
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"--model ...={spec}: the factory returned a {type(module).__name__}, "
                        "not a torch.nn.Module")
    return module.eval()


def shape_of(spec: str) -> Any:
    """The model the server process checks payloads against and describes: a LanguageModel
    on the meta device, or (a factory) the wrapped module itself."""
    from nnsight_graph import LanguageModel, NNsight

    if is_factory(spec):
        return NNsight(build_module(spec))
    return LanguageModel(spec)


def config_of(shape: Any) -> dict[str, Any]:
    """What GET /v1/models/NAME/config answers: a transformers config, or {} for a plain
    module (which has none)."""
    from nnsight_graph import LanguageModel

    return shape.config.to_dict() if isinstance(shape, LanguageModel) else {}


class Described(NamedTuple):
    """What the server process knows of a hosted model without its weights: the meta-device
    model payloads are checked against, its module paths, its config and tokenizer files."""

    shape: Any
    site_paths: frozenset[str]
    config: dict[str, Any]
    tokenizer_files: dict[str, str]


def describe(spec: str) -> Described:
    """The description of the model `spec` names (the server's view; weights load in the
    worker or replica)."""
    shape = shape_of(spec)
    config = config_of(shape)
    tokenizer = getattr(shape, "tokenizer", None) if config else None
    files = tokenizer_files(tokenizer) if tokenizer is not None else {}
    return Described(shape, frozenset(shape._site_paths()), config, files)


def tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The text files `AutoTokenizer.from_pretrained` needs to rebuild `tokenizer`."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        files = {}
        for path in sorted(Path(folder).iterdir()):
            try:
                files[path.name] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # a binary file (sentencepiece model): not served as text
        return files


def load_factory_model(spec: str, device: str, dtype: str | None) -> Any:
    """The worker's model for a factory spec: the module, on `device` in `dtype`, wrapped."""
    import torch

    from nnsight_graph import NNsight

    module = build_module(spec)
    if dtype:
        module = module.to(getattr(torch, dtype))
    if device not in ("cpu", "auto"):
        module = module.to(device)
    return NNsight(module)


__all__ = ["Described", "build_module", "config_of", "describe", "is_factory",
           "load_factory_model", "shape_of", "tokenizer_files"]
