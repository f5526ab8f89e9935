"""Text -> phonemes -> phoneme ids, the way Piper does it (rhasspy/piper-phonemize
`phonemize_eSpeak` and `phonemes_to_ids`), with the `espeak-ng` program instead of the
library.

Piper asks espeak-ng for IPA one clause at a time and appends the clause's terminator
as a phoneme: "." "?" "!" end a sentence; "," ":" ";" are kept followed by a space.
Phonemes are single Unicode codepoints after NFD decomposition; "(en)"-style language
switch flags are dropped. Ids per sentence: "^", "_", then each known phoneme followed
by "_", then "$" (unknown phonemes are skipped, as Piper does). Each sentence is
synthesized on its own.

Difference from Piper: clause boundaries are found here (a run of . , ; : ! ? followed
by whitespace or the end of the text) rather than inside espeak-ng, so an abbreviation
such as "Dr. No" starts a new clause after "Dr.".
"""
from __future__ import annotations

import shutil
import subprocess
import unicodedata
from collections.abc import Mapping, Sequence

from edgeformer.errors import InputError, UnsupportedError

# piper-phonemize eSpeakPhonemeConfig: terminator -> phonemes appended to the clause
_TERMINATOR_PHONEMES = {".": ".", "?": "?", "!": "!", ",": ", ", ":": ": ", ";": "; "}
_SENTENCE_END = {".", "?", "!"}
# symbols that carry no sound: a text made only of these has nothing to say
NON_SPEECH = set(" .,;:!?'\"()-_^$")
PAD, BOS, EOS = "_", "^", "$"


def espeak_binary() -> str:
    """Path of `espeak-ng`; UnsupportedError says how to install it if missing."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UnsupportedError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng); "
                               "it is needed to turn text into phonemes")
    return exe


def split_clauses(text: str) -> list[tuple[str, str]]:
    """(clause text, terminator) pairs; the terminator is the last punctuation mark of
    the run that ends the clause ("" for a clause that ends the text without one)."""
    out: list[tuple[str, str]] = []
    start, i, n = 0, 0, len(text)
    while i < n:
        if text[i] in _TERMINATOR_PHONEMES:
            j = i
            while j < n and text[j] in _TERMINATOR_PHONEMES:
                j += 1
            if j == n or text[j].isspace():
                out.append((text[start:j], text[j - 1]))
                start = i = j
                continue
            i = j
            continue
        i += 1
    if text[start:].strip():
        out.append((text[start:], ""))
    return out


def _espeak_ipa(clause: str, voice: str) -> str:
    """espeak-ng's IPA for one clause (its lines joined by spaces)."""
    try:
        r = subprocess.run([espeak_binary(), "-q", "--ipa", "-v", voice], input=clause.encode("utf-8"),
                           capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise InputError("espeak-ng timed out phonemizing the text") from None
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip()
        raise UnsupportedError(f"espeak-ng failed for voice {voice!r}: {err or 'exit ' + str(r.returncode)}")
    return " ".join(line.strip() for line in r.stdout.decode("utf-8").splitlines() if line.strip())


def _drop_language_flags(ipa: str) -> str:
    """Remove "(xx)" language switch flags espeak puts around foreign words."""
    out, inside = [], False
    for ch in ipa:
        if inside:
            inside = ch != ")"
        elif ch == "(":
            inside = True
        else:
            out.append(ch)
    return "".join(out)


def phonemize(text: str, voice: str = "en-us") -> list[list[str]]:
    """Sentences of phonemes (single codepoints) for `text`, as Piper builds them."""
    sentences: list[list[str]] = []
    current: list[str] | None = None
    for clause, term in split_clauses(text):
        ipa = unicodedata.normalize("NFD", _drop_language_flags(_espeak_ipa(clause, voice)))
        if current is None:
            current = []
            sentences.append(current)
        current.extend(ipa)
        current.extend(_TERMINATOR_PHONEMES.get(term, ""))
        if term in _SENTENCE_END:
            current = None
    return sentences


def phoneme_ids(phonemes: Sequence[str], id_map: Mapping[str, Sequence[int]]) -> list[int]:
    """Piper's `phonemes_to_ids` with BOS, EOS and a pad after every phoneme."""
    for sym in (PAD, BOS, EOS):
        if sym not in id_map:
            raise InputError(f"the voice's phoneme_id_map has no {sym!r} symbol")
    ids = [*id_map[BOS], *id_map[PAD]]
    for p in phonemes:
        if p in id_map:
            ids.extend(id_map[p])
            ids.extend(id_map[PAD])
    ids.extend(id_map[EOS])
    return ids


def text_to_ids(text: str, id_map: Mapping[str, Sequence[int]], voice: str = "en-us") -> list[list[int]]:
    """Phoneme ids per sentence. InputError if the text has no speakable phoneme (empty,
    only punctuation, or only symbols espeak-ng does not read)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("nothing to say: the text is empty")
    out = []
    for sent in phonemize(text, voice):
        if any(p in id_map and p not in NON_SPEECH for p in sent):
            out.append(phoneme_ids(sent, id_map))
    if not out:
        raise InputError(f"nothing to say: no phonemes in {text[:80]!r}")
    return out
