"""Attention-alignment metrics for Tacotron 2 (the single definition used everywhere).

All metrics take

* ``attn``         -- float tensor (B, T, N): weight of decoder step t on encoder token n,
* ``text_lengths`` -- int tensor (B,): number of valid tokens N_b,
* ``dec_lengths``  -- int tensor (B,): number of valid decoder steps T_b,

and return a float32 tensor (B,) with one value per item, all in [0, 1].
Only the valid block ``t < T_b, n < N_b`` of each item is read: padding may hold
anything (even inf/NaN) and never changes a result.  Everything is vectorized over
the batch and runs on any device; inputs of any float dtype are promoted to float32.

Metrics (a = attn[b], valid cells only; higher is better for all four):

* diagonality -- share of attention mass within a band around the diagonal::

      sum_{|x_n - y_t| <= band} a[t,n] / sum a[t,n],
      x_n = (n + 0.5) / N_b,  y_t = (t + 0.5) / T_b

  Cell centres make the measure symmetric in N and T.  Zero mass -> 0.
* focus -- mean over valid steps of ``max_n a[t,n]``: 1 for one-hot attention,
  1/N_b for uniform attention.
* monotonicity -- share of transitions t-1 -> t (t = 1..T_b-1) whose argmax token
  does not move backwards (``argmax_t >= argmax_{t-1}``).  Lingering on a token counts
  as monotone.  With fewer than two steps there is nothing to violate -> 1.
* coverage -- share of valid tokens whose received mass ``sum_t a[t,n]`` is at least
  ``threshold * T_b / N_b`` (by default half of a fair share), i.e. tokens not skipped.

Lengths larger than the tensor dimensions are clamped to them.  Empty items
(T_b == 0 or N_b == 0) score 0, except monotonicity, which is vacuously 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "alignment_metrics",
    "coverage",
    "diagonality",
    "focus",
    "ideal_diagonal",
    "length_mask",
    "mean_alignment_metrics",
    "monotonicity",
]

# Slack for the band test: cell centres that lie exactly on the band edge in exact
# arithmetic must not fall out of it because of float rounding.
_BAND_EPS = 1e-6


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Bool mask (B, max_len) that is True where ``index < lengths[b]``."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def ideal_diagonal(
    T: int,
    N: int,
    sigma: float | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A near-perfect (T, N) diagonal alignment whose rows sum to 1.

    ``sigma=None``: hard, one-hot at ``n = floor((t + 0.5) * N / T)``.
    Otherwise soft: ``a[t,n] ~ exp(-(x_n - y_t)^2 / (2 sigma^2))`` with the cell centres
    ``x_n = (n + 0.5) / N``, ``y_t = (t + 0.5) / T``, i.e. sigma is a fraction of the
    utterance (as in guided-attention losses), normalized over n.
    """
    if T <= 0 or N <= 0:
        raise ValueError(f"T and N must be positive, got T={T}, N={N}")
    t = torch.arange(T, device=device, dtype=torch.float64)
    if sigma is None:
        idx = ((t + 0.5) * N / T).floor().long().clamp_(max=N - 1)
        return torch.nn.functional.one_hot(idx, N).to(dtype)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    y = (t + 0.5) / T
    x = (torch.arange(N, device=device, dtype=torch.float64) + 0.5) / N
    logits = -((x.unsqueeze(0) - y.unsqueeze(1)) ** 2) / (2 * sigma**2)
    return torch.softmax(logits, dim=1).to(dtype)


# ---------------------------------------------------------------------------
# Shared preparation


