"""A HiFi-GAN generator (Kong et al. 2020) that loads jik876/hifi-gan's generator checkpoints: the vocoder that
turns Tacotron 2 mels into speech, where Griffin-Lim is the preview-quality default.

Facts of jik876/hifi-gan's layout (``models.py``, ``inference.py``, ``config_v*.json``; no code taken):

- A generator checkpoint is ``{"generator": state_dict}``; its ``config.json`` lies beside it (inference reads that
  one) with ``resblock`` ("1" or "2"), ``upsample_rates``, ``upsample_kernel_sizes``, ``upsample_initial_channel``,
  ``resblock_kernel_sizes``, ``resblock_dilation_sizes``, ``num_mels``, ``sampling_rate``, ``hop_size``, ``n_fft``,
  ``win_size``, ``fmin``, ``fmax``.
- Every convolution is weight-normed (``weight_g``, ``weight_v``; ``parametrizations.weight.original0/1`` when saved
  with torch's newer parametrization): ``conv_pre`` (mels -> C, kernel 7), ``ups.i`` (transposed, C/2^i ->
  C/2^(i+1), stride ``upsample_rates[i]``, padding (k - u) / 2), ``resblocks.(i * K + j)`` (K per upsampling, one
  per resblock kernel size), ``conv_post`` (-> 1, kernel 7), with biases.
- Forward: conv_pre; per upsampling leaky ReLU (slope 0.1), the transposed convolution, the mean of its K resblocks;
  then leaky ReLU (slope 0.01), conv_post, tanh. Resblock "1": per dilation d, x + conv(lrelu(conv_d(lrelu(x))));
  "2": per dilation, x + conv_d(lrelu(x)); "same" padding d (k - 1) / 2. Output samples in [-1, 1], one
  ``hop_size`` per mel frame.
- Mels: natural log of Slaney mel magnitudes clamped at 1e-5, the convention of our features and NVIDIA's.

The weight norm is folded into plain weights at load (w = g v / |v|, the norm over all dimensions but the first),
so inference runs plain convolutions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AudioConfig
from ..data.dataset import LOG_FLOOR  # the padding of a batch: silence in the log-mel convention
from ..errors import UserError

LRELU_SLOPE = 0.1


class VocoderError(UserError, ValueError):
    """The vocoder cannot be used as asked; the message names the file or the setting."""


@dataclass(frozen=True)
class HifiGanConfig:
    """The fields of a hifi-gan ``config.json`` the generator and the mel convention need."""

    resblock: str
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    num_mels: int
    sampling_rate: int
    hop_size: int

    @classmethod
    def read(cls, path: Path) -> HifiGanConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VocoderError(f"{path}: no such vocoder config (hifi-gan's config.json; name it with "
                               "--vocoder-config)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise VocoderError(f"{path}: not a readable JSON vocoder config ({exc})") from None
        if not isinstance(data, dict):
            raise VocoderError(f"{path}: a hifi-gan config is a JSON object")
        missing = [f for f in cls.__dataclass_fields__ if f not in data]
        if missing:
            raise VocoderError(f"{path}: not a hifi-gan config: missing {', '.join(missing)}")
        try:
            config = cls(str(data["resblock"]), *(tuple(int(v) for v in data[k]) for k in
                                                  ("upsample_rates", "upsample_kernel_sizes")),
                         int(data["upsample_initial_channel"]), tuple(int(v) for v in data["resblock_kernel_sizes"]),
                         tuple(tuple(int(v) for v in d) for d in data["resblock_dilation_sizes"]),
                         int(data["num_mels"]), int(data["sampling_rate"]), int(data["hop_size"]))
        except (TypeError, ValueError) as exc:
            raise VocoderError(f"{path}: a field of the hifi-gan config has the wrong type ({exc})") from None
        config.check(path)
        return config

    def check(self, path: Path) -> None:
        if self.resblock not in ("1", "2"):
            raise VocoderError(f"{path}: resblock {self.resblock!r} is not \"1\" or \"2\"")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes) or not self.upsample_rates:
            raise VocoderError(f"{path}: upsample_rates and upsample_kernel_sizes must be lists of one length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes) or not self.resblock_kernel_sizes:
            raise VocoderError(f"{path}: resblock_kernel_sizes and resblock_dilation_sizes must be of one length")
        product = math.prod(self.upsample_rates)
        if product != self.hop_size:
            raise VocoderError(f"{path}: the upsample_rates multiply to {product}, not hop_size {self.hop_size}")


def _conv(channels_in: int, channels_out: int, kernel: int, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(channels_in, channels_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)


class ResBlock(nn.Module):
    """Resblock "1" (``convs1`` dilated, ``convs2`` not, in pairs) or "2" (``convs`` dilated, one each)."""

    def __init__(self, kind: str, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.kind = kind
        if kind == "1":
            self.convs1 = nn.ModuleList(_conv(channels, channels, kernel, d) for d in dilations)
            self.convs2 = nn.ModuleList(_conv(channels, channels, kernel) for _ in dilations)
        else:
            self.convs = nn.ModuleList(_conv(channels, channels, kernel, d) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "1":
            for dilated, plain in zip(self.convs1, self.convs2):
                x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        else:
            for dilated in self.convs:
                x = x + dilated(F.leaky_relu(x, LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """Log-mels ``(B, num_mels, frames)`` -> waveforms ``(B, 1, frames * hop_size)`` in [-1, 1]."""

    def __init__(self, cfg: HifiGanConfig):
        super().__init__()
        channels = cfg.upsample_initial_channel
        self.conv_pre = _conv(cfg.num_mels, channels, 7)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(channels >> i, channels >> (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            ResBlock(cfg.resblock, channels >> (i + 1), k, d)
            for i in range(len(self.ups)) for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = _conv(channels >> len(self.ups), 1, 7)
        self.kernels = len(cfg.resblock_kernel_sizes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.kernels:(i + 1) * self.kernels]
            x = sum(block(x) for block in blocks) / self.kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with every weight-normed pair (``weight_g``/``weight_v``, or the parametrization's
    ``original0``/``original1``) replaced by its plain ``weight``."""
    folded: dict[str, torch.Tensor] = {}
    pairs = {"weight_g": "weight_v", "parametrizations.weight.original0": "parametrizations.weight.original1"}
    for key, value in state.items():
        for g_name, v_name in pairs.items():
            if key.endswith(g_name):
                v = state[key[:-len(g_name)] + v_name]
                norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
                folded[key[:-len(g_name)] + "weight"] = value * v / norm
                break
            if key.endswith(v_name):
                break
        else:
            folded[key] = value
    return folded


