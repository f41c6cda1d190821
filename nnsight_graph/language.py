"""LanguageModel: NNsight for Hugging Face causal language models, with tokenization,
left-padded batching of prompts, generation, and lazy (meta-device) loading of weights."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from .envoy import Envoy
from .ir import BatchError, Graph, Op
from .model import NNsight, _decode
from .tracer import Tracer

# trace() keywords that are tokenizer inputs of the implicit invoke, not model options
_INPUT_KEYS = ("input_ids", "attention_mask")
_DISPATCH = threading.Lock()  # loading weights is rare: one lock for every model


class _Generator(torch.nn.Module):
    """Stands for `model.generate(...)`: its output is the generated ids (`llm.generator`)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return ids


class _GeneratorEnvoy(Envoy):
    """`llm.generator`: called once per generate(), so its values are always at step 0."""

    def _read(self, what: str) -> Any:
        return self._recorder(what).once(Op.READ, self._site(what))


class LanguageModel(NNsight):
    """A causal language model wrapped for tracing.

    `LanguageModel("openai-community/gpt2")` loads the config and tokenizer at once and the
    weights on first use (or at once with `dispatch=True`); it also accepts a local directory
    or an already built `PreTrainedModel` (with `tokenizer=`). Inputs may be a string, a list
    of strings, token ids (a list or a tensor) or tokenizer output; prompts of different
    lengths are padded on the left, with an attention mask.
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        *,
        device_map: str | dict[str, Any] | None = None,
        dispatch: bool = False,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        if isinstance(model, torch.nn.Module):
            module = model
            name = getattr(getattr(model, "config", None), "_name_or_path", "")
            loaded = True
        else:
            name = model
            config = AutoConfig.from_pretrained(name, **_hub_kwargs(kwargs))
            module = _empty_model(config) if not dispatch else _load(name, device_map, kwargs)
            loaded = dispatch
        if tokenizer is None:
            if not name:
                raise ValueError("pass tokenizer=... with an already built model")
            tokenizer = AutoTokenizer.from_pretrained(name, **_hub_kwargs(kwargs))
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(module)
        for attribute, value in (
            ("tokenizer", tokenizer),
            ("_name", name),
            ("_loaded", loaded),
            ("_device_map", device_map),
            ("_load_kwargs", kwargs),
            ("_generator", _Generator()),
        ):
            object.__setattr__(self, attribute, value)

    # the user's API ---------------------------------------------------------------------------

    @property
    def config(self) -> Any:
        """The model's transformers config."""
        return self._module.config

    @property
    def generator(self) -> Envoy:
        """`llm.generator.output`: the ids `generate()` returned (prompt and new tokens)."""
        return _GeneratorEnvoy(self._generator, "generator")

    def generate(self, *inputs: Any, **kwargs: Any) -> Tracer:
        """A tracing context around `model.generate(...)`; keywords go to generate()."""
        return Tracer(self, inputs, kwargs, method="generate")

    def dispatch(self) -> None:
        """Load the real weights now (a model built lazily holds meta tensors until then)."""
        if self._loaded:
            return
        with _DISPATCH:  # first traces in two threads: one loads, the other waits for it
            if self._loaded:
                return
            module = _load(self._name, self._device_map, self._load_kwargs)
            self._swap(module)
            object.__setattr__(self, "_loaded", True)

    def __repr__(self) -> str:
        return repr(self._module)

    # what a tracer needs ----------------------------------------------------------------------

    def _split_kwargs(
        self, method: str, kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if method == "edit":
            return {}, kwargs
        inputs = {k: v for k, v in kwargs.items() if k in _INPUT_KEYS}
        options = {k: v for k, v in kwargs.items() if k not in _INPUT_KEYS}
        return inputs, options

    def _step_limit(self, method: str, call_kwargs: dict[str, Any]) -> int | None:
        if method != "generate":
            return 1
        new_tokens = call_kwargs.get("max_new_tokens")
        if new_tokens is None:
            new_tokens = getattr(self._module.generation_config, "max_new_tokens", None)
        return int(new_tokens) if new_tokens is not None else None

    def _module_at(self, path: str) -> torch.nn.Module:
        if path == "generator":
            return self._generator
        return super()._module_at(path)

    def _batch_rows(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        if not args and not kwargs:
            return None
        return len(self._token_rows(args, kwargs))

    def _batched_inputs(self, graph: Graph) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Tokenize every invoke's prompts and left-pad them into one batch."""
        rows: list[list[int]] = []
        masks: list[list[int]] = []
        for invoke in graph.invokes:
            if not invoke.args and not invoke.kwargs:
                continue
            args, kwargs = _decode((invoke.args, invoke.kwargs), graph.constants)
            for ids, mask in self._token_rows(args, kwargs):
                rows.append(ids)
                masks.append(mask)
        if not rows:
            raise BatchError(
                "no invoke has an input: pass a prompt to trace() or to tracer.invoke(prompt)"
            )
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        attention_mask = torch.tensor([[0] * (width - len(m)) + m for m in masks])
        device = _device_of(self._module)
        return (), {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
        }

    def _token_rows(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[tuple[list[int], list[int]]]:
        """An invoke's input as rows of (token ids, attention mask), unpadded."""
        if len(args) > 1:
            raise BatchError("give one input per invoke: a prompt, a list of prompts or ids")
        value = args[0] if args else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        if hasattr(value, "keys") and "input_ids" in value:  # tokenizer output
            mask = value.get("attention_mask", mask)
            value = value["input_ids"]
        if isinstance(value, str):
            value = [value]
        if isinstance(value, torch.Tensor):
            value = value.tolist()
            if value and not isinstance(value[0], list):
                value = [value]
        if isinstance(mask, torch.Tensor):
            mask = mask.tolist()
            if mask and not isinstance(mask[0], list):
                mask = [mask]
        if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
            value = [self.tokenizer(text)["input_ids"] for text in value]
            mask = None
        elif isinstance(value, Sequence) and value and all(isinstance(v, int) for v in value):
            value = [list(value)]
        if not (isinstance(value, Sequence) and value and all(isinstance(r, list) for r in value)):
            raise BatchError(
                f"cannot make token ids of {type(value).__name__}: give a string, a list of "
                "strings, token ids (a list or a tensor) or tokenizer output"
            )
        masks = mask if mask is not None else [[1] * len(r) for r in value]
        return [(list(r), [1 if m else 0 for m in k]) for r, k in zip(value, masks, strict=True)]

    def _execute(self, graph: Graph, total_rows: int, key: Any = None) -> dict[int, Any]:
        if graph.method != "scan":
            self.dispatch()
        return super()._execute(graph, total_rows, key)

    def _call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        if method == "generate":
            pad = self.tokenizer.pad_token_id
            options = {"pad_token_id": pad, **options}
            output = self._module.generate(**kwargs, **options)
            return self._generator(output)
        if method == "scan":
            options = {**options, "use_cache": False}
        mask = kwargs["attention_mask"]
        if "position_ids" not in options:
            # left padding: positions count real tokens, so a padded prompt equals it alone
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs = {**kwargs, "position_ids": positions}
        return self._module(**kwargs, **options)

    def _swap(self, module: torch.nn.Module) -> None:
        """Replace the wrapped (meta) model by a loaded one, keeping existing envoys valid."""
        object.__setattr__(self, "_module", module)
        for envoy in self.modules():
            if envoy is not self:
                object.__setattr__(envoy, "_module", module.get_submodule(envoy._path))


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("revision", "token", "trust_remote_code", "local_files_only", "cache_dir")
    return {k: v for k, v in kwargs.items() if k in keys}


def _empty_model(config: Any) -> torch.nn.Module:
    """The model's modules with meta tensors: its structure, without loading any weights."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def _load(name: str, device_map: Any, kwargs: dict[str, Any]) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    module = AutoModelForCausalLM.from_pretrained(name, device_map=device_map, **kwargs)
    return module.eval()


def _device_of(module: torch.nn.Module) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")
