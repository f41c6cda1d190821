"""What a graph from outside this process may call: functions, methods and attributes.

The lists are data. A name is checked here before anything is imported or resolved; no name
with a leading underscore is ever allowed; file, process, pickle and network functions are
never listed. Graphs recorded in this process may call any importable function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Final

from .errors import NNsightError
from .functions import split_name


class RegistryError(NNsightError):
    """A graph asks for a function, method or attribute that graphs from outside may not use."""


_MATH = """
    abs absolute add sub subtract mul multiply div divide true_divide floor_divide remainder
    fmod pow float_power neg negative positive reciprocal exp exp2 expm1 log log2 log10 log1p
    sqrt rsqrt square sin cos tan asin acos atan atan2 arcsin arccos arctan sinh cosh tanh
    asinh acosh atanh sigmoid relu erf erfc erfinv logit sign sgn signbit clamp clip
    clamp_min clamp_max maximum minimum fmax fmin where lerp hypot round floor ceil trunc frac
    nan_to_num isnan isinf isfinite isposinf isneginf isreal isclose allclose equal eq ne lt
    le gt ge greater less greater_equal less_equal not_equal logical_and logical_or logical_not
    logical_xor bitwise_and bitwise_or bitwise_xor bitwise_not matmul mm bmm mv dot vdot inner
    outer ger einsum tensordot baddbmm addmm addmv addbmm kron cross diag diagonal diag_embed
    tril triu trace
"""
_REDUCTIONS = """
    sum mean nansum nanmean std var std_mean var_mean prod max min amax amin aminmax argmax
    argmin topk kthvalue sort argsort msort cumsum cumprod cummax cummin logsumexp logcumsumexp
    softmax log_softmax norm dist median nanmedian mode quantile nanquantile count_nonzero any
    all unique unique_consecutive bincount histc searchsorted bucketize cosine_similarity cdist
"""
_SHAPES = """
    cat concat concatenate stack hstack vstack dstack column_stack split tensor_split chunk
    unbind reshape flatten unflatten squeeze unsqueeze transpose swapaxes swapdims permute
    movedim moveaxis t adjoint narrow select index_select masked_select gather scatter
    scatter_add take take_along_dim masked_fill index_fill index_add index_copy roll flip
    fliplr flipud rot90 broadcast_to broadcast_tensors atleast_1d atleast_2d atleast_3d
    nonzero argwhere numel is_tensor is_floating_point is_complex is_nonzero clone detach
    result_type promote_types can_cast
"""
# creation functions: their sizes are bounded when a graph runs (see ir.bounds)
_CREATION = """
    zeros ones full empty zeros_like ones_like full_like empty_like rand randn randint
    rand_like randn_like randint_like randperm normal bernoulli multinomial arange linspace
    logspace eye tensor as_tensor scalar_tensor
"""
_FUNCTIONAL = """
    relu relu6 leaky_relu elu selu celu gelu silu mish softplus softsign hardtanh hardswish
    hardsigmoid sigmoid tanh logsigmoid softmax log_softmax softmin gumbel_softmax glu
    layer_norm rms_norm group_norm batch_norm instance_norm normalize linear bilinear
    embedding one_hot pad dropout cosine_similarity pairwise_distance kl_div cross_entropy
    nll_loss mse_loss l1_loss smooth_l1_loss huber_loss binary_cross_entropy
    binary_cross_entropy_with_logits scaled_dot_product_attention
"""
_LINALG = """
    norm vector_norm matrix_norm svd svdvals qr eigh eigvalsh eig eigvals pinv inv solve det
    slogdet matrix_rank lstsq cholesky cross matmul diagonal vecdot multi_dot
"""
_SPECIAL = "erf erfc erfinv expit logit logsumexp softmax log_softmax entr xlogy gammaln"
_OPERATOR = """
    add sub mul truediv floordiv mod pow neg pos abs invert matmul and_ or_ xor not_ truth
    lshift rshift eq ne lt le gt ge getitem contains is_ is_not index iadd isub imul itruediv
    ifloordiv imod ipow imatmul iand ior ixor ilshift irshift
"""
_PYTHON_MATH = """
    sqrt exp log log2 log10 log1p expm1 pow floor ceil trunc fabs sin cos tan asin acos atan
    atan2 sinh cosh tanh erf isclose isnan isinf isfinite copysign hypot degrees radians
    prod fsum
"""
_BUILTINS = """
    len min max abs sum round sorted reversed enumerate zip any all range slice list tuple dict
    int float bool complex str divmod
