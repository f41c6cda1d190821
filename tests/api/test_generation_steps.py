"""Generation and its steps on the tiny trained GPT-2: every cell of the walkthrough's
section 5 from "Generation with .generate()" on, `tracer.iter[...]` in all its forms,
`tracer.all()`, `tracer.next()`, steps that never happen, each compared with plain
`transformers` generation (with plain torch hooks where the cell edits)."""

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph import LanguageModel

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
PROMPT = "The Eiffel Tower is in"


class Plain:
    """A plain `hf.generate` run, recording the last block's output and the logits of every
    forward call, optionally zeroing block 0's output on one call (0-based)."""

    def __init__(self, hf, tokenizer, prompt: str, max_new_tokens: int, zero_call=None, **kw):
        self.ids = tokenizer(prompt, return_tensors="pt").input_ids
        self.prompt_length = self.ids.shape[1]
        self.states: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        calls = [0]

        def zero(module, args, output):
            calls[0] += 1
            if calls[0] - 1 == zero_call:
                return torch.zeros_like(output)
            return None

        handles = [
            hf.transformer.h[0].register_forward_hook(zero),
            hf.transformer.h[-1].register_forward_hook(
                lambda m, a, o: self.states.append(o.detach().clone())
            ),
            hf.lm_head.register_forward_hook(
                lambda m, a, o: self.logits.append(o.detach().clone())
            ),
        ]
        try:
            with torch.no_grad():
                self.output = hf.generate(
                    self.ids,
                    attention_mask=torch.ones_like(self.ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                    **kw,
                )
        finally:
            for handle in handles:
                handle.remove()
        self.new_tokens = self.output[0, self.prompt_length :].tolist()


@pytest.fixture(scope="module")
def plain3(hf, tokenizer):
    return Plain(hf, tokenizer, PROMPT, 3)


@pytest.fixture(scope="module")
def plain5(hf, tokenizer):
    return Plain(hf, tokenizer, PROMPT, 5)


# generate() -----------------------------------------------------------------------------------


def test_plain_generation_is_what_the_tests_expect(plain3, tokenizer):
    assert plain3.output.shape == (1, plain3.prompt_length + 3)
    assert len(plain3.logits) == 3  # one forward call per new token
    assert len(set(plain3.new_tokens)) == 3  # distinct tokens: step mix-ups would show


def test_walkthrough_generate_output(llm, plain3, capsys, clean):
    with llm.generate("The Eiffel Tower is in", max_new_tokens=3) as tracer:
        output = llm.generator.output.save()

    print(llm.tokenizer.decode(output[0]))

    assert isinstance(tracer, nnsight.Tracer)
    assert output.shape == (1, plain3.prompt_length + 3)
    assert torch.equal(output, plain3.output)
    assert capsys.readouterr().out == llm.tokenizer.decode(plain3.output[0]) + "\n"
    assert clean(llm._module)


def test_tracer_result_in_generate_is_the_generated_ids(llm, plain3):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        result = tracer.result().save()
    assert torch.equal(result, plain3.output)


def test_generate_with_a_tensor_prompt(llm, plain3):
    with llm.generate(plain3.ids, max_new_tokens=3):
        output = llm.generator.output.save()
    assert torch.equal(output, plain3.output)


# tracer.iter ----------------------------------------------------------------------------------


def test_walkthrough_iterating_over_generation_steps(llm, plain3, capsys):
    with llm.generate("The Eiffel Tower is in", max_new_tokens=3) as tracer:
        tokens_per_step = list().save()

        # Iterate over ALL generation steps
        with tracer.iter[:]:
            token = llm.lm_head.output[0, -1].argmax(dim=-1)
            tokens_per_step.append(token)

    print("Tokens:", [llm.tokenizer.decode(t) for t in tokens_per_step])

    assert type(tokens_per_step) is list
    assert len(tokens_per_step) == 3
    assert all(isinstance(t, torch.Tensor) and t.dim() == 0 for t in tokens_per_step)
    assert [int(t) for t in tokens_per_step] == plain3.new_tokens
    decoded = [llm.tokenizer.decode(t) for t in plain3.new_tokens]
    assert capsys.readouterr().out == f"Tokens: {decoded}\n"


def test_iterated_logits_equal_each_plain_forward_call(llm, plain3):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        logits = list().save()
        with tracer.iter[:]:
            logits.append(llm.lm_head.output)

    # generate() asks the model for the last position's logits only
    assert [t.shape for t in logits] == [t.shape for t in plain3.logits]
    for ours, theirs in zip(logits, plain3.logits, strict=True):
        assert torch.allclose(ours, theirs, atol=ATOL)


def test_walkthrough_conditional_per_step_intervention(llm, hf, tokenizer, capsys):
    with llm.generate("Hello", max_new_tokens=5) as tracer:
        hidden_states = list().save()

        with tracer.iter[:] as step_idx:
            # Only intervene on step 2
            if step_idx == 2:
                llm.transformer.h[0].output[0][:] = 0

            hidden_states.append(llm.transformer.h[-1].output[0].clone())

    print(f"Collected {len(hidden_states)} hidden states")

    assert capsys.readouterr().out == "Collected 5 hidden states\n"
    expected = Plain(hf, tokenizer, "Hello", 5, zero_call=2)
    clean = Plain(hf, tokenizer, "Hello", 5)
    for step, (ours, theirs) in enumerate(zip(hidden_states, expected.states, strict=True)):
        assert torch.allclose(ours, theirs[0], atol=ATOL), step
    assert not torch.allclose(hidden_states[2], clean.states[2][0], atol=ATOL)
    assert torch.allclose(hidden_states[1], clean.states[1][0], atol=ATOL)


def test_zeroing_block_0_on_step_2_matches_a_plain_hook(llm, hf, tokenizer, clean):
    with llm.generate(max_new_tokens=5) as tracer:
        with tracer.invoke(PROMPT):
            with tracer.iter[:] as step_idx:
                if step_idx == 2:
                    llm.transformer.h[0].output[:] = 0
        with tracer.invoke():
            output = llm.generator.output.save()

    expected = Plain(hf, tokenizer, PROMPT, 5, zero_call=2)
    unedited = Plain(hf, tokenizer, PROMPT, 5)
    assert torch.equal(output, expected.output)
    assert not torch.equal(expected.output, unedited.output)  # the edit changes the text
    assert output[0, : unedited.prompt_length + 2].tolist() == unedited.output[0, :-3].tolist()
    assert clean(llm._module)


def test_walkthrough_tracer_all(llm, hf, tokenizer, capsys):
    with llm.generate("Hello", max_new_tokens=3) as tracer:
        tokens = list().save()

        with tracer.all():
            tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))

    print("All tokens:", [llm.tokenizer.decode(t) for t in tokens])

    expected = Plain(hf, tokenizer, "Hello", 3)
    assert [int(t) for t in tokens] == expected.new_tokens
    decoded = [tokenizer.decode(t) for t in expected.new_tokens]
    assert capsys.readouterr().out == f"All tokens: {decoded}\n"


