"""Logit lens on the shipped tiny GPT-2: what each layer would predict if it were the last.

For "The Eiffel Tower is in the city of", one trace saves the output of every block
(`llm.transformer.h[i].output`, in the order the model runs them). After the trace, plain torch
applies the model's final layer norm and unembedding (`transformer.ln_f`, then `lm_head`) to each
saved hidden state, giving a next-token distribution per layer and position. (Calling a module
on a traced value inside the trace is not supported, so this step runs on the saved tensors.)

Prints a layers x positions table of the top token and its probability, and writes a heat map of
those probabilities to `--out` (default `out/logit_lens.png`), if matplotlib is installed
(`pip install -e ".[examples]"` or `pip install matplotlib`).

Run from the repository root: `python examples/logit_lens.py [--prompt TEXT] [--out DIR]`.
"""

import argparse
from pathlib import Path

import torch

from nnsight_graph import LanguageModel
from nnsight_graph.models import tiny_gpt2_path

PROMPT = "The Eiffel Tower is in the city of"


def logit_lens(llm: LanguageModel, prompt: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Token strings of `prompt`, and the top token id and probability per (layer, position)."""
    n_layers = len(llm.transformer.h)
    with llm.trace(prompt):
        # Save every block's output, in the order the model runs them
        hidden = [llm.transformer.h[i].output.save() for i in range(n_layers)]
        final_logits = llm.lm_head.output.save()

    model = llm._module  # the underlying transformers model, for plain torch after the trace
    with torch.no_grad():
        # (layers, seq, vocab): the final layer norm and the unembedding on each layer's output
        stacked = torch.cat(hidden, dim=0)
        probs = model.lm_head(model.transformer.ln_f(stacked)).softmax(dim=-1)
        # The last layer's lens is the model's own prediction
        assert torch.allclose(probs[-1], final_logits[0].softmax(dim=-1), atol=1e-5)
    top_prob, top_id = probs.max(dim=-1)

    tokens = [llm.tokenizer.decode(t) for t in llm.tokenizer(prompt)["input_ids"]]
    return tokens, top_id, top_prob


def print_table(llm: LanguageModel, tokens: list[str], top_id: torch.Tensor, top_p: torch.Tensor):
    """Print one row per layer, one column per input position: top token (probability)."""
    cells = [
        [f"{llm.tokenizer.decode(t)!r} {p:.2f}" for t, p in zip(ids, ps, strict=True)]
        for ids, ps in zip(top_id.tolist(), top_p.tolist(), strict=True)
    ]
    header = [repr(t) for t in tokens]
    width = max(len(s) for s in header + [c for row in cells for c in row])
    print("Top next-token prediction (probability) per layer and input position:\n")
    print(f"{'':>8} " + " ".join(f"{h:>{width}}" for h in header))
    for layer, row in enumerate(cells):
        print(f"{f'layer {layer}':>8} " + " ".join(f"{c:>{width}}" for c in row))


def write_heatmap(
    llm: LanguageModel, tokens: list[str], top_id: torch.Tensor, top_p: torch.Tensor, out: Path
) -> Path | None:
    """A heat map of the top-token probability, labelled with the token; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "\nmatplotlib is not installed: skipping the heat map. Install it with\n"
            '  pip install -e ".[examples]"   (or: pip install matplotlib)'
        )
        return None

    out.mkdir(parents=True, exist_ok=True)
    n_layers, n_pos = top_p.shape
    fig, ax = plt.subplots(figsize=(1.3 * n_pos + 2, 0.8 * n_layers + 1.5))
    image = ax.imshow(top_p.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for layer in range(n_layers):
        for pos in range(n_pos):
            p = top_p[layer, pos].item()
            ax.text(
                pos,
                layer,
                llm.tokenizer.decode(top_id[layer, pos]),
                ha="center",
                va="center",
                fontsize=8,
                color="black" if p > 0.6 else "white",
            )
    ax.set_xticks(range(n_pos), tokens, rotation=30, ha="right")
    ax.set_yticks(range(n_layers), [f"layer {i}" for i in range(n_layers)])
    ax.set_xlabel("input position")
    ax.set_title("Logit lens: top next token and its probability")
    fig.colorbar(image, ax=ax, label="probability")
    fig.tight_layout()
    path = out / "logit_lens.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=PROMPT, help="the prompt to inspect")
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the heat map")
    args = parser.parse_args()

    torch.manual_seed(0)
    llm = LanguageModel(tiny_gpt2_path(), dispatch=True)

    print(f"Prompt: {args.prompt!r}\n")
    tokens, top_id, top_p = logit_lens(llm, args.prompt)
    print_table(llm, tokens, top_id, top_p)

    path = write_heatmap(llm, tokens, top_id, top_p, args.out)
    if path is not None:
        print(f"\nHeat map written to {path}")

    # The earliest layer from which the lens at the last position gives the final answer
    answer = top_id[-1, -1].item()
    first = top_id.shape[0] - 1
    while first > 0 and top_id[first - 1, -1].item() == answer:
        first -= 1
    print(
        f"\nSummary: the final answer {llm.tokenizer.decode(answer)!r} "
        f"(p={top_p[-1, -1]:.2f}) is the top token at the last position "
        f"from layer {first} on (p={top_p[first, -1]:.2f} there; {top_id.shape[0]} layers)."
    )


if __name__ == "__main__":
    main()
