"""LanguageModel: NNsight for Hugging Face causal language models, with tokenization,
left-padded batching of prompts, generation, and lazy (meta-device) loading of weights."""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .envoy import Envoy
from .ir import BatchError, Graph, NNsightError, Op
from .model import NNsight, _decode
from .tracer import Tracer

# trace() keywords that are tokenizer inputs of the implicit invoke, not model options
_INPUT_KEYS = ("input_ids", "attention_mask")
_DISPATCH = threading.Lock()  # loading weights is rare: one lock for every model

# mixture-of-experts implementations that fake tensors cannot run: "grouped_mm" calls
# torch._grouped_mm, whose fake kernel takes only bf16 on CPU; "eager" loops over the experts
# that got tokens (nonzero(), whose shape depends on the values)
_FAKE_UNSAFE_EXPERTS = ("grouped_mm", "eager")


class _Streamer(torch.nn.Module):
    """`llm.generator.streamer`: generate() hands it the prompt ids, then each step's new
    tokens (transformers' streamer protocol), so its output at step k is the k-th of those."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return ids


class _Stream:
    """The streamer one generate() call is given: each value passes `llm.generator.streamer`
    (where a trace reads or replaces it), then the user's own streamer, if any."""

    __slots__ = ("module", "user")

    def __init__(self, module: _Streamer, user: Any) -> None:
        self.module = module
        self.user = user

    def put(self, value: torch.Tensor) -> None:
        value = self.module(value)
        if self.user is not None:
            self.user.put(value)

    def end(self) -> None:
        if self.user is not None:
            self.user.end()


