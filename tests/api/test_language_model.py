"""LanguageModel on the tiny trained GPT-2: loading (lazy and dispatched), the tokenizer and
config, every kind of input, left-padded batching of prompts, and the walkthrough's section 5
"Loading a Language Model" cells, each compared with a plain transformers run."""

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph import LanguageModel

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
EIFFEL = "The Eiffel Tower is in the city of"
VATICAN = "Vatican is in the city of"
BUCKINGHAM = "Buckingham Palace is in the city of"
SHORT, LONG = VATICAN, EIFFEL


def ids_of(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


def plain(hf, ids, zero_block=None):
    """Logits and the last block's hidden states of a plain forward on one unpadded prompt,
    optionally zeroing block `zero_block`'s output with a plain torch hook."""
    seen = {}
    handles = [
        hf.transformer.h[-1].register_forward_hook(
            lambda m, a, o: seen.__setitem__("last", o.detach().clone())
        )
    ]
    if zero_block is not None:
        handles.append(
            hf.transformer.h[zero_block].register_forward_hook(lambda m, a, o: torch.zeros_like(o))
        )
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits[0], seen["last"][0]


def device_types(model) -> set[str]:
    return {p.device.type for p in model.parameters()}


# loading --------------------------------------------------------------------------------------


def test_dispatch_true_loads_the_weights_at_once(llm, hf):
    assert device_types(llm) == {"cpu"}
    assert isinstance(llm._module, transformers.GPT2LMHeadModel)
    real = dict(hf.named_parameters())
    for name, parameter in llm._module.named_parameters():
        assert torch.equal(parameter, real[name]), name


def test_a_local_directory_loads_lazily_on_the_first_trace(path, tokenizer):
    lazy = LanguageModel(path)
    assert device_types(lazy) == {"meta"}
    assert lazy.config.n_layer == 4  # the config is there before the weights
    assert "GPT2LMHeadModel" in repr(lazy)
    block = lazy.transformer.h[-1]  # an envoy taken before loading stays valid after

    with lazy.trace(EIFFEL):
        states = block.output.save()
        logits = lazy.lm_head.output.save()

    assert device_types(lazy) == {"cpu"}
    assert states.device.type == "cpu"
    assert states.shape == (1, len(ids_of(tokenizer, EIFFEL)), 128)
    assert lazy.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_dispatch_loads_a_lazy_model_once(path):
    lazy = LanguageModel(path)
    lazy.dispatch()
    module = lazy._module
    assert device_types(lazy) == {"cpu"}
    lazy.dispatch()
    with lazy.trace(VATICAN):
        logits = lazy.lm_head.output.save()
    assert lazy._module is module
    assert lazy.tokenizer.decode(logits[0, -1].argmax()) == " Rome"


def test_an_already_built_model_with_a_tokenizer(path, hf, clean):
    built = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    wrapped = LanguageModel(built, tokenizer=tok)
    assert wrapped._module is built
    assert wrapped.tokenizer is tok

    with wrapped.trace(BUCKINGHAM):
        logits = wrapped.lm_head.output.save()

    expected, _ = plain(hf, ids_of(tok, BUCKINGHAM))
    assert torch.allclose(logits[0], expected, atol=ATOL)
    assert tok.decode(logits[0, -1].argmax()) == " London"
    assert clean(built)


def test_tokenizer_and_config(llm, hf, tokenizer):
    assert llm.tokenizer("Vatican")["input_ids"] == tokenizer("Vatican")["input_ids"]
    assert llm.tokenizer.decode(ids_of(tokenizer, EIFFEL)) == EIFFEL
    assert llm.tokenizer.padding_side == "left"
    assert llm.tokenizer.pad_token_id is not None
    assert llm.config is llm._module.config
    assert llm.config.n_layer == 4
    assert llm.config.n_embd == 128
    assert llm.config.vocab_size == hf.config.vocab_size


def test_print_shows_the_module_tree(llm, capsys):
    print(llm)
    shown = capsys.readouterr().out
    assert shown.startswith("GPT2LMHeadModel(")
    for part in ("(transformer): GPT2Model", "(h): ModuleList", "4 x GPT2Block", "(lm_head)"):
        assert part in shown
    assert shown.strip() == repr(llm._module)


# the walkthrough's cells ---------------------------------------------------------------------


def test_walkthrough_trace_hidden_states_and_predicted_token(llm, hf, tokenizer, capsys, clean):
    with llm.trace("The Eiffel Tower is in the city of"):
        hidden_states = llm.transformer.h[-1].output[0].save()
        logits = llm.lm_head.output.save()

    print("Hidden states shape:", hidden_states.shape)
    print("Predicted token:", llm.tokenizer.decode(logits[0, -1].argmax()))

    length = len(ids_of(tokenizer, EIFFEL))
    shown = capsys.readouterr().out
    assert f"Hidden states shape: torch.Size([{length}, 128])" in shown
    assert "Predicted token:  Paris" in shown
    expected_logits, expected_states = plain(hf, ids_of(tokenizer, EIFFEL))
    assert torch.allclose(hidden_states, expected_states, atol=ATOL)
    assert torch.allclose(logits[0], expected_logits, atol=ATOL)
    assert clean(llm._module)


@pytest.mark.parametrize(
    ("prompt", "answer"), [(EIFFEL, " Paris"), (VATICAN, " Rome"), (BUCKINGHAM, " London")]
)
def test_the_model_knows_its_cities(llm, prompt, answer):
    with llm.trace(prompt):
        logits = llm.lm_head.output.save()
    assert llm.tokenizer.decode(logits[0, -1].argmax()) == answer


def test_tracer_result_is_the_model_output(llm, hf, tokenizer):
    with llm.trace(EIFFEL) as tracer:
        hidden = llm.transformer.h[-1].output[0].save()
        result = tracer.result().save()

    expected_logits, expected_states = plain(hf, ids_of(tokenizer, EIFFEL))
    assert "logits" in result.keys()
    assert torch.allclose(result.logits[0], expected_logits, atol=ATOL)
    assert torch.allclose(hidden, expected_states, atol=ATOL)


# inputs ---------------------------------------------------------------------------------------


def last_logits_of(llm, value):
    with llm.trace(value):
        logits = llm.lm_head.output.save()
    return logits


@pytest.mark.parametrize(
    "kind", ["string", "id list", "1-D tensor", "2-D tensor", "tokenizer output"]
)
def test_every_kind_of_single_input(llm, hf, tokenizer, kind):
    ids = ids_of(tokenizer, EIFFEL)
    value = {
        "string": EIFFEL,
        "id list": ids,
        "1-D tensor": torch.tensor(ids),
        "2-D tensor": torch.tensor([ids]),
        "tokenizer output": llm.tokenizer(EIFFEL, return_tensors="pt"),
    }[kind]

    logits = last_logits_of(llm, value)

    expected, _ = plain(hf, ids)
    assert logits.shape == (1, len(ids), llm.config.vocab_size)
    assert torch.allclose(logits[0], expected, atol=ATOL)
    assert llm.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_a_list_of_strings_is_one_invoke_with_a_batch_of_two(llm, hf, tokenizer):
    calls = []
    handle = llm._module.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        with llm.trace([EIFFEL, BUCKINGHAM]):
            logits = llm.lm_head.output.save()
    finally:
        handle.remove()

    eiffel, buckingham = ids_of(tokenizer, EIFFEL), ids_of(tokenizer, BUCKINGHAM)
    width = max(len(eiffel), len(buckingham))
    assert calls == [torch.Size([2, width])]
    assert logits.shape == (2, width, llm.config.vocab_size)
    assert [llm.tokenizer.decode(row[-1].argmax()) for row in logits] == [" Paris", " London"]
    assert torch.allclose(logits[0, -1], plain(hf, eiffel)[0][-1], atol=ATOL)
    assert torch.allclose(logits[1, -1], plain(hf, buckingham)[0][-1], atol=ATOL)


def test_a_batch_of_token_id_rows(llm, hf, tokenizer):
    rows = [ids_of(tokenizer, "Vatican is in"), ids_of(tokenizer, "Vatican is in the")]
    rows = [r[: len(rows[0])] for r in rows]  # same length: a plain 2-D tensor
    with llm.trace(torch.tensor(rows)):
        logits = llm.lm_head.output.save()
    assert logits.shape[0] == 2
    for row, ids in zip(logits, rows, strict=True):
        assert torch.allclose(row, plain(hf, ids)[0], atol=ATOL)


def padded_pair(llm):
    """Tokenizer output of SHORT and LONG, left-padded by the tokenizer itself."""
    encoded = llm.tokenizer([SHORT, LONG], return_tensors="pt", padding=True)
    assert encoded["attention_mask"][0, 0] == 0  # SHORT really is padded
    return encoded


def assert_pair_equals_each_alone(hf, tokenizer, logits):
    assert logits.shape[0] == 2
    for row, prompt in enumerate((SHORT, LONG)):
        expected, _ = plain(hf, ids_of(tokenizer, prompt))
        assert torch.allclose(logits[row, -1], expected[-1], atol=ATOL)


def test_padded_tokenizer_output_of_two_prompts(llm, hf, tokenizer):
    with llm.trace(padded_pair(llm)):
        logits = llm.lm_head.output.save()
    assert_pair_equals_each_alone(hf, tokenizer, logits)


def test_ids_with_an_attention_mask_keyword(llm, hf, tokenizer):
    encoded = padded_pair(llm)
    with llm.trace(encoded["input_ids"], attention_mask=encoded["attention_mask"]):
        logits = llm.lm_head.output.save()
    assert_pair_equals_each_alone(hf, tokenizer, logits)


def test_a_plain_dict_with_input_ids(llm, hf, tokenizer):
    encoded = padded_pair(llm)
    value = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    with llm.trace(value):
        logits = llm.lm_head.output.save()
    assert_pair_equals_each_alone(hf, tokenizer, logits)


def test_keyword_inputs_to_an_invoke(llm, hf, tokenizer):
    encoded = padded_pair(llm)
    with llm.trace() as tracer:
        with tracer.invoke(**encoded):
            logits = llm.lm_head.output.save()
    assert_pair_equals_each_alone(hf, tokenizer, logits)


def test_keyword_inputs_to_trace(llm, hf, tokenizer):
    encoded = padded_pair(llm)
    with llm.trace(**encoded):
        logits = llm.lm_head.output.save()
    assert_pair_equals_each_alone(hf, tokenizer, logits)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"attention_mask": torch.ones(1, 3, dtype=torch.long)}, "token ids"),
        (42, "token ids"),
        ([], "token ids"),
    ],
    ids=["dict without input_ids", "int", "empty list"],
)
def test_bad_input_raises_a_batch_error(llm, value, match, clean):
    with pytest.raises(nnsight.BatchError, match=match) as info:
        with llm.trace(value):
            llm.lm_head.output.save()
    message = str(info.value)
    assert "string" in message and "tokenizer output" in message  # says what would work
    assert clean(llm._module)


