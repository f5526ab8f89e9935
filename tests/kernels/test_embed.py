"""embed reference against torch F.embedding on a table dequantized by the `gguf` package,
and its cost."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeformer.kernels import OPS
from edgeformer.kernels.embed import embed_ref
from edgeformer.kernels.inputs import random_qtensor, with_nan
from edgeformer.quant.qtypes import QType
from support.kernel_testutil import assert_f32_close, gguf_f32, rng_for


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"])
@pytest.mark.parametrize("ids", [[0], [36], [0, 36, 5, 5, 17, 1, 36]], ids=["first", "last", "mixed"])
def test_embed_matches_torch(qtype, ids):
    qt = QType[qtype]
    d = {1: 33, 32: 96, 256: 256}[qt.block_size]
    table = random_qtensor(qt, (37, d), rng_for("emb", qtype), method="bytes")
    ids = np.array(ids, np.int32)
    got = embed_ref(table, ids)
    want = F.embedding(torch.from_numpy(ids).long(), torch.from_numpy(gguf_f32(table)))
    assert_f32_close(got, want, rtol=0, atol_rel=0)        # a gather: bit exact


def test_embed_plain_array_and_nan_row():
    table = with_nan(random_qtensor(QType.F32, (11, 33), rng_for("embnan")), 4)
    got = embed_ref(table, np.array([4, 3, 4, 10]))
    assert np.isnan(got[[0, 2], 0]).all() and np.isfinite(got[[1, 3]]).all()
    arr = np.arange(12, dtype=np.float16).reshape(4, 3)
    np.testing.assert_array_equal(embed_ref(arr, np.array([3, 0])), np.array([[9, 10, 11], [0, 1, 2]], np.float32))


def test_embed_cost_by_hand():
    table = random_qtensor(QType.Q8_0, (10, 64), rng_for("embc"))    # 68 B per row
    c = OPS["embed"].cost(table, np.array([1, 2, 3], np.int64))
    assert (c.flops, c.bytes_read, c.bytes_written) == (3 * 64, 3 * 68 + 24, 3 * 64 * 4)