class Vocoder:
    """A loaded generator with its config; :meth:`__call__` vocodes a batch of log-mels."""

    def __init__(self, generator: Generator, cfg: HifiGanConfig, path: Path):
        self.generator, self.cfg, self.path = generator.eval(), cfg, path

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def check_fits(self, audio: AudioConfig, what: str) -> None:
        """A clear error when the vocoder's sampling rate, hop or mel count differ from ``what``'s (``audio``)."""
        theirs = {"sampling rate": self.cfg.sampling_rate, "hop": self.cfg.hop_size, "mel channels": self.cfg.num_mels}
        ours = {"sampling rate": audio.sample_rate, "hop": audio.hop_length, "mel channels": audio.n_mels}
        differ = [f"{k} {theirs[k]} against {ours[k]}" for k in theirs if theirs[k] != ours[k]]
        if differ:
            raise VocoderError(f"vocoder {self.path} does not fit {what}: {'; '.join(differ)}")

    @torch.no_grad()
    def __call__(self, mels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Waveforms (CPU, float) of log-mels ``(num_mels, frames)``, vocoded in one padded batch."""
        longest = max(m.shape[-1] for m in mels)
        batch = torch.full((len(mels), self.cfg.num_mels, longest), LOG_FLOOR, device=self.device)
        for i, mel in enumerate(mels):
            batch[i, :, :mel.shape[-1]] = mel.to(self.device, torch.float32)
        audio = self.generator(batch)[:, 0].float().cpu()
        return [audio[i, :mel.shape[-1] * self.cfg.hop_size] for i, mel in enumerate(mels)]


def load_vocoder(path: str | Path, config_path: str | Path | None = None, device: str | torch.device = "cpu"
                 ) -> Vocoder:
    """A jik876/hifi-gan generator checkpoint with its config (default: ``config.json`` beside it)."""
    path = Path(path)
    config_path = Path(config_path) if config_path else path.parent / "config.json"
    if not path.is_file():
        raise VocoderError(f"{path}: no such vocoder checkpoint")
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is not plain tensors, or not a torch file at all
        raise VocoderError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("generator"), dict):
        raise VocoderError(f"{path}: not a HiFi-GAN generator checkpoint (expected {{'generator': state_dict}}, "
                           "as jik876/hifi-gan's g_XXXXXXXX files hold)")
    cfg = HifiGanConfig.read(config_path)
    generator = Generator(cfg)
    try:
        generator.load_state_dict(fold_weight_norm(data["generator"]))
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()
        raise VocoderError(f"{config_path} does not fit the tensors of {path}: "
                           f"{' '.join(first[:3])[:400]}") from None
    return Vocoder(generator.to(device), cfg, path)
