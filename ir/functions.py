"""Names for callables: a node's target is a qualified name, resolved back by import."""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable
from typing import Any

from .errors import GraphBuildError

_NAMES: dict[Any, str] = {}
_RESOLVED: dict[str, Callable[..., Any]] = {}


def split_name(name: str) -> tuple[str, str]:
    """A CALL or METHOD target's namespace and short name: "torch.nn.functional.relu" ->
    ("torch.nn.functional", "relu"), "clone" -> ("", "clone"). The one reading of a function
    target that the registry, the effect rules and the purity rules share."""
    namespace, _, short = name.rpartition(".")
    return namespace, short


def qualified_name(func: Callable[..., Any]) -> str:
    """The importable dotted name of `func` ("torch.argmax", "operator.add").

    Raises GraphBuildError for callables that have no importable name (lambdas, locals).
    """
    try:
        return _NAMES[func]
    except (KeyError, TypeError):
        pass
    name = _find_name(func)
    if name is None:
        raise GraphBuildError(
            f"cannot record a call to {func!r}: it has no importable name. Call it on saved "
            "values after the trace, or use a module-level function."
        )
    try:
        _NAMES[func] = name
    except TypeError:
        pass
    return name


def _find_name(func: Callable[..., Any]) -> str | None:
    import torch  # ir stays importable without torch for tools that only read graphs

    short = getattr(func, "__name__", None)
    if short is None:
        return None
    for prefix, namespace in (
        ("torch", torch),
        ("torch.nn.functional", torch.nn.functional),
        ("torch.linalg", torch.linalg),
        ("torch.special", torch.special),
        ("torch.fft", torch.fft),
        ("operator", operator),
    ):
        # torch.special.erf is `special_erf` (likewise linalg_*, fft_*) under its own name
        name = short.removeprefix(prefix.rpartition(".")[2] + "_")
        if getattr(namespace, name, None) is func:
            return f"{prefix}.{name}"
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if module and qualname and "<" not in qualname:
        candidate = f"{module}.{qualname}"
        try:
            if resolve(candidate) is func:
                return candidate
        except GraphBuildError:
            return None
    return None


def resolve(name: str) -> Callable[..., Any]:
    """The callable a qualified name stands for (cached)."""
    try:
        return _RESOLVED[name]
    except KeyError:
        pass
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        _RESOLVED[name] = obj
        return obj
    raise GraphBuildError(f"no importable function named {name!r}")


class _Skipped:
    """The value of a node that did not run because its guard was false."""

    _instance: _Skipped | None = None

    def __new__(cls) -> _Skipped:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SKIPPED"

    def __bool__(self) -> bool:
        return False


SKIPPED = _Skipped()


class _Unset:
    """The value of a variable on a path through `if proxy:` that never assigned it."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


def select(condition: Any, if_true: Any, if_false: Any) -> Any:
    """`if_true` when the condition held, else `if_false`: a variable after `if proxy:`."""
    if condition is SKIPPED or not condition:
        return if_false
    return if_true
