"""Online adapters: small pure deciders the trainer consults after each step and evaluation."""

from __future__ import annotations

from ..config import Config
from .base import Adapter
from .collapse import AttentionCollapseAdapter
from .ga import GuidedAttentionAdapter
from .grad import GradientHealthAdapter
from .lr import LearningRateAdapter

__all__ = [
    "Adapter",
    "AttentionCollapseAdapter",
    "GradientHealthAdapter",
    "GuidedAttentionAdapter",
    "LearningRateAdapter",
    "build_adapters",
]


def build_adapters(config: Config) -> list[Adapter]:
    """The enabled adapters of a config, with their coefficients from ``adapters.*``."""
    adapters: list[Adapter] = []
    if config.adapters.lr.enabled:
        adapters.append(LearningRateAdapter(config.adapters.lr, config.train.lr))
    if config.adapters.ga.enabled:
        adapters.append(GuidedAttentionAdapter(config.adapters.ga))
    if config.adapters.collapse.enabled:
        adapters.append(AttentionCollapseAdapter(config.adapters.collapse))
    if config.adapters.grad.enabled:
        adapters.append(GradientHealthAdapter(config.adapters.grad))
    return adapters
