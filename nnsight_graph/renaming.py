"""`rename=` aliases and `envoys=` classes: extra names for modules, and which Envoy class
wraps which module, both fixed once when the model is wrapped.

An alias is only a spelling: `model.layers` is the envoy of `transformer.h` itself, so graphs,
caches and saved values always name the real module path ("transformer.h.0.output").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

RenameKey = str | type
Rename = Mapping[RenameKey, str | list[str] | tuple[str, ...]]
AliasTable = dict[str, dict[str, str]]  # envoy path -> {alias: path relative to that envoy}


def module_paths(root: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """Every (path, module) under `root`, "" first; a module held twice is listed twice."""
    stack: list[tuple[str, torch.nn.Module]] = [("", root)]
    while stack:
        path, module = stack.pop()
        yield path, module
        children = [
            (f"{path}.{name}" if path else name, child)
            for name, child in module._modules.items()
            if child is not None
        ]
        stack.extend(reversed(children))


def _join(path: str, relative: str) -> str:
    return f"{path}.{relative}" if path and relative else path or relative


def named_from(module: torch.nn.Module, key: RenameKey) -> list[tuple[str, torch.nn.Module]]:
    """The descendants a `rename` key names from `module`, as (relative path, module).

    A class names each direct child that is an instance of it; a dotted name is walked one
    component at a time (a leading dot is ignored), and a `*` component stands for every
    child of the module reached so far. A module reached twice counts once.
    """
    found: list[tuple[str, torch.nn.Module]]
    if isinstance(key, type):
        found = [(n, c) for n, c in module._modules.items() if c is not None and isinstance(c, key)]
    else:
        found = [("", module)]
        for part in key.lstrip(".").split("."):
            step: list[tuple[str, torch.nn.Module]] = []
            for path, current in found:
                children = (
                    current._modules.items()
                    if part == "*"
                    else [(part, current._modules.get(part))]
                )
                step += [(_join(path, n), c) for n, c in children if c is not None]
            found = step
    unique: dict[int, tuple[str, torch.nn.Module]] = {}
    for path, child in found:
        unique.setdefault(id(child), (path, child))
    return list(unique.values())


def check_rename(rename: Any) -> dict[RenameKey, tuple[str, ...]]:
    """`rename` as {key: aliases}, or a TypeError that says what it takes."""
    if not isinstance(rename, Mapping):
        raise TypeError(
            f"rename= takes a dict from module path (or module class) to alias, not "
            f"{type(rename).__name__}: rename={{'transformer.h': 'layers'}}"
        )
    checked: dict[RenameKey, tuple[str, ...]] = {}
    for key, aliases in rename.items():
        names = (aliases,) if isinstance(aliases, str) else aliases
        if not isinstance(key, (str, type)) or not isinstance(names, (list, tuple)):
            raise TypeError(
                f"rename= maps a module path or class to an alias or a list of aliases; got "
                f"{key!r}: {aliases!r}"
            )
        for alias in names:
            if not isinstance(alias, str) or not all(p.isidentifier() for p in alias.split(".")):
                raise ValueError(f"rename alias {alias!r} for {key!r} is not a name")
        checked[key] = tuple(names)
    return checked


def build_alias_table(root: torch.nn.Module, rename: Any, taken: Any) -> AliasTable:
    """Resolve every `rename` entry from every module it resolves from.

    A key binds its aliases on each envoy from which it names exactly one module (so `"attn"`
    binds on every block, `"transformer.h"` on the root); a key that names nothing from an
    envoy is skipped there, so one dict can serve several architectures. A dotted alias
    (`"attn.o_proj"`) binds on the envoy its prefix names. `taken(path, module)` is the set of
    names an alias must not shadow there (the envoy's own attributes). Conflicts raise
    ValueError naming the alias and what it would hide.
    """
    entries = check_rename(rename)
    modules = dict(module_paths(root))
    table: AliasTable = {}
    for path, module in modules.items():
        for key, aliases in entries.items():
            matches = named_from(module, key)
            if len(matches) > 1:
                where = ", ".join(p for p, _ in matches)
                name = key.__name__ if isinstance(key, type) else repr(key)
                raise ValueError(
                    f"rename key {name} names {len(matches)} modules under {_label(path)} "
                    f"({where}); an alias names one module. Key them by path instead"
                )
            if matches:
                for alias in aliases:
                    _bind(table, modules, path, matches[0][0], alias, taken)
    return table


def _bind(
    table: AliasTable,
    modules: dict[str, torch.nn.Module],
    path: str,
    relative: str,
    alias: str,
    taken: Any,
) -> None:
    host = path
    if "." in alias:
        prefix, _, alias = alias.rpartition(".")
        if not relative.startswith(f"{prefix}."):
            raise ValueError(
                f"rename alias {prefix}.{alias!r} for {relative!r} names no module above it: "
                "a dotted alias binds on the module its prefix names, so the prefix must be "
                "the start of the key's path"
            )
        host, relative = _join(path, prefix), relative[len(prefix) + 1 :]
    bound = table.setdefault(host, {})
    if bound.get(alias) == relative:
        return  # two keys reaching the same module: one alias
    module = modules[host]
    if module._modules.get(alias) is not None:
        if _join(host, alias) == _join(host, relative):
            return  # `{"attn": "attn"}`: the module's own name
        hidden = f"the submodule {alias!r}"
    elif alias in bound:
        hidden = f"the alias {alias!r} of {bound[alias]!r}"
    elif alias in taken(host, module):
        hidden = f"the envoy attribute .{alias}"
    elif hasattr(module, alias):
        hidden = f"the attribute {alias!r} of {type(module).__name__}"
    else:
        bound[alias] = relative
        return
    raise ValueError(
        f"rename alias {alias!r} for {relative!r} would hide {hidden} on {_label(host)}; "
        "pick another alias"
    )


def _label(path: str) -> str:
    return f"model.{path}" if path else "the model"


# envoy classes -------------------------------------------------------------------------------


def spellings(rename: Any, path: str) -> list[str]:
    """Every spelling of a module path under the aliases, the real one first.

    Paths start with "model" (the root), as nnsight writes them: under
    `{"transformer.h": "layers", "attn": "attention"}` the path "model.transformer.h.0.attn"
    is also "model.layers.0.attention".
    """
    parts = path.split(".")
    if len(parts) == 1:
        return [path]
    found = [f"{prefix}.{parts[-1]}" for prefix in spellings(rename, ".".join(parts[:-1]))]
    for key, aliases in (rename or {}).items():
        if isinstance(key, type):
            continue  # a class names a module by type, not by path
        size = key.lstrip(".").count(".") + 1
        if size >= len(parts) or not path_ends_with(path, key):
            continue
        for alias in (aliases,) if isinstance(aliases, str) else aliases:
            down = alias.count(".")
            if down < size:
                host = ".".join(parts[: len(parts) - size + down])
                last = alias.rsplit(".", 1)[-1]
                found += [f"{prefix}.{last}" for prefix in spellings(rename, host)]
    return list(dict.fromkeys(found))


def path_ends_with(path: str, key: str) -> bool:
    """Whether dotted `path` ends with dotted `key`, component-wise; `*` matches any one."""
    parts = path.split(".")
    key_parts = key.lstrip(".").split(".")
    if len(key_parts) > len(parts):
        return False
    tail = parts[len(parts) - len(key_parts) :]
    return all(k in ("*", p) for p, k in zip(tail, key_parts, strict=True))


def check_envoys(envoys: Any, base: type) -> Any:
    """`envoys=` as given (a class, or a dict from module class or path to class), checked."""
    if envoys is None:
        return None
    if isinstance(envoys, type):
        if not issubclass(envoys, base):
            raise TypeError(f"envoys= takes an Envoy subclass, not {envoys.__name__}")
        return envoys
    if not isinstance(envoys, Mapping):
        raise TypeError(
            "envoys= takes an Envoy subclass or a dict from module class or path to one: "
            "envoys={torch.nn.Linear: MyEnvoy, 'transformer.h.*': BlockEnvoy}"
        )
    for key, value in envoys.items():
        if not isinstance(key, (str, type)):
            raise TypeError(f"an envoys= key is a module class or a path, not {key!r}")
        if not (isinstance(value, type) and issubclass(value, base)):
            raise TypeError(f"envoys={{{key!r}: ...}} must be an Envoy subclass, not {value!r}")
    return dict(envoys)


def envoy_class(envoys: Any, rename: Any, path: str, module: torch.nn.Module, base: type) -> type:
    """The Envoy class for the module at `path`: the first class key on the module's type
    (most derived first), else the first path key that ends any spelling of its path."""
    if envoys is None or isinstance(envoys, type):
        return envoys or base
    for kind in type(module).__mro__:
        if kind in envoys:
            return envoys[kind]
    full = f"model.{path}" if path else "model"
    for spelling in spellings(rename, full):
        for key, cls in envoys.items():
            if isinstance(key, str) and path_ends_with(spelling, key):
                return cls
    return base


# printing ------------------------------------------------------------------------------------


def render(module: torch.nn.Module, path: str, table: AliasTable) -> str:
    """The module tree as torch prints it, with each alias before its module's name
    (`(first/layer1): Linear(...)`) and aliases of deeper modules on lines of their own."""
    own_repr = type(module).__repr__
    if own_repr is torch.nn.ModuleList.__repr__:
        return _render_list(module, path, table)
    if own_repr is not torch.nn.Module.__repr__:
        return repr(module)
    extra = module.extra_repr()
    extra_lines = extra.split("\n") if extra else []
    direct: dict[str, list[str]] = {}
    mounts: list[tuple[str, str]] = []
    for alias, relative in table.get(path, {}).items():
        if "." in relative:
            mounts.append((alias, relative))
        else:
            direct.setdefault(relative, []).append(alias)
    child_lines = []
    for name, child in module._modules.items():
        text = render(child, _join(path, name), table) if child is not None else "None"
        label = "/".join([*direct.get(name, []), name])
        child_lines.append(f"({label}): " + _indent(text))
    for alias, relative in mounts:
        target = module.get_submodule(relative)
        child_lines.append(f"({alias}): " + _indent(render(target, _join(path, relative), table)))
    lines = extra_lines + child_lines
    text = module._get_name() + "("
    if lines:
        if len(extra_lines) == 1 and not child_lines:
            text += extra_lines[0]
        else:
            text += "\n  " + "\n  ".join(lines) + "\n"
    return text + ")"


def _render_list(module: torch.nn.Module, path: str, table: AliasTable) -> str:
    reprs = [render(c, _join(path, n), table) for n, c in module._modules.items() if c is not None]
    if not reprs:
        return module._get_name() + "()"
    blocks: list[tuple[int, int, str]] = []
    for index, text in enumerate(reprs):
        if blocks and blocks[-1][2] == text:
            blocks[-1] = (blocks[-1][0], index, text)
        else:
            blocks.append((index, index, text))
    lines = []
    for start, end, text in blocks:
        line = (
            f"({start}): {text}" if start == end else f"({start}-{end}): {end - start + 1} x {text}"
        )
        lines.append(_indent(line))
    return module._get_name() + "(\n  " + "\n  ".join(lines) + "\n)"


def _indent(text: str) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    return lines[0] + "\n" + "\n".join("  " + line for line in lines[1:])
