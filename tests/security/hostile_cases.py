"""Hostile payloads, each made from a real recorded graph, and what loading and running it
must end in: one clear library error before any effect, or a bounded, correct run.

`tests/security/payload_runner.py` runs each case in a process of its own; the test reads its
report. Every case names its expected outcome as `ErrorType: regex` ("ok" for a correct run).
`Context(workdir, on="llm")` records the same graphs on the shipped GPT-2, for the server's
version of the suite (tests/server/test_hostile_jobs.py).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import zstandard

import nnsight_graph as nnsight
from nnsight_graph.ir import Graph, Op, ref
from nnsight_graph.ir.wire import MAGIC, dumps
from nnsight_graph.models import tiny_gpt2_path


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Any], bytes]  # the runner's context -> payload
    expect: str  # "ok", or "ErrorType: regex"
    model: str = "net"  # "net" (the walkthrough net) or "llm" (the shipped GPT-2)


class Context:
    """What the cases build their payloads from: real recorded graphs and the effects a
    payload would have if it ran (creating the canary file).

    `on="net"` records `graph` and `failing` on the walkthrough net (module `layer1`);
    `on="llm"` records them on the shipped GPT-2 (module `transformer.h.0`), as a server
    hosting it would receive them. `generate` is always a GPT-2 generate graph.
    """

    def __init__(self, workdir: Path, on: Literal["net", "llm"] = "net") -> None:
        torch.manual_seed(0)
        layers = OrderedDict(
            [("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))]
        )
        self.net = nnsight.NNsight(torch.nn.Sequential(layers).requires_grad_(False))
        self.llm = nnsight.LanguageModel(tiny_gpt2_path(), dispatch=True)
        self.x: Any = torch.rand(1, 5) if on == "net" else "Hello world"
        self.canary = str(workdir / "CANARY")
        self.fifo = str(workdir / "fifo")
        os.mkfifo(self.fifo)
        self.first_ref = ref(0)
        model = self.net if on == "net" else self.llm
        self.module = "layer1" if on == "net" else "transformer.h.0"  # a module it has
        self.rank = 2 if on == "net" else 3  # dimensions of that module's output
        first = model.layer1 if on == "net" else self.llm.transformer.h[0]
        last = model if on == "net" else self.llm.lm_head  # GPT-2's output holds its cache
        with model.trace(self.x, run=False) as tracer:
            hidden = first.output
            hidden.clone().save()
            torch.sum(hidden).save()
            last.output.save()
        self.graph: Graph = tracer.graph
        with model.trace(self.x, run=False) as tracer:
            first.output[:, 99].save()
        self.failing: Graph = tracer.graph
        with self.llm.generate("Hello", max_new_tokens=2, run=False) as tracer:
            self.llm.generator.output.save()
        self.generate: Graph = tracer.graph

    def effect_for(self, function: str) -> str:
        """The argument that would create the canary if `function` ran with it."""
        if function.startswith(("builtins.exec", "builtins.eval", "builtins.compile")):
            return f"open({self.canary!r}, 'w').write('ran')"
        if function.startswith(("os.", "subprocess.", "torch.os.")):
            return f"touch {self.canary}"
        return self.canary


def edited(graph: Graph, which: Op, **changes: Any) -> bytes:
    """The payload of `graph` with its first node of op `which` changed."""
    nodes = list(graph.nodes)
    index = next(i for i, node in enumerate(nodes) if node.op is which)
    nodes[index] = nodes[index]._replace(**changes)
    return dumps(graph.with_nodes(nodes))


def header_edited(payload: bytes, change: Callable[[dict], None]) -> bytes:
    """The payload with its JSON header changed by `change` (the tensors kept)."""
    container = zstandard.ZstdDecompressor().decompress(payload)
    length = int.from_bytes(container[8:16], "little")
    header = json.loads(container[16 : 16 + length])
    change(header)
    text = json.dumps(header).encode()
    rebuilt = MAGIC + len(text).to_bytes(8, "little") + text + container[16 + length :]
    return zstandard.ZstdCompressor().compress(rebuilt)


REGISTRY = "RegistryError: "
LIMIT = "LimitError: more than the limit"
WIRE = "WireFormatError: "

# functions a payload may name as a CALL target; every one is refused before any import
_FUNCTIONS = """
    os.system builtins.exec builtins.eval builtins.__import__ builtins.open builtins.getattr
    builtins.setattr builtins.delattr builtins.compile builtins.globals builtins.vars
    builtins.input builtins.breakpoint builtins.memoryview subprocess.run subprocess.Popen
    subprocess.check_output pickle.loads marshal.loads torch.load torch.save torch.from_file
    torch.os.system torch.hub.load torch.utils.cpp_extension.load_inline shutil.rmtree os._exit
    os.remove os.kill socket.create_connection urllib.request.urlopen importlib.import_module
    ctypes.CDLL sys.exit time.sleep operator.attrgetter operator.methodcaller functools.partial
    numpy.save io.open codecs.open pathlib.Path.write_text torch._C._get_tracing_state
    nnsight_payload_module.evil math.__loader__.load_module
