"""Both SIMD paths of the cpu backend in one CI run.

The kernels pick AVX-512 or AVX2 code from the features Numba compiles for (`isa.py`), so a
CI host with AVX-512 never runs the AVX2 path unless it is forced: `EDGEFORMER_CPU_ISA=avx2`
(NUMBA_CPU_NAME=haswell + a Haswell feature list + a cache directory of its own, applied
before numba is imported). On an AVX-512 host this file

- checks the forcing itself (a fresh process compiles for AVX2; a late request is refused),
- runs `isa_check.py` under EDGEFORMER_CPU_ISA=avx2: every per-qtype row-dot kernel and
  the fused decode step vs the numpy reference, and no zmm register in their machine code
  (and, as the control, zmm in the native path's),
- runs the cpu backend tests, the conformance suite, the real-model tests, the invariance
  tests and README's promise again in a subprocess on the AVX2 path (`AVX2_PASS`), and
  fails with its output's tail if that pass fails.
On a host without AVX-512 the native pass already is the AVX2 path: those are skipped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeformer.backends.cpu import isa
from edgeformer.errors import UnsupportedError


ROOT = Path(__file__).parents[3]
HERE = Path(__file__).relative_to(ROOT)

# what the AVX2 pass runs: everything whose bits depend on the kernels' instruction choice
AVX2_PASS = ["tests/backends/cpu", "tests/backends/test_conformance.py", "tests/models/test_real_models.py",
             "tests/runtime/test_batch.py", "tests/runtime/test_invariance.py", "tests/cli/test_readme_promise.py"]

# their numpy-backend cases (and the numpy-only requantization test) compute nothing that
# depends on the cpu kernels' instructions
AVX2_SKIP = "not ((test_real_models.py or test_batch.py) and numpy) and not test_requantized_kld_ordering"

FORCED = os.environ.get(isa.ENV, "").lower() not in ("", "native", "auto")
HAS_AVX2 = isa.host_features().get("avx2", False)
needs_avx512 = pytest.mark.skipif(not isa.host_has_avx512() or FORCED,
                                  reason="this host has no AVX-512: the native pass already runs the AVX2 path"
                                  if not isa.host_has_avx512() else "already inside a forced-ISA pass")


def _env(**extra: str) -> dict[str, str]:
    """This environment for a child python: no pytest/xdist worker identity, no forced ISA."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "NUMBA_CPU_")) and k != isa.ENV}
    return env | extra


def _py(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=_env(**env), cwd=ROOT)


@pytest.mark.skipif(not HAS_AVX2 or FORCED, reason="needs an AVX2 host, outside a forced pass")
def test_forcing_avx2_in_a_fresh_process():
    """EDGEFORMER_CPU_ISA=avx2 alone (what a user sets) makes Numba compile for Haswell, with
    no AVX-512 feature and a cache directory of its own."""
    r = _py("import json, os\n"
            "from edgeformer.backends.cpu import isa\n"
            "import numba\n"
            "print(json.dumps({'isa': isa.compiled_isa(), 'features': sorted(isa.target_features()),\n"
            "                  'env': {k: v for k, v in os.environ.items() if k.startswith('NUMBA_')}}))",
            EDGEFORMER_CPU_ISA="avx2")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["isa"] == "avx2"
    assert "+avx2" in got["features"] and "+fma" in got["features"] and "+f16c" in got["features"]
    assert not any(f.startswith("+avx512") for f in got["features"])
    assert got["env"]["NUMBA_CPU_NAME"] == "haswell"
    cache = Path(got["env"]["NUMBA_CACHE_DIR"])
    assert cache.name == "isa-avx2"
    native = os.environ.get("NUMBA_CACHE_DIR")
    assert native is None or Path(native) != cache


