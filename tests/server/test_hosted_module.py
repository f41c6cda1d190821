"""A plain torch module the operator's factory builds (`--model net=package.module:factory`),
traced remotely through `NNsight(net, remote_name="net")`: the values of a local run."""

import pytest
import torch

import nnsight_graph as nnsight
from nnsight_graph.models.walkthrough import walkthrough_net
from nnsight_graph.remote.client import Client
from nnsight_graph.server.hosting import is_factory


def test_a_served_module_gives_the_values_of_a_local_run(alice):
    net = nnsight.NNsight(walkthrough_net(), remote_name="net")
    x = torch.rand(3, 5)
    with net.trace(x):
        net.layer1.output[:, 0] = 0
        local_hidden = net.layer1.output.save()
        local_out = net.layer2.output.save()
    with net.trace(x, remote=True) as tracer:
        net.layer1.output[:, 0] = 0
        hidden = net.layer1.output.save()
        out = net.layer2.output.save()
    assert tracer.job is not None and tracer.job.status() == "COMPLETED"
    assert torch.equal(hidden, local_hidden) and torch.equal(out, local_out)
    assert not torch.equal(out, net._module(x))  # the edit ran on the server


def test_a_served_module_is_listed_without_config_or_tokenizer(alice):
    client = Client.shared(alice)
    listed = {model["name"]: model for model in client.models()}
    assert listed["net"]["architecture"] == "Sequential"
    assert listed["net"]["tokenizer"] is False and client.model_config("net") == {}


def test_a_plain_module_without_remote_name_says_what_to_write(alice):
    net = nnsight.NNsight(walkthrough_net())
    with pytest.raises(nnsight.NNsightError, match="remote_name=NAME"):
        with net.trace(torch.rand(1, 5), remote=True):
            net.layer2.output.save()


def test_factory_specs_are_told_from_paths_and_hub_ids():
    assert is_factory("nnsight_graph.models.walkthrough:walkthrough_net")
    assert not is_factory("openai-community/gpt2") and not is_factory("/models/gpt2")
    assert not is_factory("tiny-gpt2")
