"""One battery of checks over many causal-LM architectures.

Each architecture is a small, seeded, randomly initialised transformers model (2 layers, hidden
size 32, 4 heads, MoE with 4 experts top-2) wrapped as `LanguageModel(model, tokenizer=...)` with
the shipped tiny GPT-2's tokenizer. Every check compares a trace with plain torch / transformers
on the same model: hidden states (`output_hidden_states=True`), plain forward hooks, greedy
`generate()` and `torch.autograd.grad`. A failing cell names the architecture and the check.

Tolerances: values read from the same computation are compared with `EXACT` (1e-5 absolute;
gradients also 1e-4 relative); values of a left-padded batch, whose attention reductions run over
other shapes, with `PADDED` (1e-4). The cases of the former test_architectures.py (Llama and
GPT-NeoX only) are checks of this battery now.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.nn.modules import module as torch_module

from nnsight_graph import LanguageModel, NNsight

transformers = pytest.importorskip("transformers")

EXACT = 1e-5
PADDED = 1e-4
SHORT, LONG = "Vatican is in the city of", "The Eiffel Tower is in the city of"
NEW_TOKENS = 3

# attention models: the keywords most configs share
_ATTENTION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
_MHA = {k: v for k, v in _ATTENTION.items() if k != "num_key_value_heads"}
_GPT = {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 128}

# architecture -> (transformers config class, its tiny keywords); vocab and special tokens are
# added by `build`. The model class is whatever AutoModelForCausalLM picks for the config.
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", _GPT),
    "llama": ("LlamaConfig", _ATTENTION),
    "mistral": ("MistralConfig", _ATTENTION),
    "qwen2": ("Qwen2Config", _ATTENTION),
    "qwen3": ("Qwen3Config", {**_ATTENTION, "head_dim": 8}),
    "gemma": ("GemmaConfig", {**_ATTENTION, "head_dim": 8}),
    "gemma2": ("Gemma2Config", {**_ATTENTION, "head_dim": 8}),
    "gemma3": ("Gemma3TextConfig", {**_ATTENTION, "head_dim": 8}),
    "phi": ("PhiConfig", _ATTENTION),
    "phi3": ("Phi3Config", _ATTENTION),
    "gpt_neox": ("GPTNeoXConfig", _MHA),
    "gptj": ("GPTJConfig", {**_GPT, "rotary_dim": 4}),
    "opt": (
        "OPTConfig",
        {**_MHA, "ffn_dim": 64, "word_embed_proj_dim": 32, "max_position_embeddings": 128},
    ),
    "bloom": ("BloomConfig", {"hidden_size": 32, "n_layer": 2, "n_head": 4}),
    "falcon": (
        "FalconConfig",
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4},
    ),
    "stablelm": ("StableLmConfig", _ATTENTION),
    "olmo": ("OlmoConfig", _ATTENTION),
    "olmo2": ("Olmo2Config", _ATTENTION),
    "mixtral": ("MixtralConfig", {**_ATTENTION, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {
            **_ATTENTION,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
        },
    ),
    "granite": ("GraniteConfig", _ATTENTION),
    "cohere": ("CohereConfig", _ATTENTION),
    "starcoder2": ("Starcoder2Config", _ATTENTION),
    "gpt_bigcode": ("GPTBigCodeConfig", _GPT),
    "codegen": ("CodeGenConfig", {**_GPT, "rotary_dim": 4, "n_ctx": 128}),
    "mamba": (
        "MambaConfig",
        {"hidden_size": 32, "num_hidden_layers": 2, "state_size": 8, "expand": 2, "conv_kernel": 4},
    ),
}
NAMES = list(ARCHS)
# architectures whose `hidden_states` start with the first block's output, not the embeddings
NO_EMBEDDINGS_STATE = {"mamba"}

# the hook dicts tests/conftest.py's `clean` looks at; here, transformers' own hooks are allowed
from support import GLOBAL_HOOK_DICTS, MODULE_HOOK_DICTS  # noqa: E402


@dataclass
class Case:
    """One architecture: the plain model, its wrapper and where its parts are."""

    name: str
    hf: torch.nn.Module
    llm: LanguageModel
    layers_path: str  # the ModuleList of decoder blocks ("model.layers", "transformer.h")
    head_path: str  # the output embedding ("lm_head")
    tuple_blocks: bool  # a block returns a tuple (hidden states first), not a tensor
    own_hooks: set[tuple[str, str, int]]  # the hooks transformers itself keeps on the model

    def first_block_state(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The first block's output among a forward's `hidden_states`."""
        return hidden_states[0 if self.name in NO_EMBEDDINGS_STATE else 1]

    def clean(self) -> bool:
        """No hook of a trace is left: only transformers' own (output capturing) hooks are."""
        return hooks_on(self.hf) == self.own_hooks

    def layers(self, model: Any) -> Any:
        """The block list of the plain model or of the wrapper (same attribute path)."""
        return functools.reduce(getattr, self.layers_path.split("."), model)

    def head(self, model: Any) -> Any:
        return functools.reduce(getattr, self.head_path.split("."), model)

    def ids(self, prompt: str) -> list[int]:
        return self.llm.tokenizer(prompt)["input_ids"]


