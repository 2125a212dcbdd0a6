"""Tests for smart_tuner.data.audio (mel filterbank, I/O, trimming, Griffin-Lim)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from smart_tuner.data.audio import (
    AudioError,
    MelExtractor,
    griffin_lim,
    hz_to_mel,
    load_wav,
    mel_filterbank,
    mel_to_hz,
    save_wav,
    trim_silence,
)

SR = 22050


def sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_freq(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.argmax(spectrum) * sr / len(wav))


def find_start(part: np.ndarray, whole: np.ndarray) -> int:
    """Offset of ``part`` inside ``whole`` (its first 64 samples are unique here)."""
    windows = np.lib.stride_tricks.sliding_window_view(whole, 64)
    return int(np.flatnonzero(np.all(windows == part[:64], axis=1))[0])


def centers_hz(sr, n_fft, n_mels, fmin, fmax) -> np.ndarray:
    """Edge frequencies f_0..f_{M+1}, from the test's own Slaney formula."""
    mels = np.linspace(slaney_mel(fmin), slaney_mel(fmax), n_mels + 2)
    return np.array([slaney_hz(m) for m in mels])


def slaney_mel(f: float) -> float:
    return 3 * f / 200 if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)


def slaney_hz(m: float) -> float:
    return 200 * m / 3 if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)


# --------------------------------------------------------------------------
# Mel scale and filterbank
# --------------------------------------------------------------------------


@pytest.mark.parametrize("f", [0.0, 200.0, 500.0, 999.0, 1000.0, 2000.0, 4000.0, 8000.0, 11025.0])
def test_hz_to_mel_matches_slaney_formula(f):
    assert hz_to_mel(f) == pytest.approx(slaney_mel(f), rel=1e-12, abs=1e-12)
    assert mel_to_hz(hz_to_mel(f)) == pytest.approx(f, rel=1e-10, abs=1e-9)


def test_mel_scale_vectorised_and_known_values():
    freqs = np.array([0.0, 1000.0, 6400.0])
    # 6.4 kHz is exactly 27 mels above 1 kHz by construction of the log step.
    np.testing.assert_allclose(hz_to_mel(freqs), [0.0, 15.0, 42.0], atol=1e-12)
    np.testing.assert_allclose(mel_to_hz(np.array([15.0, 42.0])), [1000.0, 6400.0])


def test_default_filterbank_shape_and_no_empty_filter():
    fb = mel_filterbank(SR, 1024, 80, 0.0, 8000.0)
    assert fb.shape == (80, 513)
    assert fb.dtype == np.float32
    assert np.all(fb >= 0)
    assert np.all(fb.max(axis=1) > 0), "every filter must touch at least one bin"


@pytest.mark.parametrize("fmin,fmax", [(0.0, 8000.0), (80.0, 7600.0)])
def test_filterbank_triangles_match_formula(fmin, fmax):
    n_fft, n_mels = 1024, 80
    fb = mel_filterbank(SR, n_fft, n_mels, fmin, fmax).astype(np.float64)
    edges = centers_hz(SR, n_fft, n_mels, fmin, fmax)
    freqs = np.arange(n_fft // 2 + 1) * SR / n_fft
    bin_hz = SR / n_fft

    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        row = fb[m]
        # Zero outside the open interval (f_m, f_{m+2}).
        assert np.all(row[(freqs <= lo) | (freqs >= hi)] == 0), m
        # The largest weight sits on a bin next to the centre frequency.
        assert abs(freqs[np.argmax(row)] - c) <= bin_hz, m
        # Exact triangle values at every bin.
        height = 2.0 / (hi - lo)
        expected = height * np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-9)


def test_filterbank_area_normalisation_on_fine_grid():
    # With a very fine FFT grid, each triangle's integral in Hz is ~1 and its
    # peak equals 2 / (f_{m+2} - f_m).
    n_fft, n_mels = 2**18, 40
    fb = mel_filterbank(SR, n_fft, n_mels, 0.0, 8000.0).astype(np.float64)
    edges = centers_hz(SR, n_fft, n_mels, 0.0, 8000.0)
    bin_hz = SR / n_fft
    np.testing.assert_allclose(fb.sum(axis=1) * bin_hz, 1.0, rtol=2e-3)
    np.testing.assert_allclose(fb.max(axis=1), 2.0 / (edges[2:] - edges[:-2]), rtol=2e-3)


