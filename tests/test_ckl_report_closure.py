"""`metacl.ckl.report.closure`: the oracle-gap column of every meta-learner table (one formula for all)."""

import pytest

from metacl.ckl.report import closure


def test_closure_is_the_share_of_the_oracle_gain():
    assert closure(0.4, 0.4, 0.6) == 0.0
    assert closure(0.6, 0.4, 0.6) == 1.0
    assert closure(0.55, 0.4, 0.6) == pytest.approx(0.75)
    assert closure(0.3, 0.4, 0.6) == pytest.approx(-0.5)  # worse than the reference: negative, not clipped


def test_no_headroom_gives_none_not_a_division():
    assert closure(0.5, 0.4, 0.4) is None
    assert closure(0.5, 0.4, 0.3) is None
