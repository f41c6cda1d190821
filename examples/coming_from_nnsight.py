"""Everyday nnsight 0.8.1 code that runs unchanged on nnsight_graph, on the shipped GPT-2.

Each block is written as an nnsight user writes it: the wrapper's module methods, traces
beside other context managers, aliases, caches, the generation streamer, skips per invoke,
gradients replaced in place, and traces from two threads. Run from the repository root:
`python examples/coming_from_nnsight.py`.
"""

import contextlib
import threading

import torch

import nnsight_graph as nnsight
from nnsight_graph.models import tiny_gpt2_path

PARIS = "The Eiffel Tower is in the city of"
ROME = "The Colosseum is in the city of"

# the wrapper stays the wrapper: module methods return it, calling it runs the model
llm = nnsight.LanguageModel(tiny_gpt2_path(), rename={"transformer.h": "layers"})
llm = llm.to("cpu").eval()
print("dispatched before the first trace:", llm.dispatched)
tokens = llm.tokenizer(PARIS, return_tensors="pt")

# a trace beside torch.no_grad(), with an alias (`layers` is transformer.h)
with torch.no_grad(), llm.trace(PARIS):
    hidden = llm.layers[-1].output.save()
    logits = llm.lm_head.output.save()
next_token = llm.tokenizer.decode(logits[0, -1].argmax())
print("next token:", repr(next_token), "| requires grad:", hidden.requires_grad)
print("dispatched after it:", llm.dispatched, "| plain call:", llm(**tokens)["logits"].shape)

# an ExitStack holding the trace
with contextlib.ExitStack() as stack:
    tracer = stack.enter_context(llm.trace(ROME))
    rome = llm.lm_head.output[0, -1].argmax().save()
print("ExitStack trace predicts:", repr(llm.tokenizer.decode(rome)))

# tracer.cache(): every block's output, addressed like the module tree
with llm.trace(PARIS) as tracer:
    cache = tracer.cache(modules=[llm.layers[0], "model.transformer.h.3"])
first, last = cache.model.transformer.h[0].output, cache["model.transformer.h.3"].output
print("cached blocks:", list(cache.keys()), tuple(first.shape), tuple(last.shape))

# generation: the streamer sees the prompt, then one token per step
with llm.generate(PARIS, max_new_tokens=3) as tracer:
    streamed = list().save()
    with tracer.all():
        streamed.append(llm.generator.streamer.output)
    result = tracer.result.save()  # 0.8.1's property; tracer.result() works too
print("streamed:", [tuple(s.shape) for s in streamed], "->", llm.tokenizer.decode(result[0]))

# skip() in two invokes: each invoke gets its own substitute; the block never runs
with llm.trace() as tracer:
    with tracer.invoke(PARIS):
        llm.layers[1].skip(llm.layers[0].output)
        paris_skipped = llm.lm_head.output[0, -1].argmax().save()
    with tracer.invoke(ROME):
        llm.layers[1].skip(llm.layers[0].output)
        rome_skipped = llm.lm_head.output[0, -1].argmax().save()
print("with block 1 skipped:", [llm.tokenizer.decode(t) for t in (paris_skipped, rome_skipped)])

# replacing a gradient inside backward
with llm.trace(PARIS):
    block = llm.layers[1].output
    block.requires_grad_(True)
    loss = llm.lm_head.output[0, -1].logsumexp(-1)
    with loss.backward():
        before = block.grad.clone().save()
        block.grad = block.grad * 2
        after = block.grad.save()
print("gradient doubled:", torch.allclose(after, 2 * before))

# two threads tracing the same model at once each get their own values
found: dict[str, str] = {}


def predict(prompt: str) -> None:
    with llm.trace(prompt):
        token = llm.lm_head.output[0, -1].argmax().save()
    found[prompt] = llm.tokenizer.decode(token)


threads = [threading.Thread(target=predict, args=(p,)) for p in (PARIS, ROME)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(timeout=60)
print("two threads:", found)
assert found == {PARIS: " Paris", ROME: " Rome"}, found
