"""`edgeformer speak`: writes a playable WAV; bad input exits 1 with a message."""
from __future__ import annotations

import shutil
import wave

import numpy as np
import pytest

from edgeformer.cli.__main__ import main

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@needs_espeak
def test_speak_writes_wav(tmp_path, joe_voice):
    out = tmp_path / "a.wav"
    assert main(["speak", "Hello there.", "-o", str(out), "--seed", "0", "--speed", "1.5"]) == 0
    with wave.open(str(out)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 22050)
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)
    assert pcm.size % 256 == 0 and pcm.size > 0.3 * 22050
    assert np.abs(pcm.astype(np.int32)).max() >= 32000          # peak-normalized like piper


@needs_espeak
@pytest.mark.parametrize("args", [["...", "-o", "{d}/x.wav"], ["hi", "-o", "{d}/x.wav", "--speed", "0"],
                                  ["hi", "-o", "{d}/x.wav", "--voice", "{d}/missing.onnx"],
                                  ["hi", "-o", "{d}/nodir/x.wav"]])
def test_speak_bad_input(tmp_path, capsys, args, _conv_ops):
    assert main(["speak", *(a.format(d=tmp_path) for a in args)]) == 1
    assert "edgeformer: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
