"""Our phonemes and phoneme ids against Piper's own phonemizer on 50 sentences, for the
shipped voice (en_US-joe-medium, espeak voice "en-us").

Reference: `piper_phonemize.phonemize_espeak` / `phoneme_ids_espeak` (Piper's C++
phonemize_eSpeak and phonemes_to_ids), run in a child process so its espeak-ng keeps
its own state: the installed piper-phonemize-fix wheel and, when scripts/setup.sh --test
put it in .venv/piper-phonemize-ref (Python 3.11 only), rhasspy's original
piper-phonemize 1.1.0 wheel, the one Piper's voices were trained with."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeformer.tts.phonemize import phoneme_ids, phonemize, text_to_ids

# fresh text: numbers, times, money, dates, abbreviations, quotes, names, contractions, . , ; : ? !
SENTENCES = [
    "The ferry to Halifax leaves at 7:45 a.m. on weekdays.",
    "Dr. Okafor moved the appointment to Tuesday, March 3rd.",
    "Wait, you can't be serious; the bakery closed in 1998?",
    "\"Bring an umbrella,\" said Grandma Ruth, \"it's going to pour.\"",
    "Mr. and Mrs. Lindqvist paid $12.50 for two tickets.",
    "Is it 3.14 or 22/7? Neither is exact!",
    "We'll meet at St. Catherine's at noon.",
    "Note: the oven runs hot; check the bread after 25 minutes.",
    "She scored 97% on the exam, which surprised nobody.",
    "Hey! Don't touch that wire!",
    "The U.S. team arrived on Flight 2047 from Denver.",
    "I've read about 1,250 pages so far... and I'm still lost.",
    "Why would anyone paint a lighthouse purple?",
    "Captain Alvarez, Lieutenant Chen, and Sergeant Brooks saluted.",
    "The recipe calls for 2 cups flour, 1 tsp. salt, and 3 eggs.",
    "He whispered, 'Nobody must know.'",
    "It's 5 o'clock somewhere, isn't it?",
    "Our Wi-Fi password is blue-whale-42; don't share it.",
    "Prof. Nakamura's lecture covered Kant, Hume, and Descartes.",
    "On July 4, 1776, the declaration was signed.",
    "They'd rather walk than wait forty minutes for the bus.",
    "Call me at 555-0143 before 9 p.m., please.",
    "Is the museum open on Mondays? I thought so.",
    "Wow: twelve thousand people showed up!",
    "The quick-thinking nurse, Ms. Patel, saved the day.",
    "Temperatures fell to -5 degrees overnight.",
    "Alice asked, \"Where did you put my keys?\"",
    "We shouldn't have eaten the whole pie; now we're sick.",
    "The meeting is in Room 204B, second floor.",
    "Let's go, team! The clock's ticking!",
    "Jacques and Ingrid flew from Oslo to Lisbon via Frankfurt.",
    "Chapter 11 begins with a storm at sea.",
    "Can you believe it? Gas costs $4.19 a gallon!",
    "According to Smith et al., the effect is small.",
    "I'd like a cappuccino, two croissants, and a glass of water.",
    "The trail is 3.5 miles long: steep, rocky, and beautiful.",
    "Who's there? It's only the cat.",
    "He was born on 12/25/1990 in Baton Rouge, Louisiana.",
    "Yes; no; maybe: that's all you'll get from him.",
    "The CEO of Acme Corp. resigned on Friday.",
    "Mom said we'd leave at eight, but it's already nine thirty.",
    "Please don't slam the door!",
    "There are 365 days in a year, except in leap years.",
    "Oh no, I forgot the tickets at home!",
    "The Smiths' dog barked at the mailman again.",
    "Turn left on Elm St., then right on Oak Ave.",
    "What time does the 10:15 train arrive?",
    "Gabriel García Márquez wrote One Hundred Years of Solitude.",
    "I can't, won't, and shouldn't do that.",
    "Fun fact: octopuses have three hearts and blue blood.",
]

# run by the reference interpreter: phonemes and the voice's ids per sentence, as Piper makes them
_REFERENCE = """
import json, sys
import piper_phonemize
from piper_phonemize import phoneme_ids_espeak, phonemize_espeak
req = json.load(sys.stdin)
symbols = set(req["symbols"])
out = []
for text in req["texts"]:
    sents = phonemize_espeak(text, req["voice"])
    # phonemes_to_ids skips phonemes missing from the voice's map; phoneme_ids_espeak uses
    # Piper's default map, which agrees with the voice's on every symbol the voice has
    out.append({"phonemes": sents, "ids": [phoneme_ids_espeak([p for p in s if p in symbols]) for s in sents]})
json.dump({"module": piper_phonemize.__file__, "map": piper_phonemize.get_espeak_map(), "out": out}, sys.stdout)
"""

_RHASSPY_DIR = Path(sys.prefix) / "piper-phonemize-ref"


def _references() -> list:
    refs = []
    if importlib.util.find_spec("piper_phonemize") is not None:
        refs.append(pytest.param(None, id="piper-phonemize-fix"))
    if (_RHASSPY_DIR / "piper_phonemize").is_dir():
        refs.append(pytest.param(_RHASSPY_DIR, id="piper-phonemize-1.1.0"))
    return refs or [pytest.param(None, id="none", marks=pytest.mark.skip(reason="no piper_phonemize installed"))]


@pytest.fixture(scope="module")
def voice_config():
    from edgeformer.errors import InputError
    from edgeformer.tts.piper import shipped_voice_path
    try:
        p = shipped_voice_path()
    except InputError as e:
        pytest.skip(str(e))
    meta = json.loads(p.with_name(p.name + ".json").read_text(encoding="utf-8"))
    return {k: list(v) for k, v in meta["phoneme_id_map"].items()}, meta["espeak"]["voice"]


def _piper(path: Path | None, id_map: dict, voice: str) -> dict:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run([sys.executable, "-c", _REFERENCE], capture_output=True, text=True, timeout=300, env=env, check=False,
                       input=json.dumps({"texts": SENTENCES, "symbols": sorted(id_map), "voice": voice}))
    assert r.returncode == 0, r.stderr[-3000:]
    ref = json.loads(r.stdout)
    if path is not None:
        assert ref["module"].startswith(str(path)), ref["module"]
    return ref


def test_fifty_sentences():
    assert len(SENTENCES) == len(set(SENTENCES)) == 50


@pytest.mark.parametrize("reference", _references())
def test_phonemes_and_ids_match_piper(reference, voice_config):
    id_map, voice = voice_config
    assert voice == "en-us"
    ref = _piper(reference, id_map, voice)
    # the voice's ids are Piper's default ids for every symbol the voice knows
    assert all(ref["map"][k] == v for k, v in id_map.items())
    for text, want in zip(SENTENCES, ref["out"], strict=True):
        sents = phonemize(text, voice)
        assert sents == want["phonemes"], text
        assert [phoneme_ids(s, id_map) for s in sents] == want["ids"], text
        # what synthesis gets: Piper's ids, less sentences with nothing to say (a closing quote)
        assert text_to_ids(text, id_map, voice) == [ids for ids in want["ids"] if len(ids) > 3], text
