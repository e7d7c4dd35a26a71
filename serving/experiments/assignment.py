"""Arm assignment by a salted hash of the member id: stable, uniform, reproducible anywhere.

No assignment table is needed: anyone with the experiment's salt and arm shares recomputes a
member's arm (the report, an analyst's notebook, a replica that just started). The salt differs
per experiment so that arms of successive experiments are independent: without it the same
members would be held out every time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_SCALE = float(2**64)


def bucket(member_id: str, salt: str) -> float:
    """A member's position in [0, 1) for this salt: the first 8 bytes of SHA-256, scaled."""
    digest = hashlib.sha256(f"{salt}:{member_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign(member_id: str, salt: str, arms: Sequence[tuple[str, float]]) -> str:
    """The arm whose cumulative share interval holds the member's bucket.

    ``arms`` is ``[(name, share), ...]`` in a fixed order with shares summing to 1; the order is
    part of the experiment's definition (changing it would move members between arms).
    """
    u = bucket(member_id, salt)
    edge = 0.0
    for name, share in arms:
        edge += share
        if u < edge:
            return name
    return arms[-1][0]  # shares summing to 1 - 1e-12 must not leave a gap at the top


def assign_many(member_ids: Sequence[str] | np.ndarray, salt: str,
                arms: Sequence[tuple[str, float]]) -> np.ndarray:
    """Vectorised over members (for reports and simulations); same answer as :func:`assign`."""
    u = np.array([bucket(str(m), salt) for m in member_ids])
    edges = np.cumsum([share for _, share in arms])
    names = np.array([name for name, _ in arms], dtype=object)
    return names[np.minimum(np.searchsorted(edges, u, side="right"), len(arms) - 1)]
