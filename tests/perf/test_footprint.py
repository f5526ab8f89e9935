"""Footprint: the peak RSS of `run` and `bench` stays within the runtime floor (measured
here: interpreter + numpy + numba + compiled kernels) + the model file + the KV cache the
run allocated, + 15% of file + KV; LLVM's code pages are handed back once kernels load."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeformer.cli.bench import FOOTPRINT_SLACK

pytestmark = pytest.mark.slow


@pytest.fixture
def smollm2(shipped):
    return shipped.path("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def floor():
    from edgeformer.backends.cpu import CpuBackend
    if CpuBackend.available() is not None:
        pytest.skip("needs the cpu backend")
    from edgeformer.perf.memory import runtime_floor_bytes
    return runtime_floor_bytes("cpu")


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_run_peak_rss_within_the_bound(smollm2, floor):
    out = _run("from edgeformer.cli.__main__ import main; "
               "main(['run', '-p', 'What is the capital of France?', '-n', '16', '--no-stats']); "
               "from edgeformer.perf.runner import peak_rss_bytes; print('PEAK', peak_rss_bytes())")
    assert "Paris" in out
    peak = int(out.split("PEAK")[1])
    from edgeformer.formats import load_checkpoint
    from edgeformer.perf.trace_model import kv_cache_bytes
    cfg = load_checkpoint(smollm2, validate=False).config
    kv = kv_cache_bytes(cfg, 64, min(cfg.max_seq_len, 4096))        # prompt + answer < 64 positions
    file = smollm2.stat().st_size
    bound = floor + (file + kv) * (1 + FOOTPRINT_SLACK)
    assert peak <= bound, f"peak {peak / 2**20:.0f} MiB > bound {bound / 2**20:.0f} MiB (floor {floor / 2**20:.0f})"


def test_bench_reports_its_peak_within_the_bound(smollm2):
    out = _run("from edgeformer.cli.__main__ import main; "
               f"main(['bench', {str(smollm2)!r}, '-p', '64', '-n', '8', '-r', '1', '--json'])")
    m = json.loads(out[out.index("{"):])["memory"]
    assert m["runtime_floor"] > 50 * 2**20 and m["file"] == smollm2.stat().st_size and m["kv_cache"] > 0
    assert m["peak_rss"] <= m["bound"], m


def test_llvm_code_pages_are_released():
    out = _run("import re; from edgeformer.backends.cpu import CpuBackend, _release_compiler_pages; "
               "CpuBackend()\n"
               "def rss():\n"
               "    kb, cur = 0, False\n"
               "    for line in open('/proc/self/smaps'):\n"
               "        if re.match(r'^[0-9a-f]+-[0-9a-f]+ ', line):\n"
               "            p = line.split(); cur = p[1] == 'r-xp' and p[-1].endswith('libllvmlite.so')\n"
               "        elif cur and line.startswith('Rss:'):\n"
               "            kb += int(line.split()[1])\n"
               "    return kb\n"
               "from edgeformer.backends.cpu import norm; import numpy as np\n"
               "norm.rms_norm(np.ones((3, 64), np.float32), None, 1e-6)\n"
               "before = rss(); n = _release_compiler_pages(); print(before, rss(), n)")
    before, after, advised = (int(x) for x in out.split())
    assert advised > 0 and after < 4096 and after <= before, (before, after, advised)
