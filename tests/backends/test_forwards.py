"""ReplacedForwards: a module's forward replaced for one run, in that run's thread only."""

import threading

import torch

from nnsight_graph.backends.forwards import ReplacedForwards

TIMEOUT = 10.0


def doubled(original):
    return lambda *args, **kwargs: original(*args, **kwargs) * 2


def plus_one(original):
    return lambda *args, **kwargs: original(*args, **kwargs) + 1


def in_thread(function):
    box = []
    thread = threading.Thread(target=lambda: box.append(function()))
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    return box[0]


def test_replacements_of_one_thread_stack_and_unwind_latest_first():
    module = torch.nn.Identity()
    x = torch.ones(1)
    outer, inner = ReplacedForwards(), ReplacedForwards()
    outer.replace(module, doubled)
    inner.replace(module, plus_one)  # falls back to the outer replacement
    assert module(x).item() == 3
    assert in_thread(lambda: module(x).item()) == 1  # another thread: the module as it was
    inner.restore()
    assert module(x).item() == 2
    outer.restore()
    assert module(x).item() == 1
    assert "forward" not in module.__dict__


def test_the_last_user_in_any_thread_takes_the_dispatcher_out():
    module = torch.nn.Identity()
    x = torch.ones(1)
    mine = ReplacedForwards()
    mine.replace(module, doubled)
    started, finish = threading.Event(), threading.Event()

    def other():
        theirs = ReplacedForwards()
        theirs.replace(module, plus_one)
        started.set()
        finish.wait(TIMEOUT)
        value = module(x).item()
        theirs.restore()
        return value

    box = []
    thread = threading.Thread(target=lambda: box.append(other()))
    thread.start()
    assert started.wait(TIMEOUT)
    assert module(x).item() == 2  # mine, not theirs
    mine.restore()  # the other thread still uses the dispatcher: it stays
    assert "forward" in module.__dict__ and module(x).item() == 1
    finish.set()
    thread.join(TIMEOUT)
    assert box == [2]  # theirs, unchanged by my restore
    assert "forward" not in module.__dict__


def test_an_own_forward_comes_back_and_one_set_during_the_run_stays():
    module = torch.nn.Identity()
    x = torch.ones(1)

    def own(value):
        return value + 10

    module.forward = own
    replaced = ReplacedForwards()
    replaced.replace(module, doubled)
    assert module(x).item() == 22  # the replacement falls back to the instance's own forward
    replaced.restore()
    assert module.__dict__["forward"] is own

    replaced.replace(module, doubled)

    def later(value):
        return value - 1

    module.forward = later  # someone else's, set while the run lasted
    replaced.restore()
    assert module.__dict__["forward"] is later
