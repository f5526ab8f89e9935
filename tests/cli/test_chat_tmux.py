"""`edgeformer chat` in a real terminal (tmux) on the shipped SmolLM2 model: two turns
with history, Ctrl-C mid-answer keeps the session usable, /reset, /exit."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


class Pane:
    def __init__(self, session: str) -> None:
        self.session = session

    def text(self) -> str:
        # -J joins wrapped lines; -S - includes the scrollback
        return _tmux("capture-pane", "-p", "-J", "-S", "-", "-t", self.session)

    def prompts(self) -> int:
        return sum(1 for line in self.text().splitlines() if line.startswith(">"))

    def wait(self, pred, timeout: float, what: str) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.text()
            if pred(t):
                return t
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; pane:\n{self.text()}")

    def ask(self, line: str, timeout: float = 120) -> str:
        """Type `line`, wait for the answer to end (the next "> " prompt), return the pane."""
        n = self.prompts()
        _tmux("send-keys", "-t", self.session, "-l", line)
        _tmux("send-keys", "-t", self.session, "Enter")
        return self.wait(lambda t: self.prompts() > n and t.rstrip().endswith(">"), timeout, f"answer to {line!r}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.session], capture_output=True).returncode == 0


@pytest.fixture
def chat():
    if shutil.which("tmux") is None:
        pytest.skip("tmux not installed")
    from edgeformer.models.shipped import installed
    if not installed().get("smollm2-135m-instruct"):
        pytest.skip("the shipped SmolLM2 model is not installed")
    session = f"edgeformer-chat-test-{os.getpid()}"
    cmd = (f"{sys.executable} -m edgeformer.cli chat --temp 0 -n 40 --backend numpy -c 1024; "
           f"echo CHAT-EXITED-$?; sleep 30")
    _tmux("new-session", "-d", "-s", session, "-x", "220", "-y", "60", cmd)
    pane = Pane(session)
    try:
        pane.wait(lambda t: t.rstrip().endswith(">"), 120, "the first prompt")
        yield pane
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def _last_answer(text: str) -> str:
    """Text between the last two prompts."""
    blocks = text.split("\n>")
    return blocks[-2] if len(blocks) >= 2 else text


def test_chat_turns_ctrl_c_reset_exit(chat):
    out = chat.ask("What is the capital of France?")
    assert "Paris" in _last_answer(out)
    # the follow-up only makes sense with the first turn in the history
    out = chat.ask("And of Germany?")
    assert "Berlin" in _last_answer(out)

    # Ctrl-C while it is answering: the answer stops, the session stays
    n = chat.prompts()
    before = chat.text()
    _tmux("send-keys", "-t", chat.session, "-l", "Write a very long story about a brave dragon and a knight.")
    _tmux("send-keys", "-t", chat.session, "Enter")
    chat.wait(lambda t: len(t.rstrip()) > len(before.rstrip()) + 80, 120, "the story to start")
    _tmux("send-keys", "-t", chat.session, "C-c")
    out = chat.wait(lambda t: chat.prompts() > n and t.rstrip().endswith(">"), 60, "the prompt after Ctrl-C")
    assert "[interrupted]" in out and "Traceback" not in out
    assert chat.alive() and "CHAT-EXITED" not in out

    out = chat.ask("/reset")
    assert "history cleared" in out
    out = chat.ask("What is the capital of France?")
    assert "Paris" in _last_answer(out)

    _tmux("send-keys", "-t", chat.session, "-l", "/exit")
    _tmux("send-keys", "-t", chat.session, "Enter")
    out = chat.wait(lambda t: "CHAT-EXITED-" in t, 30, "exit")
    assert "CHAT-EXITED-0" in out
