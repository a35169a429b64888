"""Output files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` in one rename.

    A crash, Ctrl-C or a full disk leaves the previous file as it was (or no file), never half of a new one.
    A file that exists keeps its permissions; a new one gets those of an ordinary new file (``0666 & ~umask``),
    not mkstemp's private ones. A symlink is followed: the file it points to is replaced, the link stays.
    """
    target = Path(path)
    if target.is_symlink():
        target = target.resolve()
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.absolute().parent))
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux: /proc/self/status):
    ``os.umask`` can only read it by setting it, which for a moment gives every other thread's new files
    permissions 0666."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
