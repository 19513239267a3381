"""Per-contributor aggregation over audits (proof/aggregate.py): pure, seeded statistics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flopnet.proof.aggregate import audits_for_confidence, audits_to_separate


def test_audits_for_confidence_matches_the_binomial() -> None:
    assert audits_for_confidence(1.0) == 1
    assert audits_for_confidence(0.0) is None
    assert audits_for_confidence(0.5) == 7  # 1 - 0.5**7 = 0.992 >= 0.99 > 1 - 0.5**6
    assert audits_for_confidence(0.9, target=0.99) == 2
    with pytest.raises(ValueError):
        audits_for_confidence(1.5)


@given(st.floats(min_value=0.001, max_value=0.999), st.floats(min_value=0.5, max_value=0.999))
def test_the_count_is_the_fewest_that_reaches_the_target(p: float, target: float) -> None:
    n = audits_for_confidence(p, target)
    assert n is not None
    assert 1 - (1 - p) ** n >= target - 1e-12
    if n > 1:
        assert 1 - (1 - p) ** (n - 1) < target + 1e-12


def test_an_average_separates_a_shift_one_audit_cannot() -> None:
    # Honest values spread over 0..1; the cheat's over 0.3..1.3: every single cheat value lies
    # inside the honest range's reach, but averages of a few separate.
    honest = [i / 100 for i in range(101)]
    cheat = [0.3 + i / 100 for i in range(101)]
    sep = audits_to_separate(honest, cheat, trials=500, seed=1)
    assert sep.audits is not None and 2 <= sep.audits <= 64
    assert sep.detection >= 0.99
    # The limit is above every honest average it drew: an honest contributor is never flagged.
    assert sep.limit >= sum(honest) / len(honest)
    again = audits_to_separate(honest, cheat, trials=500, seed=1)
    assert again == sep  # seeded: reproducible


def test_identical_distributions_never_separate() -> None:
    values = [0.1, 0.5, 0.9]
    sep = audits_to_separate(values, values, max_audits=8, trials=200)
    assert sep.audits is None and sep.detection < 0.99