"""


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


FUNCTIONS: Final[dict[str, frozenset[str]]] = {
    "torch": _names(_MATH + _REDUCTIONS + _SHAPES + _CREATION),
    "torch.nn.functional": _names(_FUNCTIONAL),
    "torch.linalg": _names(_LINALG),
    "torch.special": _names(_SPECIAL),
    "operator": _names(_OPERATOR),
    "math": _names(_PYTHON_MATH),
    "builtins": _names(_BUILTINS),
}
"""Importable module -> the function names a graph may call in it."""

CREATION_FUNCTIONS: Final = frozenset(f"torch.{name}" for name in _names(_CREATION))
"""Calls that allocate a tensor of a size their arguments give."""

_TENSOR_METHODS = """
    abs add sub mul div true_divide floor_divide remainder fmod pow neg reciprocal exp expm1
    log log2 log10 log1p sqrt rsqrt square sin cos tan tanh sigmoid relu erf sign clamp clip
    maximum minimum where lerp round floor ceil trunc frac nan_to_num isnan isinf isfinite
    isclose allclose equal eq ne lt le gt ge logical_and logical_or logical_not logical_xor
    bitwise_and bitwise_or bitwise_xor bitwise_not matmul mm bmm mv dot outer diag
    diagonal tril triu trace sum mean nansum nanmean std var prod max min amax amin aminmax
    argmax argmin topk kthvalue sort argsort cumsum cumprod logsumexp softmax log_softmax norm
    dist median mode quantile count_nonzero any all unique bincount
    reshape reshape_as view view_as flatten unflatten squeeze unsqueeze transpose swapaxes
    permute movedim t narrow select index_select masked_select gather scatter scatter_add
    masked_fill masked_fill_ index_fill index_add index_copy roll flip split chunk unbind
    expand expand_as broadcast_to repeat repeat_interleave tile contiguous clone detach
    detach_ to float double half bfloat16 int long short bool byte char type_as cpu
    size dim ndimension numel nelement element_size item tolist is_floating_point is_complex
    is_contiguous requires_grad_ retain_grad zero_ fill_ copy_ add_ sub_ mul_ div_ clamp_
    abs_ neg_ pow_ exp_ log_ sqrt_ relu_ sigmoid_ tanh_ normal_ uniform_ nonzero argwhere
    new_zeros new_ones new_full new_empty new_tensor
"""
_SEQUENCE_METHODS = "count index"
_LIST_METHODS = "append extend insert pop remove reverse sort copy clear"
_DICT_METHODS = "keys values items get copy to_tuple"
# none that can make a string much longer than itself (replace, join, center, ljust, ...)
_STR_METHODS = """
    lower upper strip lstrip rstrip split rsplit startswith endswith find rfind count isdigit
    isalpha isspace title capitalize splitlines partition rpartition
"""
_NUMBER_METHODS = "is_integer bit_length conjugate as_integer_ratio"

METHODS: Final[dict[str, frozenset[str]]] = {
    "tensor": _names(_TENSOR_METHODS),
    "list": _names(_SEQUENCE_METHODS + " " + _LIST_METHODS),
    "tuple": _names(_SEQUENCE_METHODS + " numel"),  # torch.Size is a tuple
    "dict": _names(_DICT_METHODS),  # a transformers ModelOutput is a dict too
    "str": _names(_STR_METHODS),  # never format/format_map: they reach attributes
    "number": _names(_NUMBER_METHODS),
}
"""Value kind -> the method names a graph may call on such a value."""

ATTRIBUTES: Final[dict[str, frozenset[str]]] = {
    "tensor": _names(
        "shape dtype device T mT H mH ndim data grad requires_grad is_leaf real imag layout "
        "is_cuda is_sparse is_quantized is_meta itemsize nbytes"
    ),
    "dtype": _names("is_floating_point is_complex is_signed itemsize"),
    "device": _names("type index"),
    "slice": _names("start stop step"),
    "number": _names("real imag numerator denominator"),
}
"""Value kind -> the attribute names a graph may read. A dict-kind value (a transformers
ModelOutput) also allows its own string keys as attributes (`result.logits`)."""


def kind_of(value: Any) -> str:
    """The registry's kind for a run-time value ("tensor", "list", "dict", ...)."""
    import torch

    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, bool | int | float | complex):
        return "number"
    for kind, types in (
        ("str", str),
        ("list", list),
        ("tuple", tuple),
        ("dict", dict),
        ("slice", slice),
        ("dtype", torch.dtype),
        ("device", torch.device),
    ):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def check_function(name: str) -> None:
    """Raise RegistryError unless graphs from outside may call the function `name`."""
    module, short = split_name(name)
    if short.startswith("_") or short not in FUNCTIONS.get(module, ()):
        raise RegistryError(
            f"the graph calls {name!r}, which is not in the registry of functions a graph "
            "from outside this process may call (torch math, reductions, shapes and bounded "
            "creation, torch.nn.functional, torch.linalg, operator, math, a few builtins); "
            "compute it after the trace, on the saved values"
        )


_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def allowed_function(name: str) -> Callable[..., Any]:
    """The function `name` stands for, checked before its module is imported."""
    function = _FUNCTIONS.get(name)
    if function is not None:
        return function
    check_function(name)
    module_name, short = split_name(name)
    function = getattr(importlib.import_module(module_name), short, None)
    if function is None or not callable(function) or isinstance(function, type(importlib)):
        raise RegistryError(f"{name!r} is not a function in this version of {module_name}")
    _FUNCTIONS[name] = function
    return function


def check_method(value: Any, name: str) -> None:
    """Raise RegistryError unless graphs from outside may call `value.name(...)`."""
    kind = kind_of(value)
    if name.startswith("_") or name not in METHODS.get(kind, ()):
        raise RegistryError(
            f"the graph calls the method {name!r} on a {kind} value, which the registry does "
            f"not allow for graphs from outside this process"
            + _choices(METHODS.get(kind), "methods")
        )


def check_attribute(value: Any, name: str) -> None:
    """Raise RegistryError unless graphs from outside may read `value.name`."""
    kind = kind_of(value)
    if not name.startswith("_"):
        if name in ATTRIBUTES.get(kind, ()):
            return
        if kind == "dict" and name in value:
            return
    raise RegistryError(
        f"the graph reads the attribute {name!r} of a {kind} value, which the registry does "
        f"not allow for graphs from outside this process" + _choices(ATTRIBUTES.get(kind), "")
    )


def _choices(names: frozenset[str] | None, what: str) -> str:
    if not names:
        return ""
    return f"; allowed{' ' + what if what else ''}: {', '.join(sorted(names))}"
