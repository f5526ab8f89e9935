"""The null backend: every op returns float32 zeros of exactly the shape its reference
returns (`OpSpec.out_shape`), on every conformance case, weights shape-only."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.backends.conformance import all_cases
from edgeformer.backends.null import NullBackend
from edgeformer.kernels import OPS
from edgeformer.quant.qtypes import QTensor


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.id)
def test_null_kernels_give_zeros_of_the_reference_shape(case):
    args, attrs = case.build(np.random.default_rng(0))
    be = NullBackend()
    null_args = [be.prepare_weight(a).handle if isinstance(a, QTensor) else a for a in args]
    out = be.kernels[case.op](*null_args, **attrs)
    ref = OPS[case.op].reference(*args, **attrs)
    assert out.shape == ref.shape and out.dtype == np.float32 and not out.any()
