"""Checkpoints a run can resume from, in files that never run code when read.

One safetensors file holds the tensors (the population's genomes, the hall of fame's, torch's CPU and
CUDA random states) and, in its header, JSON metadata (fitness values, the logbook, the generation, the
states of ``random`` and NumPy, a SHA-256 of every tensor). It is written atomically: a temporary file,
fsync, then one rename; the checkpoint it replaces is kept as ``<path>.prev`` (a hard link made before the
rename), so at every instant ``<path>`` is a complete checkpoint. Reading checks the format
and the checksums, and names the file and the fallback when anything is off. Nothing is unpickled.
"""
import hashlib
import json
import os
from typing import Optional

import numpy as np
import torch

from .files import atomic_write
from .rng import rng_state

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

FORMAT = "mega_deap.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: truncated, corrupted, or not ours."""


######################################
# Files                              #
######################################

def _digest(t):
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy()).hexdigest()  # reads the buffer, no copy


def _fitness_list(individuals):
    return [list(ind.fitness.values) if ind.fitness.valid else None for ind in individuals]


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def save_checkpoint(path, *, gen: int, population: list, halloffame=None, logbook=None,
                    extra: Optional[dict] = None) -> str:
    """Write the state of a run after generation ``gen`` to ``path`` (atomically).

    :param population: the individuals, genomes ``(D,)`` each.
    :param halloffame: a ``tools.HallOfFame`` or ``None``.
    :param logbook: a ``tools.Logbook`` or ``None``.
    :param extra: more JSON-able settings to keep (checked on resume by the caller).
    """
    from safetensors.torch import save_file
    rng_meta, rng_tensors = rng_state()
    tensors = {"population": torch.stack([ind.genome for ind in population]).cpu().contiguous()}
    hof = list(halloffame) if halloffame is not None else []
    if hof:
        tensors["halloffame"] = torch.stack([ind.genome for ind in hof]).cpu().contiguous()
    tensors.update({k: v.cpu().contiguous() for k, v in rng_tensors.items()})
    meta = {
        "format": FORMAT, "gen": int(gen),
        "fitness": _fitness_list(population), "halloffame_fitness": _fitness_list(hof),
        "halloffame_maxsize": getattr(halloffame, "maxsize", None),
        "logbook": _jsonable([dict(r) for r in logbook]) if logbook is not None else [],
        "logbook_header": list(getattr(logbook, "header", None) or []),
        "rng": rng_meta, "extra": _jsonable(extra or {}),
        "sha256": {k: _digest(v) for k, v in tensors.items()},
    }
    path = os.fspath(path)
    if os.path.exists(path):  # keep the current one as .prev; path itself never disappears
        _keep_previous(path)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"mega_deap": json.dumps(meta)}))


def _keep_previous(path):
    """``path`` -> ``path.prev`` without removing ``path``: a hard link (a copy where links are not
    supported) under a temporary name, then one rename onto ``.prev``."""
    import shutil
    tmp = f"{path}.prev.tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copy2(path, tmp)
    os.replace(tmp, f"{path}.prev")


def load_checkpoint(path) -> tuple:
    """Read and verify a checkpoint: ``(meta dict, {name: tensor})``. Raises :class:`CheckpointError`."""
    from safetensors import safe_open
    path = os.fspath(path)
    fallback = f"{path}.prev"
    hint = (f"; the previous checkpoint {fallback!r} is intact, resume from it by renaming it to {path!r}"
            if os.path.exists(fallback) and fallback != path else "")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path!r} is not a readable checkpoint ({type(err).__name__}: {err}){hint}") from None
    try:
        meta = json.loads(header["mega_deap"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path!r} is a safetensors file but not a mega_deap checkpoint{hint}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} has format {meta.get('format')!r}, expected {FORMAT!r}{hint}")
    for name, digest in meta["sha256"].items():
        if name not in tensors or _digest(tensors[name]) != digest:
            raise CheckpointError(f"{path!r} is corrupted: tensor {name!r} does not match its checksum{hint}")
    return meta, tensors
