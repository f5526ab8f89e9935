"""Stop strings: cut exactly before the first stop string, across piece boundaries, and
hold back only text that could still start one. Reference: `str.find` on the whole text."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.runtime.stops import StopMatcher


def _reference(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops) if i != -1]
    return (text[:min(hits)], True) if hits else (text, False)


def _run(pieces: list[str], stops: list[str]) -> tuple[str, bool, list[str]]:
    m = StopMatcher(stops)
    out, seen = [], ""
    for p in pieces:
        seen += p
        r = m.feed(p)
        out.append(r.text)
        if r.stopped:
            return "".join(out), True, out
        # invariant: released + held == seen, and what is held could still start a stop
        assert "".join(out) + m.held == seen
        assert m.held == "" or any(s.startswith(m.held) and s != m.held for s in stops)
        # and nothing is held that cannot start one: the longest such suffix, no more
        for n in range(len(m.held) + 1, min(len(seen), max(map(len, stops), default=0)) + 1):
            assert not any(s.startswith(seen[-n:]) and s != seen[-n:] for s in stops)
    out.append(m.flush())
    return "".join(out), False, out


def test_examples():
    assert _run(["Hello", " wor", "ld", "!"], ["world"])[:2] == ("Hello ", True)
    assert _run(["a<", "|e", "nd|>", "tail"], ["<|end|>"])[:2] == ("a", True)
    # a false start is released as soon as it stops matching
    text, stopped, parts = _run(["ab<|", "x", "y"], ["<|end|>"])
    assert (text, stopped) == ("ab<|xy", False) and parts[:2] == ["ab", "<|x"]
    # earliest stop wins, even if another completes in the same piece
    assert _run(["xx", "BBA", "A"], ["AA", "BB"])[:2] == ("xx", True)
    # the stop string inside a single piece, and the stop at the very start
    assert _run(["one STOP two"], ["STOP"])[:2] == ("one ", True)
    assert _run(["STOP"], ["STOP"])[:2] == ("", True)
    # overlapping prefix: "aab" with stop "ab" — the second a starts the match
    assert _run(["a", "a", "b"], ["ab"])[:2] == ("a", True)
    # no stops: everything passes straight through
    assert _run(["x", "y"], [])[2] == ["x", "y", ""]


@pytest.mark.parametrize("seed", range(30))
def test_random_against_find(seed):
    rng = np.random.default_rng(seed)
    alphabet = list("abc<|>é")
    text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 60))))
    stops = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 5)))) for _ in range(int(rng.integers(1, 4)))]
    cuts = sorted(set(rng.integers(0, len(text) + 1, size=int(rng.integers(0, 20))).tolist()))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    got, stopped, _ = _run(pieces, stops)
    assert (got, stopped) == _reference(text, stops)
