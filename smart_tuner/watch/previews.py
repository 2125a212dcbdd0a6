"""Previews of an evaluation for people: alignment heatmap, predicted-versus-target mel, and a Griffin-Lim WAV.

:class:`PreviewWriter` is a hook that renders them into the run directory, thinned as a run grows (evaluations
1, 2, 4, 8, ... and always the last one), so that a long run keeps a short series::

    <run_dir>/previews/step_000125/alignment.png   attention of one validation sentence (teacher-forced)
    <run_dir>/previews/step_000125/mel.png         target / teacher-forced / free-running log-mels
    <run_dir>/previews/step_000125/audio.wav       the free-running mel, vocoded with Griffin-Lim (or the
                                                   HiFi-GAN generator of vocoder.checkpoint)

Trackers (MLflow, Optuna's artifact store) and the study report read these files; they never render again.
Each preview directory is written to a temporary name and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config
from ..files import atomic_dir
from ..hooks import EvalStats, Hook, RunInfo, TrainResult

log = logging.getLogger(__name__)

PREVIEW_DIR = "previews"
FILES = ("alignment.png", "mel.png", "audio.wav")


def is_thinned_in(number: int) -> bool:
    """Evaluation numbers 1, 2, 4, 8, ...: a series that stays short however long the run."""
    return number >= 1 and number & (number - 1) == 0


def preview_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / PREVIEW_DIR / f"step_{step:06d}"


def list_previews(run_dir: str | Path) -> list[tuple[int, dict[str, Path]]]:
    """(step, {file name: path}) of every complete preview of a run, by step."""
    root = Path(run_dir) / PREVIEW_DIR
    found = []
    for path in sorted(root.glob("step_*")) if root.is_dir() else []:
        if path.is_dir() and path.name[5:].isdigit():
            files = {name: path / name for name in FILES if (path / name).is_file()}
            if files:
                found.append((int(path.name[5:]), files))
    return found


def latest_preview(run_dir: str | Path) -> tuple[int, dict[str, Path]] | None:
    """The last preview of a run (its final evaluation), or None."""
    previews = list_previews(run_dir)
    return previews[-1] if previews else None


def render_preview(stats: EvalStats, config: Config, out_dir: Path, vocoder: Any = None) -> dict[str, Path]:
    """Write the preview files of one evaluation into ``out_dir`` (atomically); returns what was written. The
    audio is Griffin-Lim's, or ``vocoder``'s (a :class:`~smart_tuner.tts.hifigan.Vocoder`) when given."""
    from ..data.audio import save_wav
    from ..tts.inference import min_vocodable_frames, vocode_griffin_lim
    from ..tts.plots import alignment_png, mel_png

    with atomic_dir(out_dir) as tmp:
        if stats.alignment is not None:
            (tmp / "alignment.png").write_bytes(alignment_png(stats.alignment, title=f"step {stats.step}"))
        mels = {k: v for k, v in (stats.mels or {}).items() if v is not None and v.shape[-1] > 1}
        if mels:
            (tmp / "mel.png").write_bytes(mel_png(mels, title=f"step {stats.step}"))
            # A free-running decoder that stopped at once has too few frames to vocode: then teacher-forced.
            voiced = next((mels[k] for k in ("free_running", "teacher_forced")
                           if k in mels and mels[k].shape[-1] >= min_vocodable_frames(config.audio)), None)
            if voiced is not None:
                wave = vocoder([voiced])[0] if vocoder is not None else vocode_griffin_lim(voiced, config.audio)
                save_wav(tmp / "audio.wav", wave, config.audio.sample_rate)
    return {name: out_dir / name for name in FILES if (out_dir / name).is_file()}


class PreviewWriter(Hook):
    """Renders previews of thinned-in evaluations and of the last one; a rendering error never stops a run.

    It renders on the training thread: on a 2-core machine a background thread fighting the trainer's torch threads
    made the whole run 50% slower (benchmarks/overhead.py), while rendering in line costs about 0.4 s a preview."""

    name = "previews"

    def __init__(self, config: Config, every: Callable[[int], bool] = is_thinned_in):
        self.config, self.every = config, every
        self.run_dir: Path | None = None
        self.evals = 0
        self.pending: EvalStats | None = None  # the latest evaluation not rendered yet
        self.rendered: list[int] = []
        self.vocoder: Any = None  # vocoder.checkpoint's HiFi-GAN generator, on the CPU (previews are CPU tensors)

    def on_train_start(self, info: RunInfo) -> None:
        self.run_dir = Path(info.run_dir)
        if self.config.vocoder.checkpoint and self.vocoder is None:  # a bad vocoder is an error now, not later
            from ..tts.hifigan import load_vocoder

            self.vocoder = load_vocoder(self.config.vocoder.checkpoint, self.config.vocoder.config)
            self.vocoder.check_fits(self.config.audio, "this run's audio settings")

    def on_eval(self, stats: EvalStats) -> list:
        self.evals += 1
        if self.every(self.evals):
            self._render(stats)
            self.pending = None
        else:
            self.pending = stats
        return []

    def on_train_end(self, result: TrainResult) -> None:
        if self.pending is not None:
            self._render(self.pending)
            self.pending = None

    def _render(self, stats: EvalStats) -> None:
        if self.run_dir is None:
            return
        try:
            render_preview(stats, self.config, preview_dir(self.run_dir, stats.step), self.vocoder)
            self.rendered.append(stats.step)
        except Exception as exc:  # a preview is a convenience: log it, keep training
            log.warning("preview of step %d failed: %s: %s", stats.step, type(exc).__name__, exc)
