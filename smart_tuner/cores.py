"""CPU cores shared by the smart_tuner processes of one machine.

torch gives each process as many threads as there are cores. Two trainings side by side then run twice the threads
the cores can serve, and both crawl (benchmarks/shared_cores.py measures it). A process whose ``train.num_threads``
is 0 joins the machine's share instead: it registers itself in a per-user directory and, whenever it asks, gets the
cores divided by the live processes of the share (at least one thread). A process that exits, or is killed, stops
counting: its entry names its pid, and a dead pid's entry is removed by the next process that looks.
"""

from __future__ import annotations

import os
from pathlib import Path

from .paths import core_share_dir


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
        self.directory = Path(directory) if directory is not None else core_share_dir()
        self.cores = cores or machine_cores()
        self.entry = self.directory / str(os.getpid())

    def join(self) -> CoreShare:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.entry.touch()
        return self

    def leave(self) -> None:
        self.entry.unlink(missing_ok=True)

    def members(self) -> int:
        """Live processes in the share, this one included (joined or about to)."""
        others = 0
        for entry in self.directory.iterdir() if self.directory.is_dir() else ():
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
