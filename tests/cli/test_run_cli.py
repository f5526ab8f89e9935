"""`edgeformer run` in-process with the stand-in model: streamed text equals the
Engine's, timings go to stderr, bad flags and bad prompt files give clear errors."""
from __future__ import annotations

import pytest

from edgeformer.cli import run as run_cmd
from edgeformer.cli.__main__ import main
from edgeformer.runtime.engine import Engine
from edgeformer.runtime.sampler import SamplingParams
from support.fakes import ByteTokenizer, FakeModel


@pytest.fixture
def fake_engine(monkeypatch):
    made = []

    def load(args):
        made.append(Engine(FakeModel(seed=9), ByteTokenizer(), None, args.backend, n_ctx=args.n_ctx))
        return made[-1]
    monkeypatch.setattr(run_cmd, "load_engine", load)
    return made


def test_run_streams_the_engine_output(fake_engine, capsys):
    rc = main(["run", "-p", "hello", "--temp", "0", "-n", "20"])
    out, err = capsys.readouterr()
    assert rc == 0
    ref = Engine(FakeModel(seed=9), ByteTokenizer()).generate("hello", SamplingParams(temperature=0, max_tokens=20))
    assert out == ref.text + "\n"
    assert "prompt eval" in err and "eval" in err and "load time" in err


def test_run_seeded_sampling_is_reproducible(fake_engine, capsys):
    outs = []
    for _ in range(2):
        assert main(["run", "-p", "abc", "--seed", "3", "-n", "30", "--ignore-eos", "--no-stats"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_run_reads_a_utf8_file(fake_engine, tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("caf\u00e9 au lait", encoding="utf-8")
    assert main(["run", "--file", str(f), "--temp", "0", "-n", "5", "--no-stats"]) == 0
    eng = fake_engine[-1]
    assert eng.session.ids[:len("caf\u00e9 au lait".encode()) + 1] == ByteTokenizer().encode("caf\u00e9 au lait")


@pytest.mark.parametrize("argv, msg", [
    (["run", "-p", "x", "-n", "0"], "max_tokens"),
    (["run", "-p", "x", "--top-p", "1.5"], "top_p"),
    (["run", "-p", "x", "--temp", "-1"], "temperature"),
    (["run", "-p", ""], "empty prompt"),
    (["run", "--file", "/nonexistent/prompt.txt"], "cannot read"),
])
def test_run_rejects_bad_input(fake_engine, capsys, argv, msg):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "edgeformer: error:" in err and msg in err
    assert "Traceback" not in err


def test_run_rejects_invalid_utf8_file(fake_engine, tmp_path, capsys):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"hello \xff\xfe world")
    assert main(["run", "--file", str(f)]) == 1
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and "offset 6" in err


def test_run_prompt_over_context(fake_engine, capsys):
    assert main(["run", "-p", "x" * 100, "-c", "50", "--raw"]) == 1
    assert "prompt is 101 tokens" in capsys.readouterr().err
