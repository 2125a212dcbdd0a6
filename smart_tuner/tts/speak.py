"""The speech commands' work. ``synthesize``: speak the lines of a text with a checkpoint and write, per sentence
``NNN``, ``NNN.wav`` (Griffin-Lim, or a HiFi-GAN generator with ``--vocoder``), ``NNN.png`` (its alignment) and, if
asked, ``NNN.npy`` (its log-mel). ``vocode``: such log-mels to WAVs through a HiFi-GAN generator."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import AudioConfig
from ..data.audio import wav_bytes
from ..data.dataset import LOG_FLOOR
from ..files import check_output_dir, write_atomic
from .hifigan import VocoderError, load_vocoder
from .inference import load_for_inference, min_vocodable_frames, pick_device, vocode_griffin_lim
from .plots import alignment_png
from .synthesis import Spoken, encode_lines, synthesize


def speak_to_files(checkpoint: Path, lines: list[str], out: Path, *, origin: str = "--text", device: str = "auto",
                   batch_size: int = 8, seed: int = 0, drop_missing: bool = False, write_mel: bool = False,
                   progress: bool = True, vocoder: Path | None = None, vocoder_config: Path | None = None) -> int:
    """Write the files of every line under ``out``, one progress line per sentence, then a summary; returns 0."""
    check_output_dir(out)
    torch_device = pick_device(device)
    loaded = load_for_inference(checkpoint, torch_device)
    neural = load_vocoder(vocoder, vocoder_config, torch_device) if vocoder else None
    if neural is not None:
        neural.check_fits(loaded.config.audio, f"checkpoint {checkpoint}")
    sentences = encode_lines(loaded, lines, drop_missing, origin=origin)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(sentences), desc="synthesize", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    pending: list[Spoken] = []

    def flush() -> None:  # the decoded batch, vocoded in one batch too
        waves = neural([s.mel for s in pending]) if neural is not None else [None] * len(pending)
        for done, wave in zip(pending, waves):
            write_sentence(done, out / f"{done.sentence.number:03d}", loaded.config.audio, write_mel, wave)
            bar.update(1)
            tqdm.write(describe(done, loaded.config.audio))
        pending.clear()

    for spoken in synthesize(loaded, sentences, torch_device, batch_size, seed):
        pending.append(spoken)
        if len(pending) == batch_size:
            flush()
    flush()
    bar.close()
    through = f" through {vocoder}" if vocoder else ""
    print(f"{len(sentences)} sentences from {checkpoint}{through} in {out} [{time.perf_counter() - start:.1f} s]")
    return 0


def write_sentence(spoken: Spoken, name: Path, audio: AudioConfig, write_mel: bool,
                   wave: torch.Tensor | None = None) -> None:
    """``name``.wav (``wave``, or Griffin-Lim's), .png (when there is an alignment) and .npy (``write_mel``), each
    written atomically."""
    if wave is None:
        mel = spoken.mel
        if mel.shape[1] < min_vocodable_frames(audio):  # too short to vocode: pad with silence
            floor = mel.new_full((mel.shape[0], min_vocodable_frames(audio) - mel.shape[1]), LOG_FLOOR)
            mel = torch.cat([mel, floor], 1)
        wave = vocode_griffin_lim(mel, audio)
    write_atomic(name.with_suffix(".wav"), wav_bytes(wave, audio.sample_rate))
    if spoken.alignment is not None:
        title = f"sentence {spoken.sentence.number}"
        write_atomic(name.with_suffix(".png"), alignment_png(spoken.alignment, title=title))
    if write_mel:  # the mel as decoded, without the padding
        write_atomic(name.with_suffix(".npy"), partial(np.save, arr=spoken.mel.numpy().astype(np.float32)))


def describe(spoken: Spoken, audio: AudioConfig) -> str:
    """``001: 212 frames, 2.46 s, stopped, diagonality 0.912: <the text>``."""
    frames = spoken.mel.shape[1]
    seconds = frames * audio.hop_length / audio.sample_rate
    return (f"{spoken.sentence.number:03d}: {frames} frames, {seconds:.2f} s, "
            f"{'stopped' if spoken.stopped else 'hit the step limit'}, diagonality {spoken.diagonality:.3f}: "
            f"{spoken.sentence.text[:60]}")


def read_mel(path: Path, n_mels: int) -> torch.Tensor:
    """A log-mel written by ``synthesize --mel`` (``(n_mels, frames)`` or ``(1, n_mels, frames)``, float, finite)."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise VocoderError(f"{path}: no such mel file") from None
    except (ValueError, OSError) as exc:
        raise VocoderError(f"{path}: not a .npy array ({exc})") from None
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[0] != n_mels or array.shape[1] < 1:
        raise VocoderError(f"{path}: shape {tuple(array.shape)}; expected ({n_mels}, frames) or (1, {n_mels}, "
                           "frames), the log-mel synthesize --mel writes")
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise VocoderError(f"{path}: expected finite floats (a natural-log mel), got {array.dtype}")
    return torch.from_numpy(array.astype(np.float32))


def vocode_command(mels: list[Path], vocoder: Path, out: Path, *, vocoder_config: Path | None = None,
                   device: str = "auto", batch_size: int = 8, progress: bool = True) -> int:
    """``vocode``: ``out/<stem>.wav`` (16-bit PCM at the vocoder's sampling rate) for each mel; returns 0."""
    check_output_dir(out)
    neural = load_vocoder(vocoder, vocoder_config, pick_device(device))
    stems = [m.stem for m in mels]
    if len(set(stems)) != len(stems):
        raise VocoderError("two mel files share a name: their WAVs would overwrite each other in --out")
    loaded = [read_mel(m, neural.cfg.num_mels) for m in mels]  # every file checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seconds = 0.0
    bar = tqdm(total=len(loaded), desc="vocode", disable=not progress, dynamic_ncols=True)
    for first in range(0, len(loaded), batch_size):
        for stem, wave in zip(stems[first:first + batch_size], neural(loaded[first:first + batch_size])):
            write_atomic(out / f"{stem}.wav", wav_bytes(wave, neural.cfg.sampling_rate))
            seconds += len(wave) / neural.cfg.sampling_rate
            bar.update(1)
    bar.close()
    took = time.perf_counter() - start
    print(f"{len(mels)} WAVs ({seconds:.1f} s of audio) through {vocoder} in {out} [{took:.1f} s, real-time factor "
          f"{took / max(seconds, 1e-9):.3f}]")
    return 0

