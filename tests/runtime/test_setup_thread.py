"""`run_in_setup_thread`: the work runs on another thread, which has ended when the call
returns; its result comes back and its exception is raised on the caller's thread."""
from __future__ import annotations

import threading

import pytest

from edgeformer.errors import InputError
from edgeformer.runtime.setup_thread import run_in_setup_thread


def test_runs_on_a_thread_that_ends() -> None:
    ran: list[threading.Thread] = []
    assert run_in_setup_thread(lambda: ran.append(threading.current_thread()) or 42) == 42
    assert ran[0] is not threading.current_thread() and not ran[0].is_alive()


def test_the_exception_reaches_the_caller() -> None:
    def fail() -> None:
        raise InputError("bad model")
    with pytest.raises(InputError, match="bad model"):
        run_in_setup_thread(fail)
