"""The OpenCL backend plugin (plugins/edgeformer-opencl), installed the way a user installs
it (`pip install ./plugins/edgeformer-opencl`; scripts/setup.sh --test does) and found
only through the `edgeformer.backends` entry point: the conformance suite and
`edgeformer check-backend opencl`, a suite that catches a broken kernel of the plugin's,
the loud fallback of weight qtypes without a kernel, and greedy decoding against the numpy
reference on tiny random models and on the default shipped model.

Skipped when the plugin is not installed or no OpenCL device is present (PoCL's CPU device
comes with `pocl-binary-distribution`)."""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeformer.backends import get_backend
from edgeformer.backends.base import BUILTIN_BACKENDS, ENTRY_POINT_GROUP, backend_class
from edgeformer.backends.conformance import bound_for, nmse, run_suite
from edgeformer.config import DecoderConfig
from edgeformer.formats.synthetic import synthetic_checkpoint
from edgeformer.kernels.inputs import random_qtensor
from edgeformer.kernels.linear import linear_ref
from edgeformer.models.decoder import Decoder
from edgeformer.quant.qtypes import QType

_EPS = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
if "opencl" not in _EPS:
    pytest.skip("the edgeformer-opencl plugin is not installed (pip install ./plugins/edgeformer-opencl)",
                allow_module_level=True)
_CLS = backend_class("opencl")
assert _CLS is not None
_WHY = _CLS.available()
if _WHY is not None:
    pytest.skip(f"opencl backend unavailable: {_WHY}", allow_module_level=True)

import edgeformer_opencl  # noqa: E402 - only once the skips above have passed

NATIVE_OPS = ("linear", "rms_norm", "rope", "attention", "activation", "glu")
NATIVE_QTYPES = ("F16", "Q8_0", "Q4_0")


@pytest.fixture(scope="module")
def backend():
    return get_backend("opencl")


@pytest.fixture(scope="module")
def suite(backend):
    return run_suite(backend)


def test_registered_only_through_its_entry_point() -> None:
    assert _EPS["opencl"].value == "edgeformer_opencl:OpenCLBackend"
    assert "opencl" not in BUILTIN_BACKENDS
    assert backend_class("opencl") is edgeformer_opencl.OpenCLBackend
    core = Path(str(sys.modules["edgeformer"].__file__)).parent
    assert not [p for p in core.rglob("*.py") if re.search(r"(import|from) edgeformer_opencl", p.read_text())]


def test_conformance_suite_passes_with_the_claimed_coverage(suite) -> None:
    bad = [f"{r.op}-{r.case}: {r.status} {r.message}" for r in suite.results if not r.ok]
    assert not bad, bad
    cov = suite.coverage()
    assert {op for op, st in cov.items() if st == "native"} == set(NATIVE_OPS) - {"linear"}
    assert cov["linear"] == "partial"
    for r in suite.results:
        if r.op != "linear":
            assert (r.status == "ok") == (r.op in NATIVE_OPS), (r.op, r.case, r.status)
            continue
        qtype = r.case.split("_t")[0].split("_bias")[0].removeprefix("rows_")
        if qtype in QType.__members__:      # the per-qtype cases; native exactly for F16/Q8_0/Q4_0
            assert (r.status == "ok") == (qtype in NATIVE_QTYPES), (r.case, r.status, r.message)


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "edgeformer"
    return [str(exe)] if exe.exists() else [shutil.which("edgeformer") or "edgeformer"]


