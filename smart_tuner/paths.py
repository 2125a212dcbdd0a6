"""Default places, in one module: where a study's artifacts and an MLflow store's artifacts live.

The rule is "next to the database file": a SQLite study ``sqlite:///x/s.db`` keeps its Optuna artifacts (the trials'
preview images and audio) in ``x/artifacts``, so the defaults (``studies/<study>.db``, ``mlflow/mlflow.db``) give
``studies/artifacts`` and ``mlflow/artifacts``, and a throwaway store in a temporary directory keeps everything
there. A server database (PostgreSQL, a tracking server) has no file: then ``studies/artifacts`` or
``mlflow/artifacts`` under the working directory, unless told otherwise (``--artifact-dir``, the tracking server's
own artifact root). Paths are resolved when a store is created, so a later working directory does not matter.
"""

from __future__ import annotations

from pathlib import Path

STUDIES_DIR = Path("studies")
MLFLOW_DIR = Path("mlflow")


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
