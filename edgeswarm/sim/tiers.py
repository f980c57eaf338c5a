"""Access-link tiers: what fraction of users has which download and upload rate.

The lab caps its peers and the simulator gives its viewers upload rates from
these tables, so both speak about the same population.  The shipped tables
are those of Huang et al. (seed 001): AT&T users in Table 1 (download
measured, upload inferred from AT&T's packages) and Verizon users in Table 3
("3000 and up" is taken as 3000).  Rates are kbit/s, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeswarm.errors import EdgeswarmError


@dataclass(frozen=True)
class Tier:
    down_kbps: float
    up_kbps: float
    share: float  # fraction of users, the table's shares sum to 1


TABLES: dict[str, tuple[Tier, ...]] = {
    "att": (
        Tier(768, 128, 0.1576),
        Tier(1500, 384, 0.3478),
        Tier(3000, 512, 0.3158),
        Tier(6000, 768, 0.1789),
    ),
    "verizon": (
        Tier(768, 128, 0.3185),
        Tier(3000, 768, 0.6815),
    ),
}


class TierError(EdgeswarmError, ValueError):
    pass


def table(name: str) -> tuple[Tier, ...]:
    try:
        tiers = TABLES[name.lower()]
    except KeyError:
        raise TierError(f"unknown tier table {name!r}; known: {', '.join(sorted(TABLES))}") from None
    return tiers


def shares(tiers: tuple[Tier, ...]) -> np.ndarray:
    """Shares normalised to sum exactly 1 (the paper's percentages sum to 100.01)."""
    p = np.array([t.share for t in tiers], dtype=float)
    return p / p.sum()


def sample(tiers: tuple[Tier, ...], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(down, up) kbit/s for n users drawn independently: for the simulator's large populations."""
    idx = rng.choice(len(tiers), size=n, p=shares(tiers))
    return np.array([t.down_kbps for t in tiers])[idx], np.array([t.up_kbps for t in tiers])[idx]


def apportion(tiers: tuple[Tier, ...], n: int) -> list[Tier]:
    """n users split by largest remainder, then interleaved: a lab of 12 peers gets the table's
    proportions as closely as 12 allows, the same every run, and any prefix of the list is mixed."""
    quota = shares(tiers) * n
    counts = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    out: list[Tier] = []
    given = np.zeros(len(tiers))
    for _ in range(n):  # each next user goes to the tier furthest behind its quota
        i = int(np.argmax((counts - given) / np.maximum(counts, 1)))
        given[i] += 1
        out.append(tiers[i])
    return out
