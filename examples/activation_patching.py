"""Activation patching on the shipped tiny GPT-2: which hidden states carry "Eiffel Tower -> Paris"?

Clean prompt: "The Eiffel Tower is in the city of" (the model answers " Paris").
Corrupted prompt: a London landmark of the same token length (the model answers " London"). The
walkthrough's "Buckingham Palace is in the city of" is tried first; the shipped tokenizer splits it
into fewer tokens than the clean prompt, so the script falls back to another London landmark
the model knows, such as "The London Eye", and prints the token counts.

One trace, many invokes, one batched forward pass: invoke 1 runs the clean prompt and keeps
the token embeddings and every block's output; invoke 2 runs the corrupted prompt unchanged (the
baseline); each further invoke runs the corrupted prompt with one hidden state -- the embedding,
or block L's output, at one position -- replaced by the clean run's value:

    llm.transformer.h[L].output[:, pos, :] = clean_hidden[L][:, pos, :]

and saves the next-token probabilities. The table shows P(" Paris") / P(" London") for each
patch: where a single patched vector is enough to turn the answer back to " Paris".

Run from the repository root: `python examples/activation_patching.py`.
"""

import torch

from nnsight_graph import LanguageModel
from nnsight_graph.models import tiny_gpt2_path

CLEAN = "The Eiffel Tower is in the city of"
# London landmarks the model knows, in order of preference (the walkthrough uses the first)
CORRUPTED_CANDIDATES = (
    "Buckingham Palace is in the city of",
    "The London Eye is in the city of",
    "Big Ben is in the city of",
    "The Tower of London is in the city of",
)


def n_tokens(llm: LanguageModel, prompt: str) -> int:
    """How many tokens the shipped tokenizer splits `prompt` into."""
    return len(llm.tokenizer(prompt)["input_ids"])


def pick_corrupted(llm: LanguageModel) -> str:
    """The first London prompt with as many tokens as the clean one (patching is per position)."""
    target = n_tokens(llm, CLEAN)
    print(f"{CLEAN!r}: {target} tokens")
    for prompt in CORRUPTED_CANDIDATES:
        count = n_tokens(llm, prompt)
        fits = "same length: using it" if count == target else "different length: skipped"
        print(f"{prompt!r}: {count} tokens ({fits})")
        if count == target:
            return prompt
    raise SystemExit("no corrupted prompt has as many tokens as the clean prompt")


def patch_all(llm: LanguageModel, corrupted: str, paris: int, london: int):
    """P(Paris) and P(London): clean, corrupted, and per patched (row, position)."""
    n_layers = len(llm.transformer.h)
    n_pos = n_tokens(llm, CLEAN)
    results = {}
    with llm.trace() as tracer:
        with tracer.invoke(CLEAN):
            # Keep the clean hidden states (in the order the model computes them)
            clean_embed = llm.transformer.wte.output
            clean_hidden = [llm.transformer.h[L].output for L in range(n_layers)]
            clean_probs = llm.lm_head.output[:, -1].softmax(dim=-1).save()

        with tracer.invoke(corrupted):
            corrupted_probs = llm.lm_head.output[:, -1].softmax(dim=-1).save()

        for pos in range(n_pos):
            with tracer.invoke(corrupted):
                # Row "embed": the token embedding (the positional one is the same in both runs)
                llm.transformer.wte.output[:, pos, :] = clean_embed[:, pos, :]
                results["embed", pos] = llm.lm_head.output[:, -1].softmax(dim=-1).save()

        for L in range(n_layers):
            for pos in range(n_pos):
                with tracer.invoke(corrupted):
                    llm.transformer.h[L].output[:, pos, :] = clean_hidden[L][:, pos, :]
                    results[L, pos] = llm.lm_head.output[:, -1].softmax(dim=-1).save()

    def pair(probs: torch.Tensor) -> tuple[float, float]:
        return probs[0, paris].item(), probs[0, london].item()

    return pair(clean_probs), pair(corrupted_probs), {k: pair(v) for k, v in results.items()}


def main() -> None:
    torch.manual_seed(0)
    llm = LanguageModel(tiny_gpt2_path(), dispatch=True)
    paris, london = (llm.tokenizer(w)["input_ids"][0] for w in (" Paris", " London"))

    print("Token counts:")
    corrupted = pick_corrupted(llm)

    clean, base, patched = patch_all(llm, corrupted, paris, london)
    print(f"\nclean     {CLEAN!r}: P(' Paris') = {clean[0]:.3f}, P(' London') = {clean[1]:.3f}")
    print(f"corrupted {corrupted!r}: P(' Paris') = {base[0]:.3f}, P(' London') = {base[1]:.3f}")

    tokens = [llm.tokenizer.decode(t) for t in llm.tokenizer(CLEAN)["input_ids"]]
    corrupted_tokens = [llm.tokenizer.decode(t) for t in llm.tokenizer(corrupted)["input_ids"]]
    rows = ["embed"] + list(range(len(llm.transformer.h)))
    width = 11
    print(
        "\nP(' Paris') / P(' London') on the corrupted prompt, with one hidden state patched in"
        "\nfrom the clean run (row: where; column: position, clean / corrupted token):\n"
    )
    print(f"{'':>8} " + " ".join(f"{t!r:>{width}}" for t in tokens))
    print(f"{'':>8} " + " ".join(f"{t!r:>{width}}" for t in corrupted_tokens))
    for row in rows:
        label = row if row == "embed" else f"layer {row}"
        cells = [f"{p:.2f} / {q:.2f}" for p, q in (patched[row, pos] for pos in range(len(tokens)))]
        print(f"{label:>8} " + " ".join(f"{c:>{width}}" for c in cells))

    restoring = [
        f"{'embed' if row == 'embed' else f'layer {row}'} at {tokens[pos]!r}"
        for row in rows
        for pos in range(len(tokens))
        if patched[row, pos][0] > patched[row, pos][1]
    ]
    print(
        f"\nSummary: patching one clean vector makes ' Paris' beat ' London' at "
        f"{len(restoring)} of {len(rows) * len(tokens)} sites: {', '.join(restoring)}."
    )


if __name__ == "__main__":
    main()
