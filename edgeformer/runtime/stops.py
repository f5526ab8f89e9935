"""Stop strings matched across token boundaries.

`StopMatcher.feed(piece)` takes each newly decoded piece of text and returns the text that
is safe to show. Text is held back only while it could still be the start of a stop
string; when a stop string completes, the output is cut exactly before it.

Why this is correct: after each call, the held-back text is the longest suffix of
everything seen that is a proper prefix of some stop string. A stop string that starts
inside already-released text would make a longer such suffix (or would have been found
whole), so released text can never become part of a match.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class StopResult:
    text: str          # text to release now
    stopped: bool      # a stop string completed; `text` ends right before it
    stop: str | None = None


class StopMatcher:
    """Incremental stop-string matcher. Not reusable after `stopped`."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self._max = max((len(s) for s in self.stops), default=0)
        self.stopped = False

    @property
    def held(self) -> str:
        """Text not yet released because it may be the start of a stop string."""
        return self._held

    def feed(self, piece: str) -> StopResult:
        """Add `piece`; return the text now safe to release and whether a stop completed."""
        if self.stopped:
            raise RuntimeError("StopMatcher.feed after a stop string matched")
        if not self.stops:
            return StopResult(piece, False)
        buf = self._held + piece
        # earliest start wins; at equal starts, the cut is the same whichever matched
        hit, which = -1, None
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and (hit == -1 or i < hit):
                hit, which = i, s
        if hit != -1:
            self.stopped = True
            self._held = ""
            return StopResult(buf[:hit], True, which)
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return StopResult(buf[:len(buf) - keep], False)

    def flush(self) -> str:
        """End of generation without a stop: release whatever was held back."""
        out, self._held = self._held, ""
        return out

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of a stop string."""
        for n in range(min(len(buf), self._max - 1), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
