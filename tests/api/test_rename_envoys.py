"""`rename=` aliases (as nnsight 0.8.1 defines them: a key is a module path relative to any
envoy, or a module class; a value is one alias or a list; the real name keeps working) and
`envoys=` Envoy subclasses chosen by module class or path suffix."""

from collections import OrderedDict

import pytest
import torch
import transformers

from nnsight_graph import Envoy, LanguageModel, NNsight


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    """A random two-layer GPT-2, small enough to build in a test."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=2,
        vocab_size=40,
        n_positions=8,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.tensor([[1, 5, 7, 3]])


GPT2_RENAME = {
    "transformer.h": "layers",
    "attn": "attention",
    ".mlp": "ff",  # a leading dot is the same as none
    "attn.c_proj": "attn.o_proj",  # a dotted alias binds on the module its prefix names
}


def blocks() -> torch.nn.Sequential:
    def block() -> torch.nn.Sequential:
        return torch.nn.Sequential(OrderedDict(lin=torch.nn.Linear(4, 4), act=torch.nn.ReLU()))

    return torch.nn.Sequential(OrderedDict(block0=block(), block1=block()))


# aliases -------------------------------------------------------------------------------------


def test_an_alias_is_the_same_envoy_and_records_the_real_path(net, x):
    model = NNsight(net, rename={"layer1": "first", "layer2": ["second", "last"]})
    assert model.first is model.layer1
    assert model.second is model.layer2 and model.last is model.layer2
    assert model["first"] is model.layer1
    assert {"first", "second", "last", "layer1", "output"} <= set(dir(model))

    with model.trace(x) as tracer:
        through_alias = model.first.output.save()
        through_name = model.layer1.output.save()
        model.last.output[:] = 0
        output = model.output.save()

    assert torch.equal(through_alias, net.layer1(x)) and torch.equal(through_name, through_alias)
    assert torch.equal(output, torch.zeros(1, 2))
    graph = str(tracer.graph)
    assert "read layer1.output()" in graph and "layer2.output" in graph
    assert "first" not in graph and "last" not in graph


def test_printing_shows_each_alias_before_its_module(net):
    model = NNsight(net, rename={"layer1": "first", "layer2": ["second", "last"]})
    assert repr(model) == (
        "Sequential(\n"
        "  (first/layer1): Linear(in_features=5, out_features=10, bias=True)\n"
        "  (second/last/layer2): Linear(in_features=10, out_features=2, bias=True)\n"
        ")"
    )
    assert repr(model.first) == repr(net.layer1)
    assert repr(NNsight(net)) == repr(net)  # without rename= it is torch's own


def test_dotted_keys_and_aliases_on_gpt2(gpt2, ids):
    model = NNsight(gpt2, rename=GPT2_RENAME)
    assert model.layers is model.transformer.h
    assert model.layers[0].attention is model.transformer.h[0].attn
    assert model.layers[1].ff is model.transformer.h[1].mlp
    assert model.layers[0].attention.o_proj is model.transformer.h[0].attn.c_proj
    assert model.layers[0].attention.o_proj._path == "transformer.h.0.attn.c_proj"
    assert not hasattr(model.transformer, "layers")  # "transformer.h" binds on the root only
    assert not hasattr(model.layers[0].mlp, "o_proj")  # "attn.c_proj" is the attention's

    with model.trace(ids) as tracer:
        projected = model.transformer.h[0].attn.o_proj.output.save()
        attention = model.layers[0].attention.output[0].save()
        cache = tracer.cache(modules=[model.layers[1].ff])

    assert torch.equal(attention, projected)  # c_proj's output is the attention's output
    assert "read transformer.h.0.attn.output()" in str(tracer.graph)
    assert list(cache) == ["model.transformer.h.1.mlp"]  # caches use the real paths

    printed = repr(model)
    assert "(attention/attn): GPT2Attention(" in printed
    assert "(o_proj/c_proj): Conv1D(" in printed
    assert "(ff/mlp): GPT2MLP(" in printed
    assert "\n  (layers): ModuleList(\n    (0-1): 2 x GPT2Block(" in printed  # a mount line


def test_star_and_class_keys(gpt2):
    model = NNsight(gpt2, rename={"*.h": "blocks"})
    assert model.blocks is model.transformer.h
    nested = NNsight(blocks(), rename={torch.nn.ReLU: "nonlinearity"})
    assert nested.block0.nonlinearity is nested.block0.act
    assert nested.block1.nonlinearity is nested.block1.act


def test_a_key_that_names_nothing_is_skipped(net):
    model = NNsight(net, rename={"self_attn": "attention", "layer1": "first"})
    assert model.first is model.layer1


@pytest.mark.parametrize(
    "rename, match",
    [
        ({"layer1": "layer2"}, "rename alias 'layer2' for 'layer1' would hide the submodule"),
        ({"layer1": "output"}, "would hide the envoy attribute .output on the model"),
        ({"layer1": "training"}, "would hide the attribute 'training' of Sequential"),
        ({"layer1": "a", "layer2": "a"}, "would hide the alias 'a' of 'layer1'"),
        ({torch.nn.Linear: "linear"}, r"rename key Linear names 2 modules .*layer1, layer2"),
        ({"layer1": "other.first"}, "names no module above it"),
    ],
)
def test_conflicting_aliases_are_errors_at_once(net, rename, match):
    with pytest.raises(ValueError, match=match):
        NNsight(net, rename=rename)


def test_rename_takes_a_dict(net):
    with pytest.raises(TypeError, match="rename= takes a dict"):
        NNsight(net, rename=["layer1"])
    with pytest.raises(ValueError, match="is not a name"):
        NNsight(net, rename={"layer1": "first one"})


def test_a_lazy_language_models_aliases_survive_loading(path):
    lazy = LanguageModel(path, rename={"transformer.h": "layers"})
    block = lazy.layers[-1]
    assert block is lazy.transformer.h[-1]
    with lazy.trace("The Eiffel Tower is in the city of"):
        hidden = block.output.save()
    assert hidden.device.type == "cpu" and hidden.shape[-1] == 128
    assert lazy.layers[-1] is block


# envoys= ---------------------------------------------------------------------------------------


class LinearEnvoy(Envoy):
    """A custom envoy with its own state, property and method."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = 3.0

    @property
    def scaled(self):
        return self.output * self.scale

    def zero(self):
        self.output[:] = 0


