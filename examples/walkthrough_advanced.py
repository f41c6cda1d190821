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
* Section 9 runs against an nnsight_graph server that this script starts on a free loopback
  port (nnsight_graph.server.launch), not NDIF; its Llama is the shipped tiny GPT-2, which the
  server hosts as `tiny-gpt2`.

Run from the repository root: `python examples/walkthrough_advanced.py`.
"""

import torch

import nnsight_graph as nnsight
from nnsight_graph import LanguageModel
from nnsight_graph.models import tiny_gpt2_path
from nnsight_graph.server.launch import local_server  # section 9's server, on loopback

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
section("9. Remote Execution (our own server, not NDIF)")
print(
    "The walkthrough sends these cells to NDIF. Here they go to an nnsight_graph server this\n"
    "demo starts on a free loopback port (`nnsight-graph serve`, hosting the shipped tiny GPT-2\n"
    "as `tiny-gpt2`); the walkthrough's Llama-3.1-8B is that model."
)

with local_server() as server_url:
    cell("Setup")
    from nnsight_graph import CONFIG  # noqa: E402  (the walkthrough imports it in this cell)

    CONFIG.set_default_api_key("YOUR_API_KEY")  # a loopback server without --api-keys takes any
    CONFIG.API.HOST = server_url  # the walkthrough's NDIF; the default is http://127.0.0.1:6677
    print("API key set:", CONFIG.API.APIKEY, "| server:", CONFIG.API.HOST)

    cell("Remote Tracing")
    # llama = LanguageModel("meta-llama/Meta-Llama-3.1-8B"): config and tokenizer come from the
    # server, so this needs neither the hub nor the weights here
    llama = LanguageModel("tiny-gpt2")

    # Just add remote=True - everything else is the same!
    with llama.trace("The Eiffel Tower is in the city of", remote=True):
        # llama.model.layers[-1] is llama.transformer.h[-1] on GPT-2
        hidden_states = llama.transformer.h[-1].output.save()
        output = llama.output.save()

    # (transformers 5: hidden_states is a tensor, so [0] is batch row 0: (seq, hidden))
    print("Hidden states shape:", hidden_states[0].shape)
    with llm.trace("The Eiffel Tower is in the city of"):
        local_logits = llm.output.logits.save()
    print("Same logits as a local run:", torch.allclose(output.logits, local_logits, atol=1e-5))
    print("Predicts:", llama.tokenizer.decode(output.logits[0, -1].argmax()))

    cell("Sessions")
    with llama.session(remote=True) as session:  # one job: both traces run on the server
        with llama.trace("The Eiffel Tower is in the city of"):
            # llama.model.layers[31].output[0][:, -1, :] -> the tiny GPT-2's last layer, h[3]
            hs = llama.transformer.h[3].output[:, -1, :]
            t1_out = llama.lm_head.output.argmax(dim=-1).save()

        with llama.trace("Buckingham Palace is in the city of"):
            llama.transformer.h[1].output[:, -1, :] = hs
            t2_out = llama.lm_head.output.argmax(dim=-1).save()

    print("T1:", llama.tokenizer.decode(t1_out[0, -1]))
    print("T2:", llama.tokenizer.decode(t2_out[0, -1]))
    print("One job for the session:", session.job.id, "->", session.job.status())

    cell("Streaming with nnsight.local()")
    with llama.trace("Hello", remote=True) as tracer:

        with nnsight.local():
            # This runs on your machine, not the server
            # (transformers 5: the layer's output is a tensor, so [0] is (seq, hidden))
            hs = llama.transformer.h[-1].output[0]
            print("Local computation:", hs[0, 0])  # Runs locally

        out = llama.lm_head.output.save()
    print("Output shape:", out.shape)

    # a block whose value the run uses: the server waits for it (bounded), then goes on
    with llama.trace("The Eiffel Tower is in the city of", remote=True) as tracer:
        hidden = llama.transformer.h[1].output
        with tracer.local():
            scaled = hidden * 1.0  # any Python here; the result goes back to the server
        llama.transformer.h[1].output[:] = scaled
        logits = llama.lm_head.output.save()
    print("After a local() block the run used:", llama.tokenizer.decode(logits[0, -1].argmax()))

    cell("Jobs you can leave: blocking=False, tracer.job, Job.attach")
    with llama.trace("Vatican is in the city of", remote=True, blocking=False) as tracer:
        logits = llama.lm_head.output.save()
    job = tracer.job
    print("Submitted", job.id, "->", job.status())
    again = nnsight.Job.attach(job.id)  # from any process that knows the id (and the key)
    print("Attached: result names", sorted(again.result(timeout=60)))
    print("Predicts:", llama.tokenizer.decode(again.result()["logits"][0, -1].argmax()))

    cell("An error in a remote trace keeps its type and your line")
    try:
        with llama.trace("Hello", remote=True):
            llama.transformer.h[0].output[:, 99].save()  # past the end: IndexError
    except IndexError as error:
        print(f"Caught IndexError: {str(error).splitlines()[0]}")
        print("  note:", (getattr(error, "__notes__", None) or ["(none)"])[0])
