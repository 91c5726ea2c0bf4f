"""The exact McNemar test: p-values against hand-computed values and against a brute-force enumeration
of every outcome of the discordant items (no binomial coefficients involved)."""

from __future__ import annotations

import itertools
import math

import pytest

from mpo.grading.statistics import mcnemar, mcnemar_exact_p


def enumerated_p(b: int, c: int) -> float:
    """Two-sided p by listing all 2^(b+c) equally likely ways the discordant items could fall: the share
    of outcomes at least as lopsided as the observed one (|#first - #second| >= |b - c|)."""
    n = b + c
    if n == 0:
        return 1.0
    outcomes = list(itertools.product((0, 1), repeat=n))
    extreme = sum(1 for o in outcomes if abs(2 * sum(o) - n) >= abs(b - c))
    return extreme / len(outcomes)


def test_hand_computed_values():
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)  # 2 * C(5,0) / 2^5
    assert mcnemar_exact_p(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.109375
    assert mcnemar_exact_p(8, 2) == pytest.approx(0.109375)  # symmetric
    assert mcnemar_exact_p(3, 3) == 1.0  # capped at 1
    assert mcnemar_exact_p(0, 0) == 1.0


@pytest.mark.parametrize(("b", "c"), [(0, 1), (1, 4), (4, 9), (6, 6), (7, 0), (2, 11)])
def test_matches_enumeration(b, c):
    assert mcnemar_exact_p(b, c) == pytest.approx(min(1.0, enumerated_p(b, c)), rel=1e-12)


def test_large_tables_do_not_underflow():
    # 20 vs 200 discordant items: the tail is about 1e-38; log-space sum as an independent computation
    b, c = 20, 200
    n = b + c
    logs = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
        for k in range(b + 1)
    ]
    top = max(logs)
    expected = 2 * math.exp(top) * sum(math.exp(x - top) for x in logs)
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-9)
    assert 0 < mcnemar_exact_p(b, c) < 1e-30


def test_table_from_per_item_correctness():
    first = {"a": True, "b": True, "c": False, "d": False, "e": False, "f": True}
    second = {"a": True, "b": False, "c": True, "d": True, "e": False, "f": True}
    t = mcnemar(first, second)
    assert (t.both, t.only_first, t.only_second, t.neither) == (2, 1, 2, 1)
    assert t.p_value == pytest.approx(1.0)  # 2 * (C(3,0) + C(3,1)) / 8 = 1
    with pytest.raises(ValueError, match="different items"):
        mcnemar(first, {**second, "g": True})
    with pytest.raises(ValueError, match="must be >= 0"):
        mcnemar_exact_p(-1, 3)
