"""The check a graph from outside this process passes before anything of it runs.

Every function is named in the registry (checked by name, before any import), method and
attribute names are ones the registry has for some kind of value (the value's own kind is
checked when the node runs), module paths exist in the model, and call options are known
keywords with plain values.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

from ..ir import SITED, Graph, Node, Op
from ..ir.errors import add_note
from ..ir.limits import LOCAL, Limits
from ..ir.registry import METHODS, RegistryError, check_function
from ..ir.sites import VALUE_KINDS
from .verify import verify

_METHOD_NAMES: Final = frozenset().union(*METHODS.values())

OPTIONS: Final[dict[str, frozenset[str]]] = {
    "trace": frozenset({"use_cache", "output_attentions", "output_hidden_states", "return_dict"}),
    "scan": frozenset({"use_cache", "output_attentions", "output_hidden_states", "return_dict"}),
    "generate": frozenset(
        {
            "max_new_tokens",
            "min_new_tokens",
            "max_length",
            "min_length",
            "do_sample",
            "temperature",
            "top_k",
            "top_p",
            "typical_p",
            "num_beams",
            "repetition_penalty",
            "no_repeat_ngram_size",
            "length_penalty",
            "early_stopping",
            "eos_token_id",
            "pad_token_id",
            "bos_token_id",
            "num_return_sequences",
            "use_cache",
            "output_attentions",
            "output_hidden_states",
            "return_dict_in_generate",
            "output_scores",
            "output_logits",
        }
    ),
}
"""Method -> the call keywords a graph from outside may pass (never code, paths or objects:
no `trust_remote_code`, `custom_generate`, `streamer`, callables)."""


def check_untrusted(graph: Graph, module_paths: Collection[str], limits: Limits = LOCAL) -> None:
    """Raise RegistryError, naming the node, unless the graph only uses what the registry
    allows and only the modules in `module_paths` (the model's `named_modules()` names), and
    asks generate() for at most `limits.max_new_tokens` tokens.

    Then `verify` refuses (ValidationError) a graph whose structure the executor cannot run:
    a loaded graph may hold any node the schema can express.
    """
    for node in graph.nodes:
        _check_node(node, module_paths)
    allowed = OPTIONS.get(graph.method)
    if allowed is None:
        raise RegistryError(
            f"a graph from outside this process cannot run with method {graph.method!r}; "
            f"use one of: {', '.join(OPTIONS)}"
        )
    for key, value in graph.options.items():
        if key not in allowed:
            raise RegistryError(
                f"the option {key!r} is not allowed for {graph.method}() in a graph from outside "
                f"this process; allowed: {', '.join(sorted(allowed))}"
            )
        if not _plain(value):
            raise RegistryError(
                f"the option {key}={value!r} must be a plain value (None, bool, int, float, str "
                "or a list of ints)"
            )
        if key in ("max_new_tokens", "max_length") and isinstance(value, int):
            if value > limits.max_new_tokens:
                raise RegistryError(
                    f"{key}={value} asks for more than the {limits.max_new_tokens} tokens a "
                    "run may generate"
                )
    verify(graph)


def _check_node(node: Node, module_paths: Collection[str]) -> None:
    op = node.op
    try:
        if op is Op.CALL:
            check_function(node.target)
        elif op is Op.METHOD:
            _check_name(node.target, _METHOD_NAMES, "method")
        elif op is Op.GETATTR:
            if node.target.startswith("_") or not node.target.isidentifier():
                raise RegistryError(f"the attribute name {node.target!r} is never allowed")
        elif op in SITED:
            _check_site(node, module_paths)
        elif op is Op.CALL_MODULE:
            _check_path(node.target, module_paths)
        elif op is Op.CACHE:
            paths = node.kwargs.get("paths", ())
            for path in paths if isinstance(paths, (tuple, list)) else ():
                if type(path) is str:  # any other shape is verify's to refuse
                    _check_path(path, module_paths)
    except RegistryError as error:
        where = f" at {node.loc}" if node.loc else ""
        add_note(error, f"  graph node{where}: {node}")
        raise


def _check_name(name: str, allowed: frozenset[str], what: str) -> None:
    if name.startswith("_") or name not in allowed:
        raise RegistryError(
            f"the {what} {name!r} is not in the registry of {what}s a graph from outside this "
            "process may use"
        )


def _check_site(node: Node, module_paths: Collection[str]) -> None:
    site, target = node.site, node.target
    if site is None or site.kind not in VALUE_KINDS:
        raise RegistryError(
            f"{target!r} is not a hook site (a module path and one of "
            f"{', '.join(sorted(VALUE_KINDS))})"
        )
    _check_path(site.module, module_paths)


def _check_path(path: str, module_paths: Collection[str]) -> None:
    if path and path not in module_paths:
        raise RegistryError(
            f"the graph names the module {path!r}, which this model does not have; use a path "
            "from the model's named_modules()"
        )


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, list | tuple) and all(type(v) is int for v in value)


__all__ = ["OPTIONS", "check_untrusted"]
