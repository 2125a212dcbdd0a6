"""Default places, in one module: the data directory, the default stores, and where their artifacts live.

The environment is read here and nowhere else: ``SMART_TUNER_DATA`` (where the demo corpus is built, default
``data``), ``MLFLOW_TRACKING_URI`` (the MLflow store, default ``sqlite:///mlflow/mlflow.db``) and
``SMART_TUNER_CORE_SHARE`` (where the processes of one machine register to share its cores, see
:mod:`smart_tuner.cores`; default ``<temp dir>/smart_tuner-<uid>/cores``). Computing a default
never creates anything: directories are made by the code that writes files into them
(:func:`make_sqlite_dir` when a database is opened for writing).

The rule is "next to the database file": a SQLite study ``sqlite:///x/s.db`` keeps its Optuna artifacts (the trials'
preview images and audio) in ``x/artifacts``, so the defaults (``studies/<study>.db``, ``mlflow/mlflow.db``) give
``studies/artifacts`` and ``mlflow/artifacts``, and a throwaway store in a temporary directory keeps everything
there. A server database (PostgreSQL, a tracking server) has no file: then ``studies/artifacts`` or
``mlflow/artifacts`` under the working directory, unless told otherwise (``--artifact-dir``, the tracking server's
own artifact root). Paths are resolved when a store is created, so a later working directory does not matter.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

STUDIES_DIR = Path("studies")
MLFLOW_DIR = Path("mlflow")
DATA_ENV = "SMART_TUNER_DATA"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
CORE_SHARE_ENV = "SMART_TUNER_CORE_SHARE"


def demo_corpus_dir(lang: str, size: int, words: tuple[int, int] | list[int] | None = None) -> Path:
    """Where the demo corpus of a language, size (and a word range other than the default one-sentence
    utterances) lives unless told otherwise: ``$SMART_TUNER_DATA`` or ./data."""
    suffix = f"-w{words[0]}-{words[1]}" if words is not None and tuple(words) != (3, 12) else ""
    return Path(os.environ.get(DATA_ENV) or "data") / f"demo-{lang}-{size}{suffix}"


def core_share_dir() -> Path:
    """Where this user's smart_tuner processes register to divide the machine's cores among them."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(os.environ.get(CORE_SHARE_ENV) or Path(tempfile.gettempdir()) / f"smart_tuner-{uid}" / "cores")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the project's local SQLite store."""
    return os.environ.get(TRACKING_ENV) or f"sqlite:///{MLFLOW_DIR.as_posix()}/mlflow.db"


def make_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite database file, before the database is opened for writing."""
    database = sqlite_file(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:`` URL; None for other URLs and in-memory databases."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def study_artifact_dir(storage_url: str) -> Path:
    """The Optuna artifact store of a study: ``artifacts/`` next to its SQLite file, else ``studies/artifacts``."""
    database = sqlite_file(storage_url)
    return database.parent / "artifacts" if database is not None else STUDIES_DIR / "artifacts"


def mlflow_artifact_root(tracking_uri: str) -> Path:
    """Artifact root of a local MLflow store: ``artifacts/`` next to its SQLite file, the directory of a file store,
    else ``mlflow/artifacts``."""
    database = sqlite_file(tracking_uri)
    if database is not None:
        return database.parent / "artifacts"
    if tracking_uri.startswith("file:"):
        from mlflow.utils.uri import local_file_uri_to_path

        return Path(local_file_uri_to_path(tracking_uri))
    if "://" not in tracking_uri and tracking_uri:
        return Path(tracking_uri)
    return MLFLOW_DIR / "artifacts"
