"""Other architectures than GPT-2: small randomly initialised Llama and GPT-NeoX models, wrapped
as `LanguageModel(model, tokenizer=...)` (with the tiny GPT-2's tokenizer) and as a plain
`NNsight(model)`. Reads, edits, left-padded batching and generation steps are compared with
plain torch hooks and plain `transformers` runs on the same model."""

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph import LanguageModel

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
SHORT, LONG = "Vatican is in the city of", "The Eiffel Tower is in the city of"
ARCHS = ["llama", "neox"]


@pytest.fixture(scope="module")
def tokenizer(path):
    return transformers.AutoTokenizer.from_pretrained(path)


def build(arch: str, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if arch == "llama":
        config = transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab_size,
            **special,
        )
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.GPTNeoXConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=vocab_size,
        **special,
    )
    return transformers.GPTNeoXForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models(tokenizer):
    """arch -> the plain transformers model (shared by the wrappers below)."""
    return {arch: build(arch, len(tokenizer)) for arch in ARCHS}


@pytest.fixture(scope="module")
def wrapped(models, path):
    """arch -> LanguageModel around the plain model, each with its own tokenizer instance."""
    return {
        arch: LanguageModel(model, tokenizer=transformers.AutoTokenizer.from_pretrained(path))
        for arch, model in models.items()
    }


def decoder_layers(model):
    """The decoder layers of a plain model or of a wrapper (same attribute paths)."""
    return model.model.layers if hasattr(model, "model") else model.gpt_neox.layers


def ids_of(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


def plain(hf, ids, zero_layer=None):
    """Logits and each decoder layer's output of a plain forward on one unpadded prompt,
    optionally zeroing layer `zero_layer`'s output with a plain torch hook."""
    seen = {}
    handles = []
    for index, layer in enumerate(decoder_layers(hf)):

        def hook(module, args, output, index=index):
            if index == zero_layer:
                output = torch.zeros_like(output)
            seen[index] = output.detach().clone()
            return output

        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits[0], {i: s[0] for i, s in seen.items()}


def plain_generate(hf, tokenizer, prompt: str, max_new_tokens: int) -> torch.Tensor:
    ids = torch.tensor([ids_of(tokenizer, prompt)])
    with torch.no_grad():
        return hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )


def test_the_models_are_what_the_tests_expect(models, tokenizer):
    llama, neox = models["llama"], models["neox"]
    assert type(llama.model.layers[0]).__name__ == "LlamaDecoderLayer"
    assert len(llama.model.layers) == len(neox.gpt_neox.layers) == 2
    assert llama.config.vocab_size == neox.config.vocab_size == len(tokenizer)
    ids = ids_of(tokenizer, SHORT)
    for model in (llama, neox):
        _, states = plain(model, ids)
        assert states[0].shape == (len(ids), 64)  # a decoder layer returns a tensor


# reading and editing through LanguageModel ----------------------------------------------------


def test_llama_layers_read_through_language_model(wrapped, models, tokenizer, clean):
    llm = wrapped["llama"]
    with llm.trace(LONG):
        first = llm.model.layers[0].output.save()
        last = llm.model.layers[-1].output.save()
        logits = llm.lm_head.output.save()

    expected_logits, states = plain(models["llama"], ids_of(tokenizer, LONG))
    assert first.shape == (1, len(ids_of(tokenizer, LONG)), 64)
    assert torch.allclose(first[0], states[0], atol=ATOL)
    assert torch.allclose(last[0], states[1], atol=ATOL)
    assert torch.allclose(logits[0], expected_logits, atol=ATOL)
    assert clean(models["llama"])


def test_neox_layers_read_through_language_model(wrapped, models, tokenizer, clean):
    llm = wrapped["neox"]
    with llm.trace(LONG):
        first = llm.gpt_neox.layers[0].output.save()
        last = llm.gpt_neox.layers[-1].output.save()
        logits = llm.lm_head.output.save()

    expected_logits, states = plain(models["neox"], ids_of(tokenizer, LONG))
    assert torch.allclose(first[0], states[0], atol=ATOL)
    assert torch.allclose(last[0], states[1], atol=ATOL)
    assert torch.allclose(logits[0], expected_logits, atol=ATOL)
    assert clean(models["neox"])


def test_llama_layer_edit_matches_a_plain_hook(wrapped, models, tokenizer):
    llm = wrapped["llama"]
    with llm.trace(SHORT):
        llm.model.layers[0].output[:] = 0
        logits = llm.lm_head.output.save()

    ids = ids_of(tokenizer, SHORT)
    expected, _ = plain(models["llama"], ids, zero_layer=0)
    clean, _ = plain(models["llama"], ids)
    assert torch.allclose(logits[0], expected, atol=ATOL)
    assert not torch.allclose(logits[0], clean, atol=ATOL)


def test_neox_layer_replacement_matches_a_plain_hook(wrapped, models, tokenizer):
    llm = wrapped["neox"]
    with llm.trace(SHORT):
        llm.gpt_neox.layers[0].output = llm.gpt_neox.layers[0].output * 0
        logits = llm.lm_head.output.save()

    ids = ids_of(tokenizer, SHORT)
    expected, _ = plain(models["neox"], ids, zero_layer=0)
    clean, _ = plain(models["neox"], ids)
    assert torch.allclose(logits[0], expected, atol=ATOL)
    assert not torch.allclose(logits[0], clean, atol=ATOL)


