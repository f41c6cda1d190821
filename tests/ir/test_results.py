"""Saved values on the wire (ir/results.py): every kind a trace saves comes back equal."""

import pytest
import torch
import zstandard
from transformers.modeling_outputs import CausalLMOutputWithPast

from nnsight_graph.ir import UnsavedValueError, WireFormatError
from nnsight_graph.ir.results import Omitted, dumps_results, loads_results


def test_every_kind_of_saved_value_comes_back_equal():
    big = torch.arange(1000.0).reshape(100, 10)
    saved = {
        0: torch.ones(2, 3),
        1: (1, 2.5, float("inf"), "text", None, True, b"\x00\x01", 1 + 2j),
        2: [torch.zeros(1), {"a": torch.tensor([1, 2]), "b": [3, 4]}],
        3: torch.Size([2, 3]),
        8: {("layer1", "output"): [torch.ones(1)], (1, 2): "pair"},
        4: torch.float16,
        5: torch.device("cpu"),
        6: big[:2],  # a view: sent as its own two rows
        7: big.t(),  # not contiguous
    }
    back = loads_results(dumps_results(saved))
    assert back.keys() == saved.keys()
    assert torch.equal(back[0], saved[0])
    assert back[1] == saved[1]
    assert torch.equal(back[2][0], saved[2][0]) and torch.equal(back[2][1]["a"], saved[2][1]["a"])
    assert back[2][1]["b"] == [3, 4]
    assert back[3] == torch.Size([2, 3]) and back[4] is torch.float16
    assert back[5] == torch.device("cpu")
    assert torch.equal(back[6], big[:2]) and torch.equal(back[7], big.t())
    assert torch.equal(back[8][("layer1", "output")][0], torch.ones(1))
    assert back[8][(1, 2)] == "pair"


def test_a_view_sends_only_its_own_elements():
    big = torch.zeros(1000, 1000)
    payload = zstandard.ZstdDecompressor().decompress(dumps_results({0: big[:1]}))
    assert len(payload) < 10_000  # one row of 1000 floats, not four million bytes


def test_a_model_output_comes_back_as_its_class_and_a_cache_object_as_omitted():
    from transformers import DynamicCache

    output = CausalLMOutputWithPast(logits=torch.ones(1, 2, 3), past_key_values=DynamicCache())
    back = loads_results(dumps_results({3: output}))[3]
    assert type(back) is CausalLMOutputWithPast
    assert torch.equal(back.logits, output.logits)
    assert isinstance(back.past_key_values, Omitted)
    with pytest.raises(
        UnsavedValueError, match=r"%3\.(cache|past_key_values) .*DynamicCache.* no wire"
    ):
        back.past_key_values.get_seq_length()


def test_a_model_specific_output_class_comes_back_as_that_class():
    from transformers.models.mamba.modeling_mamba import MambaCausalLMOutput

    output = MambaCausalLMOutput(logits=torch.ones(1, 2, 3))
    back = loads_results(dumps_results({0: output}))[0]
    assert type(back) is MambaCausalLMOutput
    assert torch.equal(back.logits, output.logits)


def _with_output_class(payload: bytes, name: str, module: str) -> bytes:
    """The results payload of one saved ModelOutput with its class and module replaced."""
    import json

    from nnsight_graph.ir.results import MAGIC
    from nnsight_graph.ir.wire import _LENGTH_BYTES

    container = zstandard.ZstdDecompressor().decompress(payload)
    start = len(MAGIC) + _LENGTH_BYTES
    size = int.from_bytes(container[len(MAGIC) : start], "little")
    manifest = json.loads(container[start : start + size])
    manifest["values"]["0"].update({"class": name, "module": module})
    header = json.dumps(manifest).encode()
    forged = MAGIC + len(header).to_bytes(_LENGTH_BYTES, "little") + header
    return zstandard.ZstdCompressor().compress(forged + container[start + size :])


def test_an_output_class_is_only_looked_up_never_imported():
    import sys

    payload = dumps_results({0: CausalLMOutputWithPast(logits=torch.ones(1))})
    missing = "transformers.models.mamba2.modeling_mamba2_absent"
    for name, module in [
        ("Mamba2CausalLMOutput", missing),  # a module this process has not imported
        ("path", "os"),  # not a transformers module
        ("_private", "transformers.modeling_outputs"),  # an underscore name
        ("DynamicCache", "transformers.cache_utils"),  # a class, but not a ModelOutput
    ]:
        back = loads_results(_with_output_class(payload, name, module))[0]
        assert type(back) is dict and torch.equal(back["logits"], torch.ones(1))
    assert missing not in sys.modules


def test_a_tensor_that_needed_grad_comes_back_as_a_leaf_that_does():
    weight = torch.ones(2, requires_grad=True)
    back = loads_results(dumps_results({0: weight * 2, 1: (weight * 2).detach()}))
    assert back[0].requires_grad and back[0].grad_fn is None
    assert torch.equal(back[0].detach(), torch.full((2,), 2.0))
    assert not back[1].requires_grad


def test_malformed_results_are_refused_clearly():
    with pytest.raises(WireFormatError, match="not an nnsight_graph payload"):
        loads_results(zstandard.ZstdCompressor().compress(b"NNGRAPH1" + b"\0" * 16))
    with pytest.raises(WireFormatError):
        loads_results(b"garbage")
