"""`edgeformer run` as a user runs it (a subprocess) on the shipped SmolLM2 model."""
from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeformer.cli", "run", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def _need_model():
    from edgeformer.models.shipped import installed
    if not installed().get("smollm2-135m-instruct"):
        pytest.skip("the shipped SmolLM2 model is not installed")


def test_run_default_model_greedy_paris():
    r = _run("-p", "What is the capital of France?", "--temp", "0", "-n", "16", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    # llama.cpp-style timings go to stderr, not into the answer
    for key in ("load time", "prompt eval", "eval", "ttft"):
        assert key in r.stderr and key not in r.stdout


def test_run_invalid_utf8_file_is_a_clear_error(tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_bytes(b"What is \xc3\x28 this?")
    r = _run("--file", str(f))
    assert r.returncode == 1
    assert "not valid UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_base_model_runs_as_plain_continuation(shipped):
    """The shipped Gemma 3 270M is a base model with no template: `run` continues the prompt
    as plain text (what `--raw` does) and says so; `--chat-template gemma` wraps it."""
    shipped.path("gemma3-270m")
    args = ["-m", "edgeformer.cli", "run", "gemma3-270m", "-p", "The capital of Japan is", "-n", "8",
            "--no-stats"]
    plain = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    raw = subprocess.run([sys.executable, *args, "--raw"], capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0 and raw.returncode == 0, plain.stderr + raw.stderr
    assert "no chat template" in plain.stderr and "no chat template" not in raw.stderr
    assert plain.stdout == raw.stdout and "Tokyo" in plain.stdout
    from edgeformer.api import load
    eng = load("gemma3-270m", n_ctx=64, chat_template="gemma")
    assert eng.chat_template.family == "gemma"
    assert eng.render_chat([{"role": "user", "content": "Hi"}]).startswith("<bos><start_of_turn>user\nHi")


def test_shipped_instruct_model_answers_with_its_template(shipped, tmp_path, monkeypatch):
    """The shipped Qwen2.5-Coder-0.5B-Instruct (six registry parts) is assembled once,
    checked against its pinned sha256, and chats with its own template."""
    from edgeformer.models import shipped as shipped_models
    path = shipped.path("qwen2.5-coder-0.5b-instruct")
    assert path.stat().st_size == 491_400_064
    r = subprocess.run([sys.executable, "-m", "edgeformer.cli", "run", "qwen2.5-coder-0.5b-instruct", "-p",
                        "What is the capital of France? Answer in one word.", "-n", "8", "--no-stats"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr
    assert "no chat template" not in r.stderr
    # a damaged part is caught by the hash, and nothing half-made is left behind
    monkeypatch.setenv("EDGEFORMER_CACHE", str(tmp_path))
    real = shipped_models.package_file
    bad = tmp_path / "part03.bin"
    bad.write_bytes(b"\0" * 1024)
    monkeypatch.setattr(shipped_models, "package_file",
                        lambda d, match, *a: bad if d.endswith("part3") else real(d, match, *a))
    from edgeformer.errors import InputError
    with pytest.raises(InputError, match="sha256"):
        shipped_models.resolve_model("qwen2.5-coder-0.5b-instruct")
    assert not any(p.name.endswith(".gguf") or p.name.endswith(".tmp") for p in tmp_path.iterdir())
