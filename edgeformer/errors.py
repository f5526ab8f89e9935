"""Exception types. Every error a user can cause is one of these, with a message that
names the file (or request) and what is wrong."""
from __future__ import annotations

import reprlib


class EdgeformerError(Exception):
    """Base class of every error edgeformer raises on purpose."""


class FormatError(EdgeformerError):
    """A model file or directory is malformed: truncated, corrupt, inconsistent."""

    def __init__(self, path: object, what: str) -> None:
        self.path = str(path)
        self.what = what
        super().__init__(f"{self.path}: {what}")


class UnsupportedError(EdgeformerError):
    """A well-formed input asks for something edgeformer does not implement
    (unknown architecture, quant type, rope scaling, op on a backend)."""


class ConfigError(EdgeformerError):
    """A model config has a missing, invalid or inconsistent value."""


class InputError(EdgeformerError):
    """Bad user input at run time: empty prompt, prompt over the context, bad audio..."""


class CapacityError(EdgeformerError):
    """The KV-cache memory budget cannot hold what is asked (now, or ever)."""


_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 64
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 8


def brief(value: object) -> str:
    """`repr(value)` cut to about 64 characters per string and 8 items per container,
    without building the whole repr first: how error messages quote a value read from
    an untrusted file (a 100 MB string in a header must not become a 100 MB message)."""
    if type(value) in (str, int, float, bool) and not (type(value) is str and len(value) > 64):
        return repr(value)          # the common case, without reprlib's dispatch
    return _BRIEF.repr(value)
