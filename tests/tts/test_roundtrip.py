"""Round trip: `edgeformer speak` with the shipped Piper voice, then Whisper (the shipped
tiny.en, `edgeformer transcribe`) must give the words back."""
from __future__ import annotations

import json
import re

import pytest
from support.speech import needs_espeak

from edgeformer.cli.__main__ import main

pytestmark = needs_espeak

FOX = "The quick brown fox jumps over the lazy dog."
OTHERS = ["Please call Stella.", "It is a beautiful day today, isn't it?", "I would like two cups of coffee, please."]


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower().replace("\u2019", "'")).split()


def _transcribe(path, capsys) -> str:
    capsys.readouterr()
    assert main(["transcribe", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["text"]


@pytest.fixture(scope="module")
def _has_whisper():
    from edgeformer.errors import InputError
    from edgeformer.models.whisper_decode import shipped_whisper_dir
    try:
        shipped_whisper_dir()
    except InputError as e:
        pytest.skip(f"no shipped Whisper model: {e}")


@pytest.mark.parametrize("sentences", [[FOX], OTHERS], ids=["fox", "three_more"])
def test_speak_then_transcribe(tmp_path, capsys, joe_voice, _has_whisper, sentences):
    wav = tmp_path / "a.wav"
    assert main(["speak", " ".join(sentences), "-o", str(wav), "--seed", "0"]) == 0
    assert _words(_transcribe(wav, capsys)) == _words(" ".join(sentences))
