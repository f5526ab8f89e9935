"""SIGTERM (issue 16): `edgeformer serve` lets the streams in flight finish within
--shutdown-grace, ends the rest with an SSE error event, and exits (it once waited with
no limit, and a kill cut streams off with no error event)."""
from __future__ import annotations

import signal
import threading
import time

import pytest

openai = pytest.importorskip("openai")
from tests.serve.conftest import spawn_server  # noqa: E402

GRACE = 2.0


def test_sigterm_finishes_streams_within_the_grace_period_then_ends_the_rest(tiny_dir, tiny_engine):
    # --max-batch 2: the short stream decodes beside one choice of the long request at a time
    proc, url = spawn_server(str(tiny_dir), "--backend", "numpy", "--max-batch", "2", "--shutdown-grace", str(GRACE),
                             "--model-name", "tiny", "--log-level", "warning")
    bias = {str(t): -100 for t in tiny_engine.tokenizer.stop_ids()}
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    out: dict[str, object] = {}
    started = {k: threading.Event() for k in ("short", "long")}

    def stream(name: str, **kw) -> None:
        chunks = []
        try:
            for ch in client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": name}],
                                                     stream=True, logit_bias=bias, **kw):
                chunks.append(ch)
                started[name].set()
            out[name] = chunks
        except openai.APIError as e:
            out[name] = e
        finally:
            started[name].set()
    try:
        threads = [threading.Thread(target=stream, args=("short",), kwargs=dict(max_tokens=100, temperature=0,
                                                                                stream_options={"include_usage": True})),
                   threading.Thread(target=stream, args=("long",), kwargs=dict(max_tokens=200, n=128,
                                                                               temperature=0.7))]
        threads[0].start()
        assert started["short"].wait(60)
        threads[1].start()
        assert started["long"].wait(60)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.communicate(timeout=30)[0]
    short, long = out["short"], out["long"]
    assert isinstance(short, list), short                       # finished within the grace period
    assert short[-2].choices[0].finish_reason == "length" and short[-1].usage.completion_tokens == 100
    assert isinstance(long, openai.APIError), long              # ended by an error event
    assert long.body["code"] == "server_shutdown", long.body
    assert rc in (0, -signal.SIGTERM) and took < GRACE + 10, (rc, took, log)
    assert "Traceback" not in log, log
