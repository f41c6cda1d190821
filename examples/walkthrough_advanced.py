"""Sections 6-9 of the nnsight walkthrough (gradients, advanced features, model editing,
remote execution) on the GPT-2 that ships with nnsight_graph.

Every code cell runs with `import nnsight_graph as nnsight` and the walkthrough's GPT-2 (and
section 9's Llama) replaced by the shipped 4-layer, 128-wide GPT-2
(`nnsight_graph.models.tiny_gpt2_path()`), trained on simple facts such as "The Eiffel Tower
is in the city of Paris". Adaptations, each marked with a comment where it is made:

* With transformers 5, a GPT-2 block (`llm.transformer.h[i]`) returns a tensor of shape
  (batch, seq, hidden), not a tuple. The walkthrough's `.output[0][:, -1, :]` (tuple element 0,
  then the last position) is written `.output[:, -1, :]`; a bare `.output[0]` still runs but now
  means batch row 0, so its shapes print as (seq, hidden).
* There is no NDIF server for nnsight_graph yet: `remote=True` raises an error (shown once),
  and section 9's cells run locally. `nnsight.local()` does not exist yet; that cell is skipped
  with a note.

Run from the repository root: `python examples/walkthrough_advanced.py`.
"""

import torch

import nnsight_graph as nnsight
from nnsight_graph import LanguageModel
from nnsight_graph.models import tiny_gpt2_path

torch.manual_seed(0)


def section(title: str) -> None:
    """Print a walkthrough heading so the output reads like the notebook."""
    print(f"\n{'=' * 72}\n{title}\n{'=' * 72}")


def cell(title: str) -> None:
    """Print a cell heading."""
    print(f"\n--- {title} ---")


llm = LanguageModel(tiny_gpt2_path(), dispatch=True)

# ================================================================================
# 6. Gradients
# ================================================================================
section("6. Gradients")

cell("The `with tensor.backward():` Context")
with llm.trace("Hello"):
    # Get hidden states and enable gradients
    # (transformers 5: the block returns a tensor, so output[0] is batch row 0: (seq, hidden))
    hs = llm.transformer.h[-1].output[0]
    hs.requires_grad_(True)

    # Compute loss
    logits = llm.lm_head.output
    loss = logits.sum()

    # Access gradients inside backward context
    with loss.backward():
        grad = hs.grad.save()

print("Gradient shape:", grad.shape)

cell("Modifying Gradients")
with llm.trace("Hello"):
    hs = llm.transformer.h[-1].output[0]
    hs.requires_grad_(True)

    logits = llm.lm_head.output
    loss = logits.sum()

    with loss.backward():
        # Save original gradient
        original_grad = hs.grad.clone().save()

        # Modify gradient
        hs.grad[:] = 0

        # Save modified
        modified_grad = hs.grad.save()

print("Original grad mean:", original_grad.mean().item())
print("Modified grad mean:", modified_grad.mean().item())

# ================================================================================
# 7. Advanced Features
# ================================================================================
section("7. Advanced Features")

cell("7.1 Source Tracing: print the source")
# Print source to discover available operations
print(llm.transformer.h[0].attn.source)

cell("7.1 Source Tracing: an internal operation's output")
with llm.trace("Hello"):
    # Access an internal operation by name
    attn_output = llm.transformer.h[0].attn.source.attention_interface_0.output.save()

print("Attention output type:", type(attn_output))
# attention_interface returns (attn_output, attn_weights)
print("attn_output shape:", attn_output[0].shape)

cell("7.2 Caching Activations")
with llm.trace("Hello") as tracer:
    cache = tracer.cache()

# Access cached values after the trace
# (transformers 5: output[0] is batch row 0 of the block's (batch, seq, hidden) tensor)
print("Layer 0 output shape:", cache["model.transformer.h.0"].output[0].shape)

# Attribute-style access also works
print("Same thing:", cache.model.transformer.h[0].output[0].shape)

cell("7.2 Cache options")
with llm.trace("Hello") as tracer:
    cache = tracer.cache(
        include_inputs=True,  # Also cache inputs
        include_output=True,  # Cache outputs (default)
        modules=[llm.transformer.h[0], llm.transformer.h[1]],  # Specific modules only
    )

print("Cached modules:", list(cache.keys()))
print("Layer 0 input shape:", cache["model.transformer.h.0"].input.shape)
print("Layer 1 output shape:", cache.model.transformer.h[1].output.shape)

cell("7.3 Barriers for Synchronization")
with llm.trace() as tracer:
    barrier = tracer.barrier(2)  # Create barrier for 2 participants

    with tracer.invoke("The Eiffel Tower is in"):
        embeddings = llm.transformer.wte.output
        barrier()  # Wait here

    with tracer.invoke("_ _ _ _ _ _ _"):
        barrier()  # Wait here too
        llm.transformer.wte.output = embeddings  # Now safe to use
        out = llm.lm_head.output.argmax(dim=-1).save()

# The tiny model learned "... is in the city of Paris", so it continues "is in" with " the"
print("Prediction:", llm.tokenizer.decode(out[0, -1]))

cell("7.3 Barriers, with the full fact as the first prompt")
with llm.trace() as tracer:
    barrier = tracer.barrier(2)

    with tracer.invoke("The Eiffel Tower is in the city of"):
        embeddings = llm.transformer.wte.output
        barrier()

    with tracer.invoke("_ _ _ _ _ _ _"):
        barrier()
        llm.transformer.wte.output = embeddings
        out = llm.lm_head.output.argmax(dim=-1).save()

print("Prediction:", llm.tokenizer.decode(out[0, -1]))

