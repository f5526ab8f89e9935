"""One default backend and one set of sampling defaults for `load()`, every command and
the server (issue: the server, load(), embed, transcribe and speak used to default to the
numpy reference, and load().chat sampled at temperature 1)."""
from __future__ import annotations

import argparse

import pytest

from edgeformer.backends import base
from edgeformer.cli.__main__ import build_parser
from edgeformer.runtime.sampler import SamplingParams


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_default_is_the_fastest_backend_that_runs_here():
    from edgeformer.backends.cpu import CpuBackend
    want = "cpu" if CpuBackend.available() is None else "numpy"
    assert base.default_backend_name() == want
    assert base.get_backend(None).name == want


def test_fallback_to_numpy_says_why(monkeypatch, capsys):
    from edgeformer.backends.cpu import CpuBackend
    monkeypatch.setattr(CpuBackend, "available", classmethod(lambda cls: "numba is not importable: test"))
    monkeypatch.setattr(base, "_FALLBACK_SAID", [])
    assert base.default_backend_name() == "numpy"
    err = capsys.readouterr().err
    assert "cpu backend unavailable (numba is not importable: test)" in err and "numpy" in err


def test_every_command_with_a_backend_flag_defaults_to_the_one_default():
    parsers = _subparsers()
    with_backend = {name for name, sp in parsers.items()
                    if any("--backend" in a.option_strings for a in sp._actions)}
    # every command that runs a model takes --backend
    assert {"run", "chat", "serve", "bench", "profile", "embed", "transcribe", "speak"} <= with_backend
    for name in with_backend:
        sp = parsers[name]
        act = next(a for a in sp._actions if "--backend" in a.option_strings)
        assert act.default is None, (name, act.default)      # None = default_backend_name()


def test_cli_sampling_defaults_are_load_and_server_defaults():
    from edgeformer.serve.openai_schema import ChatRequest
    sp = SamplingParams()
    run = _subparsers()["run"].parse_args(["-p", "x"])
    assert (run.temp, run.top_k, run.top_p, run.min_p, run.max_tokens) == \
        (sp.temperature, sp.top_k, sp.top_p, sp.min_p, sp.max_tokens)
    assert sp.temperature == 0.0          # greedy, as the README says
    req = ChatRequest.parse({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    got = req.sampling(16, 0, 0, False)
    assert (got.temperature, got.top_k, got.top_p, got.min_p) == (sp.temperature, sp.top_k, sp.top_p, sp.min_p)


def test_run_help_states_the_true_defaults(capsys):
    with pytest.raises(SystemExit):
        _subparsers()["run"].parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "temp 0.8" not in out and "(default: 0.0)" in out


def test_readme_load_line_uses_the_default_backend_and_greedy_chat(shipped):
    """The README's Python line: `edgeformer.load()` then `.chat(...)` with no params."""
    import edgeformer
    shipped.path("smollm2-135m-instruct")            # skips when the package is missing
    eng = edgeformer.load(n_ctx=256)
    assert eng.backend.name == base.default_backend_name()
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    greedy = eng.chat(msgs, SamplingParams(temperature=0.0, max_tokens=24)).token_ids
    # no params: the shared defaults (greedy), so repeated calls agree with greedy
    for _ in range(2):
        assert eng.chat(msgs).token_ids[:24] == greedy
    assert "Paris" in eng.chat(msgs).text


def test_info_takes_short_names(shipped, capsys):
    from edgeformer.cli.__main__ import main
    shipped.path("smollm2-135m-instruct")
    assert main(["info", "--json", "smollm2-135m-instruct"]) == 0
    assert '"arch": "llama"' in capsys.readouterr().out
    assert main(["info", "no-such-model"]) == 1
    assert "shipped models:" in capsys.readouterr().err


def test_broken_pipe_ends_quietly(shipped):
    """`edgeformer info --json MODEL | head`: no traceback when the reader has gone."""
    import os
    import subprocess
    import sys
    shipped.path("smollm2-135m-instruct")
    r, w = os.pipe()
    os.close(r)                    # the reader left before the first write
    try:
        p = subprocess.run([sys.executable, "-m", "edgeformer.cli", "info", "--json", "smollm2-135m-instruct"],
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 141 and "Traceback" not in p.stderr, p.stderr
