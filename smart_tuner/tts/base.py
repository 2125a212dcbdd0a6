"""The model-family protocol: everything the trainer, the evaluation and inference ask of a text-to-mel model.

The trainer never names a family's losses, its layers or its decoder's step size. It asks the family to

- build the network for a symbol table (:meth:`ModelFamily.build`);
- run a training forward on a batch under the current loss weights (:meth:`ModelFamily.training_forward`):
  named, unweighted loss terms, their weighted total, the final mel prediction and, for attention models, the
  alignments with their valid lengths;
- name the loss weights the adapters may steer, with their starting values from the config
  (:meth:`ModelFamily.loss_weights`; Tacotron 2: ``ga_weight``);
- decode free-running (:meth:`ModelFamily.synthesize`), for evaluation and for speech.

``reconstruction_losses`` sum to the validation loss (independent of the steerable weights) and
``output_loss`` is the term that measures the final output, which a study reports. Mels are ``(B, M, T)``:
batch, mel channels, frames, normalized as the training targets are (see ``smart_tuner.data.dataset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data.dataset import Batch
from ..data.text import SymbolTable


@dataclass
class TrainingOutput:
    losses: dict[str, torch.Tensor]  # named scalar terms, unweighted
    total: torch.Tensor  # what backward() runs on: the terms under the current loss weights
    prediction: torch.Tensor  # (B, M, T) the final mel prediction
    alignments: torch.Tensor | None = None  # (B, Q, N): attention of each query step over the N text tokens
    alignment_lengths: torch.Tensor | None = None  # (B,) valid query steps of each alignment


@dataclass
class Synthesis:
    mel: torch.Tensor  # (B, M, T) the final mel prediction, T the longest item's frames
    mel_lengths: torch.Tensor  # (B,) frames of each item, up to its stop
    stopped: torch.Tensor  # (B,) bool: the item stopped by itself before the step limit
    alignments: torch.Tensor | None = None  # (B, Q, N)
    alignment_lengths: torch.Tensor | None = None  # (B,) query steps of each item, up to its stop


@dataclass
class ForeignWeights:
    kind: str  # the layout's name, e.g. "nvidia"
    state_dict: dict[str, torch.Tensor]  # under the family's parameter names
    symbols: SymbolTable  # the rows of the symbol tensors
    config: Config  # the model's sizes and its data conventions (text cleaning, mel standardization)


class ModelFamily:
    """Base class of the model families; subclasses are registered in ``smart_tuner.tts.FAMILIES``."""

    name = "family"
    reconstruction_losses: tuple[str, ...] = ()  # their sum is the validation loss
    output_loss = ""  # the term that measures the final output
    symbol_rows: tuple[str, ...] = ()  # parameters with one row per symbol: a warm start maps them by symbol

    def __init__(self, config: Config):
        self.config = config

    @property
    def frames_multiple(self) -> int:
        """Batches pad their frames to a multiple of this (a decoder that emits several frames per step)."""
        return 1

    def build(self, n_symbols: int) -> nn.Module:
        raise NotImplementedError

    def loss_weights(self) -> dict[str, float]:
        """The steerable loss weights and their starting values (adapters ask for these controls by name)."""
        return {}

    def training_forward(self, model: nn.Module, batch: Batch, weights: dict[str, float]) -> TrainingOutput:
        raise NotImplementedError

    def foreign_checkpoint(self, data: Any) -> ForeignWeights | None:
        """Weights of another project's checkpoint (already loaded safely) under this family's names, with its
        symbols and config, or None if ``data`` is not in a layout the family knows."""
        return None

    def synthesize(self, model: nn.Module, text: torch.Tensor, text_lengths: torch.Tensor,
                   max_frames: int | None = None) -> Synthesis:
        """Free-running decoding of padded token ids ``(B, N)``; ``max_frames`` caps the length (default: the
        family's own limit)."""
        raise NotImplementedError


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
