"""`tracer.cache()`: every value of chosen modules, kept while the model runs, read after the
trace by path (`cache["model.transformer.h.0"]`) or along the module tree
(`cache.model.transformer.h[0]`, or the short `cache.transformer.h[0]`)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .ir import GraphBuildError

if TYPE_CHECKING:
    from .envoy import Envoy

ROOT = "model"
"""The name of the model in cache keys: the root module is "model", its children "model.x"."""


def key_of(path: str) -> str:
    """The cache key of a module path ("" is the root): "model", "model.transformer.h.0"."""
    return f"{ROOT}.{path}" if path else ROOT


def cache_paths(model: Envoy, method: str, modules: list[Any] | None) -> list[str]:
    """The module paths `tracer.cache(modules=...)` names (None: every module, and in a
    generate() the modules generate() adds, such as `llm.generator.streamer`)."""
    extra = getattr(type(model), "_GENERATION_MODULES", ())
    if modules is None:
        paths = [envoy._path for envoy in model.modules()]
        return paths + list(extra) if method == "generate" else paths
    if _is_envoy(modules) or isinstance(modules, str):
        modules = [modules]
    known = {envoy._path for envoy in model.modules()} | set(extra)
    return list(dict.fromkeys(module_path(known, m) for m in modules))


def cache_kinds(include_output: bool, include_inputs: bool) -> list[str]:
    """The hook kinds a cache listens to."""
    kinds = (["output"] if include_output else []) + (["input"] if include_inputs else [])
    if not kinds:
        raise GraphBuildError(
            "tracer.cache(include_output=False, include_inputs=False) caches nothing: keep at "
            "least one of them"
        )
    return kinds


def cache_options(device: Any, dtype: Any) -> dict[str, Any]:
    """tracer.cache()'s device and dtype as the CACHE node stores them: names, or None."""
    options: dict[str, Any] = {"device": None, "dtype": None}
    if device is not None:
        try:
            options["device"] = str(torch.device(device))
        except (RuntimeError, TypeError) as error:
            raise GraphBuildError(
                f'tracer.cache(device={device!r}) is not a torch device: pass "cpu", '
                '"cuda:0", a torch.device, or None to leave values where they are'
            ) from error
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            raise GraphBuildError(
                f"tracer.cache(dtype={dtype!r}): pass a torch dtype such as torch.float16"
            )
        options["dtype"] = str(dtype).removeprefix("torch.")
    return options