def test_bad_or_late_requests_are_refused(monkeypatch):
    """An unknown value, or EDGEFORMER_CPU_ISA set after numba was imported (numba has read
    its target by then), is an error when the backend is used, never a quiet native run."""
    import numba  # noqa: F401 - imported before the request: the late case
    from edgeformer.backends.cpu import CpuBackend
    try:
        monkeypatch.setenv(isa.ENV, "sse9")
        isa.apply_env()
        with pytest.raises(UnsupportedError, match="expected one of"):
            CpuBackend.available()
        if HAS_AVX2 and not FORCED:
            monkeypatch.setenv(isa.ENV, "avx2")
            monkeypatch.delenv("NUMBA_CPU_NAME", raising=False)
            isa.apply_env()
            with pytest.raises(UnsupportedError, match="too late"):
                CpuBackend()
            assert "NUMBA_CPU_NAME" not in os.environ      # nothing half-applied
        if not isa.host_has_avx512():
            with pytest.raises(UnsupportedError, match="AVX-512"):
                isa.forced_env("avx512")
    finally:
        monkeypatch.undo()
        isa.apply_env()
    isa.ensure()


def _isa_check(*args: str, **env: str) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / HERE.parent / "isa_check.py"), *args], capture_output=True,
                       text=True, timeout=900, env=_env(**env), cwd=ROOT)
    try:
        report = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"isa_check.py {' '.join(args)} crashed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return report


@needs_avx512
def test_avx2_kernels_match_the_reference_without_avx512_code():
    rep = _isa_check("--expect", "avx2", EDGEFORMER_CPU_ISA="avx2")
    bad = [r for r in rep["linear"] + rep["decode"] if not r["ok"]]
    assert rep["isa"] == "avx2", rep["describe"]
    assert not bad, bad
    assert rep["asm"]["ok"], rep["asm"]
    assert rep["ok"]


@needs_avx512
def test_native_path_has_avx512_code():
    """The control for the zmm count above: the native path's Q8_0 kernel does use zmm."""
    rep = _isa_check("--expect", "avx512", "--quick", "--no-decode", "--asm-kernels", r"linear\.linear_q8_0")
    assert rep["isa"] == "avx512" and rep["asm"]["zmm"] > 0, rep.get("asm")


@needs_avx512
def test_suite_passes_on_forced_avx2():
    paths = [p for p in AVX2_PASS if (ROOT / p).exists()]
    env = _env(EDGEFORMER_CPU_ISA="avx2") | isa.forced_env("avx2")   # NUMBA_* set from the start too
    cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:xdist", "-p", "no:cacheprovider",
           "-rfEw", f"--ignore={HERE}", "-k", AVX2_SKIP, *paths]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3000, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"the AVX2 pass timed out after {e.timeout:.0f} s:\n{out[-6000:]}")
    took = time.perf_counter() - t0
    tail = (r.stdout + "\n" + r.stderr)[-6000:]
    print(f"AVX2 pass ({' '.join(paths)}): {took:.0f} s\n{tail[-1500:]}")
    assert r.returncode == 0, f"the AVX2 pass failed (rc {r.returncode}, {took:.0f} s):\n{tail}"


def test_forced_isa_survives_every_module_that_imports_numba():
    """With only EDGEFORMER_CPU_ISA=avx2 in the environment, importing the modules that use
    Numba themselves (sampling with its grammar mask, perf's clock, bandwidth and profiler)
    before the cpu backend must not import numba ahead of the ISA choice: the backend
    builds, compiles for AVX2, and a constrained step runs."""
    code = """
import numpy as np
from edgeformer.runtime.sampler import SamplingParams
import edgeformer.perf.clock, edgeformer.perf.bandwidth, edgeformer.perf.profile
from edgeformer.backends import get_backend
from edgeformer.backends.cpu import isa
be = get_backend("cpu")
from edgeformer.api import load
eng = load(None, n_ctx=64)
from edgeformer.runtime.grammar import Grammar
r = eng.generate("Yes or no?", SamplingParams(max_tokens=4), grammar=Grammar("regex", "(yes|no)"))
print(isa.compiled_isa(), r.text)
"""
    env = {k: v for k, v in _env(EDGEFORMER_CPU_ISA="avx2").items() if not k.startswith("NUMBA_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    isa_name, text = r.stdout.split()[-2:]
    assert isa_name == "avx2" and text in ("yes", "no"), r.stdout