class _Generator(torch.nn.Module):
    """Stands for `model.generate(...)`: its output is the generated ids (`llm.generator`)."""

    def __init__(self) -> None:
        super().__init__()
        self.streamer = _Streamer()

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

    # modules of generate() outside the model: `tracer.cache()` keeps them in a generate()
    _GENERATION_MODULES = ("generator", "generator.streamer")
    # sites called once more than the model per generate() (the prompt, then each token):
    # an open `tracer.iter[:]` that reads one runs a last step to reach its last call
    _LATE_SITES = frozenset(f"generator.streamer.{what}" for what in ("output", "input", "inputs"))

    def __init__(
        self,
        model: str | torch.nn.Module,
        *,
        device_map: str | dict[str, Any] | None = None,
        dispatch: bool = False,
        tokenizer: Any = None,
        rename: Any = None,
        envoys: Any = None,
        **kwargs: Any,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        served_from = None  # the folder of the config and tokenizer a server gave
        if isinstance(model, torch.nn.Module):
            module = model
            name = getattr(getattr(model, "config", None), "_name_or_path", "")
            loaded = True
        else:
            name = model
            if not dispatch and not os.path.isdir(name):
                served_from = _from_server(name)  # a model the configured server hosts
            if served_from is not None:
                config = AutoConfig.from_pretrained(served_from)
                if tokenizer is None:
                    tokenizer = AutoTokenizer.from_pretrained(served_from)
            else:
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
        super().__init__(module, rename=rename, envoys=envoys)
        for attribute, value in (
            ("tokenizer", tokenizer),
            ("_name", name),
            ("_served_from", served_from),
            ("_loaded", loaded),
            ("_device_map", device_map),
            ("_load_kwargs", kwargs),
            ("_generator", _Generator()),
            ("_pending", []),
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
        envoy = _GeneratorEnvoy(self._generator, "generator")
        envoy._attach(self)
        return envoy

    def generate(self, *inputs: Any, **kwargs: Any) -> Tracer:
        """A tracing context around `model.generate(...)`; keywords go to generate()."""
        return Tracer(self, inputs, kwargs, method="generate")

    @property
    def dispatched(self) -> bool:
        """Whether the real weights are loaded (False while the model holds meta tensors)."""
        return bool(self._loaded)

    def dispatch(self) -> None:
        """Load the real weights now (a model built lazily holds meta tensors until then)."""
        if self._loaded:
            return
        with _DISPATCH:  # first traces in two threads: one loads, the other waits for it
            if self._loaded:
                return
            try:
                module = _load(self._name, self._device_map, self._load_kwargs)
            except OSError as error:
                if self._served_from is None:
                    raise
                raise _weights_on_server(self._name) from error
            for path, method, args, kwargs in self._pending:
                getattr(module.get_submodule(path), method)(*args, **kwargs)
            self._pending.clear()
            self._swap(module)
            object.__setattr__(self, "_loaded", True)

    @property
    def device(self) -> torch.device | None:
        """Where the weights are, or, before they load, where they will be."""
        if self._loaded:
            return super().device
        for path, method, args, kwargs in reversed(self._pending):
            if path == "" and method in _DEVICE_MOVES:
                device = _target_device(method, args, kwargs)
                if device is not None:
                    return device
        return torch.device("cpu") if self._device_map is None else torch.device("meta")

    # changes to the module ------------------------------------------------------------------

    def _change_module(
        self, path: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Before the weights load, a move is kept and made on the loaded model (in order);
        what a meta model can take at once (a dtype, eval/train) is made on it too."""
        if self._loaded or path == "generator":
            super()._change_module(path, method, args, kwargs)
            return
        self._pending.append((path, method, args, kwargs))
        module = self._module_at(path)
        if method not in _DEVICE_MOVES:
            getattr(module, method)(*args, **kwargs)
        elif method == "to":
            dtype = torch._C._nn._parse_to(*args, **kwargs)[1]
            if dtype is not None:
                module.to(dtype=dtype)

    def _before_direct_call(self) -> None:
        self.dispatch()

    def _input_hint(self) -> str:
        return ""

    # what a tracer needs ----------------------------------------------------------------------

    def _remote_key(self) -> str:
        from .models import TINY_GPT2

        name = self._name
        if not name:
            return super()._remote_key()
        if os.path.isdir(name) and os.path.samefile(name, TINY_GPT2):
            return "tiny-gpt2"  # the name every nnsight_graph server hosts the shipped model by
        return str(name)

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

    def _site_paths(self) -> set[str]:
        generator = (
            f"generator.{name}" if name else "generator"
            for name, _ in self._generator.named_modules()
        )
        return {*super()._site_paths(), *generator}

    def _module_at(self, path: str) -> torch.nn.Module:
        if path == "generator":
            return self._generator
        if path.startswith("generator."):
            return self._generator.get_submodule(path[len("generator.") :])
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
        value: Any = args[0] if args else kwargs.get("input_ids")
        mask: Any = kwargs.get("attention_mask")
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

    def _prepare(self, method: str) -> None:
        if method != "scan":  # a scan needs only the structure, no weights
            self.dispatch()

    def _call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        if method == "generate":
            return self._generate(kwargs, options)
        mask = kwargs["attention_mask"]
        # mypy reads a class's __hash__ as unbound, so a class is not Hashable to it
        model_class = type(self._module)
        if "position_ids" not in options and _takes_position_ids(model_class):  # type: ignore[arg-type]
            # left padding: positions count real tokens, so a padded prompt equals it alone
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs = {**kwargs, "position_ids": positions}
        if method == "scan":
            with _experts_for_fake_tensors(self._module):
                return self._module(**kwargs, **{**options, "use_cache": False})
        return self._module(**kwargs, **options)

    def _generate(self, kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
        """`model.generate(...)` with the generator's streamer: its ids pass `llm.generator`."""
        options = {"pad_token_id": self.tokenizer.pad_token_id, **options}
        beams = options.get("num_beams", getattr(self._module.generation_config, "num_beams", 1))
        if (beams or 1) <= 1:  # transformers refuses a streamer with beam search
            options["streamer"] = _Stream(self._generator.streamer, options.get("streamer"))
        return self._generator(self._module.generate(**kwargs, **options))

    def _swap(self, module: torch.nn.Module) -> None:
        """Replace the wrapped (meta) model by a loaded one, keeping existing envoys valid."""
        object.__setattr__(self, "_module", module)
        stack: list[Envoy] = [self]
        while stack:  # only the envoys made so far: the others are made from the new model
            envoy = stack.pop()
            for name, child in envoy._children.items():
                object.__setattr__(child, "_module", envoy._module._modules[name])
                stack.append(child)


_DEVICE_MOVES = frozenset({"to", "cpu", "cuda"})  # what a meta model cannot do before loading


def _target_device(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if method == "cpu":
        return torch.device("cpu")
    if method == "cuda":
        index = args[0] if args else kwargs.get("device")
        return torch.device("cuda", index) if isinstance(index, int) else torch.device("cuda")
    return torch._C._nn._parse_to(*args, **kwargs)[0]


@functools.cache
def _takes_position_ids(model_class: type[torch.nn.Module]) -> bool:
    """Whether the model's forward can be given `position_ids`: it names them or takes any
    keyword (BLOOM, whose alibi comes from the mask, and Mamba take and ignore them)."""
    parameters = inspect.signature(model_class.forward).parameters.values()
    return any(
        p.name == "position_ids" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )


@contextmanager
def _experts_for_fake_tensors(module: Any) -> Iterator[None]:
    """While a scan runs, experts layers use transformers' "batched_mm" (gathered weights and
    batched matmuls: shapes that do not depend on the routing); restored afterwards.
    `module` is a transformers model (its experts methods are recent: not typed)."""
    get = getattr(module, "get_experts_implementation", None)
    current = get() if get is not None else {}
    wanted = {k: "batched_mm" if v in _FAKE_UNSAFE_EXPERTS else v for k, v in current.items()}
    if wanted == current:
        yield
        return
    module.set_experts_implementation(wanted)
    try:
        yield
    finally:
        module.set_experts_implementation(current)


def _from_server(name: str) -> str | None:
    """A folder with the config and tokenizer of `name` as the server in CONFIG.API.HOST
    serves them (so a model the server hosts needs neither the hub nor its weights here);
    None when no server answers there or it does not host `name` (then the hub is asked)."""
    from .remote.served import fetch_model_files

    try:
        return fetch_model_files(name)
    except NNsightError:
        return None


def _weights_on_server(name: str) -> NNsightError:
    return NNsightError(
        f"the weights of {name!r} are on the server (this process has its config and "
        "tokenizer from there, and neither the hub nor a local directory has the weights): run "
        "traces on it with remote=True, or load the model from a local directory"
    )


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