def build(name: str, vocab_size: int) -> torch.nn.Module:
    """The seeded random model of one architecture."""
    config_class, keywords = ARCHS[name]
    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    config = getattr(transformers, config_class)(vocab_size=vocab_size, **special, **keywords)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def block_list_path(model: torch.nn.Module) -> str:
    """The path of the ModuleList holding one module per hidden layer."""
    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name
    raise AssertionError(f"{type(model).__name__} has no ModuleList of {count} blocks")


def hooks_on(model: torch.nn.Module) -> set[tuple[str, str, int]]:
    """Every forward hook on the model's modules and every global module hook, by id."""
    found = {
        (name, kind, key)
        for name, module in model.named_modules()
        for kind in MODULE_HOOK_DICTS
        for key in getattr(module, kind)
    }
    found.update(
        ("", kind, key) for kind in GLOBAL_HOOK_DICTS for key in getattr(torch_module, kind)
    )
    return found


def path_of(model: torch.nn.Module, target: torch.nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """These models are tiny: one intra-op thread is faster than several (and much faster on a
    busy machine, where threads wait for each other); the previous count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cases(path: str) -> Callable[[str], Case]:
    """`cases(name)`: the Case of one architecture, built on first use, once per module."""
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            hf = build(name, len(tokenizer))
            layers_path = block_list_path(hf)
            llm = LanguageModel(hf, tokenizer=tokenizer)
            case = Case(name, hf, llm, layers_path, "", False, set())
            case.head_path = path_of(hf, hf.get_output_embeddings())
            ids = torch.tensor([case.ids(SHORT)])
            seen: list[Any] = []
            handle = case.layers(hf)[0].register_forward_hook(lambda m, a, o: seen.append(o))
            with torch.no_grad():
                hf(ids, output_hidden_states=True)  # transformers adds its capturing hooks
            handle.remove()
            case.tuple_blocks = isinstance(seen[0], tuple)
            case.own_hooks = hooks_on(hf)
            built[name] = case
        return built[name]

    return get


@pytest.fixture(params=NAMES)
def case(request: pytest.FixtureRequest, cases: Callable[[str], Case]) -> Case:
    return cases(request.param)


# plain references ------------------------------------------------------------------------------


def hidden(output: Any, tuple_blocks: bool) -> Any:
    """A block's hidden states (its output, or the output's first item)."""
    return output[0] if tuple_blocks else output


def plain(
    case: Case, ids: list[int], hooks: dict[int, Callable[[Any], Any]] | None = None
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Logits and each block's hidden states of a plain forward on one unpadded prompt;
    `hooks[i](hidden)` may return a replacement for block i's hidden states."""
    hooks = hooks or {}
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(case.layers(case.hf)):

        def hook(module: Any, args: Any, output: Any, index: int = index) -> Any:
            states = hidden(output, case.tuple_blocks)
            if index in hooks:
                states = hooks[index](states)
                output = (states, *output[1:]) if case.tuple_blocks else states
            seen[index] = states.detach().clone()
            return output

        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = case.hf(torch.tensor([ids])).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits[0], {i: s[0] for i, s in seen.items()}


