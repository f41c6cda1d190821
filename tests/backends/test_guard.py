"""The sizes the guard of an untrusted run computes before a node runs."""

import math
import operator

import torch

from nnsight_graph.backends.guard import _meta_size, _python_size
from nnsight_graph.ir import Node, Op


def test_python_values_are_sized_from_their_arguments():
    assert _python_size(operator.mul, ("ab", 10)) == 20
    assert _python_size(operator.mul, (3, [0, 0])) == 6
    assert _python_size(list, (range(10**10),)) == 10**10
    assert _python_size(operator.pow, (2, 80)) == 16 * 11  # 81 bits, 16 to the byte
    assert _python_size(math.pow, (2, 80)) is None  # a float, not an int
    assert _python_size(operator.lshift, (1, 64)) == 16 * 9
    assert _python_size(operator.add, (1, 2)) is None


def test_tensor_results_are_sized_on_meta_tensors_without_computing():
    big = torch.ones(1000)
    node = Node(0, Op.CALL, "torch.outer")
    assert _meta_size(torch.outer, (big, big), {}, None, node) == 10**6
    creation = Node(0, Op.CALL, "torch.zeros")
    assert _meta_size(torch.zeros, ((10**6, 10**6),), {}, None, creation) == 10**12
    method = Node(0, Op.METHOD, "repeat")
    assert _meta_size(None, (1000, 1000), {}, big, method) == 10**9
    data_dependent = Node(0, Op.CALL, "torch.nonzero")
    assert _meta_size(torch.nonzero, (big,), {}, None, data_dependent) is None
