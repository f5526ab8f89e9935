"""`edgeformer serve` as a user runs it: a subprocess on a free port, queried over HTTP;
bad flags fail before the model loads."""
from __future__ import annotations

import subprocess
import sys

import pytest

from edgeformer.cli.serve import model_id, parse_size
from edgeformer.errors import InputError
from tests.serve.conftest import spawn_server

httpx = pytest.importorskip("httpx")


@pytest.mark.parametrize("text, n", [("256MiB", 256 * 2**20), ("1.5GB", 1_500_000_000), ("4096", 4096),
                                     ("64 kib", 65536)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "12XB", "-5MiB", "0", "MiB"])
def test_parse_size_rejects(text):
    with pytest.raises(InputError):
        parse_size(text)


def test_bad_flag_fails_fast():
    r = subprocess.run([sys.executable, "-m", "edgeformer.cli", "serve", "--kv-budget", "lots"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "lots" in r.stderr


def test_serve_subprocess(tiny_dir):
    proc, url = spawn_server(str(tiny_dir), "-c", "128", "--kv-budget", "1MiB", "--log-level", "warning")
    try:
        name = model_id(str(tiny_dir))
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == name == tiny_dir.name
        r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": "Hello", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    # no --backend: the one default, named at start-up
    from edgeformer.backends.base import default_backend_name
    assert f"edgeformer: backend {default_backend_name()} " in out, out
