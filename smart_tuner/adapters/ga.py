"""Guided-attention weight adapter, driven by validation diagonality at each evaluation (``adapters.ga.metric``:
teacher-forced, free-running, or the worse of the two).

    diagonality < critical:  weight *= critical_boost, up to critical_cap
    diagonality < low:       weight *= low_boost, up to low_cap
    diagonality > high:      weight *= decay, down to floor
A weight below ``floor`` is first raised to ``floor`` when diagonality is low (multiplying zero does nothing),
and is left alone when alignment is good. A weight already above a cap is never lowered by a boost rule.

Defaults fit the per-decoder-step normalization of the guided-attention term (smart_tuner.tts.tacotron2): a
misaligned batch scores about 0.5 and normalized mel losses are about 1, so a weight of 10 makes the term dominate
the loss (low_cap) and 20 (critical_cap) is an emergency measure; beyond that the mel loss no longer steers
training.
With alignment formed the term is about 0.03, so a floor of 1 costs nothing and keeps the attention anchored.
"""

from __future__ import annotations

import math

from ..config import GaAdapterConfig
from ..hooks import Decision, EvalStats
from .base import Adapter, diagonality_of

CONTROL = "ga_weight"  # the loss weight this adapter steers, as a model family names it (smart_tuner.tts)


class GuidedAttentionAdapter(Adapter):
    name = "ga"
    priority = 50

    def __init__(self, cfg: GaAdapterConfig):
        self.cfg = cfg

    def new_weight(self, weight: float, diagonality: float) -> tuple[float, str]:
        cfg = self.cfg
        if not math.isfinite(diagonality):
            return weight, ""
        if diagonality < cfg.low:
            critical = diagonality < cfg.critical
            boost, cap = (cfg.critical_boost, cfg.critical_cap) if critical else (cfg.low_boost, cfg.low_cap)
            level = f"{'critical' if critical else 'low'} diagonality {diagonality:.3f} < " \
                    f"{cfg.critical if critical else cfg.low:g}"
            if weight < cfg.floor:
                return cfg.floor, f"{level}: raised to the floor"
            return max(weight, min(weight * boost, cap)), f"{level}: boost x{boost:g} (cap {cap:g})"
        if diagonality > cfg.high and weight > cfg.floor:
            return max(weight * cfg.decay, cfg.floor), \
                f"diagonality {diagonality:.3f} > {cfg.high:g}: decay x{cfg.decay:g} (floor {cfg.floor:g})"
        return weight, ""

    def on_eval(self, stats: EvalStats) -> list[Decision]:
        if CONTROL not in stats.loss_weights:  # a model family without guided attention
            return []
        diagonality = diagonality_of(stats, self.cfg.metric)
        weight, reason = self.new_weight(stats.loss_weights[CONTROL], diagonality)
        if weight != stats.loss_weights[CONTROL]:
            return [Decision(CONTROL, weight, reason, diagonality)]
        return []
