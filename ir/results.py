"""Saved values as bytes: a JSON manifest of their structure, the tensors as safetensors.

How a run's saved values travel back from a server (never pickle). The manifest maps each
saved node id to its value's description: tensors by name (on the CPU, a view sent as only
its own elements; one that needed grad comes back as a leaf that does), tuples, lists,
str-keyed dicts, torch.Size, dtypes, devices, numbers, strings, bytes, None, and Hugging Face
ModelOutputs (rebuilt as their class when it is in transformers.modeling_outputs or in a
transformers module this process has imported, such as a model's own output class, else as a
dict). A value with no wire form (a KV cache
object, say) is sent as `Omitted`, which names it and raises when used: never dropped silently.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import UnsavedValueError, WireFormatError
from .functions import UNSET
from .limits import LOCAL, Limits
from .wire import (
    _LENGTH_BYTES,
    _decode_number,
    _decompress,
    _dtypes,
    _encode_primitive,
    _load_tensors,
    _save_tensors,
    _split,
)

MAGIC = b"NNRESLT1"
RESULTS_VERSION = 1
_MAX_DEPTH = 64


class Omitted:
    """A saved value the sender could not put on the wire; any use says which and why."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        object.__setattr__(self, "description", description)

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsavedValueError(
            f"{object.__getattribute__(self, 'description')} has no wire form, so it was not "
            "sent back; save the tensors you need from it instead"
        )

    __getattr__ = __getitem__ = __iter__ = __len__ = __call__ = __bool__ = _fail

    def __repr__(self) -> str:
        return f"<Omitted: {object.__getattribute__(self, 'description')}>"


def dumps_results(saved: dict[int, Any], level: int = 3) -> bytes:
    """The saved values (node id -> value) as one zstd-compressed payload."""
    tensors: dict[str, Any] = {}
    encoder = _Encoder(tensors)
    manifest = {"results_version": RESULTS_VERSION, "values": _encode_values(encoder, saved)}
    return _pack(manifest, tensors, level)


def dumps_session_results(saved: list[dict[int, Any]], level: int = 3) -> bytes:
    """The saved values of each trace of a session, in trace order, as one payload."""
    tensors: dict[str, Any] = {}
    encoder = _Encoder(tensors)
    traces = [_encode_values(encoder, values) for values in saved]
    return _pack({"results_version": RESULTS_VERSION, "traces": traces}, tensors, level)


def _encode_values(encoder: _Encoder, saved: dict[int, Any]) -> dict[str, Any]:
    return {str(id): encoder.value(value, f"%{id}", 0) for id, value in saved.items()}


def _pack(manifest: dict[str, Any], tensors: dict[str, Any], level: int) -> bytes:
    import zstandard

    header = json.dumps(manifest, ensure_ascii=False, allow_nan=False).encode("utf-8")
    blob = _save_tensors(tensors)
    container = MAGIC + len(header).to_bytes(_LENGTH_BYTES, "little") + header + blob
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return compressor.compress(container)


def loads_results(data: bytes, limits: Limits = LOCAL) -> dict[int, Any]:
    """The saved values in a payload made by dumps_results (WireFormatError when malformed)."""
    manifest, decoder = _unpack(data, limits)
    values = manifest.get("values")
    if not isinstance(values, dict):
        raise WireFormatError(
            "the results' manifest has no values (a session's results are read with "
            "loads_session_results)"
        )
    return _decode_values(decoder, values)


def loads_session_results(data: bytes, limits: Limits = LOCAL) -> list[dict[int, Any]]:
    """Each trace's saved values in a payload made by dumps_session_results."""
    manifest, decoder = _unpack(data, limits)
    traces = manifest.get("traces")
    if not isinstance(traces, list) or not all(isinstance(t, dict) for t in traces):
        raise WireFormatError(
            "the results' manifest has no traces (one graph's results are read with loads_results)"
        )
    return [_decode_values(decoder, values) for values in traces]


