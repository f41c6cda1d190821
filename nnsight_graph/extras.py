"""Tracer tools beyond reading and writing: stop, barriers, skipping modules, caching."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .ir import BarrierError, Op

if TYPE_CHECKING:
    from .envoy import Envoy
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


class CacheEntry:
    """One module's cached values: `.output`, `.input`, `.inputs` (a list when it ran often)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._values: dict[str, list[Any]] = {}

    def _get(self, kind: str) -> Any:
        values = self._values.get("output" if kind == "output" else "input")
        if values is None:
            raise AttributeError(
                f"{self.path} has no cached {kind}: pass include_inputs=True or "
                "include_output=True to tracer.cache()"
            )
        if kind == "input":
            values = [args[0] if args else next(iter(kwargs.values())) for args, kwargs in values]
        return values[0] if len(values) == 1 else values

    @property
    def output(self) -> Any:
        return self._get("output")

    @property
    def input(self) -> Any:
        return self._get("input")

    @property
    def inputs(self) -> Any:
        return self._get("inputs")

    def __repr__(self) -> str:
        return f"<CacheEntry {self.path}: {', '.join(self._values) or 'empty'}>"


class Cache(dict):  # type: ignore[type-arg]
    """`tracer.cache()`: module values keyed by path ("model.transformer.h.0"), filled when
    the trace has run; attribute access follows the module tree (`cache.model.h[0].output`)."""

    def __init__(self, root: Envoy, paths: list[str]) -> None:
        super().__init__()
        self._root = root
        for path in paths:
            key = f"model.{path}" if path else "model"
            self[key] = CacheEntry(key)

    def _fill(self, values: dict[tuple[str, str], list[Any]]) -> None:
        for (path, kind), captured in values.items():
            key = f"model.{path}" if path else "model"
            self[key]._values[kind] = captured

    def __getattr__(self, name: str) -> Any:
        if name == "model":
            return _CachePath(self, "model")
        raise AttributeError(name)


class _CachePath:
    """Attribute and index access into a Cache along the module tree."""

    def __init__(self, cache: Cache, key: str) -> None:
        self._cache = cache
        self._key = key

    def _entry(self) -> CacheEntry:
        entry: CacheEntry = self._cache.get(self._key)  # type: ignore[assignment]
        if entry is None:
            raise KeyError(f"nothing cached for {self._key}")
        return entry

    def __getattr__(self, name: str) -> Any:
        if name in ("output", "input", "inputs"):
            return getattr(self._entry(), name)
        return _CachePath(self._cache, f"{self._key}.{name}")

    def __getitem__(self, index: int) -> _CachePath:
        prefix = f"{self._key}."
        children = sorted(
            {k[len(prefix) :].split(".")[0] for k in self._cache if k.startswith(prefix)},
            key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else n),
        )
        numbered = [c for c in children if c.isdigit()]
        return _CachePath(self._cache, f"{prefix}{numbered[index]}")
