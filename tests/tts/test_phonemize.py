"""Piper's phonemization rules (rhasspy/piper-phonemize src/phonemize.cpp, phoneme_ids.cpp)
with the espeak-ng program; expected values from piper-phonemize's own src/python_test.py."""
from __future__ import annotations

import shutil

import pytest

from edgeformer.errors import InputError
from edgeformer.tts.phonemize import phoneme_ids, phonemize, split_clauses, text_to_ids

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

# piper-phonemize's DEFAULT_PHONEME_ID_MAP entries used by its test (the shipped voices use it)
ID_MAP = {"_": [0], "^": [1], "$": [2], " ": [3], "!": [4], ",": [8], ".": [10], "?": [13], "c": [16],
          "l": [24], "t": [32], "ɪ": [74], "ˈ": [120], "\u0327": [140]}


@needs_espeak
def test_matches_piper_phonemize_reference():
    # python_test.py: phonemize_espeak("licht!", "de") == [["l", "ˈ", "ɪ", "c", "̧", "t", "!"]]
    # ("ç" NFD-decomposed) and phoneme_ids_espeak(...) == [1, 0, 24, 0, 120, 0, 74, 0, 16, 0, 140, 0, 32, 0, 4, 0, 2]
    ph = phonemize("licht!", "de")
    assert ph == [["l", "ˈ", "ɪ", "c", "\u0327", "t", "!"]]
    assert phoneme_ids(ph[0], ID_MAP) == [1, 0, 24, 0, 120, 0, 74, 0, 16, 0, 140, 0, 32, 0, 4, 0, 2]


def test_unknown_phonemes_are_skipped():
    # python_test.py: phoneme_ids_espeak(["\0", "\0", "\0"]) == [1, 0, 2]
    assert phoneme_ids(["\0", "\0", "\0"], ID_MAP) == [1, 0, 2]


def test_clause_split():
    assert split_clauses("Hi, you. 3.5 is ok?! yes") == [("Hi,", ","), (" you.", "."), (" 3.5 is ok?!", "!"),
                                                          (" yes", "")]
    assert split_clauses("") == []


@needs_espeak
def test_sentences_and_clause_terminators():
    sents = phonemize("Hello, world. How are you?")
    assert len(sents) == 2                       # "." and "?" end sentences, "," does not
    first = "".join(sents[0])
    assert ", " in first and first.endswith(".") and "".join(sents[1]).endswith("?")


@needs_espeak
@pytest.mark.parametrize("text", ["", " \n ", "...", "?!", "\ue000"])
def test_no_phonemes_is_input_error(text):
    with pytest.raises(InputError):
        text_to_ids(text, ID_MAP)
