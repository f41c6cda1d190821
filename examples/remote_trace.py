"""A remote trace against the server at NNSIGHT_GRAPH_HOST (default http://127.0.0.1:6677):
start one with `nnsight-graph serve`, then run `python examples/remote_trace.py`.

`LanguageModel("tiny-gpt2")` takes config and tokenizer from the server (no hub, no weights
here); the trace runs there and the saved values come back bound as in a local trace.
"""

import nnsight_graph as nnsight

llm = nnsight.LanguageModel("tiny-gpt2")
with llm.trace("The Eiffel Tower is in the city of", remote=True):
    hidden = llm.transformer.h[-1].output.save()
    token = llm.lm_head.output[0, -1].argmax().save()
print("hidden state", tuple(hidden.shape), "-> next token", repr(llm.tokenizer.decode(token)))
