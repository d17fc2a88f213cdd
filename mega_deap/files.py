"""Files written atomically: a temporary file beside the target, flushed to disk, then one rename.

A reader (or a run resumed after a kill at any instant) sees either the old file or the new one, never a
half-written one.
"""

import hashlib
import os
import pathlib
from typing import Callable

import torch

__all__ = ["atomic_write", "tensor_digest", "code_digest", "source_digest"]


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


def code_digest(fn: Callable) -> str:
    """SHA-256 of what a callable runs: its bytecode, the names and constants it reads, and those of the
    functions defined inside it; for a ``functools.partial``, its function and bound arguments; for a
    callable object, its class's name and ``__call__``. What tells two functions of one name apart in a
    checkpoint (what a closure's variables or a global hold at run time is not read)."""
    import functools
    import types

    h = hashlib.sha256()

    def const(c) -> str:
        if isinstance(c, frozenset):  # its repr's order follows string hashing, which varies by process
            return "frozenset(" + repr(sorted(map(const, c))) + ")"
        if isinstance(c, tuple):
            return "(" + ",".join(map(const, c)) + ")"
        return repr(c)

    def feed_code(code: types.CodeType) -> None:
        h.update(code.co_code)
        h.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                feed_code(c)
            else:
                h.update(const(c).encode())

    def feed(f) -> None:
        if isinstance(f, functools.partial):
            h.update(repr((f.args, sorted(f.keywords.items()))).encode())
            feed(f.func)
            return
        f = getattr(f, "__func__", f)  # a bound method: its function
        code = getattr(f, "__code__", None)
        if code is None:  # a callable object, or a builtin
            kind = type(f)
            h.update(f"{kind.__module__}.{kind.__qualname__}".encode())
            call = next((vars(k)["__call__"] for k in kind.__mro__ if "__call__" in vars(k)), None)
            code = getattr(call, "__code__", None)
        else:
            h.update(f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', '')}".encode())
        if code is not None:
            feed_code(code)

    feed(fn)
    return h.hexdigest()


def source_digest(root=None) -> str:
    """SHA-256 of the Python sources under ``root`` (their paths and contents, in order), by default this
    installed package's: what a study's progress file records, so that a run is never resumed by other code
    (:func:`code_digest` reads one function, not what it calls)."""
    root = pathlib.Path(root) if root is not None else pathlib.Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
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
