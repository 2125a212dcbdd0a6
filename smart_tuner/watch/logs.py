"""Log lines for people at a terminal: one set-up for every command, every line through the progress bar."""

from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm

LIBRARIES = ("matplotlib", "PIL", "urllib3", "mlflow", "alembic", "optuna", "httpx")


class TqdmHandler(logging.Handler):
    """Log lines go through tqdm.write so that they never garble a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never kill a run
            self.handleError(record)


def setup_logging(level: str = "INFO") -> None:
    """One set-up for every command: our handler on the root logger, the level asked for, and the libraries'
    own handlers (MLflow's, Optuna's) routed through it, so that no line bypasses the progress bar."""
    # MLflow installs a handler of its own at import unless told not to; it must not have been imported yet.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries speak from WARNING up (from INFO when debugging), never below the level asked for.
    requested = logging.getLevelName(level.upper())
    libraries = logging.INFO if requested <= logging.DEBUG else max(requested, logging.WARNING)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(libraries)
