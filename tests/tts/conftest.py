"""Shared fixtures of tests/tts: the shipped Piper voice, loaded once."""
from __future__ import annotations

import pytest

from edgeformer.tts.phonemize import espeak_available


@pytest.fixture(autouse=True, scope="session")
def _conv_ops():
    """Until kernels/__init__.py lists the conv ops, register them for these tests."""
    from edgeformer.backends.numpy_ref import NumpyBackend
    from edgeformer.kernels import OPS
    from edgeformer.kernels.conv import CONV1D, CONV_TRANSPOSE1D
    mp = pytest.MonkeyPatch()
    for spec in (CONV1D, CONV_TRANSPOSE1D):
        if spec.name not in OPS:
            mp.setitem(OPS, spec.name, spec)
            mp.setitem(NumpyBackend.kernels, spec.name, spec.reference)
    yield
    mp.undo()


needs_espeak = pytest.mark.skipif(not espeak_available(), reason="no eSpeak NG (piper-phonemize-fix wheel or program)")


@pytest.fixture(scope="session")
def joe_voice(_conv_ops):
    """The shipped en_US-joe-medium voice (skips when the package is absent)."""
    from edgeformer.errors import InputError
    from edgeformer.tts.piper import load_piper_voice, shipped_voice_path
    try:
        shipped_voice_path()
    except InputError as e:
        pytest.skip(str(e))
    return load_piper_voice()