def plain_generate(case: Case, prompt: str) -> torch.Tensor:
    """Greedy `generate()` of the plain model on one unpadded prompt: NEW_TOKENS new tokens."""
    ids = torch.tensor([case.ids(prompt)])
    with torch.no_grad():
        return case.hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        )


# the battery -----------------------------------------------------------------------------------


def test_trace_saves_equal_hf_hidden_states(case: Case) -> None:
    llm, tuple_blocks = case.llm, case.tuple_blocks
    layers, head = case.layers(llm), case.head(llm)
    with llm.trace(LONG):
        first = layers[0].output.save()
        head_output = head.output.save()
        logits = llm.output.logits.save()

    ids = case.ids(LONG)
    with torch.no_grad():
        expected = case.hf(torch.tensor([ids]), output_hidden_states=True)
    states = hidden(first, tuple_blocks)
    assert states.shape == (1, len(ids), case.hf.config.hidden_size)
    torch.testing.assert_close(
        states, case.first_block_state(expected.hidden_states), atol=EXACT, rtol=0
    )
    torch.testing.assert_close(logits, expected.logits, atol=EXACT, rtol=0)
    assert head_output.shape == logits.shape  # logits may be scaled or capped after the head
    assert case.clean()


def test_edit_equals_a_plain_hook(case: Case) -> None:
    llm, tuple_blocks = case.llm, case.tuple_blocks
    layers = case.layers(llm)
    with llm.trace(SHORT):
        hidden(layers[0].output, tuple_blocks)[:, 1] = 0
        logits = llm.output.logits.save()

    def zero_position_one(states: torch.Tensor) -> torch.Tensor:
        states = states.clone()
        states[:, 1] = 0
        return states

    ids = case.ids(SHORT)
    expected, _ = plain(case, ids, {0: zero_position_one})
    unedited, _ = plain(case, ids)
    torch.testing.assert_close(logits[0], expected, atol=EXACT, rtol=0)
    assert not torch.allclose(logits[0], unedited, atol=EXACT)


def test_a_replaced_output_equals_a_plain_hook(case: Case) -> None:
    llm = case.llm
    layers = case.layers(llm)
    with llm.trace(SHORT):
        if case.tuple_blocks:
            layers[0].output = (layers[0].output[0] * 2,) + layers[0].output[1:]
        else:
            layers[0].output = layers[0].output * 2
        logits = llm.output.logits.save()

    expected, _ = plain(case, case.ids(SHORT), {0: lambda states: states * 2})
    torch.testing.assert_close(logits[0], expected, atol=EXACT, rtol=0)


def test_padded_invokes_equal_each_prompt_alone(case: Case) -> None:
    llm, tuple_blocks = case.llm, case.tuple_blocks
    layers = case.layers(llm)
    with llm.trace() as tracer:
        with tracer.invoke(SHORT):
            short_states = hidden(layers[-1].output, tuple_blocks).save()
            short_logits = llm.output.logits.save()
        with tracer.invoke(LONG):
            long_states = hidden(layers[-1].output, tuple_blocks).save()
            long_logits = llm.output.logits.save()

    width = len(case.ids(LONG))
    assert len(case.ids(SHORT)) < width
    assert short_logits.shape == long_logits.shape == (1, width, case.hf.config.vocab_size)
    for states, logits, prompt in (
        (short_states, short_logits, SHORT),
        (long_states, long_logits, LONG),
    ):
        ids = case.ids(prompt)
        expected_logits, expected_states = plain(case, ids)
        real = slice(width - len(ids), width)  # left padding: the real tokens come last
        torch.testing.assert_close(logits[0, real], expected_logits, atol=PADDED, rtol=0)
        torch.testing.assert_close(states[0, real], expected_states[1], atol=PADDED, rtol=0)


def test_a_list_of_prompts_equals_each_prompt_alone(case: Case) -> None:
    llm = case.llm
    layers = case.layers(llm)
    with llm.trace([LONG, SHORT]):
        states = hidden(layers[-1].output, case.tuple_blocks).save()

    assert states.shape[0] == 2
    for row, prompt in enumerate((LONG, SHORT)):
        ids = case.ids(prompt)
        _, expected = plain(case, ids)
        torch.testing.assert_close(states[row, -len(ids) :], expected[1], atol=PADDED, rtol=0)