class BlockEnvoy(Envoy):
    pass


def test_envoy_classes_by_module_class(net, x):
    model = NNsight(net, envoys={torch.nn.Linear: LinearEnvoy})
    assert type(model) is NNsight
    assert type(model.layer1) is LinearEnvoy and type(model.layer2) is LinearEnvoy

    with model.trace(x):
        scaled = model.layer1.scaled.save()
        hidden = model.layer1.output.save()
        model.layer2.zero()
        output = model.output.save()

    assert torch.equal(scaled, hidden * 3)
    assert torch.equal(output, torch.zeros(1, 2))


def test_envoy_classes_by_path_and_alias(gpt2):
    model = NNsight(gpt2, envoys={"h.*": BlockEnvoy, torch.nn.Embedding: LinearEnvoy})
    assert type(model.transformer.h[1]) is BlockEnvoy
    assert type(model.transformer.h) is Envoy and type(model.transformer.h[1].attn) is Envoy
    assert type(model.transformer.wte) is LinearEnvoy

    renamed = NNsight(gpt2, rename={"transformer.h": "layers"}, envoys={"layers.*": BlockEnvoy})
    assert type(renamed.layers[0]) is BlockEnvoy  # a path key may use the aliases
    every = NNsight(gpt2, envoys=BlockEnvoy)
    assert type(every.transformer.h[0].mlp) is BlockEnvoy


def test_a_module_class_key_comes_before_a_path_key(net):
    model = NNsight(net, envoys={"layer1": BlockEnvoy, torch.nn.Linear: LinearEnvoy})
    assert type(model.layer1) is LinearEnvoy


def test_envoys_takes_envoy_classes(net):
    with pytest.raises(TypeError, match="must be an Envoy subclass"):
        NNsight(net, envoys={torch.nn.Linear: int})
    with pytest.raises(TypeError, match="envoys= takes an Envoy subclass"):
        NNsight(net, envoys=["layer1"])