def test_tracer_all_equals_iter_all(llm, plain3):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        tokens = list().save()
        with tracer.all():
            tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
    assert [int(t) for t in tokens] == plain3.new_tokens


def test_walkthrough_next(llm, hf, tokenizer):
    with llm.generate("Hello", max_new_tokens=3) as tracer:
        # Step 0 (automatic)
        hs0 = llm.transformer.h[-1].output[0].save()

        tracer.next()  # Move to step 1

        hs1 = llm.transformer.h[-1].output[0].save()

    expected = Plain(hf, tokenizer, "Hello", 3)
    assert hs0.shape == (expected.prompt_length, 128)
    assert hs1.shape == (1, 128)
    assert torch.allclose(hs0, expected.states[0][0], atol=ATOL)
    assert torch.allclose(hs1, expected.states[1][0], atol=ATOL)


def test_next_moves_to_the_kv_cached_step(llm, plain3):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        hs0 = llm.transformer.h[-1].output.save()
        tracer.next()
        hs1 = llm.transformer.h[-1].output.save()
        tracer.next()
        logits2 = llm.lm_head.output.save()

    assert hs0.shape == (1, plain3.prompt_length, 128)
    assert hs1.shape == (1, 1, 128)
    assert torch.allclose(hs0, plain3.states[0], atol=ATOL)
    assert torch.allclose(hs1, plain3.states[1], atol=ATOL)
    assert torch.allclose(logits2, plain3.logits[2], atol=ATOL)


