"""Tests for smart_tuner.tts.alignment (attention-alignment metrics)."""

from __future__ import annotations

import math

import pytest
import torch

from smart_tuner.tts.alignment import (
    alignment_metrics,
    coverage,
    diagonality,
    focus,
    ideal_diagonal,
    length_mask,
    mean_alignment_metrics,
    monotonicity,
)

KEYS = ("diagonality", "focus", "monotonicity", "coverage")


# ---------------------------------------------------------------------------
# Helpers


def single(a: torch.Tensor) -> dict[str, float]:
    """Metrics of one unpadded (T, N) alignment as floats."""
    T, N = a.shape
    out = alignment_metrics(a.unsqueeze(0), torch.tensor([N]), torch.tensor([T]))
    return {k: v.item() for k, v in out.items()}


def random_alignment(T: int, N: int, gen: torch.Generator, sharp: float = 3.0) -> torch.Tensor:
    """A random (T, N) alignment whose rows are softmax distributions."""
    return torch.softmax(sharp * torch.randn(T, N, generator=gen), dim=1)


def reversed_diagonal(T: int, N: int) -> torch.Tensor:
    return ideal_diagonal(T, N).flip(dims=(1,))


def stuck(T: int, N: int, token: int) -> torch.Tensor:
    a = torch.zeros(T, N)
    a[:, token] = 1.0
    return a


def pad_batch(items: list[torch.Tensor], T: int, N: int, fill: torch.Tensor):
    """Embed (T_b, N_b) items top-left into ``fill`` (B, T, N); return batch and lengths."""
    batch = fill.clone()
    for b, a in enumerate(items):
        batch[b, : a.shape[0], : a.shape[1]] = a
    text_lengths = torch.tensor([a.shape[1] for a in items])
    dec_lengths = torch.tensor([a.shape[0] for a in items])
    return batch, text_lengths, dec_lengths


def reference_metrics(a: torch.Tensor, band: float = 0.1, threshold: float = 0.5) -> dict:
    """Naive loop implementation of the definitions, for one unpadded (T, N) item."""
    T, N = a.shape
    a = a.double().tolist()
    total = sum(map(sum, a))
    inside = sum(
        a[t][n]
        for t in range(T)
        for n in range(N)
        if abs((n + 0.5) / N - (t + 0.5) / T) <= band + 1e-9
    )
    peaks = [max(row) for row in a]
    argmax = [row.index(max(row)) for row in a]
    steps = [argmax[t] >= argmax[t - 1] for t in range(1, T)]
    received = [sum(a[t][n] for t in range(T)) for n in range(N)]
    return {
        "diagonality": inside / total if total > 0 else 0.0,
        "focus": sum(peaks) / T,
        "monotonicity": sum(steps) / len(steps) if steps else 1.0,
        "coverage": sum(r >= threshold * T / N for r in received) / N,
    }


# Items of assorted shapes: T > N, T < N, T == N, single step, single token.
SHAPES = [(40, 30), (25, 12), (7, 19), (1, 5), (33, 1), (48, 48)]


# ---------------------------------------------------------------------------
# Helpers of the module


def test_length_mask():
    mask = length_mask(torch.tensor([0, 2, 4]), 4)
    expected = torch.tensor(
        [[False] * 4, [True, True, False, False], [True] * 4]
    )
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("sigma", [None, 0.05])
@pytest.mark.parametrize("T,N", [(40, 30), (30, 40), (10, 10)])
def test_ideal_diagonal_is_row_stochastic(T, N, sigma):
    a = ideal_diagonal(T, N, sigma)
    assert a.shape == (T, N)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(T))
    # The peak of every row sits at the hard diagonal position (soft: up to a tie
    # between two neighbouring tokens, which floor() breaks upwards).
    hard = ((torch.arange(T) + 0.5) * N / T).floor().long()
    assert (a.argmax(dim=1) - hard).abs().max() <= (0 if sigma is None else 1)


# ---------------------------------------------------------------------------
# Known alignments


@pytest.mark.parametrize("T,N", [(40, 30), (30, 30), (100, 17), (200, 50)])
def test_perfect_diagonal_more_steps_than_tokens(T, N):
    m = single(ideal_diagonal(T, N))
    assert m["diagonality"] > 0.95
    assert m["focus"] == pytest.approx(1.0)
    assert m["monotonicity"] == pytest.approx(1.0)
    assert m["coverage"] == pytest.approx(1.0)


@pytest.mark.parametrize("T,N", [(30, 40), (20, 60), (50, 51)])
def test_perfect_diagonal_more_tokens_than_steps(T, N):
    m = single(ideal_diagonal(T, N))
    assert m["diagonality"] > 0.95
    assert m["focus"] == pytest.approx(1.0)
    assert m["monotonicity"] == pytest.approx(1.0)
    # Each step visits a distinct token, so exactly T of the N tokens get mass.
    assert m["coverage"] == pytest.approx(T / N)


