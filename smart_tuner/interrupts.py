"""Stopping on a signal without losing work: SIGINT (Ctrl-C) and SIGTERM (a scheduler's warning before SIGKILL).

Inside :func:`handle_signals` the first SIGINT or SIGTERM only records a stop request: the trainer sees it at its
next step boundary (:func:`requested`), writes ``last.pt`` at that step and ends the run as ``interrupted``; the
study fails the running trial as interrupted and starts no other. A second signal raises
:class:`KeyboardInterrupt` at once. The command then exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).
Outside :func:`handle_signals` (a library caller, a thread) nothing is changed.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals received inside handle_signals, in order
_forward: list[Callable[[int], None]] = []  # called with each signal (optimize passes them to its workers)


class Interrupted(Exception):
    """A stop was requested by a signal; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def requested() -> int | None:
    """The signal that asked for a stop, or None."""
    return _received[0] if _received else None


def exit_code(signum: int) -> int:
    return 128 + signum


def _handle(signum: int, frame: Any) -> None:
    _received.append(signum)
    for forward in list(_forward):
        forward(signum)
    if len(_received) > 1:
        raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): exiting at once")
    name = signal.Signals(signum).name
    print(f"{name}: stopping at the next step boundary (the checkpoint is written there); "
          "send it again to exit at once", file=sys.stderr, flush=True)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into stop requests while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _received.clear()
    for s in SIGNALS:
        signal.signal(s, _handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def forwarding(forward: Callable[[int], None]) -> Iterator[None]:
    """Call ``forward`` with every signal received while the block runs (child processes in sessions of their
    own, which a terminal's Ctrl-C does not reach)."""
    _forward.append(forward)
    try:
        yield
    finally:
        _forward.remove(forward)


def check() -> None:
    """Raise :class:`Interrupted` when a stop was requested."""
    signum = requested()
    if signum is not None:
        raise Interrupted(signum)