def test_an_edit_in_one_invoke_leaves_the_other_alone(case: Case) -> None:
    llm, tuple_blocks = case.llm, case.tuple_blocks
    layers = case.layers(llm)
    with llm.trace() as tracer:
        with tracer.invoke(LONG):
            hidden(layers[0].output, tuple_blocks)[:] = 0
            edited = hidden(layers[-1].output, tuple_blocks).save()
        with tracer.invoke(SHORT):
            untouched = hidden(layers[-1].output, tuple_blocks).save()

    _, expected_edited = plain(case, case.ids(LONG), {0: torch.zeros_like})
    short_ids = case.ids(SHORT)
    _, expected_untouched = plain(case, short_ids)
    torch.testing.assert_close(edited[0], expected_edited[1], atol=PADDED, rtol=0)
    torch.testing.assert_close(
        untouched[0, -len(short_ids) :], expected_untouched[1], atol=PADDED, rtol=0
    )


def test_greedy_generation_steps_equal_hf_generate(case: Case) -> None:
    llm, tuple_blocks = case.llm, case.tuple_blocks
    layers, head = case.layers(llm), case.head(llm)
    with llm.generate(max_new_tokens=NEW_TOKENS) as tracer:
        with tracer.invoke(LONG):
            tokens = list().save()
            lengths = list().save()
            with tracer.iter[:]:
                lengths.append(hidden(layers[0].output, tuple_blocks).shape[1])
                tokens.append(head.output[0, -1].argmax(dim=-1))
        with tracer.invoke():
            output = llm.generator.output.save()

    expected = plain_generate(case, LONG)
    prompt_length = len(case.ids(LONG))
    assert expected.shape == (1, prompt_length + NEW_TOKENS)
    assert output.tolist() == expected.tolist()
    assert [int(t) for t in tokens] == expected[0, prompt_length:].tolist()
    assert lengths == [prompt_length] + [1] * (NEW_TOKENS - 1)
    assert case.clean()


def test_batched_generation_equals_each_prompt_alone(case: Case) -> None:
    llm = case.llm
    with llm.generate([SHORT, LONG], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS):
        output = llm.generator.output.save()

    for row, prompt in enumerate((SHORT, LONG)):
        alone = plain_generate(case, prompt)
        assert output[row, -NEW_TOKENS:].tolist() == alone[0, -NEW_TOKENS:].tolist()


def test_source_call_site_equals_a_plain_hook(case: Case) -> None:
    llm = case.llm
    layers = case.layers(llm)
    block = case.layers(case.hf)[0]
    sites = dir(layers[0].source)
    # a submodule the block's forward calls exactly once (a norm, the attention, the mixer, ...)
    name = next(
        site
        for site in sites
        if site.startswith("self_")
        and site.endswith("_0")
        and f"{site[:-2]}_1" not in sites
        and isinstance(getattr(block, site[5:-2], None), torch.nn.Module)
    )
    submodule = getattr(block, name[5:-2])
    assert name in str(layers[0].source)
    seen: list[Any] = []
    handle = submodule.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        expected, _ = plain(case, case.ids(SHORT))
    finally:
        handle.remove()
    assert len(seen) == 1
    returns_tuple = isinstance(seen[0], tuple)  # an attention returns (output, weights)

    with llm.trace(SHORT):
        site = getattr(layers[0].source, name)
        value = site.output.save()
        logits = llm.output.logits.save()
    torch.testing.assert_close(value, seen[0], atol=EXACT, rtol=0)
    torch.testing.assert_close(logits[0], expected, atol=EXACT, rtol=0)

    with llm.trace(SHORT):
        hidden(getattr(layers[0].source, name).output, returns_tuple)[:, 1] = 0
        edited = llm.output.logits.save()

    def zero_position_one(module: Any, args: Any, output: Any) -> Any:
        states = hidden(output, returns_tuple).clone()
        states[:, 1] = 0
        return (states, *output[1:]) if returns_tuple else states

    handle = submodule.register_forward_hook(zero_position_one)
    try:
        expected_edited, _ = plain(case, case.ids(SHORT))
    finally:
        handle.remove()
    torch.testing.assert_close(edited[0], expected_edited, atol=EXACT, rtol=0)
    assert not torch.allclose(edited[0], expected, atol=EXACT)
    assert "forward" not in block.__dict__  # the instrumented forward is gone again