def _prepare(attn: Tensor, text_lengths: Tensor, dec_lengths: Tensor):
    """Return float32 attention with padding zeroed, masks and clamped lengths."""
    if attn.dim() != 3:
        raise ValueError(f"attn must be (B, T, N), got shape {tuple(attn.shape)}")
    _, T, N = attn.shape
    attn = attn.float()
    n_len = text_lengths.to(attn.device, torch.long).clamp(0, N)
    t_len = dec_lengths.to(attn.device, torch.long).clamp(0, T)
    step_mask = length_mask(t_len, T)  # (B, T)
    token_mask = length_mask(n_len, N)  # (B, N)
    valid = step_mask.unsqueeze(2) & token_mask.unsqueeze(1)  # (B, T, N)
    # torch.where rather than multiplication: garbage such as inf * 0 would give NaN.
    attn = torch.where(valid, attn, torch.zeros((), device=attn.device))
    return attn, valid, step_mask, token_mask, n_len, t_len


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where den == 0."""
    den = den.to(num.dtype)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(num.dtype).tiny), 0.0)


def _argmax_tokens(attn: Tensor, valid: Tensor) -> Tensor:
    """Argmax over valid tokens per step, (B, T); ties go to the first token."""
    scores = torch.where(valid, attn, torch.full((), float("-inf"), device=attn.device))
    return scores.argmax(dim=2)


# ---------------------------------------------------------------------------
# Metrics


def diagonality(
    attn: Tensor, text_lengths: Tensor, dec_lengths: Tensor, band: float = 0.1
) -> Tensor:
    """Share of valid attention mass with ``|x_n - y_t| <= band``, (B,).

    ``sum_{valid, |x_n - y_t| <= band} a[t,n] / sum_{valid} a[t,n]`` where
    ``x_n = (n + 0.5) / N_b`` and ``y_t = (t + 0.5) / T_b``; 0 if there is no mass.
    """
    a, valid, _, _, n_len, t_len = _prepare(attn, text_lengths, dec_lengths)
    _, T, N = a.shape
    # Normalized cell centres; clamp avoids 0-division for empty items (masked anyway).
    y = (torch.arange(T, device=a.device) + 0.5) / t_len.clamp(min=1).unsqueeze(1)  # (B, T)
    x = (torch.arange(N, device=a.device) + 0.5) / n_len.clamp(min=1).unsqueeze(1)  # (B, N)
    in_band = (x.unsqueeze(1) - y.unsqueeze(2)).abs() <= band + _BAND_EPS  # (B, T, N)
    inside = torch.where(in_band & valid, a, 0.0).sum(dim=(1, 2))
    return _safe_div(inside, a.sum(dim=(1, 2)))


def focus(attn: Tensor, text_lengths: Tensor, dec_lengths: Tensor) -> Tensor:
    """Mean over valid steps of the max weight over valid tokens, (B,).

    ``(1 / T_b) * sum_{t < T_b} max_{n < N_b} a[t,n]``; 0 for empty items.
    """
    a, valid, _, _, _, t_len = _prepare(attn, text_lengths, dec_lengths)
    peak = torch.where(valid, a, float("-inf")).amax(dim=2)  # (B, T)
    # Padding steps (and steps of items without tokens) are all -inf: drop them.
    peak = torch.where(valid.any(dim=2), peak, 0.0)
    return _safe_div(peak.sum(dim=1), t_len)


def monotonicity(attn: Tensor, text_lengths: Tensor, dec_lengths: Tensor) -> Tensor:
    """Share of step transitions whose argmax token does not move backwards, (B,).

    ``(1 / (T_b - 1)) * #{t in 1..T_b-1 : argmax_n a[t,n] >= argmax_n a[t-1,n]}``
    (argmax over valid tokens); 1 when T_b < 2.
    """
    a, valid, step_mask, _, _, t_len = _prepare(attn, text_lengths, dec_lengths)
    idx = _argmax_tokens(a, valid)  # (B, T)
    forward = idx[:, 1:] >= idx[:, :-1]  # (B, T-1)
    # Transition t-1 -> t is valid iff step t is valid.
    ok = (forward & step_mask[:, 1:]).sum(dim=1).float()
    n_transitions = (t_len - 1).clamp(min=0)
    return torch.where(n_transitions > 0, _safe_div(ok, n_transitions), 1.0)


def coverage(
    attn: Tensor, text_lengths: Tensor, dec_lengths: Tensor, threshold: float = 0.5
) -> Tensor:
    """Share of valid tokens that receive at least ``threshold`` of a fair share, (B,).

    ``(1 / N_b) * #{n < N_b : sum_{t < T_b} a[t,n] >= threshold * T_b / N_b}``;
    0 for empty items.
    """
    a, _, _, token_mask, n_len, t_len = _prepare(attn, text_lengths, dec_lengths)
    received = a.sum(dim=1)  # (B, N); padding steps are already zero
    fair = t_len.float() / n_len.clamp(min=1).float()  # (B,)
    covered = (received >= threshold * fair.unsqueeze(1)) & token_mask
    # Without decoder steps the fair share is 0 and every token would pass.
    return torch.where(t_len > 0, _safe_div(covered.sum(dim=1).float(), n_len), 0.0)


METRICS = ("diagonality", "focus", "monotonicity", "coverage")  # the keys of alignment_metrics()


def alignment_metrics(
    attn: Tensor, text_lengths: Tensor, dec_lengths: Tensor, band: float = 0.1
) -> dict[str, Tensor]:
    """All four metrics per item: keys diagonality, focus, monotonicity, coverage."""
    return {
        "diagonality": diagonality(attn, text_lengths, dec_lengths, band=band),
        "focus": focus(attn, text_lengths, dec_lengths),
        "monotonicity": monotonicity(attn, text_lengths, dec_lengths),
        "coverage": coverage(attn, text_lengths, dec_lengths),
    }


@torch.no_grad()
def mean_alignment_metrics(
    attn: Tensor, text_lengths: Tensor, dec_lengths: Tensor, band: float = 0.1
) -> dict[str, float]:
    """Batch means of :func:`alignment_metrics` as Python floats (one host sync)."""
    per_item = alignment_metrics(attn, text_lengths, dec_lengths, band=band)
    means = torch.stack([v.mean() for v in per_item.values()]).tolist()
    return dict(zip(per_item.keys(), means))
