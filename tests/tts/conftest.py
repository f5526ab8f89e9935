"""Shared fixtures of tests/tts: the shipped Piper voice, loaded once."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def joe_voice():
    """The shipped en_US-joe-medium voice (skips when the package is absent)."""
    from edgeformer.errors import InputError
    from edgeformer.tts.piper import load_piper_voice, shipped_voice_path
    try:
        shipped_voice_path()
    except InputError as e:
        pytest.skip(str(e))
    return load_piper_voice()