def test_gradient_equals_autograd(case: Case) -> None:
    llm, tuple_blocks = case.llm, case.tuple_blocks
    layers = case.layers(llm)
    with llm.trace(SHORT):
        states = hidden(layers[0].output, tuple_blocks)
        loss = llm.output.logits.sum()
        with loss.backward():
            grad = states.grad.save()

    kept: list[torch.Tensor] = []
    block = case.layers(case.hf)[0]
    handle = block.register_forward_hook(lambda m, a, o: kept.append(hidden(o, tuple_blocks)))
    try:
        logits = case.hf(torch.tensor([case.ids(SHORT)])).logits
    finally:
        handle.remove()
    (expected,) = torch.autograd.grad(logits.sum(), kept[0])
    case.hf.zero_grad(set_to_none=True)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, expected, atol=EXACT, rtol=1e-4)
    assert case.clean()


def test_skip_equals_a_plain_substitution(case: Case) -> None:
    llm = case.llm
    layers = case.layers(llm)
    with llm.trace(SHORT):
        layers[1].skip(layers[0].output)
        logits = llm.output.logits.save()

    kept: list[Any] = []
    plain_layers = case.layers(case.hf)
    handles = [
        plain_layers[0].register_forward_hook(lambda m, a, o: kept.append(o)),
        plain_layers[1].register_forward_hook(lambda m, a, o: kept[0]),
    ]
    try:
        with torch.no_grad():
            expected = case.hf(torch.tensor([case.ids(SHORT)])).logits
    finally:
        for handle in handles:
            handle.remove()
    unskipped, _ = plain(case, case.ids(SHORT))
    torch.testing.assert_close(logits, expected, atol=EXACT, rtol=0)
    assert not torch.allclose(logits[0], unskipped, atol=EXACT)
    assert "forward" not in plain_layers[1].__dict__


def test_cache_equals_hf_hidden_states(case: Case) -> None:
    llm = case.llm
    with llm.trace(LONG) as tracer:
        cache = tracer.cache(modules=[case.layers(llm)[0]])

    with torch.no_grad():
        expected = case.hf(torch.tensor([case.ids(LONG)]), output_hidden_states=True)
    key = f"model.{case.layers_path}.0"
    assert list(cache) == [key]
    states = hidden(cache[key].output, case.tuple_blocks)
    torch.testing.assert_close(
        states, case.first_block_state(expected.hidden_states), atol=EXACT, rtol=0
    )


def test_scan_gives_shapes_without_compute(case: Case) -> None:
    llm, tuple_blocks = case.llm, case.tuple_blocks
    layers, head = case.layers(llm), case.head(llm)
    kinds: list[str] = []
    block = case.layers(case.hf)[0]
    handle = block.register_forward_hook(
        lambda m, a, o: kinds.append(type(hidden(o, tuple_blocks)).__name__)
    )
    experts = _experts_implementation(case.hf)
    try:
        with llm.scan(LONG):
            shape = hidden(layers[0].output, tuple_blocks).shape
            logits = head.output
    finally:
        handle.remove()
    width = len(case.ids(LONG))
    assert tuple(shape) == (1, width, case.hf.config.hidden_size)
    assert tuple(logits.shape) == (1, width, case.hf.config.vocab_size)
    assert logits.dtype == torch.float32
    assert kinds == ["FakeTensor"]
    assert _experts_implementation(case.hf) == experts  # what a scan switched is back


