"""The ``synthesize`` command's work: speak the lines of a text with a checkpoint and write, per sentence ``NNN``,
``NNN.wav`` (Griffin-Lim), ``NNN.png`` (its alignment) and, if asked, ``NNN.npy`` (its log-mel)."""

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
from ..files import write_atomic
from .inference import load_for_inference, min_vocodable_frames, pick_device, vocode
from .plots import alignment_png
from .synthesis import Spoken, encode_lines, synthesize


def speak_to_files(checkpoint: Path, lines: list[str], out: Path, *, origin: str = "--text", device: str = "auto",
                   batch_size: int = 8, seed: int = 0, drop_missing: bool = False, write_mel: bool = False,
                   progress: bool = True) -> int:
    """Write the files of every line under ``out``, one progress line per sentence, then a summary; returns 0."""
    torch_device = pick_device(device)
    loaded = load_for_inference(checkpoint, torch_device)
    sentences = encode_lines(loaded, lines, drop_missing, origin=origin)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(sentences), desc="synthesize", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for spoken in synthesize(loaded, sentences, torch_device, batch_size, seed):
        write_sentence(spoken, out / f"{spoken.sentence.number:03d}", loaded.config.audio, write_mel)
        bar.update(1)
        tqdm.write(describe(spoken, loaded.config.audio))
    bar.close()
    print(f"{len(sentences)} sentences from {checkpoint} in {out} [{time.perf_counter() - start:.1f} s]")
    return 0


def write_sentence(spoken: Spoken, name: Path, audio: AudioConfig, write_mel: bool) -> None:
    """``name``.wav, .png (when there is an alignment) and .npy (``write_mel``), each written atomically."""
    mel = spoken.mel
    if mel.shape[1] < min_vocodable_frames(audio):  # too short to vocode: pad with silence
        floor = mel.new_full((mel.shape[0], min_vocodable_frames(audio) - mel.shape[1]), LOG_FLOOR)
        mel = torch.cat([mel, floor], 1)
    write_atomic(name.with_suffix(".wav"), wav_bytes(vocode(mel, audio), audio.sample_rate))
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
