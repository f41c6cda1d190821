"""Tracer tools beyond reading and writing: barriers (the cache is in cache.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .ir import BarrierError, Op

if TYPE_CHECKING:
    from .recorder import Recorder


class Barrier:
    """`barrier = tracer.barrier(n)`: each of n invokes calls `barrier()`; none goes past it
    until all n have reached it (so a value one invoke reads there exists for the others)."""

    def __init__(self, recorder: Recorder, participants: int) -> None:
        if not isinstance(participants, int) or participants < 1:
            raise BarrierError(f"barrier(n) needs a positive int, not {participants!r}")
        self.recorder = recorder
        self.participants = participants
        self.name = f"barrier{len(recorder.barriers)}"
        self.invokes: set[int] = set()
        self.loc: Any = None
        recorder.barriers.append(self)

    def __call__(self) -> None:
        recorder = self.recorder
        if recorder.invoke < 0:
            raise BarrierError("call barrier() inside an invoke")
        self.invokes.add(recorder.invoke)
        node = recorder.add(Op.BARRIER, self.name, (self.participants,))
        self.loc = recorder.nodes[node].loc

    def check(self) -> None:
        """Before the run: as many invokes must call the barrier as it has participants."""
        if len(self.invokes) != self.participants:
            raise BarrierError(
                f"barrier({self.participants}) at {self.loc} was called by "
                f"{len(self.invokes)} invoke(s); it would wait forever. Give it the number of "
                "invokes that call it"
            )
