"""`edgeformer chat` in-process with the stand-in model: history is kept across turns and
sent back through the chat template, /reset forgets it, /exit and EOF end the session."""
from __future__ import annotations

import io

import pytest

from edgeformer.cli import run as run_cmd
from edgeformer.cli.__main__ import main
from edgeformer.runtime.engine import Engine
from support.fakes import ByteTokenizer, FakeModel

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture
def engine(monkeypatch):
    eng = Engine(FakeModel(seed=1), ByteTokenizer(), TEMPLATE, "numpy", n_ctx=400)
    prompts = []
    orig = eng.chat_stream

    def spy(messages, params=None):
        prompts.append(eng.render_chat(messages))
        return orig(messages, params)
    monkeypatch.setattr(eng, "chat_stream", spy)
    monkeypatch.setattr(run_cmd, "load_engine", lambda args: eng)
    eng.prompts = prompts
    return eng


def _chat(monkeypatch, capsys, lines: str, *flags: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    rc = main(["chat", "--temp", "0", "-n", "12", "--ignore-eos", *flags])
    out, err = capsys.readouterr()
    return rc, out, err


def test_history_reset_exit(engine, monkeypatch, capsys):
    rc, out, err = _chat(monkeypatch, capsys, "first question\nsecond one\n/reset\nthird\n/exit\nnever sent\n")
    assert rc == 0 and len(engine.prompts) == 3
    p1, p2, p3 = engine.prompts
    assert p1 == "<user>first question\n<assistant>"
    # the second prompt carries the first turn and the model's (decoded, streamed) reply
    reply1 = p2[len(p1):p2.index("\n<user>second one")]
    assert p2.startswith(p1) and reply1 and reply1 in out
    assert p3 == "<user>third\n<assistant>"          # /reset forgot both turns
    assert "history cleared" in err and "never sent" not in "".join(engine.prompts)


def test_system_prompt_and_eof(engine, monkeypatch, capsys):
    rc, _, _ = _chat(monkeypatch, capsys, "hi\n", "--system", "be terse")
    assert rc == 0   # EOF ends the session cleanly
    assert engine.prompts == ["<system>be terse\n<user>hi\n<assistant>"]


def test_context_overflow_keeps_session(engine, monkeypatch, capsys):
    rc, out, err = _chat(monkeypatch, capsys, "x" * 500 + "\nshort\n")
    assert rc == 0 and "try /reset" in err
    assert engine.prompts[-1] == "<user>short\n<assistant>"   # the too-long turn was dropped


@pytest.fixture
def plain_engine(monkeypatch):
    """A model file without a chat template (a base model), recording what it is asked
    to continue."""
    eng = Engine(FakeModel(seed=3), ByteTokenizer(), None, "numpy", n_ctx=400)
    prompts = []
    orig = eng.stream

    def spy(prompt, params=None):
        prompts.append(prompt)
        return orig(prompt, params)
    monkeypatch.setattr(eng, "stream", spy)
    monkeypatch.setattr(run_cmd, "load_engine", lambda args: eng)
    eng.prompts = prompts
    return eng


def test_base_model_chats_as_plain_continuation(plain_engine, monkeypatch, capsys):
    rc, out, err = _chat(monkeypatch, capsys, "Once upon a time\n and then\n/reset\nagain\n")
    assert rc == 0 and "no chat template" in err and "--chat-template" in err
    p1, p2, p3 = plain_engine.prompts
    assert p1 == "Once upon a time"
    cont1 = p2[len(p1):-len(" and then")]        # the running text carries the continuation
    assert p2.startswith(p1) and p2.endswith(" and then") and cont1 and cont1 in out
    assert p3 == "again"


def test_raw_chat_ignores_the_template(engine, monkeypatch, capsys):
    stream = []
    monkeypatch.setattr(engine, "stream", lambda prompt, params=None: stream.append(prompt) or iter(()))
    rc, _, err = _chat(monkeypatch, capsys, "hello\n", "--raw")
    assert rc == 0 and stream == ["hello"] and engine.prompts == [] and "no chat template" not in err


def test_raw_chat_refuses_a_system_message(plain_engine, monkeypatch, capsys):
    rc, _, err = _chat(monkeypatch, capsys, "hi\n", "--system", "be terse")
    assert rc == 1 and "--system needs a chat template" in err