def test_check_backend_cli_exits_0() -> None:
    p = subprocess.run([*_cli(), "check-backend", "opencl", "--min-time", "0"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "0 failed" in p.stdout and "FAIL" not in p.stdout and "ERROR" not in p.stdout
    cov = p.stdout[p.stdout.index("coverage"):]
    for op in ("rms_norm", "rope", "attention", "activation", "glu"):
        assert any(ln.split("│")[1].strip() == op and "native" in ln for ln in cov.splitlines() if "│" in ln), op


class _SwappedNibbles(edgeformer_opencl.OpenCLBackend):
    """A plausible repacking bug: Q4_0's nibbles swapped (high first)."""

    name = "opencl-swapped"

    def prepare_weight(self, qt, name=""):
        if qt.qtype == QType.Q4_0:
            b = np.asarray(qt.data).reshape(-1, 18).copy()
            b[:, 2:] = (b[:, 2:] >> 4) | ((b[:, 2:] & 0x0F) << 4)
            qt = type(qt)(b.reshape(-1), qt.qtype, qt.shape)
        return super().prepare_weight(qt, name)


def test_the_suite_catches_a_broken_kernel_of_the_plugin() -> None:
    rep = run_suite(_SwappedNibbles(), op="linear")
    failed = {r.case for r in rep.results if r.status == "fail"}
    assert failed and all("Q4_0" in c for c in failed)
    assert all(r.ok for r in rep.results if "Q4_0" not in r.case)


def test_a_qtype_without_a_kernel_falls_back_loudly(backend) -> None:
    rng = np.random.default_rng(0)
    qt = random_qtensor(QType.Q4_1, (9, 64), rng)
    assert backend.unsupported("linear", qtype=QType.Q4_1) and not backend.unsupported("linear", qtype=QType.Q4_0)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    b = edgeformer_opencl.OpenCLBackend()           # a fresh instance: its one warning per qtype is not spent
    w = b.prepare_weight(qt, "w41")
    with pytest.warns(RuntimeWarning, match="no Q4_1 linear kernel"):
        y = b.kernel("linear")(x, w.handle)
    np.testing.assert_array_equal(y, linear_ref(x, qt))
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # once per qtype, not per call
        b.kernel("linear")(x, w.handle)


def test_attention_in_query_chunks_matches_the_reference(backend, monkeypatch) -> None:
    """A long prefill runs in query chunks (bounded scores scratch): forced here to 7 rows."""
    from edgeformer.kernels.attention import attention_ref
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((45, 4, 32), (50, 2, 32), (50, 2, 32)))
    kp = np.arange(100, 150)
    attrs = dict(scale=32 ** -0.5, window=9, softcap=20.0)
    monkeypatch.setattr(edgeformer_opencl, "SCORES_BYTES", 7 * 4 * 50 * 4)
    out = backend.attention(q, k, v, kp[5:], kp, **attrs)
    ref = attention_ref(q, k, v, kp[5:], kp, **attrs)
    assert nmse(out, ref) <= bound_for("attention", "F32")


# ------------------------------------------------------------------ whole models

# tiny decoders with the traits the native kernels must get right: GQA, sliding windows,
# attention softcap, q/k norms, post norms, interleaved and partial rope, qkv bias, fused
# qkv and gate|up (glu on column views), the three gated activations
CONFIGS = {
    "gemma3": DecoderConfig(arch="gemma3", vocab_size=96, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16,
                            ffn_dim=96, max_seq_len=64, rope_theta=1e6, rope_local_theta=1e4, qk_norm=True,
                            post_norms=True, activation="gelu_tanh", embed_scale=8.0, attn_softcap=30.0,
                            sliding_window=5, layer_types=("sliding", "full", "sliding", "full")),
    "llama_interleaved": DecoderConfig(arch="llama", vocab_size=211, dim=96, n_layers=2, n_heads=6, n_kv_heads=2,
                                       head_dim=16, ffn_dim=64, max_seq_len=64, rope_neox=False,
                                       partial_rotary_factor=0.5, attn_bias=True),
    "phi3": DecoderConfig(arch="phi3", vocab_size=150, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
                          ffn_dim=64, max_seq_len=64, partial_rotary_factor=0.75, fused_qkv=True,
                          fused_gate_up=True, activation="gelu", sliding_window=4),
}
PROMPT = np.array([3, 17, 5, 42, 9])
STEPS = 8


def _greedy(model: Decoder, prompt: np.ndarray, steps: int) -> tuple[list[int], list[np.ndarray]]:
    cache = model.make_cache(len(prompt) + steps)
    toks, logits, inp = [], [], prompt
    for _ in range(steps):
        lg = model.forward(inp, cache, last_only=True)[-1]
        logits.append(lg)
        toks.append(int(np.argmax(lg)))
        inp = np.array([toks[-1]])
    return toks, logits


@pytest.mark.parametrize("qtype", NATIVE_QTYPES)
@pytest.mark.parametrize("family", list(CONFIGS))
def test_greedy_decoding_matches_the_numpy_reference(backend, family, qtype) -> None:
    rng = np.random.default_rng(1)
    # fully random rows (synthetic_checkpoint's default tiles 64 rows: tied logits)
    ckpt = synthetic_checkpoint(CONFIGS[family], qtype, lambda q, n, k: random_qtensor(q, (n, k), rng, 0.15))
    ref_toks, ref_logits = _greedy(Decoder(ckpt, get_backend("numpy")), PROMPT, STEPS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cl_toks, cl_logits = _greedy(Decoder(ckpt, backend), PROMPT, STEPS)
    fell_back = {str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)}
    assert not [m for m in fell_back if "linear" in m or any(f"'{op}'" in m for op in NATIVE_OPS)], fell_back
    assert cl_toks == ref_toks
    bound = 10 * bound_for("linear", qtype)
    errs = [nmse(a, b) for a, b in zip(cl_logits, ref_logits)]
    assert max(errs) <= bound, errs


def test_a_gguf_file_runs_from_its_read_only_mapping(backend, tmp_path) -> None:
    """Weights read from a GGUF file (read-only memory maps) go to the device as they are."""
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.synthetic import write_random_gguf
    # vocab <= 64: the file's matrices repeat every 64 rows (TILE_ROWS), so no two logits tie
    cfg = DecoderConfig(arch="llama", vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                        ffn_dim=96, max_seq_len=64)
    path = write_random_gguf(cfg, tmp_path / "m.gguf", "Q4_0", embed_qtype="Q8_0")
    ckpt = load_checkpoint(path)
    assert {ckpt.tensors[n].qtype.name for n in ("blk.0.attn_q.weight", "token_embd.weight")} == {"Q4_0", "Q8_0"}
    ref_toks, ref_logits = _greedy(Decoder(ckpt, get_backend("numpy")), PROMPT, 4)
    cl_toks, cl_logits = _greedy(Decoder(ckpt, backend), PROMPT, 4)
    assert cl_toks == ref_toks
    assert max(nmse(a, b) for a, b in zip(cl_logits, ref_logits)) <= 10 * bound_for("linear", "Q4_0")


def test_default_model_greedy_tokens(backend, shipped) -> None:
    """SmolLM2-135M-Instruct (Q4_1 matrices: their linears fall back; the Q8_0 tied
    output runs natively) gives the numpy reference's greedy tokens."""
    from edgeformer.formats import load_checkpoint
    ckpt = load_checkpoint(shipped.path("smollm2-135m-instruct"))
    assert ckpt.tensors["token_embd.weight"].qtype == QType.Q8_0
    prompt = np.asarray(shipped.tokenizer("smollm2-135m-instruct").encode("What is the capital of France?"))
    ref_toks, ref_logits = _greedy(Decoder(ckpt, get_backend("numpy")), prompt, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # the Q4_1, embed and add fallbacks
        cl_toks, cl_logits = _greedy(Decoder(ckpt, backend), prompt, 6)
    assert cl_toks == ref_toks
    assert max(nmse(a, b) for a, b in zip(cl_logits, ref_logits)) <= 10 * bound_for("linear", "Q4_1")


def test_available_names_a_device_that_is_not_there(monkeypatch) -> None:
    monkeypatch.setenv(edgeformer_opencl.DEVICE_ENV, "no-such-device-xyz")
    why = edgeformer_opencl.OpenCLBackend.available()
    assert why is not None and "no-such-device-xyz" in why
