"""RunHooks: forward hooks put into a module's hook dicts for one run, and taken out again."""

from __future__ import annotations

import torch

from nnsight_graph.backends.hooks import RunHooks


def test_hooks_see_and_change_values_then_leave_nothing_behind(clean):
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    x = torch.rand(1, 3)
    seen = []
    hooks = RunHooks()
    hooks.add_pre(linear, lambda module, args, kwargs: ((args[0] * 2,), kwargs))
    hooks.add_post(linear, lambda module, args, output: seen.append(args[0]) or output + 1)
    out = linear(x)
    assert torch.equal(seen[0], x * 2)  # the post-hook sees the input the pre-hook made
    assert torch.allclose(out, torch.nn.functional.linear(x * 2, linear.weight, linear.bias) + 1)
    hooks.remove()
    assert clean(linear)
    assert torch.equal(linear(x), torch.nn.functional.linear(x, linear.weight, linear.bias))


def test_user_hooks_stay_and_run_in_registration_order(clean):
    linear = torch.nn.Linear(3, 2)
    calls = []
    user = linear.register_forward_hook(lambda m, a, o: calls.append("user"))
    hooks = RunHooks()
    hooks.add_post(linear, lambda m, a, o: calls.append("run"))
    later = linear.register_forward_hook(lambda m, a, o: calls.append("later"))
    linear(torch.rand(1, 3))
    assert calls == ["user", "run", "later"]
    hooks.remove()
    calls.clear()
    linear(torch.rand(1, 3))
    assert calls == ["user", "later"]
    user.remove()
    later.remove()
    assert clean(linear)


def test_two_runs_hooks_on_one_module_are_independent(clean):
    linear = torch.nn.Linear(3, 2)
    first, second = RunHooks(), RunHooks()
    first.add_post(linear, lambda m, a, o: o * 0)
    second.add_post(linear, lambda m, a, o: o + 5)
    assert torch.equal(linear(torch.rand(1, 3)), torch.full((1, 2), 5.0))
    first.remove()
    assert len(linear._forward_hooks) == 1
    second.remove()
    assert clean(linear)


def test_a_failing_trace_leaves_no_hook_dicts_behind(clean):
    from collections import OrderedDict

    import pytest

    from nnsight_graph import NNsight

    net = torch.nn.Sequential(
        OrderedDict([("layer1", torch.nn.Linear(5, 10)), ("layer2", torch.nn.Linear(10, 2))])
    )
    model = NNsight(net)
    with pytest.raises(IndexError):
        with model.trace(torch.rand(1, 5)):
            model.layer1.input[:, 9] = 0  # the input is 5 wide
            model.layer2.output.save()
    assert clean(net)