def test_bad_input_in_an_invoke_raises_a_batch_error(llm):
    with pytest.raises(nnsight.BatchError, match="token ids"):
        with llm.trace() as tracer:
            with tracer.invoke(EIFFEL):
                llm.lm_head.output.save()
            with tracer.invoke(3.5):
                llm.lm_head.output.save()
    with llm.trace(EIFFEL):  # the model still works afterwards
        logits = llm.lm_head.output.save()
    assert llm.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


# padding --------------------------------------------------------------------------------------


def test_prompt_lengths_differ(tokenizer):
    assert len(ids_of(tokenizer, SHORT)) < len(ids_of(tokenizer, LONG))


def test_prompts_of_different_lengths_in_separate_invokes(llm, hf, tokenizer):
    with llm.trace() as tracer:
        with tracer.invoke(SHORT):
            short_states = llm.transformer.h[-1].output.save()
            short_logits = llm.lm_head.output.save()
        with tracer.invoke(LONG):
            long_states = llm.transformer.h[-1].output.save()
            long_logits = llm.lm_head.output.save()

    short_ids, long_ids = ids_of(tokenizer, SHORT), ids_of(tokenizer, LONG)
    width = len(long_ids)
    assert short_logits.shape == long_logits.shape == (1, width, llm.config.vocab_size)
    assert short_states.shape == long_states.shape == (1, width, 128)
    for logits, states, ids in (
        (short_logits, short_states, short_ids),
        (long_logits, long_states, long_ids),
    ):
        expected_logits, expected_states = plain(hf, ids)
        assert torch.allclose(logits[0, -1], expected_logits[-1], atol=ATOL)
        assert torch.allclose(states[0, -1], expected_states[-1], atol=ATOL)
        # every real (unpadded) position matches too
        assert torch.allclose(logits[0, -len(ids) :], expected_logits, atol=ATOL)
    assert llm.tokenizer.decode(short_logits[0, -1].argmax()) == " Rome"
    assert llm.tokenizer.decode(long_logits[0, -1].argmax()) == " Paris"


