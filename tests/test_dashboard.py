"""``dashboard`` and ``mlflow-ui``: real servers on free ports, read back through their HTTP APIs and a browser.

The study is made directly with Optuna (no training): three complete trials, one pruned, and one whose alignment
PNG was uploaded to the study's artifact store while it ran. Every server is started in its own process group
and stopped at the end of its test or module, whatever the outcome.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from smart_tuner.study.storage import StudyError
from smart_tuner.view.dashboard import (
    listens_on_all_interfaces,
    mlflow_server_command,
    mlflow_server_env,
    serve_dashboard,
    serve_mlflow_ui,
    server_url,
)
from tests.chromium import dump_dom

STUDY = "dash-study"
LR = FloatDistribution(1e-4, 1e-2, log=True)
VALUES = [0.5, 0.3, 0.4]  # trials 0-2 (complete); trial 3 is pruned; trial 4 (complete, 0.2) has the image
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- helpers
def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A valid RGB PNG, written by hand (no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"".join(bytes((x * 60, y * 80, 200)) for x in range(width)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_sigint() -> None:
    # A shell's background job may inherit SIGINT ignored; the server must see Ctrl-C as a user would send it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(cwd: Path, log_path: Path, *args, env: dict | None = None) -> subprocess.Popen:
    """``python -m smart_tuner ARGS`` in its own process group, output to a file (a full pipe would block)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "smart_tuner", *map(str, args)], cwd=cwd, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_default_sigint)


