"""ModelFacts: what earlier runs taught us about a model, for passes that check before compute."""

from __future__ import annotations

from dataclasses import dataclass, field

Site = tuple[str, str]  # (module path, "input" | "output")


@dataclass(frozen=True)
class ModelFacts:
    """Call order and value kinds observed on a model's first run.

    `order` gives each hook site its position in the forward pass; sites of modules that ran
    more than once are left out, since their order is not fixed. `tensor_outputs` holds the
    paths of modules whose output was a single tensor with the whole batch on dim 0.
    """

    order: dict[Site, int] = field(default_factory=dict)
    tensor_outputs: frozenset[str] = frozenset()

    @classmethod
    def from_events(cls, events: list[Site], tensor_outputs: set[str]) -> ModelFacts:
        """Build facts from the hook events of one run, in the order they fired."""
        counts: dict[Site, int] = {}
        for event in events:
            counts[event] = counts.get(event, 0) + 1
        order: dict[Site, int] = {}
        for position, event in enumerate(events):
            if counts[event] == 1:
                order[event] = position
        return cls(order, frozenset(tensor_outputs))
