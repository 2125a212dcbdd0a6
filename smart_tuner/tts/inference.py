"""From a checkpoint to speech: load a trained model for use, and turn its mels back into audio.

A checkpoint carries everything inference needs (config, symbol table, mel statistics), so no corpus is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import AudioConfig, Config, from_dict
from ..data.audio import MelExtractor, griffin_lim
from ..data.dataset import MelStats
from ..data.text import SymbolTable
from ..errors import UserError
from . import build_family, nvidia
from . import checkpoint as ckpt
from .base import ModelFamily

GRIFFIN_LIM_ITERS = 32


class DeviceError(UserError, ValueError):
    """A device name that is not a device of this machine."""


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {name!r}: smart_tuner runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r}: CUDA is not available here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on the device asked for
    family: ModelFamily
    symbols: SymbolTable
    stats: MelStats  # to denormalize the model's mels
    config: Config


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A trained model from a checkpoint alone."""
    data = ckpt.load_any(path, map_location=device)
    if not ckpt.is_ours(data):
        if nvidia.nvidia_state_dict(data) is not None:
            raise ckpt.CheckpointError(f"{path}: an NVIDIA Tacotron 2 checkpoint; convert it first: python -m "
                                       f"smart_tuner convert nvidia {path} --out converted.pt")
        raise ckpt.CheckpointError(f"{path}: not a smart_tuner checkpoint (format {ckpt.FORMAT})")
    state = data
    config = from_dict(state["config"])
    family = build_family(config)
    symbols = SymbolTable.from_dict(state["symbols"])
    model = family.build(len(symbols)).to(device)
    ckpt.load_weights(model, state["model"], path)
    model.eval()
    return LoadedModel(model, family, symbols, MelStats.from_dict(state["mel_stats"]), config)


def min_vocodable_frames(audio: AudioConfig) -> int:
    """Griffin-Lim needs a few STFT windows: fewer frames than this give no audio."""
    return audio.n_fft // audio.hop_length + 1


def vocode_griffin_lim(log_mel: torch.Tensor, audio: AudioConfig, n_iter: int = GRIFFIN_LIM_ITERS) -> torch.Tensor:
    """A denormalized log-mel ``(n_mels, frames)`` as a waveform at ``audio.sample_rate``, by Griffin-Lim (a
    preview-quality vocoder; a neural vocoder takes the same mel)."""
    return griffin_lim(log_mel, MelExtractor.from_config(audio), n_iter=n_iter)
