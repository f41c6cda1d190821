"""Gradients in the local executor: a BACKWARD node runs `loss.backward()` with a gradient
hook for each value whose `.grad` the graph reads or writes; each hook fires a site."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from ..ir import GRADIENTS, Node, Ref
from ..ir.errors import ExecutionError
from .plan import Cursor, Site
from .values import Missing, with_location


class GradientSteps:
    """The gradient part of a Run: a mixin that uses the run's `value`, `env`, `plan`,
    `graph`, `fire`, `release`, `missing` and `debug`."""

    env: dict[int, Any]
    plan: Any
    graph: Any
    debug: bool

    if TYPE_CHECKING:  # what the run provides (backends/local.py's Run)

        def value(self, arg: Any) -> Any: ...
        def fire(self, site: Site, value: Any) -> Any: ...
        def release(self, node: Node) -> None: ...
        def missing(self, ref: Ref) -> Exception: ...

    def run_backward(self, node: Node) -> None:
        """Run `loss.backward()`, firing a gradient site for each value whose .grad is used."""
        try:
            loss, *rest = self.value(node.args)
            kwargs = self.value(node.kwargs) if node.kwargs else {}
        except Missing as missing:
            raise with_location(self.missing(missing.ref), node, self.debug) from None
        if not isinstance(loss, torch.Tensor):
            raise with_location(
                ExecutionError(
                    f".backward() was called on a {type(loss).__name__}, not a tensor: call "
                    "it on a tensor value such as a loss computed from a module's output"
                ),
                node,
                self.debug,
            )
        handles = []
        try:
            for tensor_id, site in self.plan.grads.get(node.id, {}).items():
                tensor = self.env[tensor_id]
                if not getattr(tensor, "requires_grad", False):
                    source = self.graph.node(tensor_id)
                    raise ExecutionError(
                        f"the .grad of the value from {source.loc} was requested, but that "
                        "value does not require grad: call .requires_grad_(True) on it "
                        "before computing the loss"
                    )
                handles.append(self.hook_grad(tensor, site))
            loss.backward(*rest, **kwargs)
        except Exception as error:
            with_location(error, node, self.debug)
            raise
        finally:
            for handle in handles:
                handle.remove()
        self.release(node)

    def hook_grad(self, tensor: torch.Tensor, site: Site) -> Any:
        """Fire `site` with the gradient of `tensor` during the backward pass.

        A view (`output[0]`, an invoke's rows) is often not itself on the path to the loss:
        its gradient is then read from, and written into, the matching part of its base's.
        """
        base = tensor._base
        if base is None:
            return tensor.register_hook(partial(self.grad_hook, site))
        layout = (tensor.size(), tensor.stride(), tensor.storage_offset() - base.storage_offset())
        return base.register_hook(partial(self.view_grad_hook, site, layout, base.stride()))

    def grad_hook(self, site: Site, grad: Any) -> Any:
        new = self.fire(site, grad)
        return None if new is grad else new

    def view_grad_hook(
        self,
        site: Site,
        layout: tuple[torch.Size, tuple[int, ...], int | torch.SymInt],
        base_stride: Any,
        grad: Any,
    ) -> Any:
        if grad.stride() != base_stride:
            raise ExecutionError(
                "the gradient of a view could not be located in its base's gradient (their "
                "memory layouts differ); take .grad of the module's whole output instead"
            )
        size, stride, offset = layout
        view = grad.as_strided(size, stride, grad.storage_offset() + offset)
        new = self.fire(site, view)
        if new is not view:
            view.copy_(new)
        return grad


def gradient_work_end(cursor: Cursor, backward: Node) -> int:
    """Where the nodes that use this backward pass's gradients end, in the cursor's nodes.

    They run inside the gradient hooks (where autograd records nothing); everything after
    them runs once the backward pass has returned.
    """
    derived: set[int] = set()
    end = cursor.position
    for index in range(cursor.position, len(cursor.nodes)):
        node = cursor.nodes[index]
        reads_grad = node.op in GRADIENTS and node.args[1].id == backward.id
        if reads_grad or any(ref.id in derived for ref in node.inputs()):
            derived.add(node.id)
            end = index + 1
    return end