def test_soft_diagonal():
    m = single(ideal_diagonal(80, 40, sigma=0.02))
    assert m["diagonality"] > 0.95
    assert m["monotonicity"] == pytest.approx(1.0)
    assert m["coverage"] == pytest.approx(1.0)
    assert 0.2 < m["focus"] < 1.0  # spread out, so not one-hot


@pytest.mark.parametrize("band", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("T,N", [(40, 30), (30, 40), (100, 100)])
def test_uniform_attention(T, N, band):
    m = single(torch.full((T, N), 1.0 / N))
    assert m["focus"] == pytest.approx(1.0 / N)
    # Uniform mass: the in-band share is the band's area, about 2 * band - band^2.
    d = diagonality(torch.full((1, T, N), 1.0 / N), torch.tensor([N]), torch.tensor([T]), band)
    assert d.item() == pytest.approx(2 * band - band**2, abs=0.05)
    assert m["diagonality"] < 0.3
    assert m["coverage"] == pytest.approx(1.0)


def test_reversed_diagonal_more_steps_than_tokens():
    T, N = 40, 30
    m = single(reversed_diagonal(T, N))
    assert m["diagonality"] < 0.3
    # Steps that linger on a token are not backwards; every other step is.
    hard = ((torch.arange(T) + 0.5) * N / T).floor().long()
    lingering = (hard[1:] == hard[:-1]).sum().item()
    assert lingering == T - N
    assert m["monotonicity"] == pytest.approx(lingering / (T - 1))
    assert m["monotonicity"] < 0.3


@pytest.mark.parametrize("T,N", [(30, 40), (30, 30), (20, 60)])
def test_reversed_diagonal_low_monotonicity(T, N):
    m = single(reversed_diagonal(T, N))
    assert m["diagonality"] < 0.3
    assert m["monotonicity"] < 0.1


@pytest.mark.parametrize("which", ["first", "middle"])
@pytest.mark.parametrize("T,N", [(40, 30), (30, 40), (80, 20)])
def test_stuck_attention(T, N, which):
    token = 0 if which == "first" else N // 2
    m = single(stuck(T, N, token))
    assert m["coverage"] <= 1.0 / N + 1e-6
    assert m["diagonality"] < 0.3
    assert m["focus"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------
# Batching and padding


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_implementation(seed):
    gen = torch.Generator().manual_seed(seed)
    for T, N in SHAPES:
        a = random_alignment(T, N, gen)
        got = single(a)
        want = reference_metrics(a)
        for key in KEYS:
            assert got[key] == pytest.approx(want[key], abs=1e-5), (key, T, N)


def _padding_case(fill_kind: str):
    gen = torch.Generator().manual_seed(123)
    items = [random_alignment(T, N, gen) for T, N in SHAPES]
    items += [ideal_diagonal(37, 21), reversed_diagonal(20, 29), stuck(15, 9, 4)]
    B, T, N = len(items), 64, 70  # larger than every item in both dimensions
    if fill_kind == "large":
        fill = 1e3 + 1e6 * torch.rand(B, T, N, generator=gen)
    else:  # non-finite garbage must be ignored too
        fill = torch.full((B, T, N), float("nan"))
        fill[:, ::2] = float("inf")
    return items, pad_batch(items, T, N, fill)


@pytest.mark.parametrize("fill_kind", ["large", "nonfinite"])
def test_padding_invariance_and_batch_equals_items(fill_kind):
    items, (batch, text_lengths, dec_lengths) = _padding_case(fill_kind)
    batched = alignment_metrics(batch, text_lengths, dec_lengths)
    for key in KEYS:
        assert batched[key].shape == (len(items),)
        assert batched[key].dtype == torch.float32
        alone = torch.tensor([single(a)[key] for a in items])
        torch.testing.assert_close(batched[key], alone, msg=key)


def test_batch_results_do_not_depend_on_neighbours():
    items, (batch, text_lengths, dec_lengths) = _padding_case("large")
    full = alignment_metrics(batch, text_lengths, dec_lengths)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))
    shuffled = alignment_metrics(batch[order], text_lengths[order], dec_lengths[order])
    for key in KEYS:
        torch.testing.assert_close(shuffled[key], full[key][order], msg=key)


def test_lengths_beyond_tensor_are_clamped_and_empty_items_are_finite():
    a = ideal_diagonal(12, 8).unsqueeze(0).repeat(3, 1, 1)
    out = alignment_metrics(a, torch.tensor([8, 99, 8]), torch.tensor([12, 99, 0]))
    for key in KEYS:
        assert torch.isfinite(out[key]).all(), key
        assert out[key][0] == out[key][1], key  # over-long lengths == full lengths
    # An item without decoder steps has no mass; monotonicity is vacuously 1.
    assert out["diagonality"][2] == 0.0
    assert out["focus"][2] == 0.0
    assert out["monotonicity"][2] == 1.0
    assert out["coverage"][2] == 0.0