""".split()

# methods a payload may call on a tensor value; refused when the node runs (or before)
_METHODS = """
    __class__ __reduce__ __reduce_ex__ __setstate__ __init_subclass__ tofile numpy storage
    untyped_storage share_memory_ register_hook apply_ map_ data_ptr set_ pin_memory
""".split()

# attributes a payload may read
_ATTRIBUTES = "__class__ __globals__ __dict__ _modules __builtins__ __subclasses__ grad_fn".split()


def _cases() -> list[Case]:
    cases = [Case("the recorded graph runs", lambda ctx: dumps(ctx.graph), "ok")]
    for name in _FUNCTIONS:
        cases.append(
            Case(
                f"call {name}",
                lambda ctx, name=name: edited(
                    ctx.graph, Op.CALL, target=name, args=(ctx.effect_for(name),)
                ),
                REGISTRY + "not in the registry",
            )
        )
    for name in _METHODS:
        cases.append(
            Case(
                f"method {name}",
                lambda ctx, name=name: edited(ctx.graph, Op.METHOD, target=name),
                REGISTRY + repr(name),
            )
        )
    for name in _ATTRIBUTES:
        cases.append(
            Case(
                f"attribute {name}",
                lambda ctx, name=name: edited(ctx.graph, Op.METHOD, op=Op.GETATTR, target=name),
                REGISTRY + repr(name),
            )
        )
    cases += [
        Case(
            "str.format reaching attributes",
            lambda ctx: edited(ctx.graph, Op.METHOD, target="format", args=("{0.__class__}", 1)),
            REGISTRY + "the method 'format'",
        ),
        Case(
            "str.format_map",
            lambda ctx: edited(ctx.graph, Op.METHOD, target="format_map", args=("{x}", {})),
            REGISTRY + "'format_map'",
        ),
        Case(
            "node id near 10**9",
            lambda ctx: header_edited(dumps(ctx.graph), lambda h: _set_last_id(h, 10**9)),
            WIRE + "node ids must stay below",
        ),
        Case(
            "a million nodes",
            lambda ctx: header_edited(dumps(ctx.graph), _million_nodes),
            WIRE + "more than the limit of",
        ),
        Case(
            "a 1 MiB string argument",
            lambda ctx: edited(ctx.graph, Op.METHOD, args=(ctx.first_ref, "x" * (1 << 20))),
            WIRE + "more than the limit of 100000",
        ),
        Case(
            "a 280 MiB zero constant",
            lambda ctx: dumps(_with_constant(ctx.graph, torch.zeros(70 << 20))),
            WIRE + "more than the limit of",
        ),
        Case(
            "torch.ones(2**31)",
            lambda ctx: edited(ctx.graph, Op.CALL, target="torch.ones", args=(2**31,)),
            LIMIT,
        ),
        Case(
            "torch.zeros((2**16, 2**16))",
            lambda ctx: edited(ctx.graph, Op.CALL, target="torch.zeros", args=((2**16, 2**16),)),
            LIMIT,
        ),
        Case(
            "torch.arange(10**12)",
            lambda ctx: edited(ctx.graph, Op.CALL, target="torch.arange", args=(10**12,)),
            LIMIT,
        ),
        Case(
            "pow(10, 10**8)",
            lambda ctx: edited(ctx.graph, Op.CALL, target="operator.pow", args=(10, 10**8)),
            LIMIT,
        ),
        Case(
            "'ab' * 10**10",
            lambda ctx: edited(ctx.graph, Op.CALL, target="operator.mul", args=("ab", 10**10)),
            LIMIT,
        ),
        Case(
            "1 << 10**11",
            lambda ctx: edited(ctx.graph, Op.CALL, target="operator.lshift", args=(1, 10**11)),
            LIMIT,
        ),
        Case(
            "repeat to 10**12 elements",
            lambda ctx: edited(
                ctx.graph, Op.METHOD, target="repeat",
                args=(ctx.first_ref, *[1] * (ctx.rank - 2), 10**6, 10**6),
            ),
            LIMIT,
        ),
        Case(
            "a module path the model lacks",
            lambda ctx: edited(ctx.graph, Op.READ, target="layer9.output"),
            REGISTRY + "'layer9'",
        ),
        Case(
            "a dunder module path",
            lambda ctx: edited(ctx.graph, Op.READ, target=f"{ctx.module}.__class__.output"),
            REGISTRY + "does not have",
        ),
        Case(
            "not a hook site",
            lambda ctx: edited(ctx.graph, Op.READ, target=f"{ctx.module}.weight"),
            REGISTRY + "not a hook site",
        ),
        Case(
            "a .source site of a missing module",
            lambda ctx: edited(ctx.graph, Op.READ, target="nope.source.linear_0.output"),
            REGISTRY + "'nope'",
        ),
        Case(
            "option trust_remote_code",
            lambda ctx: dumps(_with_options(ctx.graph, trust_remote_code=True)),
            REGISTRY + "trust_remote_code",
        ),
        Case(
            "option custom_generate",
            lambda ctx: dumps(_with_options(ctx.graph, custom_generate="/tmp/evil")),
            REGISTRY + "custom_generate",
        ),
        Case(
            "option streamer",
            lambda ctx: dumps(_with_options(ctx.graph, streamer="x")),
            REGISTRY + "streamer",
        ),
        Case(
            "method exec",
            lambda ctx: header_edited(dumps(ctx.graph), lambda h: h.update(method="exec")),
            REGISTRY + "method 'exec'",
        ),
        Case(
            "reversed invoke range",
            lambda ctx: header_edited(dumps(ctx.graph), _reverse_invoke),
            WIRE + "stop is before its start",
        ),
        Case(
            "a newer schema version",
            lambda ctx: header_edited(dumps(ctx.graph), lambda h: h.update(schema_version=99)),
            WIRE + "upgrade nnsight_graph",
        ),
        Case(
            "an error located in /dev/zero quotes its recorded text",
            lambda ctx: _located(ctx.failing, "/dev/zero"),
            "IndexError: out of bounds",
        ),
        Case(
            "an error located in a FIFO quotes its recorded text",
            lambda ctx: _located(ctx.failing, ctx.fifo),
            "IndexError: out of bounds",
        ),
        Case(
            "an error located in the canary's folder",
            lambda ctx: _located(ctx.failing, ctx.canary),
            "IndexError: out of bounds",
        ),
        Case(
            "generate asking for a million tokens",
            lambda ctx: dumps(_with_options(ctx.generate, max_new_tokens=10**6)),
            REGISTRY + "more than the 1024 tokens",
            model="llm",
        ),
        Case("a generate graph runs", lambda ctx: dumps(ctx.generate), "ok", model="llm"),
    ]
    return cases


def _set_last_id(header: dict, id: int) -> None:
    header["nodes"][-1]["id"] = id


def _million_nodes(header: dict) -> None:
    header["nodes"] = [{"id": i, "op": "read", "target": "layer1.output"} for i in range(10**6)]


def _reverse_invoke(header: dict) -> None:
    header["invokes"][0]["start"], header["invokes"][0]["stop"] = 1, 0


def _with_constant(graph: Graph, tensor: torch.Tensor) -> Graph:
    from dataclasses import replace

    return replace(graph, constants=[*graph.constants, tensor])


def _with_options(graph: Graph, **options: Any) -> Graph:
    from dataclasses import replace

    return replace(graph, options={**graph.options, **options})


def _located(graph: Graph, file: str) -> bytes:
    nodes = [
        node._replace(loc=type(node.loc)(file, 1, node.loc.text)) if node.loc else node
        for node in graph.nodes
    ]
    return dumps(graph.with_nodes(nodes))


CASES: list[Case] = _cases()