def stop(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
    """Signal the process group (Ctrl-C by default); SIGKILL if it has not exited within ``timeout``."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return process.wait()
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.wait()


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def kill_groups(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for_http(url: str, timeout: float = 30.0, interval: float = 0.2,
                  process: subprocess.Popen | None = None) -> int:
    """Poll ``url`` until it answers with any HTTP status; returns that status. Raises :class:`TimeoutError` after
    ``timeout`` seconds, or :class:`RuntimeError` at once when ``process`` (the server waited for) has exited."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=max(interval, 2.0)) as response:
                return response.status
        except urllib.error.HTTPError as exc:  # an error status is an answer too
            return exc.code
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s ({last})")
        time.sleep(interval)  # polling a server that is starting: the wait ends on its answer, not on the clock


def wait_up(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    try:
        wait_for_http(url, timeout=timeout, process=process)
    except (TimeoutError, RuntimeError) as exc:
        raise AssertionError(f"{exc}\n--- server output ---\n{log_path.read_text(errors='replace')[-4000:]}") from exc


def http_get(url: str, timeout: float = 30.0) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200, url
        return response.read(), response.headers.get("Content-Type", "")


def get_json(url: str) -> dict:
    return json.loads(http_get(url)[0])


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def dom_text(html: str) -> str:
    """The visible text of a dumped DOM, tags and styles gone, whitespace collapsed."""
    html = re.sub(r"<(style|script|svg)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------------- study
@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """``studies/dash-study.db`` and its artifact store ``studies/artifacts``, as ``optimize`` leaves them."""
    root = tmp_path_factory.mktemp("dashboard")
    (root / "studies" / "artifacts").mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{root}/studies/{STUDY}.db")
    for number, value in enumerate(VALUES):
        study.add_trial(create_trial(params={"lr": 1e-3 * (number + 1)}, distributions={"lr": LR}, value=value,
                                     intermediate_values={0: value + 0.2, 1: value + 0.1}))
    study.add_trial(create_trial(params={"lr": 5e-3}, distributions={"lr": LR}, state=TrialState.PRUNED,
                                 intermediate_values={0: 0.9}))
    png = tiny_png()
    (root / "alignment.png").write_bytes(png)
    # An artifact can only be attached while the trial runs (a finished trial is read-only), as in a study.
    trial = study.ask({"lr": LR})
    artifact_id = upload_artifact(artifact_store=FileSystemArtifactStore(str(root / "studies" / "artifacts")),
                                  file_path=str(root / "alignment.png"), study_or_trial=trial)
    trial.report(0.3, 0)
    study.tell(trial, 0.2)
    return {"root": root, "png": png, "artifact_id": artifact_id, "study_id": study._study_id,
            "trial_id": trial._trial_id, "url": f"sqlite:///{root}/studies/{STUDY}.db"}


@pytest.fixture(scope="module")
def dashboard(study_dir):
    """``dashboard --storage URL --artifact-dir DIR`` on a free port; its base URL."""
    root, port = study_dir["root"], free_port()
    log_path = root / "dashboard.log"
    process = start_cli(root, log_path, "dashboard", "--storage", study_dir["url"], "--port", port,
                        "--artifact-dir", root / "studies" / "artifacts")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_up(f"{base}/api/meta", process, log_path)
        yield {**study_dir, "base": base, "log": log_path}
    finally:
        stop(process)


# ------------------------------------------------------------------------------------------------- dashboard
def test_dashboard_api_serves_trials_and_artifact(dashboard):
    base = dashboard["base"]
    assert get_json(f"{base}/api/meta")["artifact_is_available"] is True
    summaries = get_json(f"{base}/api/studies")["study_summaries"]
    assert [(s["study_id"], s["study_name"]) for s in summaries] == [(dashboard["study_id"], STUDY)]

    detail = get_json(f"{base}/api/studies/{dashboard['study_id']}?after=0")
    assert detail["name"] == STUDY
    trials = detail["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3, 4]
    assert [t["state"] for t in trials] == ["Complete"] * 3 + ["Pruned", "Complete"]
    assert [t["values"] for t in trials[:3]] == [[v] for v in VALUES]
    assert trials[4]["values"] == [0.2]
    assert trials[0]["intermediate_values"] == [{"step": 0, "value": 0.7}, {"step": 1, "value": 0.6}]
    assert trials[3]["intermediate_values"] == [{"step": 0, "value": 0.9}]
    assert [t["number"] for t in detail["best_trials"]] == [4]

    assert all(not t["artifacts"] for t in trials[:4])
    (artifact,) = trials[4]["artifacts"]
    assert artifact["artifact_id"] == dashboard["artifact_id"]
    assert artifact["filename"] == "alignment.png"
    assert artifact["mimetype"] == "image/png"
    body, content_type = http_get(f"{base}/artifacts/{dashboard['study_id']}/{trials[4]['trial_id']}/"
                                  f"{artifact['artifact_id']}")
    assert content_type == "image/png"
    assert body == dashboard["png"]

    log_text = dashboard["log"].read_text(errors="replace")
    assert f"optuna-dashboard: {base}/dashboard" in log_text
    assert "Traceback" not in log_text


def test_dashboard_renders_in_browser(dashboard):
    base, study_id = dashboard["base"], dashboard["study_id"]
    studies = dom_text(dump_dom(f"{base}/dashboard", wait_ms=6000))
    assert STUDY in studies

    html = dump_dom(f"{base}/dashboard/studies/{study_id}/trials?numbers=4", wait_ms=8000)
    text = dom_text(html)
    assert f"{STUDY} (id={study_id})" in text
    for number in range(5):
        assert f"Trial {number}" in text, text[:2000]
    assert "Pruned" in text
    assert "alignment.png" in text
    # The selected trial's card shows the uploaded image, served by the dashboard's artifact route.
    src = f"/artifacts/{study_id}/{dashboard['trial_id']}/{dashboard['artifact_id']}"
    assert re.search(rf'<img[^>]*src="{re.escape(src)}"', html), re.findall(r"<img[^>]*>", html)


def test_dashboard_study_option_and_ctrl_c(study_dir):
    """``--study NAME`` opens ``studies/NAME.db`` and the default artifact dir of the working directory;
    Ctrl-C ends it with exit code 0."""
    root, port = study_dir["root"], free_port()
    log_path = root / "dashboard-study.log"
    process = start_cli(root, log_path, "dashboard", "--study", STUDY, "--port", port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_up(f"{base}/api/studies", process, log_path)
        assert [s["study_name"] for s in get_json(f"{base}/api/studies")["study_summaries"]] == [STUDY]
        body, _ = http_get(f"{base}/artifacts/{study_dir['study_id']}/{study_dir['trial_id']}/"
                           f"{study_dir['artifact_id']}")
        assert body == study_dir["png"]
    finally:
        code = stop(process, signal.SIGINT)
    output = log_path.read_text(errors="replace")
    assert code == 0, output
    assert f"optuna-dashboard: {base}/dashboard/studies/{study_dir['study_id']}" in output
    assert "Traceback" not in output


def test_dashboard_missing_study_is_a_user_error(tmp_path):
    """Exit code 2, one ``error:`` line, no traceback, and no database file left behind."""
    cases = {"missing": (["--study", "missing"], ["studies/missing.db", "optimize"]),
             "neither": ([], ["--study", "--storage"])}
    runs = {name: subprocess.Popen([sys.executable, "-m", "smart_tuner", "dashboard", *args, "--port", "1"],
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
            for name, (args, _) in cases.items()}  # both at once: each process takes a while to start
    for name, process in runs.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (name, stdout, stderr)
        assert "Traceback" not in stderr
        (line,) = error_lines(stderr)
        for word in cases[name][1]:
            assert word in line, line
    assert not (tmp_path / "studies").exists()  # naming the default storage creates nothing
    assert not list(tmp_path.rglob("*.db"))


def _serve(**kwargs) -> int:
    return serve_dashboard(**{"port": 1, "artifact_dir": "artifacts", **kwargs})


def test_dashboard_storage_errors(study_dir, tmp_path, monkeypatch):
    """Errors raised before anything listens: no server, no database file, no password in the message."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match=r"no study storage at elsewhere\.db.*optimize"):
        _serve(storage="sqlite:///elsewhere.db")
    assert not (tmp_path / "elsewhere.db").exists()
    with pytest.raises(StudyError, match=r"study 'other' is not in this storage \(its studies: dash-study\)"):
        _serve(storage=study_dir["url"], study="other")
    (tmp_path / "not-optuna.db").write_bytes(b"")
    with pytest.raises(StudyError, match="not an Optuna study storage"):
        _serve(storage="sqlite:///not-optuna.db")
    with pytest.raises(StudyError) as info:
        _serve(storage="postgresql://tuner:s3cret@127.0.0.1:1/optuna")
    assert "s3cret" not in str(info.value)
    assert not (tmp_path / "artifacts").exists()


# ------------------------------------------------------------------------------------------------- mlflow ui
def test_mlflow_server_command_local_store(tmp_path):
    command = mlflow_server_command(f"sqlite:///{tmp_path}/store/mlflow.db", "127.0.0.1", 5123)
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    flags = {flag: command[i + 1] for i, flag in enumerate(command) if flag.startswith("--") and i + 1 < len(command)}
    assert "--no-serve-artifacts" in command
    # The store's URI (it may hold a password) is in the server's environment, never on its command line.
    assert "--backend-store-uri" not in command and not any("mlflow.db" in part for part in command)
    assert mlflow_server_env(f"sqlite:///{tmp_path}/store/mlflow.db")["MLFLOW_BACKEND_STORE_URI"] == \
        f"sqlite:///{tmp_path}/store/mlflow.db"
    assert flags["--default-artifact-root"] == (tmp_path / "store" / "artifacts").as_uri()
    assert (flags["--host"], flags["--port"]) == ("127.0.0.1", "5123")
    assert (tmp_path / "store" / "artifacts").is_dir()
    assert server_url("::1", 8080, "/dashboard") == "http://[::1]:8080/dashboard"


def test_mlflow_ui_remote_server_starts_nothing(capsys):
    assert serve_mlflow_ui("https://tuner:s3cret@mlflow.example.org", host="127.0.0.1", port=5000) == 0
    out = capsys.readouterr().out
    assert "https://tuner:***@mlflow.example.org" in out
    assert "nothing to start" in out
    assert "s3cret" not in out


def test_mlflow_ui_shows_runs_and_artifacts(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from smart_tuner.watch.tracking import ensure_experiment

    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///mlflow/mlflow.db"  # what default_tracking_uri() gives in this directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "mlflow").mkdir()
    client = MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, "dash-exp")
    run_id = client.create_run(experiment_id, run_name="trial-0").info.run_id
    client.log_metric(run_id, "val_loss", 0.25, step=4)
    png = tiny_png(5, 2)
    (tmp_path / "alignment_step000004.png").write_bytes(png)
    client.log_artifact(run_id, str(tmp_path / "alignment_step000004.png"), "alignment")
    client.set_terminated(run_id)
    artifacts_root = (tmp_path / "mlflow" / "artifacts").as_uri()

    port = free_port()
    log_path = tmp_path / "mlflow-ui.log"
    process = start_cli(tmp_path, log_path, "mlflow-ui", "--port", port)
    base = f"http://127.0.0.1:{port}"
    spawned: list[int] = []
    try:
        wait_up(f"{base}/health", process, log_path, timeout=120)
        spawned = children(process.pid)
        # Any local user reads command lines (ps): the store's URI is in none of the server's processes'.
        for pid in [process.pid, *spawned]:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert b"mlflow.db" not in cmdline, cmdline
        experiments = post_json(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
        (experiment,) = [e for e in experiments if e["name"] == "dash-exp"]
        assert experiment["artifact_location"] == artifacts_root

        (run,) = post_json(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
        assert run["info"]["run_id"] == run_id
        assert run["info"]["status"] == "FINISHED"
        assert {"key": "val_loss", "value": 0.25, "timestamp": run["data"]["metrics"][0]["timestamp"],
                "step": 4} in run["data"]["metrics"]

        listing = get_json(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={run_id}&path=alignment")
        assert listing["files"] == [{"path": "alignment/alignment_step000004.png", "is_dir": False,
                                     "file_size": len(png)}]
        body, _ = http_get(f"{base}/get-artifact?path=alignment/alignment_step000004.png&run_uuid={run_id}")
        assert body == png
        # An experiment created from the UI keeps its artifacts beside the store, not in the server's cwd.
        created = post_json(f"{base}/api/2.0/mlflow/experiments/create", {"name": "from-ui"})
        new = get_json(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={created['experiment_id']}")
        assert new["experiment"]["artifact_location"].startswith(artifacts_root)
        html, content_type = http_get(f"{base}/")
        assert content_type.startswith("text/html") and b"<html" in html.lower()
    finally:
        code = stop(process, signal.SIGINT)
        still_up = port_open(port)
        if still_up:  # the server outlived the forwarded Ctrl-C: clean up, then fail below
            kill_groups(spawned)
    output = log_path.read_text(errors="replace")
    assert code == 0, output
    assert f"MLflow UI: {base}" in output
    assert not still_up, "the MLflow server still listens after Ctrl-C"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


def test_every_spelling_of_all_interfaces_warns():
    for host in ("0.0.0.0", "0", "0.0", "::", "::0", "0:0:0:0:0:0:0:0", ""):
        assert listens_on_all_interfaces(host), host
    for host in ("127.0.0.1", "localhost", "::1", "192.168.1.5", "example.org"):
        assert not listens_on_all_interfaces(host), host
