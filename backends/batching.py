"""Batch rows: combine invokes' inputs, give each invoke its rows, merge its replacements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..ir.errors import BatchError


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor found in a (nested) tuple, list or dict, in order."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        items: Any = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        return None
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def batch_size(value: Any) -> int | None:
    """Rows of the first tensor in `value` (its dim 0), None when it holds no tensor."""
    tensor = first_tensor(value)
    if tensor is None or tensor.dim() == 0:
        return None
    return int(tensor.shape[0])


def concatenate(parts: Sequence[Any]) -> Any:
    """Concatenate same-structured values on dim 0: tensors are joined, other leaves must match."""
    head = parts[0]
    if len(parts) == 1:
        return head
    if isinstance(head, torch.Tensor):
        if not all(isinstance(p, torch.Tensor) for p in parts):
            raise BatchError("invokes mix a tensor with a non-tensor at the same input position")
        try:
            return torch.cat(list(parts), dim=0)
        except RuntimeError as error:
            shapes = ", ".join(str(tuple(p.shape)) for p in parts)
            raise BatchError(
                f"the invokes' inputs cannot be batched on dim 0 (shapes {shapes}): give every "
                "invoke inputs of the same shape apart from the first dimension"
            ) from error
    if isinstance(head, (tuple, list)):
        if any(type(p) is not type(head) or len(p) != len(head) for p in parts):
            raise BatchError("invokes were given inputs of different structure; give each the same")
        return type(head)(concatenate([p[i] for p in parts]) for i in range(len(head)))
    if isinstance(head, dict):
        if any(not isinstance(p, dict) or p.keys() != head.keys() for p in parts):
            raise BatchError("invokes were given inputs with different keys; give each the same")
        return {key: concatenate([p[key] for p in parts]) for key in head}
    if any(p is not head and p != head for p in parts):
        raise BatchError(f"invokes disagree on a non-tensor input ({head!r}); give each the same")
    return head


def narrow(value: Any, start: int, stop: int, total: int) -> Any:
    """The rows [start, stop) of every tensor leaf whose dim 0 is the whole batch (views)."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == total:
            return value[start:stop]
        return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(narrow(v, start, stop, total) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(narrow(v, start, stop, total) for v in value)
    if isinstance(value, dict):
        narrowed = {k: narrow(v, start, stop, total) for k, v in value.items()}
        try:
            return type(value)(**narrowed) if type(value) is not dict else narrowed
        except TypeError:
            return narrowed
    return value


def merge(full: Any, part: Any, start: int, stop: int, total: int) -> Any:
    """`full` with rows [start, stop) replaced by `part`, for every batch-sized tensor leaf."""
    if isinstance(full, torch.Tensor) and full.dim() > 0 and full.shape[0] == total:
        if not isinstance(part, torch.Tensor):
            raise BatchError(
                f"an invoke replaced a tensor of shape {tuple(full.shape)} with "
                f"{type(part).__name__}; set a tensor of the same shape"
            )
        expected = (stop - start, *full.shape[1:])
        if tuple(part.shape) != expected:
            raise BatchError(
                f"an invoke that owns {stop - start} of {total} batch rows set a value of shape "
                f"{tuple(part.shape)}; it must have shape {expected}"
            )
        return torch.cat([full[:start], part.to(full.dtype), full[stop:]], dim=0)
    if isinstance(full, (tuple, list)) and isinstance(part, (tuple, list)):
        if len(full) != len(part):
            raise BatchError(f"an invoke replaced a {len(full)}-item value with {len(part)} items")
        merged = [merge(f, p, start, stop, total) for f, p in zip(full, part, strict=True)]
        return type(full)(*merged) if hasattr(full, "_fields") else type(full)(merged)
    if isinstance(full, dict) and isinstance(part, dict):
        return {
            k: merge(full[k], v, start, stop, total) if k in full else v for k, v in part.items()
        }
    return part
