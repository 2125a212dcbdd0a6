"""Headless Chromium for browser checks: the DOM of a page after its scripts ran.

Debian's ``chromium`` package (installed by ``.ci/run``). Without it the browser tests skip locally and fail
under CI (``CI`` set), like the PostgreSQL test (``tests.conftest.require``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

from .conftest import require

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    path = chromium_path()
    require(path is not None, "no chromium on PATH (Debian package `chromium`; .ci/run installs it)")
    return path


def dump_dom(url: str, wait_ms: int = 8000, timeout: float = 90.0) -> str:
    """The serialized DOM of ``url`` once the page's scripts (and ``wait_ms`` of virtual time) have run."""
    binary = require_chromium()
    with tempfile.TemporaryDirectory() as profile:
        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--disable-background-networking", "--disable-extensions", "--no-first-run",
                   "--disable-sync", "--mute-audio", f"--user-data-dir={profile}",
                   f"--virtual-time-budget={wait_ms}", "--dump-dom", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"chromium exited with {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout
