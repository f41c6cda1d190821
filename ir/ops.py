"""The closed set of opcodes a Node can have. What each op takes, does and how it prints is
its row in `ir.op_table` (which also makes the op sets passes key on: EFFECTFUL, HOOKED)."""

from __future__ import annotations

import enum


class Op(str, enum.Enum):
    """What a node does. The value is the wire name: never rename or reuse one.

    READ_GRAD and WRITE_GRAD address the gradient of args[0] during the backward pass of the
    BACKWARD node args[1]; a WRITE's or WRITE_GRAD's value is always its last argument.
    """

    READ = "read"  # value at a module's hook site; target = "layer1.output", "h.0.input"
    WRITE = "write"  # replace the value at a module's hook site with args[0]
    RESULT = "result"  # the value the traced call returned (tracer.result()); no arguments
    READ_GRAD = "read_grad"  # the gradient of args[0] in the backward pass args[1]
    WRITE_GRAD = "write_grad"  # replace that gradient with args[2]
    CALL = "call"  # function by qualified name; target = "torch.argmax", "operator.add"
    METHOD = "method"  # method call on args[0]; target = "clone"
    GETATTR = "getattr"  # attribute of args[0]; target = "shape"
    GETITEM = "getitem"  # args[0][args[1]]
    SETITEM = "setitem"  # args[0][args[1]] = args[2], in place
    SAVE = "save"  # keep the value of args[0] after the run
    LOG = "log"  # print(*args) when the values exist (a print() of a Proxy in a trace)
    BACKWARD = "backward"  # args[0].backward(*args[1:]); grads of earlier values are hook sites
    SKIP = "skip"  # the module at target ("h.1.skip") does not run; its output is args[0]
    STOP = "stop"  # end the model's run here; what was saved so far is kept
    BARRIER = "barrier"  # wait until args[0] invokes reached barrier `target`
    CACHE = "cache"  # keep every value of the modules kwargs["paths"] while the model runs
    CALL_MODULE = "call_module"  # call the model's module at target (a path) on args; its
    # hooks do not see the call, so it is not one of the module's steps
    SELECT = "select"  # args[1] when args[0] (the condition) holds, else args[2]: a variable
    # after `if proxy:` (schema version 3 wrote it as a CALL of nnsight_graph.ir.functions.select)
    LOCAL = "local"  # an nnsight.local() block: send args (kwargs["inputs"]: their node ids)
    # to the client, which runs the block; its value is {node id: value} for kwargs["outputs"]

    def __str__(self) -> str:
        return self.value
