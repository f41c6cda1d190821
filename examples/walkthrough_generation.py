"""Section 5 of the nnsight walkthrough ("Multi-Token Generation") on the shipped tiny GPT-2.

Every code cell runs as written, with `import nnsight_graph as nnsight` and the model name
replaced by the GPT-2 that ships with the package (`nnsight_graph.models.tiny_gpt2_path()`),
which was trained on simple facts so that the walkthrough's prompts give meaningful answers.

Run from the repository root: `python examples/walkthrough_generation.py`.
"""

import torch

from nnsight_graph import LanguageModel
from nnsight_graph.models import tiny_gpt2_path

torch.manual_seed(0)


def section(title: str) -> None:
    """Print a walkthrough heading so the output reads like the notebook."""
    print(f"\n{'=' * 72}\n{title}\n{'=' * 72}")


def cell(title: str) -> None:
    """Print a cell heading."""
    print(f"\n--- {title} ---")


section("5. Multi-Token Generation")

cell("Loading a Language Model")
llm = LanguageModel(tiny_gpt2_path(), device_map="auto", dispatch=True)
print(llm)

cell("Tracing a prompt")
with llm.trace("The Eiffel Tower is in the city of"):
    hidden_states = llm.transformer.h[-1].output[0].save()
    logits = llm.lm_head.output.save()

print("Hidden states shape:", hidden_states.shape)
print("Predicted token:", llm.tokenizer.decode(logits[0, -1].argmax()))

cell("Generation with .generate()")
with llm.generate("The Eiffel Tower is in", max_new_tokens=3) as tracer:
    output = llm.generator.output.save()

print(llm.tokenizer.decode(output[0]))

cell("Iterating Over Generation Steps")
with llm.generate("The Eiffel Tower is in", max_new_tokens=3) as tracer:
    tokens_per_step = list().save()

    # Iterate over ALL generation steps
    with tracer.iter[:]:
        token = llm.lm_head.output[0, -1].argmax(dim=-1)
        tokens_per_step.append(token)

# transformers 5 decodes a flat list of ids as one sequence; decode each step's id instead
print("Tokens:", [llm.tokenizer.decode(token) for token in tokens_per_step])

cell("Conditional Per-Step Interventions")
with llm.generate("Hello", max_new_tokens=5) as tracer:
    hidden_states = list().save()

    with tracer.iter[:] as step_idx:
        # Only intervene on step 2
        if step_idx == 2:
            llm.transformer.h[0].output[0][:] = 0

        hidden_states.append(llm.transformer.h[-1].output[0].clone())

print(f"Collected {len(hidden_states)} hidden states")

cell("Shorthand: tracer.all()")
with llm.generate("Hello", max_new_tokens=3) as tracer:
    tokens = list().save()

    with tracer.all():
        tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))

print("All tokens:", [llm.tokenizer.decode(token) for token in tokens])

cell("Manual Step Advancement: .next()")
with llm.generate("Hello", max_new_tokens=3) as tracer:
    # Step 0 (automatic)
    hs0 = llm.transformer.h[-1].output[0].save()

    tracer.next()  # Move to step 1

    hs1 = llm.transformer.h[-1].output[0].save()

print("Step 0 shape:", hs0.shape)
print("Step 1 shape:", hs1.shape)

cell("Batching prompts of different lengths (left padding)")
with llm.trace() as tracer:
    with tracer.invoke("Vatican is in the city of"):
        rome = llm.lm_head.output[:, -1].argmax(dim=-1).save()
    with tracer.invoke("Buckingham Palace is in the city of"):
        london = llm.lm_head.output[:, -1].argmax(dim=-1).save()
print("Vatican ->", llm.tokenizer.decode(rome))
print("Buckingham Palace ->", llm.tokenizer.decode(london))

cell("Control flow on a traced value, and print() inside a trace")
with llm.trace("The Eiffel Tower is in the city of"):
    hidden = llm.transformer.h[-1].output
    if hidden.norm() > 0:
        print("last-layer norm:", hidden.norm())
        llm.transformer.h[-1].output[:, -1] = hidden[:, -1] * 1.0
    prediction = llm.lm_head.output[0, -1].argmax().save()
print("Prediction:", llm.tokenizer.decode(prediction))

cell("Scanning (shapes only, no compute)")
with llm.scan("Hello"):
    dim = llm.transformer.h[0].output[0].shape[-1]
print("Hidden dimension:", dim)
