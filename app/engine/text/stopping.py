"""Stop conditions: stop token ids, and stop strings matched on text with the smallest hold-back.

Invariant: no character of a stop string is ever emitted. `StopMatcher` holds back only the
longest tail of the pending text that is still a prefix of some stop string and releases it as
soon as it cannot be; so the concatenation of everything it emits equals the full text cut at the
first stop string to complete (or the full text, after `flush()`), however the text was split.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def check_token_stop(
    token_id: int, eos_ids: Collection[int], stop_token_ids: Collection[int], ignore_eos: bool
) -> bool:
    """Whether `token_id` ends the sequence; `ignore_eos` silences EOS but not explicit stop ids."""
    return token_id in stop_token_ids or (not ignore_eos and token_id in eos_ids)


class StopMatcher:
    """Finds stop strings in one request's streamed text; one instance per request."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        if any(not s for s in stop_strings):
            raise ValueError("stop strings must not be empty")
        self._stops = tuple(dict.fromkeys(stop_strings))  # dedupe, keep order
        self._held = ""
        self._stopped = False
        self.matched: str | None = None  # the stop string that ended the text, once one has

    @property
    def stopped(self) -> bool:
        return self._stopped

    def push(self, delta: str) -> tuple[str, bool]:
        """Add new text; return (text safe to emit now, whether a stop string completed).

        Once stopped, further pushes return ("", True).
        """
        if self._stopped:
            return "", True
        if not self._stops:
            return delta, False
        text = self._held + delta
        found = self._first_stop(text)
        if found is not None:
            cut, self.matched = found
            self._stopped, self._held = True, ""
            return text[:cut], True
        keep = self._partial_tail_len(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """Release held-back text when the sequence ends for another reason."""
        held, self._held = self._held, ""
        return held

    def _first_stop(self, text: str) -> tuple[int, str] | None:
        """(start, stop string) of the stop string that completes first reading left to right, or None.

        Ties on the end go to the earliest start, so the longer stop hides all of its text.
        """
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        return None if best is None else (best[1], best[2])

    def _partial_tail_len(self, text: str) -> int:
        return partial_tail_len(text, self._stops)


def partial_tail_len(text: str, markers: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some marker (it may still
    become that marker, so it is held back)."""
    longest = min(len(text), max(len(m) for m in markers) - 1)
    for size in range(longest, 0, -1):
        tail = text[-size:]
        if any(len(m) > size and m.startswith(tail) for m in markers):
            return size
    return 0
