"""Sections 1-4 of the nnsight walkthrough, cell by cell, on nnsight_graph.

Every code cell of "Getting Started", "Accessing Activations", "Modifying Activations" and
"Invokers and Batching" runs here as written in the walkthrough, with `import nnsight_graph as
nnsight` in place of `import nnsight`. The two cells that show an error (reading an unsaved
value, an out-of-bounds index) catch the error and print it.

Run from the repository root: `python examples/walkthrough_basics.py`.
"""

from collections import OrderedDict

import torch

import nnsight_graph as nnsight
from nnsight_graph import NNsight

torch.manual_seed(0)


def section(title: str) -> None:
    """Print a walkthrough heading so the output reads like the notebook."""
    print(f"\n{'=' * 72}\n{title}\n{'=' * 72}")


def cell(title: str) -> None:
    """Print a cell heading."""
    print(f"\n--- {title} ---")


# ================================================================================
# 1. Getting Started
# ================================================================================
section("1. Getting Started")

cell("A Tiny Model")
input_size = 5
hidden_dims = 10
output_size = 2

net = torch.nn.Sequential(
    OrderedDict(
        [
            ("layer1", torch.nn.Linear(input_size, hidden_dims)),
            ("layer2", torch.nn.Linear(hidden_dims, output_size)),
        ]
    )
).requires_grad_(False)

cell("Wrapping with NNsight")
model = NNsight(net)

print(model)

# ================================================================================
# 2. Accessing Activations
# ================================================================================
section("2. Accessing Activations")

cell("The Tracing Context")
input = torch.rand((1, input_size))

with model.trace(input):
    # Your intervention code goes here
    # The model runs when the context exits
    pass

cell("The .input and .output Properties (without .save(): an error)")
try:
    with model.trace(input):
        output = model.output

    print(output)
except Exception as error:  # the walkthrough shows this cell failing
    print(f"Caught error: {type(error).__name__}: {error}")

cell("Saving Values with .save()")
with model.trace(input):
    output = model.output.save()

print(output)

cell("nnsight.save(value)")
with model.trace(input):
    output = nnsight.save(model.output)

print(output)

cell("Accessing Submodule Outputs")
with model.trace(input):
    layer1_output = model.layer1.output.save()
    layer2_output = model.layer2.output.save()

print("Layer 1 output:", layer1_output)
print("Layer 2 output:", layer2_output)

cell("Accessing Module Inputs")
with model.trace(input):
    layer2_input = model.layer2.input.save()

print("Layer 2 input:", layer2_input)
print("(Notice it equals layer1 output!)")

cell("Operations on Values")
with model.trace(input):
    layer1_out = model.layer1.output

    # Apply operations - these are real tensor operations!
    max_idx = torch.argmax(layer1_out, dim=1).save()
    total = (model.layer1.output.sum() + model.layer2.output.sum()).save()

print("Max index:", max_idx)
print("Total:", total)

cell("The Core Paradigm: Interleaving (out of order: an error)")
# The walkthrough shows this with model.layers[5] then model.layers[0]; on the tiny net:
try:
    with model.trace(input):
        layer2_out = model.layer2.output.save()  # Waits for layer 2
        layer1_out = model.layer1.output.save()  # ERROR! Layer 1 already executed
except nnsight.OutOfOrderError as e:
    print(f"Caught error: {type(e).__name__}: {e}")

# ================================================================================
# 3. Modifying Activations
# ================================================================================
section("3. Modifying Activations")

cell("In-Place Modification")
with model.trace(input):
    # Save original (clone first since we'll modify in-place)
    before = model.layer1.output.clone().save()

    # Zero out the first dimension
    model.layer1.output[:, 0] = 0

    # Save modified
    after = model.layer1.output.save()

print("Before:", before)
print("After: ", after)

cell("Replacement")
with model.trace(input):
    original = model.layer1.output.clone()

    # Add noise to the activation
    noise = 0.1 * torch.randn_like(original)
    model.layer1.output = original + noise

    modified = model.layer1.output.save()

print("Modified output:", modified)

cell("Error Handling")
# This will fail because hidden_dims=10, so valid indices are 0-9
try:
    with model.trace(input):
        model.layer1.output[:, hidden_dims] = 0  # Index 10 is out of bounds!
except IndexError as e:
    print("Caught error:", e)
    # With nnsight.CONFIG.APP.DEBUG = True (the default) the error carries the user's line.
    for note in getattr(e, "__notes__", []):
        print(note)

print("nnsight.CONFIG.APP.DEBUG =", nnsight.CONFIG.APP.DEBUG)

# ================================================================================
# 4. Invokers and Batching
# ================================================================================
section("4. Invokers and Batching")

cell("The Invoker Context")
with model.trace() as tracer:  # No input here
    with tracer.invoke(input):  # First invoker with input
        out1 = model.output.save()

    with tracer.invoke(input * 2):  # Second invoker with different input
        out2 = model.output.save()

print("Output 1:", out1)
print("Output 2:", out2)

cell("How Invokers Work: Serial Execution")
with model.trace() as tracer:
    with tracer.invoke(input):
        # Save layer1 output from first input
        layer1_out = model.layer1.output.save()

    with tracer.invoke(input):
        # Use it in the second invoker!
        model.layer1.output[:] = layer1_out * 0  # Zero it out
        modified_out = model.output.save()

    with tracer.invoke(input):
        original_out = model.output.save()

print("Original output:", original_out)
print("Modified output:", modified_out)

cell("Prompt-less Invokers: Operating on the Full Batch")
with model.trace() as tracer:
    with tracer.invoke(input):
        pass  # First input

    with tracer.invoke(input * 2):
        pass  # Second input

    # No-arg invoke: sees ALL inputs
    with tracer.invoke():
        all_outputs = model.output.save()

print("All outputs shape:", all_outputs.shape)  # Batch size = 2

cell("The recorded graph of the last trace")
print(tracer.graph)