def _unpack(data: bytes, limits: Limits) -> tuple[dict[str, Any], _Decoder]:
    container = _decompress(data, limits.decompressed_bytes)
    header, blob = _split(container, limits.header_bytes, MAGIC)
    try:
        manifest = json.loads(header)
    except ValueError as e:
        raise WireFormatError(f"the results' manifest is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("results_version") != RESULTS_VERSION:
        version = manifest.get("results_version") if isinstance(manifest, dict) else None
        raise WireFormatError(
            f"the results have version {version!r}, but this nnsight_graph reads version "
            f"{RESULTS_VERSION}; use the same nnsight_graph version on the client and server"
        )
    return manifest, _Decoder(_load_tensors(blob))


def _decode_values(decoder: _Decoder, values: dict[str, Any]) -> dict[int, Any]:
    saved = {}
    for key, value in values.items():
        if not key.isdigit():
            raise WireFormatError(f"the results name a node {key!r}, which is not a node id")
        saved[int(key)] = decoder.value(value, 0)
    return saved


class _Encoder:
    def __init__(self, tensors: dict[str, Any]) -> None:
        self.tensors = tensors

    def value(self, value: Any, where: str, depth: int) -> dict[str, Any]:
        import torch

        if depth > _MAX_DEPTH:
            raise WireFormatError(f"the saved value {where} is nested too deeply to send")
        if isinstance(value, torch.Tensor):
            name = f"t{len(self.tensors)}"
            self.tensors[name] = value
            if value.requires_grad:  # the flag only: the autograd graph stays with the sender
                return {"kind": "tensor", "name": name, "requires_grad": True}
            return {"kind": "tensor", "name": name}
        if isinstance(value, torch.Size):
            return {"kind": "size", "dims": [int(d) for d in value]}
        if isinstance(value, torch.dtype):
            return {"kind": "dtype", "name": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"kind": "device", "name": str(value)}
        output = _model_output_class(value)
        if output is not None:
            fields = {k: self.value(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
            module = type(value).__module__
            return {"kind": "output", "class": output, "module": module, "items": fields}
        if type(value) in (tuple, list):
            entries = [self.value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
            return {"kind": type(value).__name__, "items": entries}
        if type(value) is dict and all(type(k) is str for k in value):
            items = {k: self.value(v, f"{where}[{k!r}]", depth + 1) for k, v in value.items()}
            return {"kind": "dict", "items": items}
        if type(value) is dict:  # other keys (a cache's (path, kind) pairs): as pairs
            pairs = [
                [
                    self.value(k, f"{where} key", depth + 1),
                    self.value(v, f"{where}[{k!r}]", depth + 1),
                ]
                for k, v in value.items()
            ]
            return {"kind": "mapping", "items": pairs}
        primitive = _encode_primitive(value)
        if primitive is not None:
            return primitive
        kind = type(value)
        return {"kind": "omitted", "what": f"{where} ({kind.__module__}.{kind.__qualname__})"}


def _model_output_class(value: Any) -> str | None:
    """The class name of a transformers ModelOutput (a dict subclass), else None."""
    kind = type(value)
    if not isinstance(value, dict) or kind is dict:
        return None
    if not any(base.__name__ == "ModelOutput" for base in kind.__mro__):
        return None
    return kind.__name__


class _Decoder:
    def __init__(self, tensors: dict[str, Any]) -> None:
        self.tensors = tensors

    def value(self, model: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH or not isinstance(model, dict):
            raise WireFormatError("the results' manifest holds a value that is not described")
        kind = model.get("kind")
        if kind == "tensor":
            name = model.get("name")
            if name not in self.tensors:
                raise WireFormatError(f"the results name a tensor {name!r} they do not hold")
            tensor = self.tensors[name]
            if model.get("requires_grad") is True:
                _require_grad(tensor, name)
            return tensor
        if kind in ("tuple", "list"):
            items = [self.value(v, depth + 1) for v in _items(model, list)]
            return tuple(items) if kind == "tuple" else items
        if kind == "dict":
            return {k: self.value(v, depth + 1) for k, v in _items(model, dict).items()}
        if kind == "mapping":
            pairs = _items(model, list)
            try:
                return {self.value(k, depth + 1): self.value(v, depth + 1) for k, v in pairs}
            except (TypeError, ValueError) as e:  # a list key, or not a pair
                raise WireFormatError(f"the results hold a malformed mapping: {e}") from e
        if kind == "output":
            fields = {k: self.value(v, depth + 1) for k, v in _items(model, dict).items()}
            return _model_output(model.get("class"), model.get("module"), fields)
        if kind == "omitted":
            return Omitted(str(model.get("what", "a saved value")))
        return _decode_simple(model)


def _items(model: dict[str, Any], kind: type) -> Any:
    items = model.get("items")
    if not isinstance(items, kind):
        raise WireFormatError(f"the results describe a {model.get('kind')} without its items")
    return items


def _require_grad(tensor: Any, name: str) -> None:
    """Mark a received tensor as needing grad, as it did where it was saved."""
    import torch

    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise WireFormatError(
            f"the results' tensor {name!r} is {tensor.dtype}, which cannot need grad"
        )
    if tensor.is_inference() and not torch.is_inference_mode_enabled():
        return  # torch refuses the flag on an inference tensor outside inference mode
    tensor.requires_grad_(True)


def _model_output(name: Any, module: Any, items: dict[str, Any]) -> Any:
    """The transformers ModelOutput class `name` holding `items`, or a plain dict.

    The class is looked up in transformers.modeling_outputs, or in the transformers module
    `module` when this process has imported it already (a model's own output class, such as
    MambaCausalLMOutput): a results payload never makes this process import a module.
    """
    import sys

    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        return items
    from transformers import modeling_outputs
    from transformers.utils import ModelOutput

    kind = getattr(modeling_outputs, name, None)
    if kind is None and isinstance(module, str) and module.startswith("transformers."):
        kind = getattr(sys.modules.get(module), name, None)
    if not (isinstance(kind, type) and issubclass(kind, ModelOutput)):
        return items
    try:
        return kind(**items)
    except TypeError:  # fields of another transformers version
        return items


def _decode_simple(model: dict[str, Any]) -> Any:
    import base64

    import torch

    kind = model.get("kind")
    try:
        match kind:
            case "none":
                return None
            case "ellipsis":
                return Ellipsis
            case "unset":
                return UNSET  # a name an untaken `if` branch left unassigned
            case "bool" | "int" | "str" if type(model["value"]).__name__ == kind:
                return model["value"]
            case "float":
                return _decode_number(model["value"])
            case "complex":
                return complex(_decode_number(model["real"]), _decode_number(model["imag"]))
            case "bytes":
                return base64.b64decode(model["base64"], validate=True)
            case "size":
                return torch.Size(int(d) for d in model["dims"])
            case "dtype":
                return _dtypes()[model["name"]]
            case "device":
                return torch.device(str(model["name"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise WireFormatError(f"the results hold a malformed {kind} value: {e}") from e
    raise WireFormatError(f"the results hold a value of unknown kind {kind!r}")
