"""Seeds derived from the run's seed, so that every random stream is reproducible from ``train.seed`` (or a
study's ``--seed``) alone.

One rule everywhere: :func:`derived_seed` folds its parts together with one large prime, so two streams of one run
(an epoch's shuffle, a rank's dropout, a sampler reopened on a study) never start from the same seed.
"""

from __future__ import annotations

from functools import reduce

MAX_SEED = 2**32 - 1  # numpy's range; torch's is wider. Seeds a user gives (train.seed, --seed) are 0..MAX_SEED
STRIDE = 1_000_003  # a prime far above any step, epoch, rank or trial count that follows it


def derived_seed(*parts: int) -> int:
    """``parts`` folded left to right: ``derived_seed(a, b) == a * STRIDE + b``, and so on for more parts."""
    return reduce(lambda seed, part: seed * STRIDE + part, parts)
