"""The wrapper stays the wrapper: module methods (`.to()`, `.eval()`, `.half()`, ...) change the
module and return the envoy, calling the wrapper outside a trace runs the module, lazily loaded
models keep their moves until the weights load, and another model's envoy in a trace is an
error that names both models."""

import pytest
import torch
import transformers

import nnsight_graph as nnsight
from nnsight_graph import LanguageModel, NNsight

# module methods -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.to("cpu"),
        lambda m: m.to(torch.device("cpu")),
        lambda m: m.cpu(),
        lambda m: m.eval(),
        lambda m: m.train(),
        lambda m: m.float(),
        lambda m: m.requires_grad_(False),
    ],
    ids=["to-str", "to-device", "cpu", "eval", "train", "float", "requires_grad_"],
)
def test_module_methods_return_the_wrapper(model, net, call):
    assert call(model) is model
    assert call(model.layer1) is model.layer1  # a sub-envoy returns itself, as in nnsight
    assert model._module is net


def test_a_moved_wrapper_traces_in_one_expression(net, x):
    with NNsight(net).to("cpu").eval().trace(x) as tracer:
        output = tracer.result().save()
    assert torch.equal(output, net(x))
    wrapped = NNsight(net).to("cpu")
    with wrapped.trace(x):
        hidden = wrapped.layer1.output.save()
    assert torch.equal(hidden, net.layer1(x))


def test_dtype_and_mode_changes_reach_the_module(model, net, x):
    model.double()
    assert net.layer1.weight.dtype == torch.float64
    with model.trace(x.double()):
        hidden = model.layer1.output.save()
    assert hidden.dtype == torch.float64
    model.layer2.half()
    assert net.layer2.weight.dtype == torch.float16 and net.layer1.weight.dtype == torch.float64
    model.float().train()
    assert net.training and net.layer1.training
    model.layer1.eval()
    assert not net.layer1.training and net.layer2.training
    model.requires_grad_(True)
    assert net.layer1.weight.requires_grad


def test_device_is_the_first_parameters(model, net):
    assert model.device == torch.device("cpu")
    assert NNsight(torch.nn.ReLU()).device is None


# calling the wrapper ----------------------------------------------------------------------------


def test_calling_the_wrapper_outside_a_trace_runs_the_module(model, net, x):
    assert torch.equal(model(x), net(x))
    assert torch.equal(model.layer1(x), net.layer1(x))


def test_calling_a_module_inside_a_trace_records_a_call(model, net, x):
    with model.trace(x) as tracer:
        again = model.layer2(model.layer1.output).save()
        output = model.output.save()
    assert torch.equal(again, output)
    assert "call_module layer2(%" in str(tracer.graph)


# lazily loaded language models ---------------------------------------------------------------


def test_a_lazy_models_moves_apply_once_the_weights_load(path):
    lazy = LanguageModel(path)
    assert lazy.to("cpu") is lazy  # nnsight 0.8.1 raises: a meta tensor cannot be copied
    assert lazy.to(torch.float64) is lazy
    assert lazy.transformer.h[0].train() is lazy.transformer.h[0]
    assert lazy.device == torch.device("cpu")
    assert {p.dtype for p in lazy.lm_head.parameters()} == {torch.float64}  # on meta already

    with lazy.trace("The Eiffel Tower is in the city of"):
        logits = lazy.lm_head.output.save()

    assert logits.dtype == torch.float64  # nnsight 0.8.1 loads float32, dropping the move
    assert lazy.transformer.h[0]._module.training and not lazy.transformer.h[1]._module.training
    assert lazy._pending == []


def test_a_lazy_model_keeps_train_and_eval(path):
    lazy = LanguageModel(path)
    assert lazy.train() is lazy
    lazy.dispatch()
    assert lazy._module.training  # loading calls .eval(); the user's .train() comes after


def test_calling_a_language_model_outside_a_trace(path, hf, tokenizer):
    lazy = LanguageModel(path)
    tokens = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt")
    logits = lazy(**tokens)["logits"]  # loads the weights first; nnsight 0.8.1 fails on meta
    assert torch.allclose(logits, hf(**tokens)["logits"], atol=1e-5)
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_language_model_keywords_are_not_passed_to_from_pretrained(path, monkeypatch):
    seen: dict = {}
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    llm = LanguageModel(path, dispatch=True, rename={"transformer.h": "layers"}, envoys={})
    assert not {"rename", "envoys", "dispatch", "tokenizer"} & set(seen)
    assert llm.layers is llm.transformer.h