# batching -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_prompts_of_different_lengths_in_invokes_equal_each_alone(arch, wrapped, models, tokenizer):
    llm, hf = wrapped[arch], models[arch]
    layers, lm_head = decoder_layers(llm), llm.lm_head
    with llm.trace() as tracer:
        with tracer.invoke(SHORT):
            short_states = layers[-1].output.save()
            short_logits = lm_head.output.save()
        with tracer.invoke(LONG):
            long_states = layers[-1].output.save()
            long_logits = lm_head.output.save()

    width = len(ids_of(tokenizer, LONG))
    assert short_logits.shape == long_logits.shape == (1, width, len(tokenizer))
    for states, logits, prompt in (
        (short_states, short_logits, SHORT),
        (long_states, long_logits, LONG),
    ):
        ids = ids_of(tokenizer, prompt)
        expected_logits, expected_states = plain(hf, ids)
        assert torch.allclose(logits[0, -1], expected_logits[-1], atol=ATOL)
        assert torch.allclose(states[0, -len(ids) :], expected_states[1], atol=ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_prompts_of_different_lengths_in_one_list_equal_each_alone(
    arch, wrapped, models, tokenizer
):
    llm, hf = wrapped[arch], models[arch]
    layers = decoder_layers(llm)
    with llm.trace([LONG, SHORT]):
        states = layers[-1].output.save()

    assert states.shape[0] == 2
    for row, prompt in enumerate((LONG, SHORT)):
        ids = ids_of(tokenizer, prompt)
        _, expected = plain(hf, ids)
        assert torch.allclose(states[row, -1], expected[1][-1], atol=ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_an_edit_in_one_invoke_leaves_the_other_alone(arch, wrapped, models, tokenizer):
    llm, hf = wrapped[arch], models[arch]
    layers = decoder_layers(llm)
    with llm.trace() as tracer:
        with tracer.invoke(LONG):
            layers[0].output[:] = 0
            edited = layers[-1].output.save()
        with tracer.invoke(SHORT):
            untouched = layers[-1].output.save()

    _, expected_edited = plain(hf, ids_of(tokenizer, LONG), zero_layer=0)
    short_ids = ids_of(tokenizer, SHORT)
    _, expected_untouched = plain(hf, short_ids)
    assert torch.allclose(edited[0], expected_edited[1], atol=ATOL)
    assert torch.allclose(untouched[0, -len(short_ids) :], expected_untouched[1], atol=ATOL)


# generation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_steps_equal_plain_generate(arch, wrapped, models, tokenizer, clean):
    llm, hf = wrapped[arch], models[arch]
    lm_head = llm.lm_head
    layers = decoder_layers(llm)
    with llm.generate(max_new_tokens=4) as tracer:
        with tracer.invoke(LONG):
            tokens = list().save()
            lengths = list().save()
            with tracer.iter[:]:
                lengths.append(layers[0].output.shape[1])
                tokens.append(lm_head.output[0, -1].argmax(dim=-1))
        with tracer.invoke():
            output = llm.generator.output.save()

    expected = plain_generate(hf, tokenizer, LONG, 4)
    prompt_length = len(ids_of(tokenizer, LONG))
    assert expected.shape == (1, prompt_length + 4)
    assert torch.equal(output, expected)
    assert [int(t) for t in tokens] == expected[0, prompt_length:].tolist()
    assert lengths == [prompt_length, 1, 1, 1]
    assert clean(hf)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_generation_equals_each_prompt_alone(arch, wrapped, models, tokenizer):
    llm, hf = wrapped[arch], models[arch]
    with llm.generate([SHORT, LONG], max_new_tokens=3):
        output = llm.generator.output.save()

    for row, prompt in enumerate((SHORT, LONG)):
        alone = plain_generate(hf, tokenizer, prompt, 3)
        assert output[row, -3:].tolist() == alone[0, -3:].tolist()


# the plain NNsight wrapper --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_nnsight_wrapper_reads_and_edits_layers(arch, models, tokenizer, clean):
    hf = models[arch]
    model = nnsight.NNsight(hf)
    ids = ids_of(tokenizer, LONG)
    with model.trace(torch.tensor([ids])):
        first = decoder_layers(model)[0].output.save()
        result = model.output.save()

    expected_logits, states = plain(hf, ids)
    assert torch.allclose(first[0], states[0], atol=ATOL)
    assert torch.allclose(result.logits[0], expected_logits, atol=ATOL)

    with model.trace(torch.tensor([ids])):
        decoder_layers(model)[1].output[:] = 0
        logits = model.output.logits.save()
    expected_edited, _ = plain(hf, ids, zero_layer=1)
    assert torch.allclose(logits[0], expected_edited, atol=ATOL)
    assert clean(hf)


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_nnsight_wrapper_batches_invokes(arch, models, tokenizer):
    hf = models[arch]
    model = nnsight.NNsight(hf)
    long_ids = ids_of(tokenizer, LONG)
    other = list(reversed(long_ids))  # same length: plain tensors concatenate
    with model.trace() as tracer:
        with tracer.invoke(torch.tensor([long_ids])):
            decoder_layers(model)[0].output[:] = 0
            first = model.output.logits.save()
        with tracer.invoke(torch.tensor([other])):
            second = model.output.logits.save()

    assert torch.allclose(first[0], plain(hf, long_ids, zero_layer=0)[0], atol=ATOL)
    assert torch.allclose(second[0], plain(hf, other)[0], atol=ATOL)
