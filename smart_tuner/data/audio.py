"""Audio I/O and log-mel features for Tacotron 2.

Everything here is plain numpy/scipy/torch: the mel filterbank is the
project's own (Slaney mel scale + Slaney area normalisation, i.e. what
``librosa.filters.mel(htk=False, norm="slaney")`` and NVIDIA's Tacotron 2
use), so neither librosa nor torchaudio is needed.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ..errors import UserError
from .corpus import MAX_ABS_SAMPLE, header_problem

__all__ = [
    "AudioError",
    "MelExtractor",
    "griffin_lim",
    "hz_to_mel",
    "load_wav",
    "mel_filterbank",
    "mel_to_hz",
    "save_wav",
    "trim_silence",
    "wav_bytes",
]

# Slaney mel scale constants: linear (200/3 Hz per mel) below 1 kHz,
# logarithmic above, with 27 mels per factor 6.4 in frequency.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # = 15
_LOG_STEP = math.log(6.4) / 27.0

# Floor used before the log, as in Tacotron 2 (dynamic_range_compression).
LOG_MEL_FLOOR = 1e-5


class AudioError(UserError, ValueError):
    """An audio file is unreadable, empty, or holds non-finite samples."""


# --------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------


def load_wav(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read any file soundfile understands as mono float32 at ``sample_rate``.

    Channels are averaged; a different file rate is converted with
    ``scipy.signal.resample_poly`` (polyphase, up/down reduced by their gcd).
    Raises :class:`AudioError` naming ``path`` if the file cannot be decoded,
    has zero frames, or contains NaN/inf.
    """
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    try:
        problem = header_problem(sf.info(os.fspath(path)).samplerate)  # before decoding and resampling
        if problem:
            raise AudioError(f"audio file {os.fspath(path)!r}: {problem}")
        data, file_rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (RuntimeError, OSError, TypeError, ValueError) as exc:
        # soundfile raises LibsndfileError (a RuntimeError) for garbage and
        # for missing files alike; one exception type keeps callers simple.
        raise AudioError(f"cannot read audio file {os.fspath(path)!r}: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError(f"audio file {os.fspath(path)!r} has zero frames")

    if not np.isfinite(data).all():
        raise AudioError(f"audio file {os.fspath(path)!r} contains NaN or inf samples")
    peak = float(np.abs(data).max())
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(f"audio file {os.fspath(path)!r} has absurd sample values (peak {peak:.3g}; full scale is "
                         f"1, at most {MAX_ABS_SAMPLE:g} is accepted)")
    wav = data.mean(axis=1)  # downmix first: resampling one channel is cheaper
    if file_rate != sample_rate:
        g = math.gcd(int(file_rate), int(sample_rate))
        from scipy.signal import resample_poly  # here: importing scipy.signal takes 1.4 s, most files need none

        wav = resample_poly(wav, int(sample_rate) // g, int(file_rate) // g)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if not np.isfinite(wav).all():
        raise AudioError(f"audio file {os.fspath(path)!r} contains NaN or inf samples")
    return wav


def _pcm_ready(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    return np.clip(np.nan_to_num(np.asarray(wav, dtype=np.float32)), -1.0, 1.0)


def save_wav(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write a mono waveform as 16-bit PCM, clipping to [-1, 1] first.

    The parent directory is created if needed (previews go to fresh run dirs).
    """
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    sf.write(os.fspath(path), _pcm_ready(wav), int(sample_rate), subtype="PCM_16")


def wav_bytes(wav: np.ndarray | torch.Tensor, sample_rate: int) -> bytes:
    """A mono waveform as the bytes of a 16-bit PCM WAV file (for the atomic writer)."""
    buffer = io.BytesIO()
    sf.write(buffer, _pcm_ready(wav), int(sample_rate), format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --------------------------------------------------------------------------
# Silence trimming
# --------------------------------------------------------------------------


def _frame_power(wav: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Mean square per centred frame (zero padding), via a cumulative sum."""
    pad = frame_length // 2
    sq = np.pad(wav.astype(np.float64) ** 2, (pad, pad))
    csum = np.concatenate(([0.0], np.cumsum(sq)))
    starts = np.arange(1 + len(wav) // hop_length) * hop_length
    energy = csum[starts + frame_length] - csum[starts]
    # Cumsum round-off can leave tiny negatives in silent stretches.
    return np.maximum(energy, 0.0) / frame_length


def trim_silence(
    wav: np.ndarray,
    top_db: float = 40.0,
    frame_length: int = 1024,
    hop_length: int = 256,
) -> np.ndarray:
    """Cut leading/trailing audio whose frame RMS is ``top_db`` below the peak.

    Same semantics as ``librosa.effects.trim``: frames are centred on
    ``t * hop_length``; a frame is kept when ``10*log10(ms / max(ms)) > -top_db``
    (``ms`` = mean square); the result spans from the first kept frame's
    centre to the last kept frame's centre + ``hop_length``.

    Digital silence (peak RMS of zero) and empty input are returned untouched,
    so the caller decides whether to drop the clip.
    """
    if top_db <= 0:
        raise ValueError(f"top_db must be > 0, got {top_db}")
    if frame_length <= 0 or hop_length <= 0:
        raise ValueError("frame_length and hop_length must be positive")
    wav = np.asarray(wav)
    if wav.size == 0:
        return wav
    power = _frame_power(wav, frame_length, hop_length)
    peak = power.max()
    if peak <= 0.0:
        return wav
    # Compare in the power domain: ms > peak * 10^(-top_db/10).
    keep = np.flatnonzero(power > peak * 10.0 ** (-top_db / 10.0))
    start = int(keep[0]) * hop_length
    end = min(len(wav), (int(keep[-1]) + 1) * hop_length)
    return wav[start:end]


# --------------------------------------------------------------------------
# Mel scale and filterbank
# --------------------------------------------------------------------------


def hz_to_mel(freq: Any) -> Any:
    """Slaney mel: ``3*f/200`` below 1 kHz, ``15 + 27*ln(f/1000)/ln(6.4)`` above."""
    f = np.asarray(freq, dtype=np.float64)
    mel = f / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    mel = np.where(f >= _MIN_LOG_HZ, log_part, mel)
    return float(mel) if mel.ndim == 0 else mel


def mel_to_hz(mel: Any) -> Any:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    hz = m * _F_SP
    log_part = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    hz = np.where(m >= _MIN_LOG_MEL, log_part, hz)
    return float(hz) if hz.ndim == 0 else hz


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> np.ndarray:
    """Triangular mel filterbank, shape ``(n_mels, n_fft // 2 + 1)``, float32.

    Formulas (Slaney / librosa ``htk=False, norm="slaney"``):

    * mel scale: ``m(f) = 3 f / 200`` for ``f < 1000`` Hz, else
      ``m(f) = 15 + 27 ln(f / 1000) / ln(6.4)``.
    * edges: ``n_mels + 2`` points ``f_0 .. f_{M+1}`` equally spaced in mel
      between ``m(fmin)`` and ``m(fmax)``, mapped back to Hz.
    * filter ``m`` (0-based) is a triangle over FFT bin frequencies
      ``f_k = k * sample_rate / n_fft``:
      ``w_m(f) = max(0, min((f - f_m) / (f_{m+1} - f_m),
      (f_{m+2} - f) / (f_{m+2} - f_{m+1})))``,
      i.e. 1 at ``f_{m+1}`` and 0 outside ``[f_m, f_{m+2}]``.
    * area normalisation: ``w_m *= 2 / (f_{m+2} - f_m)``, so each triangle
      has unit area in Hz (peak height ``2 / (f_{m+2} - f_m)``).
    """
    if fmax > sample_rate / 2:
        raise ValueError(f"fmax={fmax} exceeds Nyquist ({sample_rate / 2})")
    if not 0 <= fmin < fmax:
        raise ValueError(f"need 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))

    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs - lower) / (center - lower)
    falling = (upper - fft_freqs) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= 2.0 / (upper - lower)

    if not weights.any(axis=1).all():
        # Too many mels for this FFT size: narrow low filters miss every bin.
        warnings.warn(
            f"{int((~weights.any(axis=1)).sum())} of {n_mels} mel filters are empty; "
            "use a larger n_fft or fewer n_mels",
            stacklevel=2,
        )
    return weights.astype(np.float32)


# --------------------------------------------------------------------------
# Mel extraction
# --------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class MelExtractor:
    """Log-mel spectrogram, Tacotron 2 style: ``ln(max(fb @ |STFT|, 1e-5))``.

    The STFT uses a periodic Hann window of ``win_length`` (zero-padded to
    ``n_fft``), ``center=True`` with reflect padding, so a clip of ``N``
    samples gives ``1 + N // hop_length`` frames.
    """

    _FIELDS = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax")

    def __init__(
        self,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        n_mels: int = 80,
        fmin: float = 0.0,
        fmax: float | None = 8000.0,
    ) -> None:
        self.sample_rate = _positive_int("sample_rate", sample_rate)
        self.n_fft = _positive_int("n_fft", n_fft)
        self.hop_length = _positive_int("hop_length", hop_length)
        self.win_length = _positive_int("win_length", win_length)
        self.n_mels = _positive_int("n_mels", n_mels)
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length={win_length} must be <= n_fft={n_fft}")
        self.fmin = float(fmin)
        self.fmax = self.sample_rate / 2 if fmax is None else float(fmax)
        if self.fmax > self.sample_rate / 2:
            raise ValueError(f"fmax={fmax} exceeds Nyquist ({self.sample_rate / 2})")
        if not 0 <= self.fmin < self.fmax:
            raise ValueError(f"need 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")

        fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax)
        self.mel_basis = torch.from_numpy(fb)  # (n_mels, n_fft // 2 + 1)
        self.window = torch.hann_window(self.win_length, periodic=True)
        self._inv_basis: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> MelExtractor:
        """Build from any object (dataclass, namespace) or mapping with fields
        named like the constructor arguments; missing ones keep the defaults."""
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, d: getattr(cfg, k, d)
        sentinel = object()
        kwargs = {}
        for name in cls._FIELDS:
            value = get(name, sentinel)
            if value is not sentinel:
                kwargs[name] = value
        return cls(**kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._FIELDS)
        return f"{type(self).__name__}({args})"

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a clip of ``num_samples`` samples."""
        return 1 + num_samples // self.hop_length

    def inverse_basis(self) -> torch.Tensor:
        """Pseudo-inverse of the filterbank, ``(n_freqs, n_mels)`` (cached)."""
        if self._inv_basis is None:
            self._inv_basis = torch.linalg.pinv(self.mel_basis.double()).float()
        return self._inv_basis

    def _stft(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.stft(
            wav,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.to(wav.device),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )

    def __call__(self, wav: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(samples,) -> (n_mels, frames)`` or ``(batch, samples) -> (batch, n_mels, frames)``.

        A batch must be equal-length (pad first); padded tails give extra
        frames that the caller should mask using :meth:`num_frames`.
        """
        x = torch.as_tensor(wav)
        if not x.is_floating_point():
            raise ValueError(f"waveform must be floating point, got {x.dtype}")
        if x.dim() not in (1, 2):
            raise ValueError(f"waveform must be 1-D or (batch, samples), got shape {tuple(x.shape)}")
        x = x.float()
        if x.shape[-1] <= self.n_fft // 2:
            # Reflect padding needs more samples than the pad width.
            raise ValueError(
                f"waveform has {x.shape[-1]} samples; need more than n_fft//2={self.n_fft // 2}"
            )
        magnitude = self._stft(x).abs()  # (..., n_freqs, frames)
        mel = torch.matmul(self.mel_basis.to(x.device), magnitude)
        return torch.log(torch.clamp(mel, min=LOG_MEL_FLOOR))


# --------------------------------------------------------------------------
# Griffin-Lim (audio previews)
# --------------------------------------------------------------------------


def griffin_lim(
    log_mel: torch.Tensor,
    extractor: MelExtractor,
    n_iter: int = 32,
    power: float = 1.2,
    seed: int = 0,
) -> torch.Tensor:
    """Rough waveform from a log-mel ``(n_mels, frames)`` (or batched ``(B, n_mels, frames)``).

    Linear magnitude = ``clamp(pinv(fb) @ exp(log_mel), min=0) ** power``
    (power > 1 sharpens harmonics, as in Tacotron previews), then classic
    Griffin-Lim starting from a seeded random phase, so the output is
    deterministic and independent of the global RNG. Output length is
    ``(frames - 1) * hop_length`` samples.
    """
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    log_mel = log_mel.detach().float().cpu()
    if log_mel.dim() not in (2, 3) or log_mel.shape[-2] != extractor.n_mels:
        raise ValueError(
            f"expected (n_mels={extractor.n_mels}, frames) log-mel, got {tuple(log_mel.shape)}"
        )
    mel = torch.exp(log_mel)
    magnitude = torch.clamp(extractor.inverse_basis() @ mel, min=0.0) ** power

    gen = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=gen) * (2 * math.pi)
    spec = torch.polar(magnitude, phase)
    length = (log_mel.shape[-1] - 1) * extractor.hop_length
    window = extractor.window

    def istft(s: torch.Tensor) -> torch.Tensor:
        return torch.istft(
            s,
            n_fft=extractor.n_fft,
            hop_length=extractor.hop_length,
            win_length=extractor.win_length,
            window=window,
            center=True,
            length=length,
        )

    wav = istft(spec)
    for _ in range(n_iter):
        rebuilt = extractor._stft(wav)
        # Keep the target magnitude, take the phase of the consistent STFT.
        spec = magnitude * rebuilt / rebuilt.abs().clamp(min=1e-8)
        wav = istft(spec)
    return wav
