"""Attribution patching on the shipped tiny GPT-2: activation patching, estimated with one gradient.

Activation patching (`examples/activation_patching.py`) runs the corrupted prompt once per patched
hidden state. Attribution patching estimates all of those effects at once with a first-order
Taylor expansion around the corrupted run:

    effect(site) ~= (clean[site] - corrupted[site]) . d metric / d corrupted[site]

with metric = logit(" Paris") - logit(" London") at the last position. One trace saves the clean
hidden states; a second trace runs the corrupted prompt, computes the metric, and inside
`with metric.backward():` reads the `.grad` of the token embeddings and of every block's output,
in reverse order (gradients arrive last layer first). The estimate is printed for every layer and
position, then compared with real patches (the same one-vector patches as in
activation_patching.py) at the positions where the prompts differ and at the last position.

Run from the repository root: `python examples/attribution_patching.py`.
"""

import torch

from nnsight_graph import LanguageModel
from nnsight_graph.models import tiny_gpt2_path

CLEAN = "The Eiffel Tower is in the city of"
# Same token count as CLEAN with the shipped tokenizer (activation_patching.py checks this;
# the walkthrough's "Buckingham Palace is in the city of" is one token shorter)
CORRUPTED = "The London Eye is in the city of"


def hidden_states(llm: LanguageModel, prompt: str) -> list[torch.Tensor]:
    """The token embeddings and every block's output for `prompt` (rows: embed, layer 0, ...)."""
    with llm.trace(prompt):
        embed = llm.transformer.wte.output.save()
        hidden = [llm.transformer.h[L].output.save() for L in range(len(llm.transformer.h))]
    return [embed.detach(), *(h.detach() for h in hidden)]


def gradients(llm: LanguageModel, prompt: str, paris: int, london: int):
    """The corrupted hidden states, their gradients of the logit difference, and its value."""
    n_layers = len(llm.transformer.h)
    with llm.trace(prompt):
        sites = [llm.transformer.wte.output]
        sites += [llm.transformer.h[L].output for L in range(n_layers)]
        for site in sites:
            site.requires_grad_(True)
        values = [site.save() for site in sites]

        logits = llm.lm_head.output
        metric = (logits[:, -1, paris] - logits[:, -1, london]).sum()
        metric_value = metric.save()

        with metric.backward():
            # Gradients arrive in reverse order of the forward pass: last layer first
            grads = [None] * len(sites)
            for i in reversed(range(len(sites))):
                grads[i] = sites[i].grad.save()
    return [v.detach() for v in values], [g.detach() for g in grads], metric_value.item()


def real_patches(llm: LanguageModel, clean: list[torch.Tensor], sites, paris: int, london: int):
    """The logit difference on the corrupted prompt with each (row, pos) in `sites` patched."""
    results = {}
    with llm.trace() as tracer:
        for row, pos in sites:
            with tracer.invoke(CORRUPTED):
                if row == 0:
                    llm.transformer.wte.output[:, pos, :] = clean[0][:, pos, :]
                else:
                    llm.transformer.h[row - 1].output[:, pos, :] = clean[row][:, pos, :]
                logits = llm.lm_head.output[:, -1]
                results[row, pos] = (logits[:, paris] - logits[:, london]).save()
    return {site: value.item() for site, value in results.items()}


def main() -> None:
    torch.manual_seed(0)
    llm = LanguageModel(tiny_gpt2_path(), dispatch=True)
    paris, london = (llm.tokenizer(w)["input_ids"][0] for w in (" Paris", " London"))
    clean_ids = llm.tokenizer(CLEAN)["input_ids"]
    corrupted_ids = llm.tokenizer(CORRUPTED)["input_ids"]
    assert len(clean_ids) == len(corrupted_ids), "the prompts must have the same token count"

    clean = hidden_states(llm, CLEAN)
    corrupted, grads, corrupted_metric = gradients(llm, CORRUPTED, paris, london)
    with llm.trace(CLEAN):
        clean_logits = llm.lm_head.output[:, -1].save()
    clean_metric = (clean_logits[0, paris] - clean_logits[0, london]).item()

    # (rows, positions): estimated change of the logit difference when patching one vector
    estimate = torch.stack(
        [((c - x) * g).sum(dim=-1)[0] for c, x, g in zip(clean, corrupted, grads, strict=True)]
    )

    labels = ["embed"] + [f"layer {L}" for L in range(len(llm.transformer.h))]
    tokens = [llm.tokenizer.decode(t) for t in clean_ids]
    corrupted_tokens = [llm.tokenizer.decode(t) for t in corrupted_ids]
    print(f"clean     {CLEAN!r}: logit(' Paris') - logit(' London') = {clean_metric:+.2f}")
    print(f"corrupted {CORRUPTED!r}: logit(' Paris') - logit(' London') = {corrupted_metric:+.2f}")

    width = 9
    print(
        "\nAttribution estimate of the change in logit(' Paris') - logit(' London') from patching"
        "\none clean vector into the corrupted run, (clean - corrupted) . grad:\n"
    )
    print(f"{'':>8} " + " ".join(f"{t!r:>{width}}" for t in tokens))
    print(f"{'':>8} " + " ".join(f"{t!r:>{width}}" for t in corrupted_tokens))
    for label, row in zip(labels, estimate.tolist(), strict=True):
        print(f"{label:>8} " + " ".join(f"{v:>+{width}.2f}" for v in row))

    # Real patches where the prompts differ, and at the last position
    positions = [p for p in range(len(tokens)) if clean_ids[p] != corrupted_ids[p]]
    positions.append(len(tokens) - 1)
    sites = [(row, pos) for pos in positions for row in range(len(labels))]
    actual = real_patches(llm, clean, sites, paris, london)

    print("\nEstimate vs real activation patching (change in the logit difference):\n")
    print(f"{'site':>22} {'estimate':>9} {'actual':>9}")
    for row, pos in sites:
        site = f"{labels[row]} @ {tokens[pos]!r}"
        real = actual[row, pos] - corrupted_metric
        print(f"{site:>22} {estimate[row, pos].item():>+9.2f} {real:>+9.2f}")

    est = torch.tensor([estimate[s].item() for s in sites])
    real = torch.tensor([actual[s] - corrupted_metric for s in sites])
    corr = torch.corrcoef(torch.stack([est, real]))[0, 1].item()
    best = max(sites, key=lambda s: estimate[s].item())
    print(
        f"\nSummary: the largest estimated effect is {labels[best[0]]} at {tokens[best[1]]!r} "
        f"({estimate[best].item():+.2f}, real {actual[best] - corrupted_metric:+.2f}); "
        f"estimate vs real correlation over {len(sites)} patched sites: {corr:.2f}."
    )


if __name__ == "__main__":
    main()