cell("7.4 Getting the Trace Result")
with llm.trace("Hello") as tracer:
    hidden = llm.transformer.h[-1].output[0].save()
    result = tracer.result().save()

print("Result keys:", result.keys() if hasattr(result, "keys") else type(result))

cell("7.5 Module Skipping")
with llm.trace("Hello"):
    # Get layer 0 output
    layer0_out = llm.transformer.h[0].output

    # Skip layer 1 - use layer 0's output instead
    llm.transformer.h[1].skip(layer0_out)

    # Layer 1's output now equals layer 0's output
    layer1_out = llm.transformer.h[1].output.save()

print("Skipped layer 1 - output substituted")

cell("7.5 Module Skipping: check")
with llm.trace("Hello"):
    layer0_out = llm.transformer.h[0].output.save()
    llm.transformer.h[1].skip(layer0_out)
    layer1_out = llm.transformer.h[1].output.save()

print("Layer 1 output equals layer 0 output:", torch.equal(layer0_out, layer1_out))

cell("7.6 Early Stopping")
with llm.trace("Hello") as tracer:
    layer0 = llm.transformer.h[0].output[0].save()
    tracer.stop()  # Don't execute remaining layers

print("Early stop - only ran first layer")
print("Layer 0 shape:", layer0.shape)

cell("7.7 Scanning (Shape Inference)")
with llm.scan("Hello"):
    dim = llm.transformer.h[0].output[0].shape[-1]

print("Hidden dimension:", dim)

# ================================================================================
# 8. Model Editing
# ================================================================================
section("8. Model Editing")

cell("Creating an edited model")
# First, get hidden states that predict "Paris"
with llm.trace("The Eiffel Tower is in the city of"):
    # transformers 5: the walkthrough's .output[0][:, -1, :] is .output[:, -1, :]
    paris_hidden = llm.transformer.h[-1].output[:, -1, :].save()

# Create an edited model that always uses these hidden states
with llm.edit() as llm_edited:
    llm.transformer.h[-1].output[:, -1, :] = paris_hidden

# Original model: normal prediction
with llm.trace("Vatican is in the city of"):
    original = llm.lm_head.output.argmax(dim=-1).save()

# Edited model: always predicts "Paris"!
with llm_edited.trace("Vatican is in the city of"):
    modified = llm.lm_head.output.argmax(dim=-1).save()

print("Original:", llm.tokenizer.decode(original[0, -1]))
print("Edited:  ", llm.tokenizer.decode(modified[0, -1]))

cell("In-Place Editing")
with llm.edit(inplace=True):
    # transformers 5: output[0] is batch row 0; this zeroes all of layer 0's hidden states
    llm.transformer.h[0].output[0][:] = 0

with llm.trace("Vatican is in the city of"):
    zeroed = llm.lm_head.output.argmax(dim=-1).save()
print("With the in-place edit:", llm.tokenizer.decode(zeroed[0, -1]))

cell("Clearing in-place edits")
llm.clear_edits()

with llm.trace("Vatican is in the city of"):
    restored = llm.lm_head.output.argmax(dim=-1).save()
print("After clear_edits():   ", llm.tokenizer.decode(restored[0, -1]))

# ================================================================================
# 9. Remote Execution (NDIF)
# ================================================================================
section("9. Remote Execution (NDIF) - run locally")
print(
    "nnsight_graph has no NDIF server yet: remote=True raises an error, so the cells below\n"
    "run locally on the tiny GPT-2 (the walkthrough uses Llama-3.1-8B on NDIF)."
)

cell("Setup")
from nnsight_graph import CONFIG  # noqa: E402  (the walkthrough imports it in this cell)

CONFIG.set_default_api_key("YOUR_API_KEY")
print("API key set:", CONFIG.API.APIKEY)

cell("Remote Tracing: remote=True (no server yet: an error)")
try:
    with llm.trace("The Eiffel Tower is in the city of", remote=True):
        hidden_states = llm.transformer.h[-1].output.save()
        output = llm.output.save()
except nnsight.NNsightError as error:
    print(f"Caught error: {type(error).__name__}: {error}")

cell("Remote Tracing, run locally")
# The walkthrough's llama.model.layers[-1] is llm.transformer.h[-1] on GPT-2; no remote=True
with llm.trace("The Eiffel Tower is in the city of"):
    hidden_states = llm.transformer.h[-1].output.save()
    output = llm.output.save()

# (transformers 5: hidden_states is a tensor, so [0] is batch row 0: (seq, hidden))
print("Hidden states shape:", hidden_states[0].shape)

cell("Sessions, run locally")
with llm.session() as session:  # the walkthrough: llama.session(remote=True)
    with llm.trace("The Eiffel Tower is in the city of"):
        # llama.model.layers[31].output[0][:, -1, :] -> the tiny GPT-2's last layer, h[3]
        hs = llm.transformer.h[3].output[:, -1, :]
        t1_out = llm.lm_head.output.argmax(dim=-1).save()

    with llm.trace("Buckingham Palace is in the city of"):
        llm.transformer.h[1].output[:, -1, :] = hs
        t2_out = llm.lm_head.output.argmax(dim=-1).save()

print("T1:", llm.tokenizer.decode(t1_out[0, -1]))
print("T2:", llm.tokenizer.decode(t2_out[0, -1]))

cell("Streaming with nnsight.local()")
if hasattr(nnsight, "local"):
    print("nnsight.local() exists now: this cell can be added to the example.")
else:
    print("Skipped: nnsight_graph has no nnsight.local() yet (it only matters for remote runs).")
