"""One logging set-up: levels honoured, libraries routed through our handler, log lines never inside a bar."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from smart_tuner.watch.logs import TqdmHandler, setup_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    names = ("mlflow", "optuna", "smart_tuner")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    root.handlers[:], root.level = saved
    for n, lvl in levels.items():
        logging.getLogger(n).setLevel(lvl)


@pytest.mark.parametrize("level, shown, hidden", [
    ("INFO", ["app info", "lib warning"], ["app debug", "lib info"]),
    ("WARNING", ["app warning", "lib warning"], ["app info", "lib info"]),
    ("ERROR", ["app error"], ["app warning", "lib warning"]),
    ("DEBUG", ["app debug", "lib info"], ["lib debug"]),
])
def test_levels_are_honoured(restore_logging, capsys, level, shown, hidden):
    setup_logging(level)
    assert [type(h) for h in logging.getLogger().handlers] == [TqdmHandler]
    app, lib = logging.getLogger("smart_tuner.x"), logging.getLogger("mlflow.store")
    app.debug("app debug"), app.info("app info"), app.warning("app warning"), app.error("app error")
    lib.debug("lib debug"), lib.info("lib info"), lib.warning("lib warning")
    err = capsys.readouterr().err
    for text in shown:
        assert text in err, text
    for text in hidden:
        assert text not in err, text


def test_log_lines_never_garble_a_progress_bar():
    """A child process logs (ours and MLflow's) while a tqdm bar is drawn: every log line stands on its own line."""
    code = r"""
import logging, time
from tqdm import tqdm
from smart_tuner.watch.logs import setup_logging
setup_logging("INFO")
import mlflow  # after the set-up, as in every command: its own handler is not installed
log, lib = logging.getLogger("smart_tuner.test"), logging.getLogger("mlflow.test")
for i in tqdm(range(5), ascii=True, mininterval=0, file=__import__("sys").stderr):
    log.info("message %d", i)
    lib.warning("library %d", i)
print("mlflow handlers:", len(logging.getLogger("mlflow").handlers))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mlflow handlers: 0" in done.stdout
    # tqdm redraws with \r; split on both to see each log record as a line of its own.
    lines = [part for line in done.stderr.splitlines() for part in line.split("\r")]
    for i in range(5):
        ours = [ln for ln in lines if f"message {i}" in ln]
        theirs = [ln for ln in lines if f"library {i}" in ln]
        assert len(ours) == 1 and len(theirs) == 1
        assert ours[0].split(" ", 1)[1] == f"INFO smart_tuner.test: message {i}"  # nothing of the bar glued on
        assert theirs[0].split(" ", 1)[1] == f"WARNING mlflow.test: library {i}"
