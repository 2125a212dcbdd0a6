"""``export-mels`` from the CLI: per utterance the audio as its features were computed and the teacher-forced (or
ground-truth) mel, lengths that hifi-gan's fine-tuning accepts, its file lists with the split training made, resuming
by skipping what is there, and one error line for each kind of bad input with nothing written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import soundfile
import torch

from smart_tuner.config import AudioConfig
from smart_tuner.data.audio import MelExtractor
from smart_tuner.data.corpus import read_corpus
from smart_tuner.data.dataset import features, validation_ids

from .conftest import read_only_view


def hifigan_frames(samples: int, audio: AudioConfig) -> int:
    """The frames of hifi-gan's own mel of a clip (its ``mel_spectrogram``: reflect padding of (n_fft - hop) / 2 on
    each side, then an STFT with center=False), counted by running such an STFT."""
    pad = (audio.n_fft - audio.hop_length) // 2
    wav = torch.nn.functional.pad(torch.zeros(1, 1, samples), (pad, pad), mode="reflect")[0]
    spec = torch.stft(wav, audio.n_fft, hop_length=audio.hop_length, win_length=audio.win_length,
                      window=torch.hann_window(audio.win_length), center=False, return_complex=True)
    return spec.shape[-1]


def listed(out: Path, name: str) -> list[list[str]]:
    return [line.split("|") for line in (out / name).read_text(encoding="utf-8").splitlines()]


def check_pairs(out: Path, audio: AudioConfig) -> int:
    """Every listed utterance has its WAV and mel, in the length rule hifi-gan's fine-tuning needs; returns them."""
    rows = listed(out, "training.txt") + listed(out, "validation.txt")
    for uid, *_ in rows:
        wav, rate = soundfile.read(out / "wavs" / f"{uid}.wav", dtype="int16")
        mel = np.load(out / "mels" / f"{uid}.npy")
        assert rate == audio.sample_rate and mel.dtype == np.float32 and mel.shape[0] == audio.n_mels
        frames, samples = mel.shape[1], len(wav)
        assert frames * audio.hop_length <= samples < (frames + 1) * audio.hop_length, (uid, frames, samples)
        assert hifigan_frames(samples, audio) == frames
        assert np.isfinite(mel).all()
    return len(rows)


