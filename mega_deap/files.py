"""Files written atomically: a temporary file beside the target, flushed to disk, then one rename.

A reader (or a run resumed after a kill at any instant) sees either the old file or the new one, never a
half-written one.
"""

import hashlib
import os
from typing import Callable

import torch

__all__ = ["atomic_write", "tensor_digest"]


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' shapes, dtypes and bytes, in order (read in place when already contiguous on
    the CPU): the one checksum of checkpoints, job identities and caches."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
