"""DEAP's ``eaGenerateUpdate`` loop (CMA-ES and any other ask-and-tell strategy) with what ``eaMeGA`` has:
a checkpoint after every generation that a run resumes from, a progress bar on a terminal, and rank 0
alone printing and writing in a process group.

The loop is DEAP's, draw for draw: ``generate``, evaluate through ``toolbox.map``, update the hall of fame,
``update``, record. The strategy's state (for ``deap.cma.Strategy``: its centroid, step size, evolution paths
and covariance) is saved as JSON numbers, which round-trip exactly; nothing is pickled.
"""

import os
from typing import Optional

import numpy as np
from deap import base, tools
from tqdm.auto import tqdm

from . import distributed
from .algorithms import save_on_rank0
from .checkpoint import load_checkpoint
from .checks import SettingError, writable_file
from .rng import set_rng_state

__all__ = ["eaGenerateUpdate", "CMA_STATE"]

# what deap.cma.Strategy.update changes; everything else it derives from the dimension and lambda_
CMA_STATE = ("centroid", "sigma", "pc", "ps", "C", "diagD", "B", "BD", "cond", "update_count")


def _state(strategy) -> dict:
    out = {}
    for name in CMA_STATE:
        v = getattr(strategy, name)
        out[name] = v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v
    return out


def _restore(strategy, state: dict) -> None:
    for name in CMA_STATE:
        old = getattr(strategy, name)
        setattr(
            strategy, name, np.asarray(state[name], dtype=old.dtype) if isinstance(old, np.ndarray) else state[name]
        )


def _resume(path, strategy, halloffame, logbook, settings: dict, ngen: int, make) -> int:
    meta, tensors = load_checkpoint(path)
    saved = meta.get("extra", {})
    if saved.get("settings") != settings:
        old, new = saved.get("settings") or {}, settings
        key = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), "settings")
        raise SettingError(
            f"checkpoint {path!r} belongs to another job: its {key} is {old.get(key)!r}, this run's is "
            f"{new.get(key)!r}; start a new checkpoint or resume the run that wrote it"
        )
    if meta["gen"] + 1 > ngen:
        raise SettingError(f"checkpoint {path!r} is after generation {meta['gen']}, past this run's ngen={ngen}")
    _restore(strategy, saved["strategy"])
    if halloffame is not None:
        halloffame.clear()
        for g, fit in zip(tensors.get("halloffame", []), meta["halloffame_fitness"]):
            item = make(g)
            item.fitness.values = tuple(fit)
            halloffame.insert(item)
    for record in meta["logbook"]:
        logbook.record(**record)
    set_rng_state(meta["rng"], tensors, make(tensors["population"][0]).genome.device)
    return meta["gen"] + 1


def eaGenerateUpdate(
    toolbox: base.Toolbox,
    ngen: int,
    *,
    strategy,
    stats: Optional[tools.Statistics] = None,
    halloffame: Optional[tools.HallOfFame] = None,
    verbose: bool = False,
    progress: bool = False,
    checkpoint: Optional[str] = None,
    settings: Optional[dict] = None,
    make=None,
) -> tuple:
    """DEAP's ``algorithms.eaGenerateUpdate``, resumable.

    :param toolbox: with ``generate``, ``update``, ``evaluate`` (and ``map``).
    :param ngen: generations (numbered 0 to ``ngen - 1``, as DEAP numbers them).
    :param strategy: the object behind ``generate`` and ``update`` whose state :data:`CMA_STATE` names.
    :param stats: a ``tools.Statistics``, or ``None``.
    :param halloffame: a ``tools.HallOfFame``; what it holds before the first generation stays a candidate.
    :param verbose: print the logbook, a line per generation.
    :param progress: a progress bar, on a terminal only.
    :param checkpoint: a file written after every generation (atomically); a run started with an existing
                       one resumes from it, and one of another job (other ``settings``) is refused.
    :param settings: JSON-able data that identifies the job (compared on resume).
    :param make: ``make(genome tensor)`` -> an individual, to rebuild the hall of fame on resume.
    :returns: ``(population, logbook)``: the last generation and the logbook (``gen``, ``nevals``, stats).
    """
    main = distributed.is_main()
    verbose, progress = verbose and main, progress and main
    if checkpoint is not None:
        writable_file("checkpoint", checkpoint)
        if make is None:
            raise SettingError("a checkpoint needs make(genome) to rebuild the hall of fame on resume")
    logbook = tools.Logbook()
    logbook.header = ["gen", "nevals"] + (stats.fields if stats else [])
    start = 0
    if checkpoint is not None and distributed.agree(os.path.exists(checkpoint), f"checkpoint {checkpoint!r} exists"):
        start = _resume(checkpoint, strategy, halloffame, logbook, settings or {}, ngen, make)
        if verbose:
            tqdm.write(f"resuming from {checkpoint} after generation {start - 1}")
    population: list = []
    bar = tqdm(
        range(start, ngen), desc="CMA-ES", disable=None if progress else True, leave=False, initial=start, total=ngen
    )
    for gen in bar:
        population = toolbox.generate()
        for ind, fit in zip(population, toolbox.map(toolbox.evaluate, population)):
            ind.fitness.values = fit
        if halloffame is not None:
            halloffame.update(population)
        toolbox.update(population)
        record = stats.compile(population) if stats else {}
        logbook.record(gen=gen, nevals=len(population), **record)
        if checkpoint is not None:
            save_on_rank0(
                checkpoint,
                main,
                toolbox,
                gen=gen,
                population=population,
                halloffame=halloffame,
                logbook=logbook,
                extra={"settings": settings or {}, "strategy": _state(strategy)},
            )
        if verbose:
            tqdm.write(logbook.stream)
        if progress and "max" in record:
            bar.set_postfix(best=f"{record['max']:.4f}")
    bar.close()
    return population, logbook
