"""The intervention graph: nodes, opcodes, source locations and the Graph container.

This package imports nothing else of nnsight_graph; everything else depends on it.
"""

from .effects import has_effect, mutates
from .errors import (
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
from .graph import Graph, Invoke
from .node import Const, Node, Ref, SourceLoc, const, is_literal, map_args, ref, refs
from .op_table import EFFECTFUL, GRADIENTS, HOOKED, OPS, READS, SITED, VALUED
from .ops import Op
from .session import SessionGraph, TraceRef

__all__ = [
    "EFFECTFUL",
    "GRADIENTS",
    "HOOKED",
    "OPS",
    "READS",
    "SITED",
    "VALUED",
    "BarrierError",
    "BatchError",
    "BatchIndexError",
    "Const",
    "ExecutionError",
    "Graph",
    "GraphBuildError",
    "InvokeError",
    "StepError",
    "Invoke",
    "ModuleNotCalledError",
    "NNsightError",
    "Node",
    "Op",
    "OutOfOrderError",
    "Ref",
    "SessionGraph",
    "SourceLoc",
    "StepsSkippedWarning",
    "TraceCaptureError",
    "TraceLayoutError",
    "TraceRef",
    "UnsavedValueError",
    "ValidationError",
    "WireFormatError",
    "const",
    "has_effect",
    "mutates",
    "ref",
    "is_literal",
    "map_args",
    "refs",
]