def test_loop_form_of_iter(llm, plain3):
    steps = []
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        tokens = list().save()
        for step in tracer.iter[0:2]:
            steps.append(step)
            tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))

    assert steps == [0, 1]
    assert step == 1  # the loop variable is bound back after the trace
    assert [int(t) for t in tokens] == plain3.new_tokens[:2]


SELECTIONS = [
    ("[:]", slice(None), [0, 1, 2, 3]),
    ("[1:3]", slice(1, 3), [1, 2]),
    ("[::2]", slice(None, None, 2), [0, 2]),
    ("[1:]", slice(1, None), [1, 2, 3]),
    ("[1]", 1, [1]),
    ("[0]", 0, [0]),
    ("[0, 2]", [0, 2], [0, 2]),
]


@pytest.mark.parametrize(
    ("key", "chosen"),
    [(key, chosen) for _, key, chosen in SELECTIONS],
    ids=[name for name, _, _ in SELECTIONS],
)
def test_iter_selects_the_right_steps(llm, plain5, key, chosen):
    steps = []
    with llm.generate(PROMPT, max_new_tokens=4) as tracer:
        lengths = list().save()
        tokens = list().save()
        with tracer.iter[key] as step:
            steps.append(step)
            lengths.append(llm.transformer.h[-1].output.shape[1])
            tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))

    assert steps == chosen
    assert all(type(s) is int for s in steps)
    assert lengths == [plain5.prompt_length if s == 0 else 1 for s in chosen]
    assert [int(t) for t in tokens] == [plain5.new_tokens[s] for s in chosen]


def test_the_step_indexes_modules(llm, plain3, hf, tokenizer):
    seen = {}
    handles = [
        block.register_forward_hook(
            lambda m, a, o, i=i: seen.setdefault(i, []).append(o.detach().clone())
        )
        for i, block in enumerate(hf.transformer.h)
    ]
    try:
        Plain(hf, tokenizer, PROMPT, 3)
    finally:
        for handle in handles:
            handle.remove()

    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        states = list().save()
        with tracer.iter[:] as step:
            states.append(llm.transformer.h[step].output)

    assert len(states) == 3
    for step, state in enumerate(states):
        assert torch.allclose(state, seen[step][step], atol=ATOL), step


def test_code_after_an_iter_block_runs(llm, plain3):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        with tracer.iter[0:2]:
            token = llm.lm_head.output[0, -1].argmax(dim=-1)
        last_in_block = token.save()
        after = llm.lm_head.output.save()  # the next step: step 2

    assert int(last_in_block) == plain3.new_tokens[1]
    assert torch.allclose(after, plain3.logits[2], atol=ATOL)


def test_generator_output_in_a_prompt_less_invoke_after_iterating(llm, plain3):
    with llm.generate(max_new_tokens=3) as tracer:
        with tracer.invoke(PROMPT):
            tokens = list().save()
            with tracer.iter[:]:
                tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
        with tracer.invoke():
            output = llm.generator.output.save()

    assert [int(t) for t in tokens] == plain3.new_tokens
    assert torch.equal(output, plain3.output)


def test_generator_output_after_an_iter_block(llm, plain3):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        tokens = list().save()
        with tracer.iter[0:2]:
            tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
        output = llm.generator.output.save()

    assert torch.equal(output, plain3.output)


def test_tracer_result_after_an_iter_block(llm, plain3):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        with tracer.iter[:]:
            llm.lm_head.output.save()
        result = tracer.result().save()

    assert torch.equal(result, plain3.output)


def test_generator_output_after_next(llm, plain3):
    with llm.generate(PROMPT, max_new_tokens=3) as tracer:
        hs0 = llm.transformer.h[-1].output.save()
        tracer.next()
        hs1 = llm.transformer.h[-1].output.save()
        output = llm.generator.output.save()

    assert hs0.shape[1] == plain3.prompt_length and hs1.shape[1] == 1
    assert torch.equal(output, plain3.output)


# steps that never happen ----------------------------------------------------------------------


