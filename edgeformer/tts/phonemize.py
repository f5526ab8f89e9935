"""Text -> phonemes -> phoneme ids, the way Piper does it (rhasspy/piper-phonemize
`phonemize_eSpeak` and `phonemes_to_ids`).

eSpeak NG comes from, in this order:
1. the `piper-phonemize-fix` wheel (a dependency of edgeformer; rhasspy's own
   `piper-phonemize` wheel has the same layout and works too): Piper's build of espeak-ng
   (rhasspy/espeak-ng, which adds `espeak_TextToPhonemesWithTerminator`) with its data,
   loaded with ctypes. The wheel's Python extension, which also loads onnxruntime, is never
   imported. This runs Piper's own loop, so the phonemes are Piper's: espeak-ng reads one
   clause per call and reports the punctuation that ended it. One difference: espeak-ng
   keeps the character it read past a text's last clause for its next call (after "x.."
   Piper's next text starts with "dot"); here that character is read and dropped first.
2. the `espeak-ng` program on PATH, one run per clause, with the clause boundaries found
   here by `split_clauses`, which follows espeak-ng's ReadClause for plain text. Its
   phonemes are Piper's where that espeak-ng's dictionary is Piper's (1.51's is), except
   for clauses of punctuation only, which a run on their own may read out ("colon").
3. neither: UnsupportedError saying what to install.
Other espeak-ng builds (e.g. the `espeakng-loader` wheel, stock 1.52) are not used: their
dictionaries changed (e.g. "four" /fˈoːɹ/ became /fˈɔːɹ/), so the shipped voices would
hear phonemes they were not trained on.

Piper's rules: the voice is set with espeak_SetVoiceByName, each clause's IPA
(phonememode 0x02) is NFD-decomposed into single codepoints, mapped by the language's
phoneme map (only "pt-br": c -> k), and "(en)"-style language switch flags are dropped.
The clause terminator is appended as phonemes: "." "?" "!" ; "," ":" ";" followed by a
space; nothing for other clause ends (end of text, a blank line, an ellipsis, a clause
cut for length). A terminator of sentence type (. ? !, a blank line, the end of the
text) ends the sentence. Ids per sentence: "^", "_", then each known phoneme followed by
"_", then "$" (unknown phonemes are skipped, as Piper does). Each sentence is synthesized
on its own; a sentence with nothing to say (e.g. only a closing quote) is left out.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import shutil
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from edgeformer.errors import InputError, UnsupportedError

BUNDLED_WHEEL = "piper-phonemize-fix"      # pip name of the wheel that bundles Piper's espeak-ng
_BUNDLED_PACKAGE = "piper_phonemize"       # its import name (never imported, only located)

# espeak-ng's clause terminators (translate.h) and what Piper appends for each
_CLAUSE_TYPE_SENTENCE = 0x00080000
_PUNCTUATION_MASK = 0x000FFFFF
_CLAUSE_PERIOD, _CLAUSE_QUESTION, _CLAUSE_EXCLAMATION = 0x80028, 0x82028, 0x8302D
_CLAUSE_COMMA, _CLAUSE_COLON, _CLAUSE_SEMICOLON = 0x41014, 0x4001E, 0x4101E
_PIPER_PUNCTUATION = {_CLAUSE_PERIOD: ".", _CLAUSE_QUESTION: "?", _CLAUSE_EXCLAMATION: "!",
                      _CLAUSE_COMMA: ", ", _CLAUSE_COLON: ": ", _CLAUSE_SEMICOLON: "; "}
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000              # espeak_Initialize returns an error instead of exit()
_PHONEMES_IPA = 0x02
_CHARS_AUTO = 0
_EMPTY = ctypes.create_string_buffer(b"")

# piper-phonemize DEFAULT_PHONEME_MAP: language -> phoneme -> phonemes
_PHONEME_MAP = {"pt-br": {"c": "k"}}
# symbols that carry no sound: a text made only of these has nothing to say
NON_SPEECH = set(" .,;:!?'\"()-_^$")
PAD, BOS, EOS = "_", "^", "$"

# split_clauses (the espeak-ng program path): punctuation -> (Piper's phonemes, ends a sentence)
_ELLIPSIS = "\u2026"
_CLAUSE_PUNCTUATION = {".": (".", True), "?": ("?", True), "!": ("!", True), ",": (", ", False),
                       ":": (": ", False), ";": ("; ", False), "\u2014": ("; ", False), _ELLIPSIS: ("", False)}
_BRACKETS = set("()[]{}<>\"'`\u00ab\u00bb\u300a\u300b") | {chr(c) for c in range(0x2014, 0x2020)}


class Clause(NamedTuple):
    """One clause: its text (or IPA), the phonemes Piper appends for its terminator, and
    whether the terminator ends the sentence."""

    text: str
    punctuation: str
    ends_sentence: bool


class _EspeakLibrary:
    """libespeak-ng with espeak_TextToPhonemesWithTerminator (Piper's build), via ctypes.
    espeak-ng keeps global state, so every call holds one lock."""

    def __init__(self, lib_path: Path, data_path: Path) -> None:
        self.path = lib_path
        lib = ctypes.CDLL(str(lib_path))
        to_phonemes = lib.espeak_TextToPhonemesWithTerminator      # AttributeError: a stock build
        to_phonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_int)]
        to_phonemes.restype = ctypes.c_char_p
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), _INITIALIZE_DONT_EXIT) < 0:
            raise OSError(f"espeak_Initialize failed with the data in {data_path}")
        self._lib, self._to_phonemes, self._lock = lib, to_phonemes, threading.Lock()

    def clauses(self, text: str, voice: str) -> list[Clause]:
        """Piper's loop: one call per clause until espeak-ng has read the whole text."""
        buf = ctypes.create_string_buffer(text.encode("utf-8", "replace"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        terminator = ctypes.c_int(0)
        out: list[Clause] = []
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode("utf-8", "replace")) != 0:
                raise UnsupportedError(f"eSpeak NG ({self.path.name}) has no voice {voice!r}")
            # espeak-ng keeps the character it read past the end of a clause for the next call,
            # even past the end of the text ("x.." leaves a "."): read it here, or this text
            # would start with it (Piper's phonemizer then says "dot")
            self._to_phonemes(ctypes.byref(ctypes.c_void_p(ctypes.addressof(_EMPTY))), _CHARS_AUTO,
                              _PHONEMES_IPA, ctypes.byref(terminator))
            while ptr.value is not None:
                before = ptr.value
                ipa = self._to_phonemes(ctypes.byref(ptr), _CHARS_AUTO, _PHONEMES_IPA, ctypes.byref(terminator))
                if ipa is None:
                    raise InputError("eSpeak NG could not decode the text")
                t = terminator.value
                out.append(Clause(ipa.decode("utf-8", "replace"), _PIPER_PUNCTUATION.get(t & _PUNCTUATION_MASK, ""),
                                  t & _CLAUSE_TYPE_SENTENCE == _CLAUSE_TYPE_SENTENCE))
                if ptr.value is not None and ptr.value <= before:      # never seen; Piper would loop forever
                    break
        return out


def _bundled_candidates() -> tuple[list[Path], Path] | None:
    """(libespeak-ng files, espeak-ng-data) of an installed piper-phonemize wheel, or None."""
    try:
        spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    data = pkg / "espeak-ng-data"
    # piper-phonemize-fix: piper_phonemize/lib/; rhasspy's piper-phonemize: piper_phonemize.libs/
    suffix = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")
    libs = sorted((p for d in (pkg / "lib", pkg.parent / f"{_BUNDLED_PACKAGE}.libs")
                   for p in (d.glob("*espeak-ng*") if d.is_dir() else ()) if suffix in p.name and p.is_file()),
                  key=lambda p: (len(p.name), p.name))
    if not libs or not (data / "phontab").is_file():
        return None
    return libs, data


@functools.lru_cache(maxsize=1)
def _bundled_library() -> tuple[_EspeakLibrary | None, str]:
    """(the bundled library, "") or (None, why not)."""
    found = _bundled_candidates()
    if found is None:
        return None, f"the {BUNDLED_WHEEL} wheel is not installed"
    libs, data = found
    errors = []
    for lib in libs:
        try:
            return _EspeakLibrary(lib, data), ""
        except (OSError, AttributeError) as e:
            errors.append(f"{lib.name}: {e}")
    return None, f"the {BUNDLED_WHEEL} wheel's espeak-ng did not load ({'; '.join(errors)})"


def espeak_binary() -> str:
    """Path of the `espeak-ng` program; UnsupportedError says what to install if missing."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UnsupportedError(_missing_message())
    return exe


def _missing_message() -> str:
    why = _bundled_library()[1]
    return (f"eSpeak NG is needed to turn text into phonemes and none was found: {why}, and the espeak-ng "
            f"program is not on PATH. Install the wheel (pip install {BUNDLED_WHEEL}; scripts/setup.sh does) "
            "or the program (Debian/Ubuntu: apt-get install espeak-ng)")


def espeak_source() -> str:
    """Which eSpeak NG `phonemize` uses: 'library <path>' (the bundled wheel) or
    'program <path>'. UnsupportedError when there is neither."""
    lib = _bundled_library()[0]
    if lib is not None:
        return f"library {lib.path}"
    return f"program {espeak_binary()}"


def espeak_available() -> bool:
    """True when `phonemize` has an eSpeak NG to run."""
    return _bundled_library()[0] is not None or shutil.which("espeak-ng") is not None


def split_clauses(text: str) -> list[Clause]:
    """Clauses as espeak-ng's ReadClause finds them in plain text (for the espeak-ng
    program, which does not report them): a clause ends at . , ; : ? ! (an em dash counts
    as ";", "..." as an ellipsis) followed by a space, a bracket or quote, or the end of the
    text; punctuation right after it is swallowed and the first mark decides ("?!" is a
    question, the "," of "al., the" is dropped). Not a clause end: a "." before a lower-case
    word on the same line (an abbreviation), punctuation before any letter or digit of the
    clause, "." before "'s". A blank line ends a sentence with no punctuation phoneme; an
    ellipsis ends a clause with none and without a sentence end."""
    out: list[Clause] = []
    start, i, n, any_alnum = 0, 0, len(text), False
    while i < n:
        c = text[i]
        if c.isalnum():
            any_alnum, i = True, i + 1
            continue
        if c == "\n":
            j, newlines = i + 1, 0
            while j < n and text[j].isspace():
                newlines += text[j] == "\n"
                j += 1
            if newlines:                                  # a blank line: paragraph
                out.append(Clause(text[start:i], "", True))
                start, i, any_alnum = j, j, False
                continue
            i += 1
            continue
        j, kind = i + 1, c
        if text.startswith("...", i):                     # three or more dots; ".." is a full stop
            while j < n and text[j] == ".":
                j += 1
            kind = _ELLIPSIS
        if kind not in _CLAUSE_PUNCTUATION:
            i += 1
            continue
        while j < n and (text[j] in _CLAUSE_PUNCTUATION):  # swallowed, as espeak-ng's ?! loop does
            j += 1
        end = j >= n or text[j].isspace() or text[j] in _BRACKETS or kind == _ELLIPSIS
        if end:
            k, newlines = j, 0
            while k < n and text[k].isspace():
                newlines += text[k] == "\n"
                k += 1
            following = text[k] if k < n else " "
            if newlines == 0:
                if kind == "." and following == "'" and text[k + 1:k + 2] == "s":
                    end = False                           # "U.S.A.'s"
                if (kind == "." and following.islower()) or not any_alnum:
                    end = False
            if end:
                punct, sentence = ("", True) if newlines > 1 else _CLAUSE_PUNCTUATION[kind]
                out.append(Clause(text[start:j], punct, sentence))
                start, any_alnum = k, False               # the spaces after it are read with it
            j = k
        i = j
    if text[start:].strip():
        out.append(Clause(text[start:], "", True))
    return out


def _espeak_ipa(clause: str, voice: str) -> str:
    """The espeak-ng program's IPA for one clause (its lines, one per clause it found, joined
    as Piper joins clauses that end without punctuation)."""
    try:
        r = subprocess.run([espeak_binary(), "-q", "--ipa", "-v", voice], input=clause.encode("utf-8", "replace"),
                           capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise InputError("espeak-ng timed out phonemizing the text") from None
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip()
        raise UnsupportedError(f"espeak-ng failed for voice {voice!r}: {err or 'exit ' + str(r.returncode)}")
    return "".join(line.strip() for line in r.stdout.decode("utf-8", "replace").splitlines())


def _drop_language_flags(phonemes: str) -> str:
    """Remove "(xx)" language switch flags espeak puts around foreign words."""
    out, inside = [], False
    for ch in phonemes:
        if inside:
            inside = ch != ")"
        elif ch == "(":
            inside = True
        else:
            out.append(ch)
    return "".join(out)


def phonemize(text: str, voice: str = "en-us") -> list[list[str]]:
    """Sentences of phonemes (single codepoints) for `text`, as Piper builds them."""
    lib = _bundled_library()[0]
    if lib is not None:
        clauses = lib.clauses(text, voice)
    else:
        espeak_binary()
        clauses = [Clause(_espeak_ipa(c.text, voice), c.punctuation, c.ends_sentence) for c in split_clauses(text)]
    mapping = _PHONEME_MAP.get(voice, {})
    sentences: list[list[str]] = []
    current: list[str] | None = None
    for ipa, punctuation, ends_sentence in clauses:
        if current is None:
            current = []
            sentences.append(current)
        nfd = unicodedata.normalize("NFD", ipa)
        current.extend(_drop_language_flags("".join(mapping.get(p, p) for p in nfd)))
        current.extend(punctuation)
        if ends_sentence:
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
    """Phoneme ids per sentence (sentences with nothing to say left out). InputError if the
    text has no speakable phoneme (empty, only punctuation, or only symbols espeak-ng
    does not read)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("nothing to say: the text is empty")
    out = []
    for sent in phonemize(text, voice):
        if any(p in id_map and p not in NON_SPEECH for p in sent):
            out.append(phoneme_ids(sent, id_map))
    if not out:
        raise InputError(f"nothing to say: no phonemes in {text[:80]!r}")
    return out
