"""torchrun for ``train --nproc N``, in a process of its own: ``python -m smart_tuner.train.launcher REPORT ARGS``.

It runs torchrun's own launcher with torchrun's arguments ``ARGS``. When the group fails for good (a rank died and
``--max-restarts`` is used up), torchrun would print its ``ChildFailedError`` traceback (some 30 lines); this writes
which ranks failed, and how, as JSON to ``REPORT`` instead, exits 1, and leaves the one line the user reads to
``train`` (command.py), which knows the command and the run directory to resume.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path


def failures_of(exc: BaseException) -> list[dict]:
    """The ranks of a ``ChildFailedError``, the ones killed by a signal first (a rank that ended with an error of
    its own is usually one the dead rank took with it)."""
    found = []
    for rank, failure in exc.failures.items():
        code = int(failure.exitcode)
        entry = {"rank": int(rank), "exitcode": code}
        if code < 0:
            entry["signal"] = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        found.append(entry)
    return sorted(found, key=lambda f: (f["exitcode"] >= 0, f["rank"]))


def main(argv: list[str]) -> int:
    report, args = Path(argv[0]), argv[1:]
    # The agent's own log lines (rendezvous, "failed (exitcode: -9)", the stopping of the others) would come
    # before the line train prints; the ranks log what they do themselves.
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    try:
        torchrun.run(torchrun.parse_args(args))
    except ChildFailedError as exc:
        report.write_text(json.dumps({"failures": failures_of(exc)}))
        return 1
    except SignalException as exc:  # Ctrl-C or a kill reached torchrun; it stopped its ranks
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
