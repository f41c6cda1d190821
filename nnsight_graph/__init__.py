"""nnsight_graph: read, change and take gradients of any activation inside a PyTorch model.

Code inside `with model.trace(...):` is recorded as a graph of intervention nodes, checked
and optimized by passes, and run by a backend that binds the nodes to torch hooks.
"""

from .config import CONFIG
from .envoy import Envoy
from .ir import (
    BarrierError,
    BatchError,
    BatchIndexError,
    ExecutionError,
    GraphBuildError,
    InvokeError,
    ModuleNotCalledError,
    NNsightError,
    OutOfOrderError,
    StepError,
    StepsSkippedWarning,
    TraceCaptureError,
    TraceLayoutError,
    UnsavedValueError,
    ValidationError,
    WireFormatError,
)
from .ir.graph import Graph
from .language import LanguageModel
from .local import local
from .model import NNsight
from .proxy import Proxy
from .saving import save
from .tracer import Invoker, Tracer

__version__ = "0.1.0"

__all__ = [
    "CONFIG",
    "local",
    "BarrierError",
    "BatchError",
    "BatchIndexError",
    "Envoy",
    "ExecutionError",
    "Graph",
    "GraphBuildError",
    "InvokeError",
    "StepError",
    "Invoker",
    "Job",
    "LanguageModel",
    "ModuleNotCalledError",
    "NNsight",
    "NNsightError",
    "OutOfOrderError",
    "Proxy",
    "StepsSkippedWarning",
    "TraceCaptureError",
    "TraceLayoutError",
    "Tracer",
    "UnsavedValueError",
    "ValidationError",
    "WireFormatError",
    "save",
]


def __getattr__(name: str) -> object:
    """`nnsight_graph.Job`: the remote client, imported when first asked for (it needs
    httpx, which a purely local user never loads)."""
    if name == "Job":
        from .remote.client import Job

        return Job
    raise AttributeError(f"module 'nnsight_graph' has no attribute {name!r}")
