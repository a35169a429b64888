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
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
