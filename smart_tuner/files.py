"""The one atomic writer: a file or a directory is either complete under its name or not there at all.

Everything the project leaves on disk for later (checkpoints, reports, configs, debug bundles, previews, cached
features, truncated logs on resume) goes through :func:`write_atomic` or :func:`atomic_dir`: the content is
written under a temporary name in the same directory, flushed, and renamed over the final name, so a crash, a kill
or a full disk never leaves half a file where a reader (a resumed run, a browser, another worker) would find it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

Content = bytes | str | Callable[[BinaryIO], None]  # a callable writes into the open binary file


def _temporary_name(path: Path) -> Path:
    # Unique per process and call: several workers may write the same cache entry at once.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: str | os.PathLike, content: Content) -> Path:
    """Write ``content`` (bytes, UTF-8 text, or a function that writes into a binary file) to ``path``.

    The parent directory is created. The file gets the permissions an ordinary new file gets (0666 less the
    umask). On any error, the temporary file is removed and the previous file at ``path``, if any, is untouched.
    """
    path = Path(path)
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