def test_steps_after_eos_are_skipped_with_a_warning(llm, hf, tokenizer, plain3, clean):
    first = plain3.new_tokens[0]
    stopped = Plain(hf, tokenizer, PROMPT, 5, eos_token_id=first)
    assert stopped.new_tokens == [first]  # generation really ends after one step

    with pytest.warns(nnsight.StepsSkippedWarning, match="never happened"):
        with llm.generate(PROMPT, max_new_tokens=5, eos_token_id=first) as tracer:
            tokens = list().save()
            lengths = list().save()
            with tracer.iter[:]:
                lengths.append(llm.transformer.h[-1].output.shape[1])
                tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))

    assert [int(t) for t in tokens] == [first]
    assert lengths == [plain3.prompt_length]
    assert clean(llm._module)


def test_tracer_all_after_eos_is_skipped_with_a_warning(llm, plain3):
    first = plain3.new_tokens[0]
    with pytest.warns(nnsight.StepsSkippedWarning):
        with llm.generate(max_new_tokens=4, eos_token_id=first) as tracer:
            with tracer.invoke(PROMPT):
                tokens = list().save()
                with tracer.all():
                    tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
            with tracer.invoke():
                output = llm.generator.output.save()

    assert [int(t) for t in tokens] == [first]
    assert output.shape == (1, plain3.prompt_length + 1)


def test_explicit_steps_that_never_happen_are_skipped_with_a_warning(llm, plain3, clean):
    first = plain3.new_tokens[0]
    with pytest.warns(nnsight.StepsSkippedWarning, match="step 1"):
        with llm.generate(PROMPT, max_new_tokens=5, eos_token_id=first) as tracer:
            tokens = list().save()
            with tracer.iter[0:3]:
                tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
    assert [int(t) for t in tokens] == [first]
    assert clean(llm._module)


def test_iter_all_without_max_new_tokens(llm, hf, plain3, clean):
    default = hf.generation_config.max_new_tokens
    if default is None:
        with pytest.raises(nnsight.GraphBuildError, match="max_new_tokens"):
            with llm.generate(PROMPT) as tracer:
                with tracer.iter[:]:
                    llm.lm_head.output.save()
        assert clean(llm._module)
        # explicit steps need no limit (transformers warns that it uses its default length)
        with pytest.warns(UserWarning, match="max_length"):
            with llm.generate(PROMPT) as tracer:
                tokens = list().save()
                with tracer.iter[0:2]:
                    tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
        assert [int(t) for t in tokens] == plain3.new_tokens[:2]
    else:
        with llm.generate(PROMPT) as tracer:
            tokens = list().save()
            with tracer.iter[:]:
                tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
        assert len(tokens) <= default


def test_iter_all_uses_the_models_default_max_new_tokens(path, plain3):
    hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    hf.generation_config.max_new_tokens = 2
    wrapped = LanguageModel(hf, tokenizer=transformers.AutoTokenizer.from_pretrained(path))
    with wrapped.generate(PROMPT) as tracer:
        tokens = list().save()
        with tracer.iter[:]:
            tokens.append(wrapped.lm_head.output[0, -1].argmax(dim=-1))
    assert [int(t) for t in tokens] == plain3.new_tokens[:2]


# batches --------------------------------------------------------------------------------------


def test_generating_prompts_of_different_lengths_equals_each_alone(llm, hf, tokenizer):
    short, long = "Vatican is in the city of", "The Eiffel Tower is in the city of"
    with llm.generate(max_new_tokens=3) as tracer:
        with tracer.invoke(short):
            short_tokens = list().save()
            with tracer.iter[:]:
                short_tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
        with tracer.invoke(long):
            long_tokens = list().save()
            with tracer.iter[:]:
                long_tokens.append(llm.lm_head.output[0, -1].argmax(dim=-1))
        with tracer.invoke():
            output = llm.generator.output.save()

    alone_short = Plain(hf, tokenizer, short, 3)
    alone_long = Plain(hf, tokenizer, long, 3)
    assert [int(t) for t in short_tokens] == alone_short.new_tokens
    assert [int(t) for t in long_tokens] == alone_long.new_tokens
    assert output.shape == (2, alone_long.prompt_length + 3)
    assert output[0, -3:].tolist() == alone_short.new_tokens
    assert output[1].tolist() == alone_long.output[0].tolist()
    assert tokenizer.decode(alone_short.new_tokens[0]) == " Rome"