def test_export_mels_writes_what_hifigan_fine_tuning_reads(trained_en, corpus_en, cli_main, tmp_path):
    checkpoint, config = trained_en.checkpoint, trained_en.config
    audio = config.audio
    out, truth = tmp_path / "export", tmp_path / "truth"
    cache = ("--cache-dir", tmp_path / "cache")
    done = cli_main("export-mels", "--checkpoint", checkpoint, "--corpus", corpus_en, "--out", out, "--no-progress",
               "--batch-size", 3, *cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "24 utterances (teacher-forced mels; 0 were already there)" in done.stdout
    assert "--input_mels_dir" in done.stdout
    assert check_pairs(out, audio) == 24

    # the split training made, lines like hifi-gan's LJSpeech lists (id|text|cleaned text)
    utterances = {u.id: u for u in read_corpus(corpus_en).utterances}
    held_out = {row[0] for row in listed(out, "validation.txt")}
    assert held_out == validation_ids(list(utterances), config.data)
    first = listed(out, "training.txt")[0]
    assert len(first) == 3 and first[1] == utterances[first[0]].text

    # the audio as the features saw it (trimmed, resampled), to 16-bit precision; --ground-truth: its features
    gt = cli_main("export-mels", "--checkpoint", checkpoint, "--corpus", corpus_en, "--out", truth, "--no-progress",
             "--ground-truth", *cache, cwd=tmp_path)
    assert gt.returncode == 0, gt.stderr
    uid = first[0]
    wav, mel = features(utterances[uid].wav_path, audio, MelExtractor.from_config(audio))
    written, _ = soundfile.read(out / "wavs" / f"{uid}.wav", dtype="float32")
    assert len(written) == len(wav) and np.abs(written - wav).max() <= 1 / 32768 + 1e-7
    frames = len(wav) // audio.hop_length
    assert np.allclose(np.load(truth / "mels" / f"{uid}.npy"), mel[:, :frames], atol=1e-6)
    taught = np.load(out / "mels" / f"{uid}.npy")
    assert taught.shape == (audio.n_mels, frames) and not np.allclose(taught, mel[:, :frames], atol=0.1)

    # resumed: what is there is kept, what is missing (or half-written) is made again
    kept = out / "mels" / f"{listed(out, 'training.txt')[1][0]}.npy"
    before = kept.stat().st_mtime_ns
    (out / "wavs" / f"{uid}.wav").unlink()
    (out / "mels" / f".{uid}.npy.999999999.00000000.tmp").write_bytes(b"half")  # a killed writer's temporary
    again = cli_main("export-mels", "--checkpoint", checkpoint, "--corpus", corpus_en, "--out", out, "--no-progress",
                *cache, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "23 were already there" in again.stdout
    assert (out / "wavs" / f"{uid}.wav").is_file() and kept.stat().st_mtime_ns == before
    assert not list((out / "mels").glob(".*.tmp"))
    assert check_pairs(out, audio) == 24


def test_export_mels_of_a_phoneme_checkpoint(trained_ru_phonemes, corpus_ru, cli_main, tmp_path):
    checkpoint, config = trained_ru_phonemes.checkpoint, trained_ru_phonemes.config
    out = tmp_path / "export"
    done = cli_main("export-mels", "--checkpoint", checkpoint, "--corpus", corpus_ru, "--out", out, "--no-progress",
               "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert check_pairs(out, config.audio) == 16
    cleaned = listed(out, "training.txt")[0][2]
    assert "ˈ" in cleaned  # the phonemes the model read, stress marks and all


def test_bad_export_input_is_one_line_and_writes_nothing(trained_en, corpus_en, cli_main, tmp_path):
    checkpoint = trained_en.checkpoint
    foreign = tmp_path / "foreign"  # the corpus with a line the character table cannot encode
    shutil.copytree(corpus_en, foreign, ignore=shutil.ignore_patterns(".smart_tuner_cache"))
    lines = (foreign / "metadata.csv").read_text(encoding="utf-8").splitlines()
    uid, text = lines[4].split("|")[:2]
    lines[4] = f"{uid}|{text} жук|{text} жук"
    (foreign / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    other = tmp_path / "other"
    assert cli_main("export-mels", "--checkpoint", checkpoint, "--corpus", corpus_en, "--out", other, "--ground-truth",
               "--no-progress", "--cache-dir", tmp_path / "cache", cwd=tmp_path).returncode == 0
    cases = [
        (("--checkpoint", tmp_path / "missing.pt", "--corpus", corpus_en), "no such checkpoint", "fresh"),
        (("--checkpoint", checkpoint, "--corpus", tmp_path), "no metadata.csv", "fresh"),
        (("--checkpoint", checkpoint, "--corpus", foreign), "metadata.csv:5: characters not in the checkpoint's "
                                                            "symbol table: 'ж' 'к' 'у'", "fresh"),
        (("--checkpoint", checkpoint, "--corpus", corpus_en, "--device", "cuda:abc"), "not a device name", "fresh"),
        (("--checkpoint", checkpoint, "--corpus", corpus_en), "is not an empty folder", taken),
        (("--checkpoint", checkpoint, "--corpus", corpus_en), "holds an export with another mode", other),
    ]
    for args, message, out in cases:
        out = tmp_path / "fresh" if out == "fresh" else out
        before = sorted(os.listdir(out)) if out.exists() else None
        result = cli_main("export-mels", *args, "--out", out, "--no-progress", "--cache-dir", tmp_path / "cache",
                     cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
        assert message in result.stderr, result.stderr
        assert (sorted(os.listdir(out)) if out.exists() else None) == before, args
    refused = cli_main("export-mels", "--checkpoint", checkpoint, "--corpus", corpus_en, "--out", tmp_path / "fresh",
                       "--batch-size", 0, cwd=tmp_path)
    assert refused.returncode == 2 and "below the minimum of 1" in refused.stderr


def test_an_unwritable_cache_names_the_commands_own_option(trained_en, corpus_en, cli_main, tmp_path):
    checkpoint = trained_en.checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    with read_only_view(empty, tmp_path / "ro") as readonly:
        result = cli_main("export-mels", "--checkpoint", checkpoint, "--corpus", corpus_en, "--out", tmp_path / "out",
                     "--ground-truth", "--no-progress", "--cache-dir", readonly / "cache", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"cannot write the feature cache in {readonly / 'cache'}" in result.stderr
    assert "give --cache-dir a writable directory" in result.stderr and "--set" not in result.stderr
    assert not (tmp_path / "out").exists()
