"""`edgeformer speak`: writes a playable WAV; bad input exits 1 with a message; eSpeak NG
from the bundled wheel with no espeak-ng program, the program without the wheel, and a
clear error with neither."""
from __future__ import annotations

import wave

import numpy as np
import pytest
from support.speech import needs_espeak

from edgeformer.cli.__main__ import main
from edgeformer.tts import phonemize as ph

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
def test_speak_bad_input(tmp_path, capsys, args):
    assert main(["speak", *(a.format(d=tmp_path) for a in args)]) == 1
    assert "edgeformer: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def _pcm(path) -> np.ndarray:
    with wave.open(str(path)) as f:
        return np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)


def _no_program(monkeypatch, tmp_path):
    """Hide any espeak-ng program: an empty PATH, and shutil.which finds nothing."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(ph.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(ph.subprocess, "run", lambda *a, **k: pytest.fail("a program was run"))


def _no_wheel(monkeypatch):
    monkeypatch.setattr(ph, "_bundled_library", lambda: (None, "the piper-phonemize-fix wheel is not installed"))


@pytest.mark.skipif(ph._bundled_library()[0] is None, reason="the piper-phonemize-fix wheel is absent")
def test_speak_with_no_system_espeak(tmp_path, monkeypatch, joe_voice):
    _no_program(monkeypatch, tmp_path)
    out = tmp_path / "a.wav"
    assert main(["speak", "Hello there. How are you?", "-o", str(out), "--seed", "0"]) == 0
    pcm = _pcm(out)
    assert pcm.size > 0.8 * 22050 and np.abs(pcm.astype(np.int32)).max() >= 32000


def test_speak_falls_back_to_the_program_without_the_wheel(tmp_path, monkeypatch, joe_voice):
    if ph.shutil.which("espeak-ng") is None:
        pytest.skip("the espeak-ng program is not installed")
    _no_wheel(monkeypatch)
    runs = []
    real_run = ph.subprocess.run
    monkeypatch.setattr(ph.subprocess, "run", lambda cmd, **k: runs.append(cmd[0]) or real_run(cmd, **k))
    out = tmp_path / "a.wav"
    assert main(["speak", "Hello there.", "-o", str(out), "--seed", "0"]) == 0
    assert runs and all(r.endswith("espeak-ng") for r in runs)
    assert _pcm(out).size > 0.3 * 22050


def test_speak_with_neither_is_a_clear_error(tmp_path, capsys, monkeypatch, joe_voice):
    _no_program(monkeypatch, tmp_path)
    _no_wheel(monkeypatch)
    assert main(["speak", "Hello there.", "-o", str(tmp_path / "a.wav")]) == 1
    err = capsys.readouterr().err
    assert "edgeformer: error:" in err and "pip install piper-phonemize-fix" in err and "espeak-ng" in err
    assert not (tmp_path / "a.wav").exists()