def test_prompts_of_different_lengths_in_one_list(llm, hf, tokenizer):
    prompts = [SHORT, LONG, BUCKINGHAM]
    with llm.trace(prompts):
        states = llm.transformer.h[-1].output.save()
        logits = llm.lm_head.output.save()

    assert logits.shape[0] == states.shape[0] == 3
    for row, prompt in enumerate(prompts):
        expected_logits, expected_states = plain(hf, ids_of(tokenizer, prompt))
        assert torch.allclose(logits[row, -1], expected_logits[-1], atol=ATOL)
        assert torch.allclose(states[row, -1], expected_states[-1], atol=ATOL)
    predicted = [llm.tokenizer.decode(row[-1].argmax()) for row in logits]
    assert predicted == [" Rome", " Paris", " London"]


def test_padded_batch_equals_the_prompts_alone_through_the_wrapper(llm):
    alone = {}
    for prompt in (SHORT, LONG):
        with llm.trace(prompt):
            logits = llm.lm_head.output.save()
        alone[prompt] = logits[0, -1]

    with llm.trace() as tracer:
        with tracer.invoke(LONG):
            long_logits = llm.lm_head.output.save()
        with tracer.invoke(SHORT):
            short_logits = llm.lm_head.output.save()

    assert torch.allclose(short_logits[0, -1], alone[SHORT], atol=ATOL)
    assert torch.allclose(long_logits[0, -1], alone[LONG], atol=ATOL)


