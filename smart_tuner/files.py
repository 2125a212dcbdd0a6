"""The one atomic writer: a file or a directory is either complete under its name or not there at all.

Everything the project leaves on disk for later (checkpoints, reports, configs, debug bundles, previews, cached
features, truncated logs on resume) goes through :func:`write_atomic` or :func:`atomic_dir`: the content is
written under a temporary name in the same directory, flushed, and renamed over the final name, so a crash, a kill
or a full disk never leaves half a file where a reader (a resumed run, a browser, another worker) would find it.
A kill can leave the temporary file itself; :func:`remove_stale_temporaries` removes those of dead processes.
Logs that grow line by line (``metrics.jsonl``, ``events.jsonl``) get whole lines or nothing (:func:`append_line`);
a resumed run cuts them back to its checkpoint's step (:func:`truncate_jsonl`); they are read back by
:func:`read_jsonl` (a torn last line left out, a broken line elsewhere an error naming the file and line).
A full disk is a :class:`DiskFullError` naming the file. A run directory is written by one process at a time
(:func:`lock_directory`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

Content = bytes | str | Callable[[BinaryIO], None]  # a callable writes into the open binary file
log = logging.getLogger(__name__)

FULL = (errno.ENOSPC, errno.EDQUOT)
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


class DiskFullError(UserError, OSError):
    """No space left where a file was being written; the message names the file (the previous one is intact)."""

    def __str__(self) -> str:
        return str(self.strerror)


class BrokenRecord(UserError, ValueError):
    """A line of a JSONL log, other than the last, is not a JSON record; the message names the file and line."""


class OutputError(UserError, ValueError):
    """An ``--out`` a command must not write: not a regular file (a device, a FIFO, a directory), its own input, or
    an existing file the command replaces only with ``--force``."""


def check_output_file(path: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = (),
                      replace: bool = False, flag: str = "--out") -> Path:
    """``path`` as a command's one output file, checked before any work: where it exists it must be a regular file
    (renaming over a device or a FIFO would replace it), never one of ``inputs`` (even with ``--force``), and it is
    replaced only when ``replace`` (the command's documented behaviour, or ``--force``)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path  # nothing there (or a dangling link, which the write replaces)
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
        raise OutputError(f"{flag} {path}: is {kind}, not a regular file; name a file to write")
    for source in inputs:
        if os.path.exists(source) and os.path.samefile(path, source):
            raise OutputError(f"{flag} {path}: is the input {source}; name another file for the output")
    if not replace:
        raise OutputError(f"{flag} {path}: exists; pass --force to replace it, or name another file")
    return path


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a command's output folder: a directory, or nothing yet (it is made)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: exists and is not a directory; name a folder to write into")
    return path


class DirectoryLocked(RuntimeError):
    """Another process writes into this directory."""


def _temporary_name(path: Path) -> Path:
    # Unique per process and call: several workers may write the same cache entry at once.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _full(exc: OSError, path: Path) -> DiskFullError:
    return DiskFullError(exc.errno, f"no space left on the device of {path.parent} while writing {path}", str(path))


def write_atomic(path: str | os.PathLike, content: Content) -> Path:
    """Write ``content`` (bytes, UTF-8 text, or a function that writes into a binary file) to ``path``.

    The parent directory is created. The file gets the permissions an ordinary new file gets (0666 less the
    umask). On any error, the temporary file is removed and the previous file at ``path``, if any, is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; name a file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in FULL:
            raise _full(exc, path) from None
        raise
    return path


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` and a newline to ``path``, whole or not at all: a write that fails (a full disk) is cut
    back to the file's previous end, so a reader never finds half a line."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        end = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except BaseException as exc:
            os.ftruncate(fd, end)
            if isinstance(exc, OSError) and exc.errno in FULL:
                raise _full(exc, path) from None
            raise
    finally:
        os.close(fd)


class JsonLog(list):
    """The records of a JSONL log, in order (a list of dicts); ``torn`` is the number of a torn last line that was
    left out (None: the log ends whole)."""

    def __init__(self, records: Iterable[dict] = (), torn: int | None = None):
        super().__init__(records)
        self.torn = torn


def _parse_jsonl(path: Path) -> tuple[list[tuple[str, dict]], int | None]:
    """(line, record) of each non-blank line of a JSONL log, and the number of a torn last line (None: none). A
    last line that is not JSON is torn (its process died while writing it, before lines were written whole); a
    line elsewhere that is not a JSON object is a :class:`BrokenRecord` naming the file and line."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    parsed = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return parsed, number
            record = None
        if not isinstance(record, dict):
            raise BrokenRecord(f"{path}:{number}: not a JSON record; repair or remove that line")
        parsed.append((line, record))
    return parsed, None


def read_jsonl(path: str | os.PathLike) -> JsonLog:
    """The records of a log that a process appends to line by line: a torn last line is left out (its number in
    :attr:`JsonLog.torn`), a broken line elsewhere is a :class:`BrokenRecord`. A missing file has no records."""
    path = Path(path)
    if not path.is_file():
        return JsonLog()
    parsed, torn = _parse_jsonl(path)
    return JsonLog((record for _, record in parsed), torn)


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Keep the records of ``path`` up to ``step`` (their ``"step"`` key), rewritten atomically. A torn last line
    is dropped with a warning; a broken line elsewhere is a :class:`BrokenRecord` (see :func:`read_jsonl`). A
    missing file stays missing."""
    path = Path(path)
    if not path.is_file():
        return
    parsed, torn = _parse_jsonl(path)
    if torn is not None:
        log.warning("%s:%d: dropped a torn last line (the process died while writing it)", path, torn)
    write_atomic(path, "".join(line + "\n" for line, record in parsed if record["step"] <= step))


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that :func:`write_atomic` left in ``directory`` when its process was killed
    (their process is gone); returns them."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match and entry.is_file() and not _alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/.lock``, held until :meth:`release` (or the process ends, even by
    SIGKILL: the kernel drops it). The file holds the owner's pid, for the message another process gets."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            raise DirectoryLocked(f"{self.path.parent} is in use by another process (pid {owner}); wait for it to "
                                  "end, or choose another directory") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __del__(self) -> None:
        self.release()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; when the block ends without an error it replaces ``path`` (an older
    directory of that name is removed first), otherwise it is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
