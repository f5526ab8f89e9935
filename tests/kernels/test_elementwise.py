"""add / mul references against torch broadcasting, and their costs."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.kernels import OPS
from edgeformer.kernels.elementwise import add_ref, mul_ref
from support.kernel_testutil import assert_f32_close, randn, rng_for, t64

CASES = [((45, 65), (45, 65)), ((2, 3, 33), (33,)), ((1, 1025), ()), ((64, 99), (1, 99)), ((1,), (1,))]


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("sa,sb", CASES, ids=str)
def test_binary_matches_torch(op, sa, sb):
    r = rng_for(op, sa, sb)
    a = randn(r, *sa)
    b = randn(r, *sb) if sb else 0.37
    tb = t64(b) if sb else 0.37
    got = (add_ref if op == "add" else mul_ref)(a, b)
    assert_f32_close(got, t64(a) + tb if op == "add" else t64(a) * tb)


def test_float16_operand_promotes_to_float32():
    a = np.ones((3, 4), np.float16)
    assert add_ref(a, np.float16(2)).dtype == np.float32
    assert mul_ref(a, a).dtype == np.float32


def test_binary_costs_by_hand():
    a = np.zeros((3, 5), np.float32)
    c = OPS["add"].cost(a, np.zeros(5, np.float32))
    assert (c.flops, c.bytes_read, c.bytes_written) == (15, 60 + 20, 60)
    c = OPS["mul"].cost(a, 2.0)             # a Python scalar moves no memory
    assert (c.flops, c.bytes_read, c.bytes_written) == (15, 60, 60)