def test_plain_nnsight_wrapper_reads_edits_and_batches(case: Case) -> None:
    model = NNsight(case.hf)
    layers = case.layers(model)
    ids = case.ids(LONG)
    with model.trace(torch.tensor([ids])):
        first = hidden(layers[0].output, case.tuple_blocks).save()
        result = model.output.save()

    expected_logits, states = plain(case, ids)
    torch.testing.assert_close(first[0], states[0], atol=EXACT, rtol=0)
    torch.testing.assert_close(result.logits[0], expected_logits, atol=EXACT, rtol=0)

    other = list(reversed(ids))  # the same length: plain tensors concatenate
    with model.trace() as tracer:
        with tracer.invoke(torch.tensor([ids])):
            hidden(layers[1].output, case.tuple_blocks)[:] = 0
            edited = model.output.logits.save()
        with tracer.invoke(torch.tensor([other])):
            untouched = model.output.logits.save()

    expected_edited, _ = plain(case, ids, {1: torch.zeros_like})
    torch.testing.assert_close(edited[0], expected_edited, atol=EXACT, rtol=0)
    torch.testing.assert_close(untouched[0], plain(case, other)[0], atol=EXACT, rtol=0)
    assert case.clean()


def _experts_implementation(model: torch.nn.Module) -> Any:
    get = getattr(model, "get_experts_implementation", None)
    return get() if get is not None else None


def test_the_table_covers_the_issue_list() -> None:
    assert len(ARCHS) >= 26
    moe = [name for name, (config, _) in ARCHS.items() if "Mixtral" in config or "Moe" in config]
    assert moe == ["mixtral", "qwen2_moe"]


# beyond the battery -----------------------------------------------------------------------------


class _MaskOnly(torch.nn.Module):
    """A causal LM whose forward takes only ids and a mask (no position_ids, no **kwargs)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_a_forward_without_position_ids_is_not_given_them(cases: Callable[[str], Case]) -> None:
    bloom = cases("bloom")  # alibi: positions come from the mask, so padding stays exact
    llm = LanguageModel(_MaskOnly(bloom.hf), tokenizer=bloom.llm.tokenizer)
    with llm.trace() as tracer:
        with tracer.invoke(SHORT):
            short = llm.output.logits.save()
        with tracer.invoke(LONG):
            long = llm.output.logits.save()

    for logits, prompt in ((short, SHORT), (long, LONG)):
        expected, _ = plain(bloom, bloom.ids(prompt))
        torch.testing.assert_close(logits[0, -len(expected) :], expected, atol=PADDED, rtol=0)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_scan_of_eager_experts_uses_batched_mm_and_restores(
    name: str, cases: Callable[[str], Case]
) -> None:
    case = cases(name)
    layers, hf = case.layers(case.llm), case.hf
    used: list[str] = []
    experts = next(m for m in hf.modules() if type(m).__name__.endswith("Experts"))
    handle = experts.register_forward_pre_hook(
        lambda m, a: used.append(m.config._experts_implementation)
    )
    hf.set_experts_implementation("eager")
    try:
        with case.llm.scan(SHORT):
            shape = layers[0].output.shape
        assert hf.get_experts_implementation() == {"": "eager"}
        assert used == ["batched_mm"]
        assert tuple(shape) == (1, len(case.ids(SHORT)), hf.config.hidden_size)
        with pytest.raises(IndexError):
            with case.llm.scan(SHORT):
                layers[0].output[:, 100].save()
        assert hf.get_experts_implementation() == {"": "eager"}  # restored after an error too
        with case.llm.trace(SHORT):
            out = layers[0].output.save()
        assert used[-1] == "eager" and out.shape == shape  # a real run is left as it was
    finally:
        handle.remove()
        hf.set_experts_implementation("grouped_mm")


def test_scan_of_a_lazily_loaded_moe_model_loads_no_weights(
    cases: Callable[[str], Case], tmp_path: Any
) -> None:
    case = cases("mixtral")
    case.hf.save_pretrained(tmp_path)
    case.llm.tokenizer.save_pretrained(tmp_path)
    llm = LanguageModel(str(tmp_path))  # meta tensors until the first real run
    with llm.scan(SHORT):
        shape = llm.model.layers[0].output.shape
    assert tuple(shape) == (1, len(case.ids(SHORT)), case.hf.config.hidden_size)
    assert next(llm._module.parameters()).is_meta
    assert llm._module.get_experts_implementation() == {"": "grouped_mm"}
