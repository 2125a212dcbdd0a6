"""CPU cores shared by the smart_tuner processes of one machine.

torch gives each process as many threads as there are cores. Two trainings side by side then run twice the threads
the cores can serve, and both crawl (benchmarks/shared_cores.py measures it). A process whose ``train.num_threads``
is 0 joins the machine's share instead: it registers itself in a per-user directory and, whenever it asks, gets the
cores divided by the live processes of the share (at least one thread). A process that exits, or is killed, stops
counting: its entry names its pid, and a dead pid's entry is removed by the next process that looks.

The registry's folders are this user's alone (mode 0700 whatever the umask, entries 0600); a folder that is a
symbolic link, not a directory, or another user's is not used: the run then counts itself alone and says so, naming
``SMART_TUNER_CORE_SHARE`` (a registry is an optimization, never a reason to stop training).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .paths import CORE_SHARE_ENV, core_share_dir

log = logging.getLogger(__name__)


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a cgroup cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class CoreShare:
    """This process's place in the machine's share of cores: :meth:`threads` is its fair number of torch threads
    now. Use as a context manager, or :meth:`join` and :meth:`leave`."""

    def __init__(self, directory: str | os.PathLike | None = None, cores: int | None = None):
        chosen = directory is not None or bool(os.environ.get(CORE_SHARE_ENV))
        self.directory: Path | None = Path(directory) if directory is not None else core_share_dir()
        # The default lives in the shared temporary folder: its per-user parent is made and checked too.
        self.folders = [self.directory] if chosen else [self.directory.parent, self.directory]
        self.cores = cores or machine_cores()
        self.entry = self.directory / str(os.getpid())

    def join(self) -> CoreShare:
        try:
            problem = next(filter(None, map(_own_folder, self.folders)), None)
            if problem is None:
                os.close(os.open(self.entry, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            problem = f"{exc.filename or self.entry}: {exc.strerror}"
        if problem is not None:
            log.warning("core share: %s; this run counts itself alone (set %s to a folder of your own, or "
                        "train.num_threads to a number)", problem, CORE_SHARE_ENV)
            self.directory = None
        return self

    def leave(self) -> None:
        if self.directory is not None:
            self.entry.unlink(missing_ok=True)

    def members(self) -> int:
        """Live processes in the share, this one included (joined or about to)."""
        others = 0
        directory = self.directory
        for entry in directory.iterdir() if directory is not None and directory.is_dir() else ():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            if _alive(int(entry.name)):
                others += 1
            else:
                entry.unlink(missing_ok=True)  # left by a killed process
        return others + 1

    def threads(self) -> int:
        return max(1, self.cores // self.members())

    def __enter__(self) -> CoreShare:
        return self.join()

    def __exit__(self, *exc: object) -> None:
        self.leave()


def _own_folder(path: Path) -> str | None:
    """Make ``path`` (mode 0700) unless it exists; why it cannot hold the registry, or None when it is this user's
    own directory (not a link). A folder of ours left open by an earlier umask is closed to 0700."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link (not followed)"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} exists and is not a directory"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{path} belongs to another user"
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return None

