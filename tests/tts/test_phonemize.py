"""Piper's phonemization rules (rhasspy/piper-phonemize src/phonemize.cpp, phoneme_ids.cpp)
with whichever eSpeak NG is found; expected values from piper-phonemize's own
src/python_test.py. Clause splitting for the espeak-ng program (split_clauses) against
espeak-ng's own, as the bundled library reports it."""
from __future__ import annotations

import pytest
from support.speech import needs_espeak

from edgeformer.errors import InputError
from edgeformer.tts import phonemize as ph
from edgeformer.tts.phonemize import (
    Clause,
    phoneme_ids,
    phonemize,
    split_clauses,
    text_to_ids,
)

needs_bundled = pytest.mark.skipif(ph._bundled_library()[0] is None, reason="the piper-phonemize-fix wheel is absent")

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
    # espeak-ng ReadClause: the first mark of a run decides ("?!" asks), the spaces after a
    # clause end are read with it, a "." before a lower-case word is an abbreviation
    assert split_clauses("Hi, you. 3.5 is ok?! yes") == [Clause("Hi,", ", ", False), Clause("you.", ".", True),
                                                          Clause("3.5 is ok?!", "?", True), Clause("yes", "", True)]
    assert split_clauses("Dr. No met Mr. and Mrs. Smith et al., then left.") == [
        Clause("Dr.", ".", True), Clause("No met Mr. and Mrs.", ".", True),
        Clause("Smith et al., then left.", ".", True)]
    # a quote after the mark ends the clause and starts the next one; "..." and a blank line
    assert split_clauses('"Go," he said, "now."') == [Clause('"Go,', ", ", False), Clause('" he said,', ", ", False),
                                                       Clause('"now.', ".", True), Clause('"', "", True)]
    assert split_clauses("so far... and then\n\nmore") == [Clause("so far...", "", False),
                                                           Clause("and then", "", True), Clause("more", "", True)]
    assert split_clauses("Hi.\n\nThere") == [Clause("Hi.", "", True), Clause("There", "", True)]
    assert split_clauses("U.S.A.'s rise. 7:45 a.m. on Friday") == [Clause("U.S.A.'s rise.", ".", True),
                                                                    Clause("7:45 a.m. on Friday", "", True)]
    assert split_clauses("") == []


CLAUSE_TEXTS = ["Hi, you. 3.5 is ok?! yes", '"Bring an umbrella," said Ruth, "it\'s going to pour."',
                "Mr. and Mrs. Lindqvist paid $12.50. Dr. Okafor, too!", "so far... and I'm lost.\n\nNew part",
                "According to Smith et al., the effect is small; see p. 4: it's tiny.", "Wait -- what?! No way!!",
                "Call at 9 p.m., please. U.S.. \n \n Next", "He whispered, 'Nobody must know.' Then left.",
                "Turn left on Elm St., then right. 1.5. Next", "e.g.. x? \"Yes\" (really). ok"]


@needs_bundled
@pytest.mark.parametrize("text", CLAUSE_TEXTS)
def test_split_clauses_ends_clauses_where_espeak_does(text):
    """split_clauses (used with the espeak-ng program) against the clause ends and
    terminators espeak-ng's own ReadClause reports through the bundled library."""
    lib = ph._bundled_library()[0]
    want = [(c.punctuation, c.ends_sentence) for c in lib.clauses(text, "en-us")]
    assert [(c.punctuation, c.ends_sentence) for c in split_clauses(text)] == want


@needs_bundled
def test_bundled_library_needs_no_program(monkeypatch):
    """With the wheel, the espeak-ng program is never looked for or run."""
    monkeypatch.setattr(ph.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(ph.subprocess, "run", lambda *a, **k: pytest.fail("the espeak-ng program was run"))
    monkeypatch.setenv("PATH", "")
    assert ph.espeak_source().startswith("library ")
    assert "".join(phonemize("Hello, world.")[0]) == "həlˈoʊ, wˈɜːld."


@needs_bundled
def test_no_leftover_from_the_previous_text():
    """espeak-ng keeps the character it read past a clause for its next call: after "x.."
    Piper's phonemizer starts the next text with "dot"; here each text stands alone."""
    alone = phonemize("Hello")
    phonemize("Go..")
    assert phonemize("Hello") == alone == [list("həlˈoʊ")]


def test_program_fallback_without_the_wheel(monkeypatch):
    """Without the wheel, the espeak-ng program is run on split_clauses' clauses."""
    monkeypatch.setattr(ph, "_bundled_library", lambda: (None, "the piper-phonemize-fix wheel is not installed"))
    if ph.shutil.which("espeak-ng") is None:
        pytest.skip("the espeak-ng program is not installed")
    calls = []
    real_run = ph.subprocess.run
    monkeypatch.setattr(ph.subprocess, "run", lambda cmd, **k: calls.append(k["input"]) or real_run(cmd, **k))
    assert ph.espeak_source().startswith("program ")
    sents = phonemize("Hello, world. How are you?")
    assert ["".join(s) for s in sents] == ["həlˈoʊ, wˈɜːld.", "hˈaʊ ɑːɹ juː?"]
    assert calls == [b"Hello,", b"world.", b"How are you?"]


def test_neither_wheel_nor_program_is_a_clear_error(monkeypatch):
    from edgeformer.errors import UnsupportedError
    monkeypatch.setattr(ph, "_bundled_library", lambda: (None, "the piper-phonemize-fix wheel is not installed"))
    monkeypatch.setattr(ph.shutil, "which", lambda *a, **k: None)
    assert not ph.espeak_available()
    with pytest.raises(UnsupportedError, match="pip install piper-phonemize-fix.*espeak-ng"):
        phonemize("Hello.")


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
