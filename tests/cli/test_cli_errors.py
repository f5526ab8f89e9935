"""What a user sees when a command fails: one line on stderr, never a traceback."""
from __future__ import annotations

import argparse

import pytest

from edgeformer.cli import __main__ as cli
from edgeformer.errors import FormatError


def _failing(exc: BaseException):
    def build_parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser()
        p.set_defaults(func=lambda args: (_ for _ in ()).throw(exc))
        return p
    return build_parser


def test_an_internal_error_is_one_line_naming_a_bug_report(monkeypatch, capsys) -> None:
    monkeypatch.delenv("EDGEFORMER_DEBUG", raising=False)
    monkeypatch.setattr(cli, "build_parser", _failing(ZeroDivisionError("division by zero")))
    assert cli.main([]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (ZeroDivisionError: division by zero)" in err
    assert "bug" in err and "Traceback" not in err


def test_debug_shows_the_traceback(monkeypatch) -> None:
    monkeypatch.setenv("EDGEFORMER_DEBUG", "1")
    monkeypatch.setattr(cli, "build_parser", _failing(KeyError("x")))
    with pytest.raises(KeyError):
        cli.main([])


def test_a_huge_error_text_is_capped(monkeypatch, capsys) -> None:
    """A hostile file can make an error message of hundreds of MB (issue 16: a 350 MB line)."""
    monkeypatch.setattr(cli, "build_parser", _failing(FormatError("m.gguf", "x" * 10**6)))
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert len(err) < 2200 and "more characters]" in err
