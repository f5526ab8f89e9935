"""Round trip: `edgeformer speak` with the shipped Piper voice, then Whisper (the shipped
tiny.en, `edgeformer transcribe`, or its Python API while the command is missing) must
give the words back."""
from __future__ import annotations

import importlib.util
import json
import re

import pytest

from edgeformer.cli.__main__ import main
from edgeformer.tts.phonemize import espeak_available

pytestmark = pytest.mark.skipif(not espeak_available(), reason="no eSpeak NG (piper-phonemize-fix wheel or program)")

FOX = "The quick brown fox jumps over the lazy dog."
OTHERS = ["Please call Stella.", "It is a beautiful day today, isn't it?", "I would like two cups of coffee, please."]


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower().replace("\u2019", "'")).split()


def _transcribe(path, capsys) -> str:
    if importlib.util.find_spec("edgeformer.cli.transcribe") is not None:
        capsys.readouterr()
        assert main(["transcribe", str(path)]) == 0
        out = capsys.readouterr().out.strip()
        try:
            doc = json.loads(out)
            return doc["text"] if isinstance(doc, dict) else out
        except ValueError:
            return out
    whisper = pytest.importorskip("edgeformer.models.whisper_decode")
    if not hasattr(whisper, "transcribe"):
        pytest.skip("no `edgeformer transcribe` and no whisper_decode.transcribe yet")
    return whisper.transcribe(str(path)).text


@pytest.fixture(scope="module")
def _has_whisper():
    whisper = pytest.importorskip("edgeformer.models.whisper_decode")
    from edgeformer.errors import InputError
    try:
        whisper.shipped_whisper_dir()
    except (InputError, AttributeError) as e:
        pytest.skip(f"no shipped Whisper model: {e}")


@pytest.mark.parametrize("sentences", [[FOX], OTHERS], ids=["fox", "three_more"])
def test_speak_then_transcribe(tmp_path, capsys, joe_voice, _has_whisper, sentences):
    wav = tmp_path / "a.wav"
    assert main(["speak", " ".join(sentences), "-o", str(wav), "--seed", "0"]) == 0
    assert _words(_transcribe(wav, capsys)) == _words(" ".join(sentences))
