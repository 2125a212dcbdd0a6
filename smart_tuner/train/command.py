"""The ``train`` command's work, once the command line has made its config: choose the run directory, start the
ranks under torchrun when asked, add MLflow tracking, train, and say how the run ended."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import interrupts
from ..config import Config
from ..errors import UserError
from ..tts import checkpoint as ckpt
from .distributed import Group, torchrun_args, torchrun_env
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
    """``train --nproc N``: this command again under torchrun (through launcher.py), N ranks on this machine, one
    run directory. A group torchrun will not restart again ends with one line naming the rank that died."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item.split("=", 1)[0] in RANK_FLAGS:
            skip = "=" not in item  # "--nproc 2" drops its value too, "--nproc=2" is one item
            continue
        kept.append(item)
    with tempfile.TemporaryDirectory(prefix="smart_tuner-launch-") as folder:
        report = Path(folder) / "failures.json"
        command = [sys.executable, "-m", "smart_tuner.train.launcher", str(report),
                   *torchrun_args(nproc, max_restarts), "-m", "smart_tuner", *kept, "--run-dir", str(run_dir)]
        log.info("starting %d ranks with torchrun, run dir %s", nproc, run_dir)
        process = subprocess.Popen(command, env=torchrun_env(dict(os.environ)))
        try:
            code = process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached torchrun too; let it stop its ranks
            code = process.wait()
        if report.is_file():
            failures = json.loads(report.read_text())["failures"]
            print(f"error: {group_failed(failures, nproc, max_restarts, run_dir)}", file=sys.stderr, flush=True)
    return code


def group_failed(failures: list[dict], nproc: int, max_restarts: int, run_dir: Path) -> str:
    """The line a group that failed for good ends with: which rank died and how, and how to go on."""
    first = failures[0]
    how = f"was killed by {first['signal']}" if "signal" in first else f"exited with code {first['exitcode']}"
    others = [f["rank"] for f in failures[1:]]
    text = (f"rank {first['rank']} {how}" + (f" (and rank(s) {', '.join(map(str, others))} with it)" if others else "")
            + f"; torchrun did not restart the group (--max-restarts {max_restarts}"
            + (", used up)" if max_restarts else ")"))
    last = run_dir / "checkpoints" / "last.pt"
    try:
        step = ckpt.load_any(last)["step"]
    except (ckpt.CheckpointError, KeyError, TypeError):
        return f"{text}; no checkpoint was written in {run_dir}: run the command again to start over"
    return (f"{text}; the last checkpoint every rank wrote is step {step}: resume with python -m smart_tuner train "
            f"--config {run_dir / 'config.yaml'} --run-dir {run_dir} --resume --nproc {nproc}")
