"""The ``train`` command's work, once the command line has made its config: choose the run directory, start the
ranks under torchrun when asked, add MLflow tracking, train, and say how the run ended."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from .. import interrupts
from ..config import Config
from ..errors import UserError
from .distributed import Group, torchrun_command, torchrun_env
from .runner import run_training

log = logging.getLogger("smart_tuner")

RANK_FLAGS = ("--nproc", "--max-restarts", "--run-dir")  # what the launcher sets for its ranks itself


def train_command(config: Config, config_stem: str, argv: list[str], *, run_dir: str | None = None,
                  resume: bool = False, nproc: int = 1, max_restarts: int = 0, tracking_uri: str | None = None,
                  progress: bool = True) -> int:
    """Train ``config``; ``argv`` is this command's own command line (the ranks of ``nproc`` > 1 rerun it). Exit
    code: 0 completed, 1 stopped or failed, 128 + the signal when interrupted."""
    group = Group.from_env()  # rank 0 of 1 unless torchrun started this process
    if group.distributed and not run_dir:
        raise UserError("under torchrun, name the run directory with --run-dir: every rank, and every restart of "
                        "the group, must write into the same one")
    path = resolve_run_dir(run_dir, resume, config_stem)
    if nproc > 1 and not group.distributed:
        return launch_ranks(argv, nproc, max_restarts, path)
    if not group.is_main:  # the other ranks print nothing but errors
        logging.getLogger().setLevel(logging.ERROR)
    hooks = []
    if config.tracking.enabled and group.is_main:
        from ..watch.tracking import open_tracking, train_reporter

        hooks.append(train_reporter(open_tracking(tracking_uri), config, path))
    try:
        with interrupts.handle_signals():
            result = run_training(config, path, resume=resume, extra_hooks=hooks, progress=progress)
    finally:
        group.stop()  # several ranks: leave the process group
    if group.is_main:
        from ..watch.debug import describe_result

        print(describe_result(result), flush=True)
    if result.status == "interrupted":
        return interrupts.exit_code(interrupts.requested() or signal.SIGINT)
    return 0 if result.status == "completed" else 1


def resolve_run_dir(run_dir: str | None, resume: bool, config_stem: str) -> Path:
    """``run_dir`` as given; else with ``resume`` the latest ``runs/<config>-*``, without it a new one."""
    if run_dir:
        return Path(run_dir)
    if resume:
        runs = sorted(Path("runs").glob(f"{config_stem}-*"))
        if not runs:
            raise UserError(f"--resume: no earlier run under runs/{config_stem}-*; name it with --run-dir")
        return runs[-1]
    return Path("runs") / f"{config_stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def launch_ranks(argv: list[str], nproc: int, max_restarts: int, run_dir: Path) -> int:
    """``train --nproc N``: this command again under torchrun, N ranks on this machine, one run directory."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item.split("=", 1)[0] in RANK_FLAGS:
            skip = "=" not in item  # "--nproc 2" drops its value too, "--nproc=2" is one item
            continue
        kept.append(item)
    command = [*torchrun_command(nproc, max_restarts), "-m", "smart_tuner", *kept, "--run-dir", str(run_dir)]
    log.info("starting %d ranks with torchrun, run dir %s", nproc, run_dir)
    process = subprocess.Popen(command, env=torchrun_env(dict(os.environ)))
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reached torchrun too; let it stop its ranks
        return process.wait()