def test_a_write_in_one_invoke_leaves_the_other_invoke_alone(llm, hf, tokenizer, clean):
    with llm.trace() as tracer:
        with tracer.invoke(SHORT):
            llm.transformer.h[1].output[:] = 0
            edited = llm.lm_head.output.save()
        with tracer.invoke(LONG):
            untouched_states = llm.transformer.h[1].output.save()
            untouched = llm.lm_head.output.save()

    short_ids, long_ids = ids_of(tokenizer, SHORT), ids_of(tokenizer, LONG)
    expected_edited, _ = plain(hf, short_ids, zero_block=1)
    clean_short, _ = plain(hf, short_ids)
    expected_untouched, _ = plain(hf, long_ids)
    assert torch.allclose(edited[0, -1], expected_edited[-1], atol=ATOL)
    assert not torch.allclose(edited[0, -1], clean_short[-1], atol=ATOL)
    assert torch.allclose(untouched[0], expected_untouched, atol=ATOL)
    assert torch.count_nonzero(untouched_states) > 0
    assert llm.tokenizer.decode(untouched[0, -1].argmax()) == " Paris"
    assert clean(llm._module)


def test_a_prompt_less_invoke_sees_the_whole_padded_batch(llm, hf, tokenizer):
    with llm.trace() as tracer:
        with tracer.invoke(SHORT):
            pass
        with tracer.invoke(LONG):
            pass
        with tracer.invoke():
            states = llm.transformer.h[-1].output.save()
            logits = llm.lm_head.output.save()

    short_ids, long_ids = ids_of(tokenizer, SHORT), ids_of(tokenizer, LONG)
    width = len(long_ids)
    assert states.shape == (2, width, 128)
    assert logits.shape == (2, width, llm.config.vocab_size)
    for row, ids in enumerate((short_ids, long_ids)):
        expected_logits, expected_states = plain(hf, ids)
        assert torch.allclose(logits[row, -1], expected_logits[-1], atol=ATOL)
        assert torch.allclose(states[row, -len(ids) :], expected_states, atol=ATOL)
