"""A run directory's life: whether a run starts or resumes there, who may write it, and what it holds.

What it holds, and under which names, is listed once in :mod:`smart_tuner.run_logs`, which also reads it back (the
debug reporter, the benchmarks, the tests): the lock, config.yaml, metrics.jsonl, events.jsonl (one line per hook
request, see controls.py) and checkpoints/. A directory that holds ``last.pt`` is resumed only when asked
(``--resume``), and only by a config that changes nothing the checkpoint's model or features depend on; the logs
are then cut back to the checkpoint's step. After torchrun restarted the group, the run resumes from ``last.pt``
when there is one, else starts over. With several ranks, rank 0 alone writes here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import Config, resume_changes, to_yaml
from ..files import (
    DirectoryLock,
    DirectoryLocked,
    append_line,
    remove_stale_temporaries,
    truncate_jsonl,
    write_atomic,
)
from ..hooks import EvalStats, Event
from ..run_logs import CHECKPOINTS, CONFIG, EVENTS, LAST, LOGS, METRICS
from ..tts import checkpoint as ckpt
from .distributed import Group
from .errors import TrainingError

log = logging.getLogger(__name__)


class RunDir:
    def __init__(self, path: str | Path, group: Group):
        self.path, self.group = Path(path), group
        self.checkpoints = self.path / CHECKPOINTS
        self.last = self.checkpoints / LAST
        self.lock: DirectoryLock | None = None
        self.saved_step: int | None = None  # the step of checkpoints/last.pt on disk

    def open(self, resume: bool, config: Config) -> dict | None:
        """Decide whether the run starts or resumes here, take the directory (rank 0), remove what killed processes
        left, and return the checkpoint to resume from (None: a new run)."""
        resume = self._resuming(resume)
        try:
            self.lock = DirectoryLock(self.path) if self.group.is_main else None
        except DirectoryLocked as exc:
            raise TrainingError(f"run directory {exc}") from None
        try:
            if self.group.is_main:
                for stale in remove_stale_temporaries(self.checkpoints):
                    log.info("removed %s, left by a killed process", stale)
            saved = ckpt.load(self.last) if resume else None
            if saved is not None:  # before the features are computed and the model is built
                self._check_resume(saved, config)
            return saved
        except BaseException:
            self.release()
            raise

    def _resuming(self, resume: bool) -> bool:
        if self.path.exists() and not self.path.is_dir():
            raise TrainingError(f"--run-dir {self.path} is a file, not a directory; choose another --run-dir")
        if self.group.restart and not resume:  # torchrun restarted the group after a rank died
            resume = self.last.is_file()
            log.warning("restart %d of the group: %s", self.group.restart,
                        f"resuming from {self.last}" if resume else "no checkpoint yet, starting over")
            if not resume and self.group.is_main:  # what the dead group logged belongs to no checkpoint
                for name in LOGS:
                    (self.path / name).unlink(missing_ok=True)
        if resume and not self.last.is_file():
            raise TrainingError(f"--resume: no checkpoint at {self.last}")
        if not resume and self.last.is_file():
            raise TrainingError(f"{self.path} already holds a run (checkpoints/last.pt): pass --resume to "
                                f"continue it, or choose another --run-dir")
        return resume

    def _check_resume(self, state: dict, config: Config) -> None:
        """A resumed run may change what training does next (batch size, rate, steps, adapters), never what the
        checkpoint's model or features are (``model.*``, ``audio.*``, the corpus and its split: the settings kept on
        resume)."""
        cannot, applied = resume_changes(state["config"], config)
        if cannot:
            raise TrainingError(f"--resume: {self.last} was trained with another model or features; these changes "
                                f"cannot apply to it: {'; '.join(cannot)}. Resume with the run's config "
                                f"({self.path / CONFIG}), or start a new --run-dir")
        for change in applied:
            log.info("resume: applying the changed setting %s", change)

    def resumed(self, step: int) -> None:
        """The checkpoint of ``step`` was loaded: evaluations and events logged after it belong to the lost future
        (the resumed run writes them again)."""
        self.saved_step = step
        if self.group.is_main:
            for name in LOGS:
                truncate_jsonl(self.path / name, step)
        log.info("resumed %s at step %d", self.path, step)

    def release(self) -> None:
        """Let another process write into the run directory."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ------------------------------------------------------------------------------------- writing
    def write_config(self, config: Config) -> None:
        if self.group.is_main:
            write_atomic(self.path / CONFIG, to_yaml(config))

    def append_metrics(self, stats: EvalStats) -> None:
        if self.group.is_main:
            append_line(self.path / METRICS, json.dumps(stats.to_dict()))

    def append_event(self, event: Event) -> None:
        if self.group.is_main:
            append_line(self.path / EVENTS, json.dumps(event.to_dict()))

    def save_checkpoint(self, name: str, state: dict) -> Path:
        """Rank 0 writes ``state`` atomically under ``checkpoints/name``."""
        path = self.checkpoints / name
        if self.group.is_main:
            ckpt.save_atomic(state, path)
        if name == LAST:
            self.saved_step = state["step"]
        return path

    def intact(self) -> str:
        """What a failed save left: the previous checkpoint, if any."""
        if self.saved_step is None:
            return "no checkpoint was written yet"
        return f"the previous checkpoint at step {self.saved_step} ({self.last}) is intact"
