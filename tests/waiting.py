"""Waiting in tests: poll a condition until it holds, with a generous timeout, instead of sleeping a fixed time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest


def wait_for(condition: Callable[[], object], what: str, timeout: float = 240.0,
             proc: subprocess.Popen | None = None, details: Callable[[], str] | None = None,
             interval: float = 0.2) -> None:
    """Return once ``condition()`` holds. Fail after ``timeout`` seconds (with ``details()`` when given), or at
    once, with the end of its output, when ``proc`` exits first: then the condition can no longer come true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            text = err or out or ""
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            pytest.fail(f"waiting for {what}: the process exited {proc.returncode}: {text[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}" + (f"\n{details()}" if details else ""))
        time.sleep(interval)
