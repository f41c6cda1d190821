"""The call registry: every listed name exists, nothing dangerous is listed, checks by kind."""

import importlib

import pytest
import torch

from nnsight_graph.ir.registry import (
    ATTRIBUTES,
    FUNCTIONS,
    METHODS,
    RegistryError,
    allowed_function,
    check_attribute,
    check_function,
    check_method,
    kind_of,
)

NEVER = {"load", "save", "from_file", "tofile", "numpy", "system", "exec", "eval", "open",
         "compile", "getattr", "setattr", "format", "format_map", "storage", "untyped_storage",
         "share_memory_", "register_hook", "apply_", "map_", "set_", "__import__", "input",
         "globals", "vars", "breakpoint", "memory_format", "data_ptr"}  # fmt: skip


def test_every_listed_function_exists_in_this_torch():
    missing = [
        f"{module}.{name}"
        for module, names in FUNCTIONS.items()
        for name in names
        if not callable(getattr(importlib.import_module(module), name, None))
    ]
    assert missing == []


def test_every_listed_tensor_method_and_attribute_exists():
    tensor = torch.ones(2, 2)
    assert [n for n in METHODS["tensor"] if not callable(getattr(tensor, n, None))] == []
    assert [n for n in ATTRIBUTES["tensor"] if not hasattr(torch.Tensor, n)] == []


def test_nothing_dangerous_or_private_is_listed():
    tables = [*FUNCTIONS.values(), *METHODS.values(), *ATTRIBUTES.values()]
    for names in tables:
        assert not names & NEVER
        assert not [n for n in names if n.startswith("_")]


def test_functions_are_checked_by_module_and_name():
    check_function("torch.sum")
    check_function("operator.add")
    assert allowed_function("torch.nn.functional.gelu") is torch.nn.functional.gelu
    for name in ("torch.os.system", "os.system", "torch.load", "torch._C.sum", "sum", ""):
        with pytest.raises(RegistryError, match="not in the registry"):
            check_function(name)


def test_methods_and_attributes_are_checked_against_the_values_kind():
    tensor = torch.ones(2)
    check_method(tensor, "clone")
    check_method([1], "append")
    check_attribute(tensor, "shape")
    with pytest.raises(RegistryError, match="'append' on a tensor"):
        check_method(tensor, "append")
    with pytest.raises(RegistryError, match="'format' on a str"):
        check_method("{0.__class__}", "format")
    with pytest.raises(RegistryError, match="'__class__'"):
        check_attribute(tensor, "__class__")


def test_a_dict_value_allows_its_own_keys_as_attributes():
    from transformers.modeling_outputs import CausalLMOutput

    output = CausalLMOutput(logits=torch.ones(1))
    assert kind_of(output) == "dict"
    check_attribute(output, "logits")
    with pytest.raises(RegistryError):
        check_attribute(output, "loss")  # not set, so not a key
    with pytest.raises(RegistryError):
        check_attribute(output, "__dict__")
