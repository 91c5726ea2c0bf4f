"""Paired comparison of two models scored on the same items: the exact McNemar test.

Only the discordant items carry information: ``b`` items the first model gets right and the second
wrong, ``c`` items the other way round. Under the null hypothesis (both models equally accurate) each
discordant item falls either way with probability 1/2, so ``b ~ Binomial(b + c, 1/2)`` and the exact
two-sided p-value is

    p = min(1, 2 * sum_{k=0}^{min(b, c)} C(b + c, k) / 2^(b + c))

(p = 1 when there is no discordant item).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import comb


@dataclass(frozen=True)
class McNemar:
    """The 2 x 2 table of paired outcomes and the exact two-sided p-value."""

    both: int  # right under both models
    only_first: int  # b: right under the first model only
    only_second: int  # c: right under the second model only
    neither: int
    p_value: float


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant items (the module docstring's rule),
    computed in exact rational arithmetic so that large tables do not underflow."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(comb(n, k) for k in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def mcnemar(first: dict[str, bool], second: dict[str, bool]) -> McNemar:
    """The paired table of two models' per-item correctness (item key -> correct); both must score
    exactly the same items."""
    if first.keys() != second.keys():
        missing = sorted(first.keys() ^ second.keys())[:5]
        raise ValueError(f"the two runs scored different items (e.g. {', '.join(map(str, missing))})")
    cells = {(a, b): 0 for a in (True, False) for b in (True, False)}
    for key, right in first.items():
        cells[(bool(right), bool(second[key]))] += 1
    b, c = cells[(True, False)], cells[(False, True)]
    return McNemar(cells[(True, True)], b, c, cells[(False, False)], mcnemar_exact_p(b, c))
