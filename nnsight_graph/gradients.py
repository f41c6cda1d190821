"""Gradients in a trace: `with loss.backward():` and `.grad` of traced values inside it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .ir import GraphBuildError, Op

if TYPE_CHECKING:
    from .proxy import Proxy


class Backward:
    """A recorded `loss.backward(...)`; as a `with` block, `.grad` can be used inside it.

    Gradients arrive in reverse order of the forward pass, so read them in that order.
    """

    def __init__(self, loss: Proxy, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.recorder = loss._nn_recorder
        self.node = self.recorder.add(Op.BACKWARD, "backward", (loss, *args), **kwargs)

    def __enter__(self) -> Backward:
        self.recorder.backward.append(self.node)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.recorder.backward.pop()


def read_grad(proxy: Proxy) -> Proxy:
    """`value.grad` inside a backward block: the gradient flowing into that value."""
    recorder = proxy._nn_recorder
    return recorder.once(Op.READ_GRAD, "", (proxy, _current(recorder)))


def write_grad(proxy: Proxy, value: Any) -> None:
    """`value.grad = new` inside a backward block: replace the gradient flowing on."""
    import torch

    from .proxy import Proxy

    if not isinstance(value, (Proxy, torch.Tensor)):
        raise GraphBuildError(
            f".grad can only be set to a tensor, not {type(value).__name__}: write "
            "`value.grad = torch.zeros_like(value.grad)` or change it in place "
            "(`value.grad[:] = 0`)"
        )
    recorder = proxy._nn_recorder
    recorder.add(Op.WRITE_GRAD, "", (proxy, _current(recorder), value))


def _current(recorder: Any) -> Any:
    from .ir import ref

    if not recorder.backward:
        raise GraphBuildError(
            ".grad is only available inside `with loss.backward():` (gradients exist only "
            "while the backward pass runs); read it there, and save it to keep it"
        )
    return ref(recorder.backward[-1])
