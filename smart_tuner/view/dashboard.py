"""Browsers for what the studies left behind: optuna-dashboard for a study, the MLflow UI for its runs.

``python -m smart_tuner dashboard --study NAME`` serves the study's storage (``sqlite:///studies/NAME.db`` by
default, or any ``--storage`` URL) with optuna-dashboard, together with the study's artifact store
(``studies/artifacts``), so that the alignment images each trial uploaded with
``optuna.artifacts.upload_artifact`` show on the trial's page. A study that does not exist is an error: the
dashboard never creates an empty database.

``python -m smart_tuner mlflow-ui`` starts ``mlflow server`` as a child process on the tracking store the runs
used (``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow/mlflow.db``). The runs' experiments keep their artifacts
under an absolute ``file://.../mlflow/artifacts`` location, which the server reads directly; experiments created
from the UI get a default artifact root next to a local store. A remote tracking server needs nothing started:
its URL already is the UI.

Both servers listen on 127.0.0.1 unless ``--host`` says otherwise; neither prints a storage password.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna

from ..paths import default_tracking_uri, mlflow_artifact_root, sqlite_file, study_artifact_dir
from ..redact import redact_url
from ..study.storage import StudyError, open_existing_storage, storage_url

log = logging.getLogger(__name__)

ALL_INTERFACES = ("0.0.0.0", "::", "")


# ----------------------------------------------------------------------------------------------- helpers
def server_url(host: str, port: int, path: str = "") -> str:
    """``http://host:port/path`` (an IPv6 address in brackets)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}{path}"


def listens_on_all_interfaces(host: str) -> bool:
    """Whether ``host`` means every interface: an unspecified address in any spelling the resolver accepts
    (``0.0.0.0``, ``0``, ``0.0``, ``::``, ``::0``) or the empty string."""
    if host in ALL_INTERFACES:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        pass
    try:
        return socket.inet_aton(host) == bytes(4)  # the C library's spellings: "0", "0.0", "0x0"
    except OSError:
        return False


def _warn_if_exposed(host: str) -> None:
    if listens_on_all_interfaces(host):
        log.warning("listening on all interfaces (--host %s): anyone who can reach this machine can read "
                    "and edit the data", host or "''")


# ----------------------------------------------------------------------------------------------- dashboard
def resolve_storage_url(study: str | None, storage: str | None) -> str:
    """``--storage`` as given, else the default storage of ``--study``; neither is an error."""
    if storage:
        return storage
    if study:
        return storage_url(study, None)
    raise StudyError("dashboard: name the study (--study NAME, storage sqlite:///studies/NAME.db) or its "
                     "storage (--storage URL)")


def open_dashboard_storage(url: str, study: str | None) -> Any:
    """The storage optuna-dashboard serves: an existing RDB storage, writable (the dashboard saves notes); other
    URLs (a journal file, Redis) are handed to optuna-dashboard as they are."""
    if "://" not in url or url.startswith("redis"):
        return url
    return open_existing_storage(url, study, read_only=False)


def find_study_id(storage: Any, name: str) -> int:
    """The id of study ``name`` in ``storage`` (its dashboard page is ``/dashboard/studies/<id>``)."""
    studies = storage.get_all_studies()
    for study in studies:
        if study.study_name == name:
            return study._study_id
    known = ", ".join(sorted(s.study_name for s in studies)) or "none"
    raise StudyError(f"study {name!r} is not in this storage (its studies: {known})")


