"""Graph -> Graph functions: validation before compute and optimization, and their order."""

from ..ir import has_effect
from .facts import ModelFacts
from .optimize import eliminate_dead_nodes
from .pipeline import run_passes
from .validate import check_batch_slices, check_module_order

__all__ = [
    "ModelFacts",
    "check_batch_slices",
    "check_module_order",
    "eliminate_dead_nodes",
    "has_effect",
    "run_passes",
]
