"""The nnsight walkthrough's two-layer net, with fixed weights: for tests, benchmarks and
`nnsight-graph serve --model net=nnsight_graph.models.walkthrough:walkthrough_net`."""

from __future__ import annotations

from collections import OrderedDict

import torch


def walkthrough_net() -> torch.nn.Sequential:
    """`Sequential(layer1=Linear(5, 10), layer2=Linear(10, 2))` initialised from seed 0 (the
    global random state is left as it was), frozen: every call gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layers: OrderedDict[str, torch.nn.Module] = OrderedDict(
            [("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))]
        )
        return torch.nn.Sequential(layers).requires_grad_(False)


__all__ = ["walkthrough_net"]
