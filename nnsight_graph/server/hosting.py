"""What a `--model NAME=SPEC` loads: a LanguageModel from a directory or hub id, or a plain
torch module that the operator's own factory (`package.module:factory`) builds."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

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


__all__ = ["build_module", "config_of", "is_factory", "load_factory_model", "shape_of"]
