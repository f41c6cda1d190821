"""Graph -> Graph functions: validation before compute and optimization, and their order."""

from ..ir import has_effect
from .analysis import needed_hooks
from .facts import ModelFacts
from .optimize import eliminate_common_subexpressions, eliminate_dead_nodes, fold_constants
from .pipeline import OPTIMIZATION, VALIDATION, run_passes
from .purity import is_random
from .validate import check_batch_slices, check_gradients, check_module_order, check_skips
from .verify import verify

__all__ = [
    "OPTIMIZATION",
    "VALIDATION",
    "ModelFacts",
    "check_batch_slices",
    "check_gradients",
    "check_module_order",
    "check_skips",
    "eliminate_common_subexpressions",
    "eliminate_dead_nodes",
    "fold_constants",
    "has_effect",
    "is_random",
    "needed_hooks",
    "run_passes",
    "verify",
]
