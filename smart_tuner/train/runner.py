"""One training run with everything that watches and steers it: adapters, debug reporter, alerts.

The ``train`` command (train/command.py) and every study trial (study/objective.py, and the other
ranks of a multi-GPU trial in study/optimize.py) call :func:`run_training`, so a production run gets
exactly the hooks a trial had.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..adapters import build_adapters
from ..config import Config
from ..hooks import Hook, TrainResult
from ..watch.alerts import TelegramReporter
from ..watch.debug import DebugReporter
from ..watch.previews import PreviewWriter
from .distributed import Group
from .trainer import Trainer


def standard_hooks(config: Config) -> list[Hook]:
    """The enabled adapters, the preview writer, the debug reporter and (when a token is set) Telegram alerts."""
    hooks: list[Hook] = list(build_adapters(config))
    hooks.append(PreviewWriter(config))  # before the trackers: they upload what it rendered
    if config.debug.enabled:
        hooks.append(DebugReporter(config.debug))
    telegram = TelegramReporter.from_config(config)
    if telegram is not None:
        hooks.append(telegram)
    return hooks


def run_training(config: Config, run_dir: str | Path, resume: bool = False, extra_hooks: Sequence[Hook] = (),
                 progress: bool = True) -> TrainResult:
    # With several ranks only rank 0 runs hooks (their decisions reach the others): build none elsewhere.
    hooks = [*standard_hooks(config), *extra_hooks] if Group.from_env().is_main else []
    trainer = Trainer(config, run_dir, hooks=hooks, resume=resume, progress=progress)
    return trainer.fit()