def module_path(known: set[str], module: Any) -> str:
    """The module path (`""` for the root) that an entry of `tracer.cache(modules=[...])`
    names: an envoy, or a string, either a cache key ("model.transformer.h.0") or a path
    below the model ("transformer.h.0"); `known` holds the model's module paths."""
    if _is_envoy(module):
        return module._path
    if not isinstance(module, str):
        raise GraphBuildError(
            "tracer.cache(modules=[...]) takes modules (model.transformer.h[0]) or their paths "
            f'("model.transformer.h.0"), not {type(module).__name__}'
        )
    if module == ROOT:
        return ""
    if module.startswith(f"{ROOT}.") and module[len(ROOT) + 1 :] in known:
        return module[len(ROOT) + 1 :]
    if module in known:  # the short form, below the model
        return module
    close = difflib.get_close_matches(module, [key_of(p) for p in known], n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise GraphBuildError(
        f"tracer.cache(modules=[...]): the model has no module {module!r}.{hint} Name modules "
        'by their cache key ("model.transformer.h.0") or pass the envoy itself'
    )


@dataclass(slots=True)
class Entry:
    """One call of a module: its output and its `(args, kwargs)`, each None if not cached."""

    output: Any = None
    inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    @property
    def input(self) -> Any:
        """The first positional argument, else the first keyword argument."""
        if self.inputs is None:
            return None
        args, kwargs = self.inputs
        if args:
            return args[0]
        return next(iter(kwargs.values()), None)


class Cache:
    """What one `tracer.cache()` collected: per module key, an Entry per call, in the order
    the modules were first reached. Modules that never ran have no entries."""

    def __init__(self, model: Envoy | None) -> None:
        self.model = model
        self.entries: dict[str, list[Entry]] = {}
        self.filled = False

    def fill(self, values: dict[tuple[str, str], list[Any]]) -> None:
        """Take the run's values: (module path, "input"/"output") -> one value per call."""
        for (path, kind), captured in values.items():
            entries = self.entries.setdefault(key_of(path), [])
            while len(entries) < len(captured):
                entries.append(Entry())
            slot = "inputs" if kind == "input" else "output"
            for entry, value in zip(entries, captured, strict=False):
                setattr(entry, slot, value)
        self.filled = True

    def __getstate__(self) -> dict[str, Any]:
        # the model (and its weights) stays out of a pickled cache: keys still work
        return {"model": None, "entries": self.entries, "filled": self.filled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model = state["model"]
        self.entries = state["entries"]
        self.filled = state["filled"]


class CacheView:
    """A node of the module tree over a Cache; `tracer.cache()` returns the root above the
    model. `.output`, `.inputs`, `.input` give one value per call of the module (the value
    itself when it ran once, a list when it ran more often, as in generate()); `len(view)`
    counts its calls. The root is also a mapping: its keys are the cached module keys."""

    def __init__(self, cache: Cache, envoy: Envoy | None = None, path: str | None = None) -> None:
        self._cache = cache
        self._envoy = envoy
        self._path = path if path is not None or envoy is None else key_of(envoy._path)

    # values ------------------------------------------------------------------------------

    def _entries(self) -> list[Entry]:
        cache = self._cache
        if not cache.filled:
            raise KeyError(
                "the cache is filled when the trace has run: read it after the `with` block"
            )
        path = self._path
        if path is None:
            raise KeyError(
                "the cache root is not a module: select one first "
                '(cache["model.transformer.h.0"] or cache.model.transformer.h[0])'
            )
        entries = cache.entries.get(path)
        if entries is None:
            raise KeyError(
                f"{path!r} was not cached: it never ran in this trace, or it is not among "
                "tracer.cache(modules=[...])"
            )
        return entries

    def _values(self, slot: str) -> Any:
        values = [getattr(entry, slot) for entry in self._entries()]
        return values[0] if len(values) == 1 else values

    @property
    def output(self) -> Any:
        """The module's output (None when include_output=False)."""
        return self._values("output")

    @property
    def inputs(self) -> Any:
        """The module's `(args, kwargs)` (None unless include_inputs=True)."""
        return self._values("inputs")

    @property
    def input(self) -> Any:
        """The module's first argument (None unless include_inputs=True)."""
        return self._values("input")

    def keys(self) -> list[str]:
        """The cached module keys at or below this node (every one, at the root)."""
        path = self._path
        if path is None:
            return list(self._cache.entries)
        prefix = f"{path}."
        return [k for k in self._cache.entries if k == path or k.startswith(prefix)]

    # navigation --------------------------------------------------------------------------

    def __getattr__(self, name: str) -> CacheView:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._child(name)

    def __getitem__(self, key: str | int) -> CacheView:
        if isinstance(key, int):
            if self._envoy is None and self._path is not None:  # a loaded cache: by name
                return CacheView(self._cache, None, f"{self._path}.{key}")
            if self._envoy is None:
                raise TypeError(
                    'index the cache with a module key (cache["model.transformer.h.0"]); '
                    "integers index a module list (cache.model.transformer.h[0])"
                )
            return self._view(self._envoy[key])
        if not isinstance(key, str):
            raise TypeError(f"index the cache with a module key string, not {key!r}")
        if "." not in key:
            return self._child(key)
        try:
            return self._absolute(key)
        except (AttributeError, IndexError, KeyError):
            if key in self._cache.entries:  # a loaded cache, or a tree that changed
                return CacheView(self._cache, None, key)
            if self._path is None:
                raise
        return self._relative(key)  # below this node: cache["model.transformer"]["h.0"]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (str, int)):
            return False
        try:
            view = self[key]
        except (AttributeError, IndexError, KeyError, TypeError):
            return False
        return view._path is not None and view._path in self._cache.entries

    def __len__(self) -> int:
        if self._path is None:
            return len(self._cache.entries)
        return len(self._entries())

    def __iter__(self) -> Any:
        if self._path is None:
            return iter(list(self._cache.entries))
        if self._envoy is None:
            raise TypeError(f"{self._path!r} has no module tree to iterate (a loaded cache)")
        return (self._view(child) for child in self._envoy)

    def __repr__(self) -> str:
        at = "root" if self._path is None else repr(self._path)
        return f"CacheView({at}, cached={self.keys()})"

    def __getstate__(self) -> dict[str, Any]:
        return {"cache": self._cache, "path": self._path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._cache = state["cache"]
        self._envoy = None
        self._path = state["path"]

    def _child(self, name: str) -> CacheView:
        """One step down the tree; at the root, "model" or a child of the model."""
        envoy = self._envoy
        model = self._cache.model
        if self._path is None:
            if name == ROOT:
                return CacheView(self._cache, model, ROOT)
            if model is None:
                return CacheView(self._cache, None, key_of(name))
            return self._view(getattr(model, name))
        if envoy is None:
            return CacheView(self._cache, None, f"{self._path}.{name}")
        if name.lstrip("-").isdigit():
            return self._view(envoy[int(name)])
        return self._view(getattr(envoy, name))

    def _absolute(self, key: str) -> CacheView:
        view = CacheView(self._cache)
        for part in key.split("."):
            view = view._child(part)
        return view

    def _relative(self, key: str) -> CacheView:
        view = self
        for part in key.split("."):
            view = view._child(part)
        return view

    def _view(self, node: Any) -> CacheView:
        if not _is_envoy(node):
            raise AttributeError(f"{type(node).__name__} is not a module of the model")
        return CacheView(self._cache, node)


def _is_envoy(value: Any) -> bool:
    # asked of the class: asking a Proxy itself would record an attribute read
    return bool(getattr(type(value), "_nnsight_envoy", False))


def new_cache(model: Envoy) -> tuple[Cache, CacheView]:
    """An empty cache over `model` and the root view `tracer.cache()` returns."""
    cache = Cache(model)
    return cache, CacheView(cache)