def test_filterbank_covers_fmin_to_fmax():
    fmin, fmax, n_fft = 100.0, 7000.0, 1024
    fb = mel_filterbank(SR, n_fft, 80, fmin, fmax)
    freqs = np.arange(n_fft // 2 + 1) * SR / n_fft
    coverage = fb.sum(axis=0)
    assert np.all(coverage[(freqs > fmin) & (freqs < fmax)] > 0)
    assert np.all(coverage[(freqs <= fmin) | (freqs >= fmax)] == 0)


def test_filterbank_warns_on_empty_filters():
    with pytest.warns(UserWarning, match="empty"):
        mel_filterbank(SR, 256, 128, 0.0, 8000.0)


# --------------------------------------------------------------------------
# MelExtractor
# --------------------------------------------------------------------------


def test_sine_peaks_in_nearest_mel_band():
    ext = MelExtractor()
    log_mel = ext(sine(1000.0, 1.0))
    assert log_mel.shape[0] == 80
    centers = centers_hz(SR, 1024, 80, 0.0, 8000.0)[1:-1]
    expected_band = int(np.argmin(np.abs(centers - 1000.0)))
    mid = log_mel[:, log_mel.shape[1] // 2]
    assert int(torch.argmax(mid)) == expected_band


@pytest.mark.parametrize("n", [1000, 22050, 22050 + 255, 22050 + 256, 44100])
def test_frame_count(n):
    ext = MelExtractor()
    out = ext(np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1)
    assert out.shape == (80, 1 + n // 256)
    assert ext.num_frames(n) == 1 + n // 256


def test_log_floor_and_dtype():
    out = MelExtractor()(np.zeros(4000, dtype=np.float32))
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, math.log(1e-5)))


def test_batched_matches_single():
    ext = MelExtractor()
    rng = np.random.default_rng(1)
    batch = rng.standard_normal((3, 8000)).astype(np.float32) * 0.1
    out = ext(torch.from_numpy(batch))
    assert out.shape == (3, 80, 1 + 8000 // 256)
    for i in range(3):
        torch.testing.assert_close(out[i], ext(batch[i]), rtol=1e-4, atol=1e-4)


def test_mel_matches_manual_stft():
    # Independent numpy reference: reflect pad, periodic Hann, |rfft|, fb @, log.
    ext = MelExtractor(n_fft=512, win_length=400, hop_length=128, n_mels=40)
    wav = np.random.default_rng(2).standard_normal(3000).astype(np.float64) * 0.1
    padded = np.pad(wav, 256, mode="reflect")
    win = np.zeros(512)
    win[56:456] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([padded[t * 128 : t * 128 + 512] * win for t in range(1 + 3000 // 128)])
    mag = np.abs(np.fft.rfft(frames, axis=1)).T
    fb = mel_filterbank(SR, 512, 40, 0.0, 8000.0).astype(np.float64)
    expected = np.log(np.maximum(fb @ mag, 1e-5))
    np.testing.assert_allclose(ext(wav.astype(np.float32)).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fmax=12000.0), "Nyquist"),
        (dict(win_length=2048), "win_length"),
        (dict(n_fft=0), "n_fft"),
        (dict(hop_length=256.0), "hop_length"),
        (dict(n_mels=-3), "n_mels"),
        (dict(fmin=9000.0), "fmin"),
    ],
)
def test_invalid_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MelExtractor(**kwargs)


def test_too_short_input_rejected():
    with pytest.raises(ValueError, match="samples"):
        MelExtractor()(np.zeros(100, dtype=np.float32))


def test_from_config_reads_attributes():
    @dataclasses.dataclass
    class AudioConfig:
        sample_rate: int = 16000
        n_fft: int = 512
        hop_length: int = 160
        win_length: int = 400
        n_mels: int = 64
        fmin: float = 50.0
        fmax: float = 7600.0
        unrelated: str = "ignored"

    ext = MelExtractor.from_config(AudioConfig())
    assert (ext.sample_rate, ext.n_fft, ext.hop_length, ext.win_length) == (16000, 512, 160, 400)
    assert (ext.n_mels, ext.fmin, ext.fmax) == (64, 50.0, 7600.0)
    assert ext.mel_basis.shape == (64, 257)
    assert ext(np.zeros(16000, dtype=np.float32)).shape == (64, 1 + 16000 // 160)

    partial = MelExtractor.from_config({"n_mels": 40})
    assert partial.n_mels == 40 and partial.sample_rate == 22050


# --------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------


def test_load_wav_stereo_44k_to_mono_22k(tmp_path):
    path = tmp_path / "stereo.wav"
    left = sine(440.0, 1.5, sr=44100, amp=0.4)
    right = sine(440.0, 1.5, sr=44100, amp=0.2)
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")

    wav = load_wav(path, SR)
    assert wav.ndim == 1 and wav.dtype == np.float32
    assert len(wav) == pytest.approx(1.5 * SR, abs=2)
    assert abs(peak_freq(wav, SR) - 440.0) < 2.0
    # Mean of channels: amplitude (0.4 + 0.2) / 2 in the steady middle part.
    mid = wav[SR // 4 : -SR // 4]
    assert np.max(np.abs(mid)) == pytest.approx(0.3, abs=0.01)


def test_load_wav_same_rate_is_untouched(tmp_path):
    path = tmp_path / "mono.wav"
    data = sine(300.0, 0.5)
    sf.write(path, data, SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_wav(path, SR), data)


def test_load_wav_zero_length_raises(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="zero frames") as info:
        load_wav(path, SR)
    assert str(path) in str(info.value)


def test_load_wav_garbage_raises(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is definitely not audio" * 50)
    with pytest.raises(AudioError) as info:
        load_wav(path, SR)
    assert str(path) in str(info.value)


def test_load_wav_missing_and_non_finite(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav"):
        load_wav(missing, SR)
    bad = tmp_path / "nan.wav"
    data = sine(300.0, 0.1)
    data[10] = np.nan
    sf.write(bad, data, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN") as info:
        load_wav(bad, SR)
    assert str(bad) in str(info.value)


def test_save_wav_roundtrip_and_clipping(tmp_path):
    path = tmp_path / "sub" / "out.wav"
    wav = torch.tensor([0.0, 0.5, -0.5, 2.0, -3.0])
    save_wav(path, wav, SR)
    info = sf.info(path)
    assert info.subtype == "PCM_16" and info.samplerate == SR
    back, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(back, [0.0, 0.5, -0.5, 1.0, -1.0], atol=1e-4)


# --------------------------------------------------------------------------
# Silence trimming
# --------------------------------------------------------------------------


def test_trim_silence_keeps_tone():
    rng = np.random.default_rng(3)
    lead, tone_len, tail = 8000, 11025, 6000
    tone = sine(440.0, tone_len / SR)

    def noise(n):  # ~-70 dB
        return (rng.standard_normal(n) * 1e-4).astype(np.float32)

    wav = np.concatenate([noise(lead), tone, noise(tail)])

    out = trim_silence(wav, top_db=40.0, frame_length=1024, hop_length=256)
    # Frames are 1024 long and centred, so edges can leak by ~half a frame.
    assert abs(len(out) - tone_len) <= 2 * 512
    start = find_start(out, wav)
    assert abs(start - lead) <= 512
    # The whole tone survives, sample for sample.
    assert start <= lead and start + len(out) >= lead + tone_len
    np.testing.assert_array_equal(out[lead - start : lead - start + tone_len], tone)


def test_trim_silence_nothing_to_trim_and_silent_input():
    tone = sine(440.0, 0.5)
    np.testing.assert_array_equal(trim_silence(tone), tone)
    zeros = np.zeros(5000, dtype=np.float32)
    assert trim_silence(zeros) is zeros  # all-silent input is returned untouched
    empty = np.zeros(0, dtype=np.float32)
    assert trim_silence(empty).size == 0


def test_trim_silence_threshold_matters():
    # A -30 dB plateau is kept with top_db=40 but cut with top_db=20.
    quiet = sine(440.0, 0.5, amp=0.5 * 10 ** (-30 / 20))
    loud = sine(440.0, 0.5)
    wav = np.concatenate([quiet, loud])
    assert len(trim_silence(wav, top_db=40)) == len(wav)
    assert abs(len(trim_silence(wav, top_db=20)) - len(loud)) <= 1024


# --------------------------------------------------------------------------
# Griffin-Lim
# --------------------------------------------------------------------------


def test_griffin_lim_recovers_sine_frequency():
    ext = MelExtractor()
    freq = 1000.0
    log_mel = ext(sine(freq, 1.0))
    wav = griffin_lim(log_mel, ext, n_iter=16)
    assert wav.shape == ((log_mel.shape[1] - 1) * 256,)
    assert torch.isfinite(wav).all()
    assert wav.abs().max() > 0
    edges = centers_hz(SR, 1024, 80, 0.0, 8000.0)
    band = int(np.argmin(np.abs(edges[1:-1] - freq)))
    band_width = edges[band + 2] - edges[band]  # one full triangle
    assert abs(peak_freq(wav.numpy(), SR) - freq) <= band_width


def test_griffin_lim_is_deterministic_and_batched():
    ext = MelExtractor()
    log_mel = ext(sine(600.0, 0.3))
    a = griffin_lim(log_mel, ext, n_iter=4)
    b = griffin_lim(log_mel, ext, n_iter=4)
    torch.testing.assert_close(a, b)
    batched = griffin_lim(torch.stack([log_mel, log_mel]), ext, n_iter=4)
    assert batched.shape == (2, a.shape[0])
    torch.testing.assert_close(batched[0], a, rtol=1e-4, atol=1e-5)
