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

from .checks import SettingError
from .files import atomic_write, tensor_digest
from .rng import rng_state

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

FORMAT = "mega_deap.checkpoint/2"


class CheckpointError(SettingError):
    """A checkpoint file that cannot be trusted: truncated, corrupted, or not ours."""


######################################
# Files                              #
######################################


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


def save_checkpoint(
    path,
    *,
    gen: int,
    population: list,
    halloffame=None,
    logbook=None,
    extra: Optional[dict] = None,
    states: Optional[dict] = None,
) -> str:
    """Write the state of a run after generation ``gen`` to ``path`` (atomically).

    :param population: the individuals, genomes ``(D,)`` each.
    :param halloffame: a ``tools.HallOfFame`` or ``None``.
    :param logbook: a ``tools.Logbook`` or ``None``.
    :param extra: more JSON-able settings to keep (checked on resume by the caller).
    :param states: more tensors to keep, ``{name: tensor}`` (the states of the generators that operators
                   were registered with), stored as ``state/<name>``.
    """
    from safetensors.torch import save_file

    rng_meta, rng_tensors = rng_state(population[0].genome.device if population else None)
    tensors = {"population": torch.stack([ind.genome for ind in population]).cpu().contiguous()}
    hof = list(halloffame) if halloffame is not None else []
    if hof:
        tensors["halloffame"] = torch.stack([ind.genome for ind in hof]).cpu().contiguous()
    tensors.update({k: v.cpu().contiguous() for k, v in rng_tensors.items()})
    tensors.update({f"state/{k}": v.cpu().contiguous() for k, v in (states or {}).items()})
    meta = {
        "format": FORMAT,
        "gen": int(gen),
        "fitness": _fitness_list(population),
        "halloffame_fitness": _fitness_list(hof),
        "halloffame_maxsize": getattr(halloffame, "maxsize", None),
        "logbook": _jsonable([dict(r) for r in logbook]) if logbook is not None else [],
        "logbook_header": list(getattr(logbook, "header", None) or []),
        "rng": rng_meta,
        "extra": _jsonable(extra or {}),
        "sha256": {k: tensor_digest(v) for k, v in tensors.items()},
    }
    path = os.fspath(path)
    if os.path.exists(path):  # keep the current one as .prev; path itself never disappears
        _keep_previous(path)
    header = json.dumps(meta)
    metadata = {"mega_deap": header, "mega_deap.sha256": hashlib.sha256(header.encode()).hexdigest()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


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


def _check_fields(meta, tensors):
    """The reason ``meta`` and ``tensors`` do not make a checkpoint, or ``None``."""

    def is_fitness(v):
        return v is None or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))

    gen = meta.get("gen")
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
        return f"its generation is {gen!r}, not a non-negative integer"
    for key, kind in (
        ("fitness", list),
        ("halloffame_fitness", list),
        ("logbook", list),
        ("rng", dict),
        ("extra", dict),
        ("sha256", dict),
    ):
        if not isinstance(meta.get(key), kind):
            return f"its field {key!r} is missing or not a {kind.__name__}"
    for name in ("population", "rng.torch"):
        if name not in tensors:
            return f"it holds no {name!r} tensor"
    pop = tensors["population"]
    if pop.dim() != 2 or pop.shape[0] < 1:
        return f"its population tensor has shape {tuple(pop.shape)}, not (N, D) with N >= 1"
    if len(meta["fitness"]) != pop.shape[0] or not all(is_fitness(v) for v in meta["fitness"]):
        return f"it has {len(meta['fitness'])} fitness entries for {pop.shape[0]} individuals"
    hof = tensors.get("halloffame")
    if len(meta["halloffame_fitness"]) != (0 if hof is None else hof.shape[0]) or not all(
        isinstance(v, list) for v in meta["halloffame_fitness"]
    ):
        return "its hall of fame's fitness entries do not match its genomes"
    if hof is not None and (hof.dim() != 2 or hof.shape[1] != pop.shape[1]):
        return f"its hall of fame has shape {tuple(hof.shape)}, the population {tuple(pop.shape)}"
    if len(meta["logbook"]) != gen + 1 or not all(isinstance(r, dict) for r in meta["logbook"]):
        return f"its logbook has {len(meta['logbook'])} records for generations 0..{gen}"
    if set(meta["sha256"]) != set(tensors):
        return "its tensor checksums do not list exactly its tensors"
    if not {"random", "numpy"} <= set(meta["rng"]):
        return "its random states are incomplete"
    return None


def load_checkpoint(path) -> tuple:
    """Read and verify a checkpoint: ``(meta dict, {name: tensor})``. Raises :class:`CheckpointError`,
    naming the file and, when one is intact, the ``.prev`` checkpoint to resume from instead (checked only
    when ``path`` itself is bad, so a good checkpoint is read once)."""
    path = os.fspath(path)
    try:
        return _load(path)
    except CheckpointError as err:
        fallback = f"{path}.prev"
        if fallback == path or not os.path.exists(fallback):
            raise
        try:
            _load(fallback)
        except Exception:
            raise err from None
        raise CheckpointError(
            f"{err}; the previous checkpoint {fallback!r} is intact: resume from it by renaming it to {path!r}"
        ) from None


def _load(path):
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path!r} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if "mega_deap" not in header:
        raise CheckpointError(f"{path!r} is a safetensors file but not a mega_deap checkpoint")
    recorded = header.get("mega_deap.sha256")
    if recorded is None:
        raise CheckpointError(f"{path!r} has no header checksum: not a checkpoint of this format")
    if hashlib.sha256(header["mega_deap"].encode()).hexdigest() != recorded:
        raise CheckpointError(f"{path!r} is corrupted: its header does not match its checksum")
    try:
        meta = json.loads(header["mega_deap"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path!r} has a header that is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path!r} has format {found!r}, expected {FORMAT!r}")
    problem = _check_fields(meta, tensors)
    if problem:
        raise CheckpointError(f"{path!r} is not a usable checkpoint: {problem}")
    for name, digest in meta["sha256"].items():
        if name not in tensors or tensor_digest(tensors[name]) != digest:
            raise CheckpointError(f"{path!r} is corrupted: tensor {name!r} does not match its checksum")
    return meta, tensors
