"""Bounds on what an attempt leaves in the history: the response headers it keeps."""

from __future__ import annotations

import dataclasses

from ..models import Outcome

# the pair that replaces headers dropped over the cap, so a reader sees that some were
DROPPED_HEADER = "X-Tasks-Headers-Dropped"


def cap_headers(outcome: Outcome, max_bytes: int) -> Outcome:
    """``outcome`` with its response headers cut to ``max_bytes`` (names and values, in
    order; 0: no cap). What is dropped is counted in one last ``X-Tasks-Headers-Dropped``
    pair."""
    if max_bytes <= 0:
        return outcome
    kept: list[tuple[str, str]] = []
    size = 0
    for name, value in outcome.headers:
        size += len(name) + len(value)
        if size > max_bytes:
            dropped = len(outcome.headers) - len(kept)
            kept.append((DROPPED_HEADER, str(dropped)))
            return dataclasses.replace(outcome, headers=tuple(kept))
        kept.append((name, value))
    return outcome