# another model's envoy ----------------------------------------------------------------------------


def test_another_models_envoy_in_a_trace_is_an_error(make_net, x, line_of):
    model, other = NNsight(make_net()), NNsight(make_net())
    with pytest.raises(nnsight.GraphBuildError) as caught:
        with model.trace(x):
            other.layer1.output.save()  # mark: other-read
    message = str(caught.value)
    assert message.startswith("other.layer1.output at ")
    assert line_of("other-read") in message
    assert "a value of `other`" in message and "this trace runs `model`" in message
    assert "Use model.layer1.output" in message

    with pytest.raises(nnsight.GraphBuildError, match="other.layer1.output at .* `model`"):
        with model.trace(x):
            other.layer1.output = model.layer1.output * 0
    with pytest.raises(nnsight.GraphBuildError, match=r"other.layer2.skip\(\) at"):
        with model.trace(x):
            other.layer2.skip(model.layer1.output)
    with pytest.raises(nnsight.GraphBuildError, match="other.layer1.source.F_linear_0.output at"):
        with model.trace(x):
            other.layer1.source.F_linear_0.output.save()


# local only: another model's module is a Python object of this process, which no payload can
# carry (test_remote_local.py checks the remote path's error)
@pytest.mark.local_only
def test_another_models_module_may_be_called_on_traced_values(make_net, x):
    model, other = NNsight(make_net()), NNsight(make_net())
    with model.trace(x):
        applied = other.layer2(model.layer1.output).save()
    assert torch.equal(applied, other._module.layer2(model._module.layer1(x)))


def test_an_edited_copy_shares_the_originals_envoys(model, net, x):
    with model.edit() as edited:
        model.layer1.output[:] = 0
    assert edited.layer1 is model.layer1
    with edited.trace(x):
        through_original = model.layer1.output.save()
        through_copy = edited.layer1.output.save()
    assert torch.equal(through_original, torch.zeros(1, 10))
    assert torch.equal(through_copy, through_original)
    with model.trace(x):
        plain = model.layer1.output.save()
    assert torch.equal(plain, net.layer1(x))


def test_session_traces_belong_to_their_own_models(make_net, x):
    model, other = NNsight(make_net()), NNsight(make_net())
    with model.session():
        with model.trace(x):
            hidden = model.layer1.output
        with other.trace(x):
            total = (other.layer1.output + hidden).save()
    expected = other._module.layer1(x) + model._module.layer1(x)
    assert torch.allclose(total, expected)

    with pytest.raises(nnsight.GraphBuildError, match="a value of `other`"):
        with model.session():
            with model.trace(x):
                other.layer1.output.save()


# close names --------------------------------------------------------------------------------------


def test_a_typo_suggests_output_and_lists_each_name_once(model):
    with pytest.raises(AttributeError) as caught:
        _ = model.layer1.outptu
    message = str(caught.value)
    assert "Did you mean 'output'" in message
    hint = message.split("Did you mean ")[1].split("?")[0]
    names = [name.strip(" '") for name in hint.split(",")]
    assert len(names) == len(set(names))

    with pytest.raises(AttributeError, match="Did you mean 'layer1'"):
        _ = model.layre1
    with pytest.raises(AttributeError, match="Did you mean 'source'"):
        _ = model.layer1.sourse
    with pytest.raises(AttributeError, match="Did you mean 'inputs'"):
        _ = model.layer1.inptus


def test_setting_an_unknown_attribute_on_an_envoy_is_an_error(model):
    with pytest.raises(AttributeError, match="only .output, .input and .inputs can be assigned"):
        model.layer1.outptu = 1


# on a GPU ----------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_moves_keep_the_wrapper(make_net, path):
    net = make_net()
    model = NNsight(net).cuda()
    x = torch.rand(2, 5, device="cuda")
    with model.trace(x):
        hidden = model.layer1.output.save()
    assert hidden.device.type == "cuda" and torch.allclose(hidden, net.layer1(x))
    assert model.to("cpu") is model and model.device == torch.device("cpu")

    lazy = LanguageModel(path).to("cuda")
    assert lazy.device.type == "cuda"
    with lazy.trace("The Eiffel Tower is in the city of"):
        logits = lazy.lm_head.output.save()
    assert logits.device.type == "cuda" and lazy.device.type == "cuda"
    assert lazy.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
