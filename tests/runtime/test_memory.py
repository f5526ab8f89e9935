"""Memory asked for up front is checked against the machine (issue 16): a KV budget or a
context larger than the available memory is a CapacityError naming the bytes needed and
available, not a silent overcommit, a raw MemoryError or the OOM killer."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from edgeformer.errors import CapacityError
from edgeformer.runtime.engine import Engine
from edgeformer.runtime.memory import available_bytes, check_fits, kv_bytes
from edgeformer.runtime.scheduler import BatchEngine

AVAILABLE = available_bytes()
pytestmark = pytest.mark.skipif(AVAILABLE is None, reason="cannot read this machine's available memory")


def _model(max_seq_len: int) -> SimpleNamespace:
    cfg = SimpleNamespace(max_seq_len=max_seq_len, vocab_size=100, n_layers=32, n_kv_heads=8, head_dim=128)
    return SimpleNamespace(config=cfg)


def test_check_fits_names_needed_and_available_bytes():
    check_fits(1000, "a small thing", available=1000)
    with pytest.raises(CapacityError, match=r"a big thing needs 1001 bytes .* has 1000 bytes"):
        check_fits(1001, "a big thing", available=1000)


def test_a_context_larger_than_memory_is_refused_at_load():
    per_token = kv_bytes(_model(1).config, 1)
    n_ctx = 2 * AVAILABLE // per_token      # twice the memory: other processes come and go
    with pytest.raises(CapacityError, match=rf"n_ctx={n_ctx} .* needs {n_ctx * per_token} bytes"):
        Engine(_model(2**40), tokenizer=None, n_ctx=n_ctx)


def test_a_kv_budget_larger_than_memory_is_refused():
    with pytest.raises(CapacityError, match=rf"KV budget of {2 * AVAILABLE} bytes needs"):
        BatchEngine(_model(4096), None, kv_budget_bytes=2 * AVAILABLE)


def test_serve_refuses_a_kv_budget_over_memory_in_one_line():
    """1000 GiB once gave a raw MemoryError (and 40 GiB was accepted on a 23 GiB host)."""
    r = subprocess.run([sys.executable, "-m", "edgeformer.cli", "serve", "/no/model/needed", "--kv-budget",
                        "1000GiB"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "--kv-budget 1000GiB needs 1073741824000 bytes" in line and "available" in line
