"""Optional extras (edgeformer/extras.py): a missing package gives a one-line hint naming
the extra that installs it, at the command or call that needs it; a broken install is
not disguised as a missing extra. A missing package is simulated by sys.modules[name] = None."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from edgeformer.cli.__main__ import main
from edgeformer.errors import UnsupportedError
from edgeformer.extras import require


def _hint(what: str, extra: str, module: str) -> str:
    return f"{what} needs the {extra} extra ({module} is not installed): pip install 'edgeformer[{extra}]'"


def test_require_returns_the_module():
    assert require("json", "serve", "x") is sys.modules["json"]


def test_a_missing_package_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "soxr", None)
    from edgeformer.audio.io import to_mono_16k
    with pytest.raises(UnsupportedError, match=re.escape(_hint("resampling audio", "audio", "soxr"))):
        to_mono_16k(np.zeros(8, np.float32), 8000)


def test_a_missing_submodule_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    from edgeformer.models.image_processing import load_image
    with pytest.raises(UnsupportedError, match=re.escape(_hint("image input", "vision", "PIL.Image"))):
        load_image(tmp_path / "x.png")


def test_a_broken_install_is_not_a_missing_extra(tmp_path, monkeypatch):
    (tmp_path / "half_installed.py").write_text("import edgeformer_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="edgeformer_no_such_dependency"):
        require("half_installed", "serve", "x")


@pytest.mark.parametrize("missing, argv, hint", [
    ("uvicorn", ["serve"], _hint("edgeformer serve", "serve", "uvicorn")),
    ("onnx", ["speak", "hi", "-o", "{tmp}/x.wav", "--backend", "numpy"],
     _hint("a Piper voice (edgeformer speak)", "audio", "onnx")),
])
def test_command_without_its_extra_says_which(missing, argv, hint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, missing, None)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"edgeformer: error: {hint}"


def test_server_package_without_starlette_says_which(monkeypatch):
    monkeypatch.setitem(sys.modules, "starlette", None)
    for name in [m for m in sys.modules if m == "edgeformer.serve" or m.startswith("edgeformer.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(UnsupportedError, match=re.escape(_hint("edgeformer serve", "serve", "starlette"))):
        import edgeformer.serve  # noqa: F401
