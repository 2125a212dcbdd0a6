"""One rule derives every random stream's seed from the run's: the values runs were seeded with stay."""

from __future__ import annotations

from smart_tuner.seeds import derived_seed


def test_the_derived_seeds_are_the_values_runs_were_seeded_with():
    assert derived_seed(7, 3) == 7 * 1_000_003 + 3
    assert derived_seed(2, 7 + 5) == 7 + 1_000_003 * 2 + 5
    assert derived_seed(0, 9) == 9 and derived_seed(4) == 4