def make_artifact_store(artifact_dir: str | os.PathLike) -> Any:
    """The studies' file-system artifact store (the directory is created)."""
    path = Path(artifact_dir)
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def serve_dashboard(study: str | None = None, storage: str | None = None, artifact_dir: str | Path | None = None,
                    host: str = "127.0.0.1", port: int = 8080) -> int:
    """``dashboard``: serve a study's storage and artifacts with optuna-dashboard until Ctrl-C."""
    url = resolve_storage_url(study, storage)
    opened = open_dashboard_storage(url, study)
    path = "/dashboard"
    if study and not isinstance(opened, str):
        path = f"/dashboard/studies/{find_study_id(opened, study)}"
    artifact_dir = Path(artifact_dir) if artifact_dir else study_artifact_dir(url)
    store = make_artifact_store(artifact_dir)

    from optuna_dashboard import run_server

    _warn_if_exposed(host)
    address = server_url(host, port, path)
    log.info("optuna-dashboard on %s (storage %s, artifacts %s); Ctrl-C stops it",
             address, redact_url(url), artifact_dir.resolve())
    print(f"optuna-dashboard: {address}", flush=True)
    try:
        run_server(opened, host=host, port=port, artifact_store=store)
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, or the host is not an address of this machine
        raise StudyError(f"dashboard: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                         "choose another --port or --host") from None
    return 0


# ----------------------------------------------------------------------------------------------- mlflow ui
def is_remote_tracking_uri(uri: str) -> bool:
    """A tracking server (or Databricks) rather than a store a local ``mlflow server`` can open."""
    return uri.startswith(("http://", "https://", "databricks"))


def artifact_root_for(uri: str) -> str:
    """Default artifact root for experiments created from the UI: the store's own (see smart_tuner.paths)."""
    root = mlflow_artifact_root(uri).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


def mlflow_server_command(uri: str, host: str, port: int) -> list[str]:
    """``mlflow server`` on a local or database store with one worker. Artifacts are not proxied: every
    experiment of ours has a ``file://`` location the server reads directly, and the UI's new experiments get
    ``--default-artifact-root``. The store's URI is not on the command line (any local user reads command lines
    with ``ps``; it may hold a password): it goes through the environment (:func:`mlflow_server_env`)."""
    return [sys.executable, "-m", "mlflow", "server", "--default-artifact-root", artifact_root_for(uri),
            "--no-serve-artifacts", "--host", host, "--port", str(port), "--workers", "1"]


def mlflow_server_env(uri: str) -> dict[str, str]:
    """The environment of ``mlflow server``: the store's URI (``MLFLOW_BACKEND_STORE_URI``, which the server reads
    like ``--backend-store-uri``), and no job runner (a process per GenAI job queue, for evaluations that training
    runs never start) unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` says otherwise."""
    env = dict(os.environ)
    env["MLFLOW_BACKEND_STORE_URI"] = uri
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGINT,
                       timeout: float = 15.0) -> int:
    """Send ``sig`` to the child's process group, escalating to SIGTERM and SIGKILL; returns its exit code."""
    for current in (sig, signal.SIGTERM, signal.SIGKILL):
        _signal_group(process, current)
        try:
            return process.wait(timeout=timeout if current != signal.SIGKILL else None)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


class _Terminated(Exception):
    """SIGTERM reached this process: the server is stopped the same way as on Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def serve_mlflow_ui(tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> int:
    """``mlflow-ui``: run ``mlflow server`` on the runs' tracking store until Ctrl-C; its exit code."""
    uri = tracking_uri or default_tracking_uri()
    if is_remote_tracking_uri(uri):
        print(f"the tracking URI {redact_url(uri)} is a tracking server: nothing to start, its UI is at that "
              "URL", flush=True)
        return 0
    try:
        path = sqlite_file(uri)
    except Exception:  # an unparsable URI: mlflow server names it itself
        path = None
    if path is not None and not path.is_file():
        log.warning("no database file %s yet: the MLflow UI starts on an empty store", path)
    command = mlflow_server_command(uri, host, port)
    _warn_if_exposed(host)
    address = server_url(host, port)
    log.info("MLflow UI on %s (tracking store %s); Ctrl-C stops it", address, redact_url(uri))
    print(f"MLflow UI: {address}", flush=True)
    # Its own process group: mlflow server starts uvicorn as a grandchild, and a signal must reach both.
    process = subprocess.Popen(command, start_new_session=True, env=mlflow_server_env(uri))
    previous = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL  # None: a handler not set from Python
    in_main_thread = _set_sigterm(_raise_terminated)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_process_group(process, signal.SIGINT)
        return 0
    except _Terminated:
        stop_process_group(process, signal.SIGTERM)
        return 0
    finally:
        if in_main_thread:
            _set_sigterm(previous)
        if process.poll() is None:
            stop_process_group(process, signal.SIGTERM)
        else:  # a worker the server left behind
            _signal_group(process, signal.SIGTERM)


def _set_sigterm(handler: Any) -> bool:
    try:
        signal.signal(signal.SIGTERM, handler)
        return True
    except ValueError:  # not the main thread: leave signals alone
        return False
