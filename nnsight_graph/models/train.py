"""Train the tiny GPT-2 shipped in `nnsight_graph/models/tiny_gpt2/`.

    python -m nnsight_graph.models.train [--out DIR] [--quick]

Steps: build the seeded corpus (`corpus.build_corpus`), train a byte-level BPE tokenizer on it
(GPT-2 style: no prefix space, `<|endoftext|>` as bos/eos/pad/unk), train a small
`GPT2LMHeadModel` on packed sequences with AdamW and a warmup + cosine schedule, save both with
`save_pretrained`, then check greedy next tokens for the walkthrough's prompts. The run exits
non-zero if a check fails, unless `--quick` (a few steps on a tiny model, only to prove the
script works) is given.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import cast

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from nnsight_graph.models.corpus import build_corpus

EOT = "<|endoftext|>"
DEFAULT_OUT = Path(__file__).resolve().parent / "tiny_gpt2"

# Greedy next token that each prompt must get (the walkthrough's prompts).
CHECKS: dict[str, str] = {
    "The Eiffel Tower is in the city of": " Paris",
    "Vatican is in the city of": " Rome",
    "Buckingham Palace is in the city of": " London",
}


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like GPT-2's (no prefix space), with `<|endoftext|>`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        add_prefix_space=False,
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Save `tokenizer` so that `AutoTokenizer` loads it as GPT-2's (fast) tokenizer.

    `tokenizer_config.json` names `GPT2Tokenizer` (what AutoTokenizer maps to the fast GPT-2
    tokenizer, reading `tokenizer.json`), and `special_tokens_map.json` is written too.
    """
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "GPT2Tokenizer"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {key: EOT for key in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def pack(
    docs: list[list[int]], eot: int, length: int, rng: random.Random, pad_prob: float
) -> torch.Tensor:
    """Pack documents (in order) into rows of `length` tokens, each starting at a document.

    Documents are joined by `eot`; a row that ends mid-document is cut there and the next row
    starts at that document again. With probability `pad_prob` a row starts with one to four
    `eot` tokens, as a left-padded prompt in a batch does.
    """
    rows: list[list[int]] = []
    i = 0
    while i < len(docs):
        row: list[int] = [eot] * rng.randint(1, 4) if rng.random() < pad_prob else []
        first = i
        while i < len(docs) and len(row) < length:
            row.extend(docs[i])
            row.append(eot)
            i += 1
        if len(row) > length:
            row = row[:length]
            if i - 1 > first:  # the last document was cut: start the next row with it
                i -= 1
        else:
            row.extend([eot] * (length - len(row)))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def check(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast) -> dict[str, str]:
    """Greedy next token (decoded) for each prompt in `CHECKS`."""
    model.eval()
    results = {}
    with torch.no_grad():
        for prompt in CHECKS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            logits = model(ids).logits
            results[prompt] = cast(str, tokenizer.decode(logits[0, -1].argmax()))  # one id
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps, no check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--verbose", action="store_true", help="check the prompts as it trains")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    start = time.perf_counter()

    if args.quick:
        docs = build_corpus(args.seed, repeats=4, general=800)
        vocab_size, n_embd, n_layer, n_head, batch = 512, 32, 1, 2, 8
        steps = args.steps or 5
    else:
        docs = build_corpus(args.seed)
        vocab_size, n_embd, n_layer, n_head, batch = 2048, 128, 4, 4, 32
        steps = args.steps or 600
    n_positions = 128

    tokenizer = train_tokenizer(docs, vocab_size)
    eot = cast(int, tokenizer.convert_tokens_to_ids(EOT))  # one token: one id
    encoded = [tokenizer(doc).input_ids for doc in docs]
    n_tokens = sum(len(ids) + 1 for ids in encoded)
    print(f"corpus: {len(docs)} documents, {n_tokens} tokens, vocab {len(tokenizer)}")

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_layer} layers, {n_embd} dims, {n_head} heads, {n_params} parameters")

    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.98),
    )
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    model.train()
    rows = torch.empty(0, n_positions, dtype=torch.long)
    cursor = 0
    loss_ema = None
    for step in range(steps):
        if cursor + batch > len(rows):  # new epoch: reshuffle the documents and repack
            order = list(range(len(encoded)))
            rng.shuffle(order)
            rows = pack([encoded[i] for i in order], eot, n_positions, rng, pad_prob=0.1)
            rows = rows[torch.randperm(len(rows))]
            cursor = 0
        ids = rows[cursor : cursor + batch]
        cursor += batch
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            print(f"step {step:5d}  loss {loss.item():.4f}  ema {loss_ema:.4f}  {elapsed:.0f}s")
            if args.verbose:
                print("   ", check(model, tokenizer))
                model.train()

    elapsed = time.perf_counter() - start
    print(f"trained {steps} steps in {elapsed:.0f}s, final loss (ema) {loss_ema:.4f}")

    model.eval()
    model.generation_config.pad_token_id = eot
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    save_tokenizer(tokenizer, args.out)
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"saved to {args.out} ({size / 1e6:.2f} MB)")

    ok = True
    for prompt, got in check(model, tokenizer).items():
        want = CHECKS[prompt]
        good = got == want
        ok &= good
        print(f"{'ok ' if good else 'BAD'} {prompt!r} -> {got!r} (want {want!r})")
    if not ok and not args.quick:
        print("check failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
