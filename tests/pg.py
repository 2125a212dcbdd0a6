"""A throwaway PostgreSQL server for tests: ``postgres_server(base_dir)`` and the ``postgres_url`` fixture.

The server is private to the test session: its own data directory in a fresh temporary directory, trust
authentication, listening on 127.0.0.1 only (plus a unix socket inside the temporary directory), durability off
(``fsync``, ``synchronous_commit``, ``full_page_writes``) because nothing outlives the session. It is always
stopped (``pg_ctl -m immediate stop``, then SIGKILL if that fails) and its directory removed, even when a test
fails; the server log is copied to ``base_dir/postgres.log`` first.

PostgreSQL refuses to run as root: as root, ``initdb``/``pg_ctl`` run as the ``postgres`` user through
``runuser`` in a directory that user owns; as any other user they run directly.

No server binaries (``initdb``/``pg_ctl`` on PATH or in ``/usr/lib/postgresql/*/bin``): the tests skip, except
under CI (``CI=true``), where they must run and fail instead (``tests.conftest.require``; ``.ci/run`` installs the
server).

Use in a test module::

    from tests.pg import postgres_url  # noqa: F401  (the fixture)

    def test_something(postgres_url):  # a SQLAlchemy URL, e.g. postgresql+psycopg2://postgres@127.0.0.1:PORT/smart_tuner
        ...
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import require

DATABASE = "smart_tuner"
SUPERUSER = "postgres"
RUN_AS = "postgres"  # the OS user the server runs as when the tests run as root



def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: PATH first, then the newest Debian layout."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)  # /usr/local/bin/initdb may be a symlink
    candidates += [Path(d).parent for d in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                                  key=_version_key, reverse=True)]
    for d in candidates:
        if all(os.access(d / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, bin_dir: Path, work: Path, as_user: str | None):
        self.bin_dir, self.work, self.as_user = bin_dir, work, as_user
        self.data, self.sock, self.log = work / "data", work / "sock", work / "postgres.log"

    def run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / tool), *args]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        # cwd: the server user must be able to enter it (root's cwd may be closed to it); LC_ALL: initdb's own
        # messages and locale checks must not depend on the caller's environment.
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(cmd, cwd=self.work, env=env, capture_output=True, text=True, timeout=timeout)

    def initdb(self) -> None:
        r = self.run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                     "--locale=C", "--no-sync")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        # Trust only the private unix socket and 127.0.0.1 (initdb's default also trusts ::1).
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n")

    def start(self, port: int) -> subprocess.CompletedProcess:
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {shlex.quote(str(self.sock))} "  # run by /bin/sh
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        return self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60",
                        "start", timeout=90)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if self.postmaster_pid() is None:
            return
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=45)
        except subprocess.TimeoutExpired:
            pass
        pid = self.postmaster_pid()  # pg_ctl removes postmaster.pid once the server is gone
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)  # the postmaster's children exit when it dies
            time.sleep(0.5)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no server log)"


def _create_database(port: int) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=SUPERUSER, dbname="postgres", connect_timeout=10)
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        conn.close()


@contextlib.contextmanager
def postgres_server(base_dir: Path) -> Iterator[str]:
    """Run a private PostgreSQL server for the duration of the block; yields its SQLAlchemy URL.

    ``base_dir`` receives the server log (``postgres.log``) when the block ends. The server itself lives in a
    short temporary directory (unix socket paths are limited to about 100 bytes, and as root it must be a
    directory the ``postgres`` user can reach, which pytest's private ``/tmp/pytest-of-root`` is not).
    """
    bin_dir = find_bin_dir()
    require(bin_dir is not None, "PostgreSQL: no server binaries (initdb, pg_ctl, postgres) on PATH or in "
            "/usr/lib/postgresql/*/bin; install them, e.g. `apt-get install postgresql`")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        require(False, "PostgreSQL: the psycopg2 driver is not installed (`pip install -e '.[dev]'` installs "
                "psycopg2-binary)")

    as_user = None
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam(RUN_AS)
        except KeyError:
            raise RuntimeError(f"running as root, but there is no {RUN_AS!r} user to run PostgreSQL as "
                               "(the server refuses to run as root)") from None
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root, but `runuser` (util-linux) is missing")
        as_user = RUN_AS

    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="st-pg-", dir="/tmp" if as_user else None))
    server = _Server(bin_dir, work, as_user)
    try:
        server.sock.mkdir()
        if as_user:
            for p in (work, server.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        server.initdb()
        for _attempt in range(3):  # the free port may be taken between choosing and binding it
            port = _free_port()
            r = server.start(port)
            if r.returncode == 0:
                break
            server.stop()
        else:
            raise RuntimeError(f"pg_ctl start failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                               f"server log:\n{server.log_text()}")
        _create_database(port)
        yield f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        try:
            server.stop()
        finally:
            with contextlib.suppress(OSError):
                shutil.copyfile(server.log, base_dir / "postgres.log")
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[str]:
    """One PostgreSQL server for the whole session, with an empty ``smart_tuner`` database; use unique study names."""
    with postgres_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url