def test_individual_functions_match_alignment_metrics():
    _items, (batch, text_lengths, dec_lengths) = _padding_case("large")
    out = alignment_metrics(batch, text_lengths, dec_lengths, band=0.15)
    args = (batch, text_lengths, dec_lengths)
    torch.testing.assert_close(out["diagonality"], diagonality(*args, band=0.15))
    torch.testing.assert_close(out["focus"], focus(*args))
    torch.testing.assert_close(out["monotonicity"], monotonicity(*args))
    torch.testing.assert_close(out["coverage"], coverage(*args))


def test_mean_alignment_metrics():
    _items, (batch, text_lengths, dec_lengths) = _padding_case("large")
    per_item = alignment_metrics(batch, text_lengths, dec_lengths)
    means = mean_alignment_metrics(batch, text_lengths, dec_lengths)
    assert set(means) == set(KEYS)
    for key in KEYS:
        assert isinstance(means[key], float)
        assert means[key] == pytest.approx(per_item[key].mean().item())


# ---------------------------------------------------------------------------
# Parameters and dtypes


@pytest.mark.parametrize("seed", [0, 1])
def test_diagonality_is_monotone_in_band(seed):
    gen = torch.Generator().manual_seed(seed)
    items, (batch, text_lengths, dec_lengths) = _padding_case("large")
    batch[0, :40, :30] = random_alignment(40, 30, gen, sharp=1.0)
    bands = torch.linspace(0.0, 1.0, 41).tolist()
    values = torch.stack([diagonality(batch, text_lengths, dec_lengths, band=b) for b in bands])
    assert (values[1:] >= values[:-1] - 1e-6).all()
    assert (values[0] < values[-1]).any()  # the band actually matters
    # A band of the whole unit square holds all of the mass.
    torch.testing.assert_close(values[-1], torch.ones(len(items)))


def test_band_edge_is_inclusive():
    # T == N == 10: neighbouring cells are exactly 0.1 apart, so with band 0.1 the
    # band holds the diagonal and both off-diagonals: (10 + 2 * 9) / 100 cells.
    a = torch.full((1, 10, 10), 0.1)
    d = diagonality(a, torch.tensor([10]), torch.tensor([10]), band=0.1)
    assert d.item() == pytest.approx(0.28)


def test_argmax_metrics_ignore_padding_for_negative_scores():
    # Log-domain scores are negative, so zeroed padding would beat every valid token
    # unless the max/argmax is restricted to valid tokens.
    gen = torch.Generator().manual_seed(7)
    items = [random_alignment(T, N, gen).log() for T, N in SHAPES]
    batch, text_lengths, dec_lengths = pad_batch(items, 64, 70, torch.zeros(len(items), 64, 70))
    for fn in (focus, monotonicity):
        alone = torch.cat(
            [fn(a.unsqueeze(0), torch.tensor([a.shape[1]]), torch.tensor([a.shape[0]])) for a in items]
        )
        torch.testing.assert_close(fn(batch, text_lengths, dec_lengths), alone)


def test_coverage_threshold():
    # Token 0 gets 3/4 of every step, the others share the rest.
    T, N = 20, 5
    a = torch.full((T, N), 0.25 / (N - 1))
    a[:, 0] = 0.75
    args = (a.unsqueeze(0), torch.tensor([N]), torch.tensor([T]))
    # Other tokens receive 0.0625 * T = 0.3125 of their fair share T / N.
    assert coverage(*args, threshold=0.3).item() == pytest.approx(1.0)
    assert coverage(*args, threshold=0.5).item() == pytest.approx(1.0 / N)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    _items, (batch, text_lengths, dec_lengths) = _padding_case("large")
    batch = batch.clamp(max=1e4)  # keep the garbage representable in float16
    low = alignment_metrics(batch.to(dtype), text_lengths, dec_lengths)
    # Reference: the same rounded values, evaluated in float32.
    ref = alignment_metrics(batch.to(dtype).float(), text_lengths, dec_lengths)
    for key in KEYS:
        assert low[key].dtype == torch.float32
        assert torch.isfinite(low[key]).all()
        torch.testing.assert_close(low[key], ref[key], msg=key)
    # And close to the full-precision values.
    full = alignment_metrics(batch, text_lengths, dec_lengths)
    for key in ("diagonality", "focus"):
        torch.testing.assert_close(low[key], full[key], atol=2e-2, rtol=0, msg=key)
    ideal = single(ideal_diagonal(40, 30, dtype=dtype))
    assert ideal["diagonality"] > 0.95 and math.isclose(ideal["monotonicity"], 1.0)
