"""All-pairs tables: every value of every switch meets every value of every other switch in some
row, in far fewer rows than the full product (pairwise testing; most faults take at most two
settings to show).

Greedy and deterministic, as AETG (Cohen et al. 1997) without its random candidates: each new row
starts from the first pair not yet covered and fills the other switches one by one with the value
that covers the most new pairs, the first value on a tie. Rows late in the table, where little is
left to cover, therefore take each switch's first value: list the default first.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def pairs_of(row: Sequence[int]) -> set[tuple[int, int, int, int]]:
    """The (switch i, value index, switch j, value index) pairs, i < j, that a row of value
    indices covers."""
    return {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(row)), 2)}


def _gain(row: Sequence[int | None], k: int, v: int, uncovered: set) -> int:
    """How many uncovered pairs value index `v` of switch `k` makes with the row's set values."""
    return sum(
        ((k, v, m, row[m]) if k < m else (m, row[m], k, v)) in uncovered
        for m in range(len(row))
        if row[m] is not None and m != k
    )


def all_pairs(domains: Sequence[Sequence]) -> list[tuple]:
    """Rows (one value per domain) covering every pair of values of two domains."""
    n = len(domains)
    uncovered = {
        (i, a, j, b)
        for i, j in itertools.combinations(range(n), 2)
        for a in range(len(domains[i]))
        for b in range(len(domains[j]))
    }
    rows = []
    while uncovered:
        i, a, j, b = min(uncovered)
        row: list[int | None] = [None] * n
        row[i], row[j] = a, b
        for k in range(n):
            if row[k] is None:
                gains = [_gain(row, k, v, uncovered) for v in range(len(domains[k]))]
                row[k] = gains.index(max(gains))  # the first value on a tie
        uncovered -= pairs_of(row)
        rows.append(tuple(row))
    return [tuple(domains[k][v] for k, v in enumerate(row)) for row in rows]


def uncovered_pairs(domains: Sequence[Sequence], rows: Sequence[Sequence]) -> list[tuple]:
    """The (switch i, value, switch j, value) pairs no row covers (empty for an all-pairs table)."""
    seen = set()
    for row in rows:
        seen |= pairs_of([domains[k].index(v) for k, v in enumerate(row)])
    return [
        (i, domains[i][a], j, domains[j][b])
        for i, j in itertools.combinations(range(len(domains)), 2)
        for a in range(len(domains[i]))
        for b in range(len(domains[j]))
        if (i, a, j, b) not in seen
    ]
