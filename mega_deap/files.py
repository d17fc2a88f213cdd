"""Files written atomically: a temporary file beside the target, flushed to disk, then one rename.

A reader (or a run resumed after a kill at any instant) sees either the old file or the new one, never a
half-written one.
"""
import os
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path, write: Callable[[str], None]) -> str:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which is fsynced and
    renamed onto ``path`` (the folder is fsynced too, where the system allows). Returns ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path
