"""Text-to-mel model families behind one protocol (``base.py``), alignment metrics, and inference.

A family is chosen by ``model.family``; :func:`build_family` is the one place that maps the name to a class.
"""

from __future__ import annotations

from ..config import Config, ConfigError
from .base import ModelFamily, Synthesis, TrainingOutput, count_parameters
from .tacotron2 import Tacotron2Family

FAMILIES: dict[str, type[ModelFamily]] = {Tacotron2Family.name: Tacotron2Family}

__all__ = ["FAMILIES", "ModelFamily", "Synthesis", "TrainingOutput", "build_family", "count_parameters"]


def build_family(config: Config) -> ModelFamily:
    """The model family of ``config`` (``model.family``)."""
    try:
        return FAMILIES[config.model.family](config)
    except KeyError:
        raise ConfigError(f"model.family: unknown family {config.model.family!r}; choose one of "
                          f"{', '.join(FAMILIES)}") from None
