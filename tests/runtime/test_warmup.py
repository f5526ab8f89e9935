"""Kernels are compiled or loaded at load time (runtime/warmup.py), so a generation's
prefill and decode figures never include them: after `load()` a chat compiles nothing;
a cold cache compiles the decode kernels in a child process."""
from __future__ import annotations

import subprocess

import pytest

from edgeformer.runtime import warmup


@pytest.fixture(scope="module")
def cpu():
    from edgeformer.backends.cpu import CpuBackend
    if CpuBackend.available() is not None:
        pytest.skip("needs the cpu backend")


def _overloads() -> dict[str, int]:
    """Specializations each Numba kernel of the cpu backend holds in this process (a
    kernel compiled or loaded from the on-disk cache adds one): module globals, and the
    kernels modules keep in tuples / dicts (serial and threaded pairs, per-qtype tables)."""
    import sys

    from numba.core.dispatcher import Dispatcher
    out = {}
    for name, mod in list(sys.modules.items()):
        if name.startswith("edgeformer.backends.cpu") and mod is not None:
            for attr, obj in vars(mod).items():
                held = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (tuple, list)) \
                    else [(None, obj)]
                for key, d in held:
                    if isinstance(d, Dispatcher):
                        out[f"{name}.{attr}" + ("" if key is None else f"[{key}]")] = len(d.overloads)
    return out


def test_nothing_compiles_or_loads_after_load(cpu, shipped):
    shipped.path("smollm2-135m-instruct")

    import edgeformer
    from edgeformer.runtime.sampler import SamplingParams
    eng = edgeformer.load(n_ctx=512)
    before = _overloads()
    # ~250 tokens: past the threaded row kernels' size (rms_norm / rope / glu: 114 rows)
    long_prompt = [{"role": "user", "content": "Name three rivers of Europe and say where each one ends. " * 20}]
    eng.chat(long_prompt, SamplingParams(max_tokens=12))
    eng.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=4))
    after = _overloads()
    assert sum(before.values()) > 0
    new = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert new == {}, f"kernels compiled or loaded after load(): {new}"


def test_batch_engine_warms_its_paged_attention(cpu, shipped):
    """Continuous batching's own kernels (attention reading its cache's pages in place)
    load when the BatchEngine is made: serving a prompt and decoding compile nothing."""
    shipped.path("smollm2-135m-instruct")

    import edgeformer
    from edgeformer.runtime.sampler import SamplingParams
    from edgeformer.runtime.scheduler import BatchEngine
    eng = edgeformer.load(n_ctx=512)
    for kv_dtype in ("f16", "int8"):
        be = BatchEngine(eng.model, eng.tokenizer, kv_budget_bytes=32 << 20, kv_dtype=kv_dtype, n_ctx=512)
        assert be.cache.paged_views and be.cache.pool.free_pages == be.cache.pool.num_pages   # scratch released
        before = _overloads()
        hs = [be.submit(list(range(5, 5 + n)), SamplingParams(max_tokens=3)) for n in (200, 40, 3)]
        be.run_until_idle()
        assert all(len(h.result().token_ids) == 3 for h in hs)
        new = {k: v - before.get(k, 0) for k, v in _overloads().items() if v != before.get(k, 0)}
        assert new == {}, f"kernels compiled or loaded after BatchEngine(kv_dtype={kv_dtype}): {new}"


def test_cold_cache_compiles_decode_in_a_child(cpu, tmp_path, monkeypatch):
    from edgeformer.backends import get_backend
    from edgeformer.config import DecoderConfig
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.synthetic import write_random_gguf
    from edgeformer.models.decoder import Decoder
    from edgeformer.perf.memory import TINY_MODEL
    path = tmp_path / "tiny.gguf"
    write_random_gguf(DecoderConfig(**TINY_MODEL), path, "Q8_0", with_vocab=False)
    be = get_backend("cpu")
    model = Decoder(load_checkpoint(path), be)
    started = []

    class FakeChild:
        def __init__(self, cmd, **kw):
            started.append(cmd)

        def wait(self):
            return 0
    monkeypatch.setattr(type(be), "kernels_cached", lambda self: False)
    monkeypatch.setattr(subprocess, "Popen", FakeChild)
    assert warmup.warm_up(model, path) > 0
    assert len(started) == 1 and started[0][-4:] == [str(path), "--decode", "--activations", be.activations]
    # the child's own entry point, in-process
    assert warmup.main([str(path), "--decode"]) == 0


def test_backends_that_do_not_compile_skip_the_warm_up():
    from edgeformer.backends import get_backend

    class Model:
        backend = get_backend("numpy")
    assert warmup.warm_up(Model()) == 0.0
