"""Marks shared by the speech tests."""
from __future__ import annotations

import pytest

from edgeformer.tts.phonemize import espeak_available

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="no eSpeak NG (piper-phonemize-fix wheel or program)")
