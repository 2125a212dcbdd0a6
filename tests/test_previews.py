"""Preview files of evaluations: thinning, atomic directories, Griffin-Lim audio, failures that never stop a run."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
import torch

from smart_tuner.config import build_config
from smart_tuner.hooks import EvalStats, RunInfo, TrainResult
from smart_tuner.watch.previews import PreviewWriter, is_thinned_in, latest_preview, list_previews

from .stats import eval_stats

CONFIG = build_config({})  # 22050 Hz, hop 256, n_fft 1024, 80 mel bins


def stats(step: int, free_frames: int = 40, alignment=True) -> EvalStats:
    mels = {"target": torch.randn(80, 50) - 4, "teacher_forced": torch.randn(80, 50) - 4,
            "free_running": torch.randn(80, free_frames) - 4}
    return eval_stats(step, alignment=torch.rand(12, 7) if alignment else None, mels=mels)


def run(writer: PreviewWriter, run_dir: Path, evaluations: list[EvalStats]) -> None:
    writer.on_train_start(RunInfo(run_dir, {}, "cpu", 1, 1, 1, 0))
    for evaluation in evaluations:
        assert writer.on_eval(evaluation) == []
    writer.on_train_end(TrainResult("completed", evaluations[-1].step, "done", run_dir, None, None))


def test_thinning():
    assert [n for n in range(1, 40) if is_thinned_in(n)] == [1, 2, 4, 8, 16, 32]


def test_thinned_previews_and_the_last_one(tmp_path):
    run(PreviewWriter(CONFIG), tmp_path, [stats(10 * i) for i in range(1, 7)])
    previews = list_previews(tmp_path)
    assert [step for step, _ in previews] == [10, 20, 40, 60]  # evaluations 1, 2, 4 and the last (6)
    for _, files in previews:
        assert sorted(files) == ["alignment.png", "audio.wav", "mel.png"]
        assert files["alignment.png"].read_bytes()[:4] == b"\x89PNG"
        assert files["mel.png"].read_bytes()[:4] == b"\x89PNG"
    step, files = latest_preview(tmp_path)
    wav, rate = sf.read(files["audio.wav"])
    assert step == 60 and rate == 22050 and len(wav) == 39 * 256  # the free-running mel was voiced
    assert not list((tmp_path / "previews").glob("*.tmp"))  # nothing half-written left


def test_a_free_running_mel_too_short_to_vocode_falls_back_to_teacher_forced(tmp_path):
    run(PreviewWriter(CONFIG), tmp_path, [stats(5, free_frames=2)])
    _, files = latest_preview(tmp_path)
    wav, _ = sf.read(files["audio.wav"])
    assert len(wav) == 49 * 256


def test_a_failed_preview_is_logged_and_the_run_goes_on(tmp_path, caplog):
    broken = stats(5)
    broken.mels = {"teacher_forced": torch.randn(3, 50)}  # wrong number of mel bins: the vocoder refuses it
    run(PreviewWriter(CONFIG), tmp_path, [broken, stats(10, alignment=False)])
    assert "preview of step 5 failed" in caplog.text and "n_mels=80" in caplog.text
    assert not list((tmp_path / "previews").glob("*.tmp"))  # the failed one left nothing behind
    assert [(step, sorted(files)) for step, files in list_previews(tmp_path)] == [
        (10, ["audio.wav", "mel.png"])]


def test_previews_speak_through_the_vocoder_a_config_names(tmp_path):
    import json

    import pytest

    from smart_tuner.tts.hifigan import VocoderError

    from .test_vocoder import AUDIO, CONFIGS, hifigan_files

    path, _ = hifigan_files(tmp_path / "hifigan")
    config = build_config({"vocoder": {"checkpoint": str(path)}})
    run(PreviewWriter(config), tmp_path / "run", [stats(10)])
    wav, rate = sf.read(latest_preview(tmp_path / "run")[1]["audio.wav"])
    assert rate == 22050 and len(wav) == 40 * 256  # HiFi-GAN's length (frames x hop), not Griffin-Lim's
    (tmp_path / "hifigan" / "config.json").write_text(json.dumps({**CONFIGS["1"], **AUDIO, "num_mels": 64}))
    with pytest.raises(VocoderError, match="does not fit"):  # the run stops at its start, not at a preview
        run(PreviewWriter(config), tmp_path / "other", [stats(10)])
