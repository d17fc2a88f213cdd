"""MeGA as a DEAP algorithm: the generational loop and nothing else.

``eaMeGA`` has DEAP's ``ea*`` signature and returns ``(population, logbook)``; its breeding step is
:func:`varMeGA` (as ``eaSimple``'s is ``varAnd``) and its evaluation step :func:`evaluate_invalid`. The
paper's toolbox and the one-call ``merge`` are in :mod:`mega_deap.presets`.
"""

import os
from typing import Any, Optional

from deap import base, tools
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import save_checkpoint
from .checks import SettingError, check_toolbox_settings, run_sizes, writable_file
from .operators import selElite
from .resume import resume, run_settings, toolbox_generators

__all__ = ["eaMeGA", "varMeGA", "evaluate_invalid"]


def evaluate_invalid(population: list, toolbox: base.Toolbox) -> int:
    """Evaluate the individuals whose fitness is invalid, in one ``toolbox.map`` call (DEAP's hook for
    batched or parallel evaluation); returns how many were evaluated."""
    invalid = [ind for ind in population if not ind.fitness.valid]
    fitnesses = toolbox.map(toolbox.evaluate, invalid)
    for ind, fit in zip(invalid, fitnesses):
        ind.fitness.values = fit
    return len(invalid)


def varMeGA(population: list, toolbox: base.Toolbox, lambda_: int, npar: int = 4) -> list:
    """MeGA's breeding step: ``lambda_`` children, each from ``npar`` winners of ``toolbox.select``; the
    first two winners are cloned and mated, the first child is mutated and kept, its fitness invalidated.

    Like DEAP's ``varAnd``, it only calls the toolbox (``select``, ``clone``, ``mate``, ``mutate``), so every
    operator can be swapped. The second child of each mating is dropped at once, so its row is free again.

    :returns: the ``lambda_`` children, in order.
    """
    offspring = []
    for _ in range(lambda_):
        winners = toolbox.select(population, npar)
        child, other = toolbox.clone(winners[0]), toolbox.clone(winners[1])
        child, other = toolbox.mate(child, other)
        (child,) = toolbox.mutate(child)
        del child.fitness.values
        offspring.append(child)
        del winners, other  # free the second child's row now
    return offspring


def _tournsize(toolbox):
    return getattr(getattr(toolbox, "select", None), "keywords", {}).get("tournsize")


def require_registered(toolbox: base.Toolbox, names: tuple) -> None:
    """Refuse a toolbox without one of ``names`` registered, naming it (before any work)."""
    for name in names:
        if not hasattr(toolbox, name):
            raise SettingError(f"the toolbox has no {name!r} registered")


def _check(population, toolbox, ngen, npar):
    run_sizes(ngen, npar)
    if len(population) < max(npar, 2):
        raise SettingError(f"population of {len(population)} is smaller than npar={npar}")
    tsize = _tournsize(toolbox)
    if tsize is not None and len(population) < tsize:
        raise SettingError(f"population of {len(population)} is smaller than the tournament size {tsize}")
    require_registered(toolbox, ("evaluate", "select", "mate", "mutate", "clone"))


def save_on_rank0(path, main, toolbox, **state):
    """Rank 0 writes the checkpoint (every rank holds the same state); the others wait for it. The states of
    the generators the toolbox's operators were registered with are saved with it."""
    if main:
        gens = {name: g.get_state() for name, g in toolbox_generators(toolbox).items()}
        save_checkpoint(path, states=gens, **state)
    distributed.barrier()


def begin_run(
    population: list,
    toolbox: base.Toolbox,
    ngen: int,
    stats: Optional[tools.Statistics],
    halloffame: Optional[tools.HallOfFame],
    checkpoint: Optional[str],
    settings: Optional[dict],
    verbose: bool,
) -> tuple:
    """The start the package's generational loops share (:func:`eaMeGA`, :func:`mega_deap.pareto.eaNSGA2`):
    a logbook; then, when ``checkpoint`` exists (every rank agreeing), the run restored from it, else
    generation 0 evaluated, the hall of fame updated, recorded and saved. ``verbose``: print (rank 0 only).

    :returns: ``(logbook, the first generation still to run, save)``; ``save(gen)`` writes the checkpoint
              after generation ``gen`` (nothing without one).
    """
    main = distributed.is_main()  # in a process group, only rank 0 prints and writes
    verbose = verbose and main
    logbook = tools.Logbook()
    logbook.header = ["gen", "nevals"] + (stats.fields if stats else [])

    def save(gen: int) -> None:
        if checkpoint is not None:
            save_on_rank0(
                checkpoint,
                main,
                toolbox,
                gen=gen,
                population=population,
                halloffame=halloffame,
                logbook=logbook,
                extra=settings,
            )

    resuming = checkpoint is not None and distributed.agree(
        os.path.exists(checkpoint), f"checkpoint {checkpoint!r} exists"
    )
    if resuming:
        assert checkpoint is not None and settings is not None
        start = resume(checkpoint, population, toolbox, halloffame, logbook, settings, ngen)
        if verbose:
            tqdm.write(f"resuming from {checkpoint} after generation {start - 1}")
        return logbook, start, save
    nevals = evaluate_invalid(population, toolbox)  # generation 0: the initial population
    if halloffame is not None:
        halloffame.update(population)
    logbook.record(gen=0, nevals=nevals, **(stats.compile(population) if stats else {}))
    save(0)
    if verbose:
        tqdm.write(logbook.stream)
    return logbook, 1, save


def generation_bar(start: int, ngen: int, desc: str, progress: bool) -> Any:
    """The generations ``start`` to ``ngen`` under a tqdm bar that counts from ``start - 1`` (a resumed run);
    ``disable=None``: a bar on a terminal, nothing in a log file."""
    return tqdm(
        range(start, ngen + 1),
        desc=desc,
        disable=None if progress else True,
        leave=False,
        initial=start - 1,
        total=ngen,
    )


def eaMeGA(
    population: list,
    toolbox: base.Toolbox,
    ngen: int,
    npar: int = 4,
    stats: Optional[tools.Statistics] = None,
    halloffame: Optional[tools.HallOfFame] = None,
    verbose: bool = __debug__,
    checkpoint: Optional[str] = None,
    progress: Optional[bool] = None,
    job: Optional[dict] = None,
) -> tuple:
    """The MeGA generational loop.

    Generation 0 evaluates the initial population. Then each generation: (1) breed ``N - E`` children with
    ``toolbox.vary`` when one is registered (the preset registers the batched
    :func:`~mega_deap.breeding.varMeGABatched`), else :func:`varMeGA`; (2) put clones of the ``E`` individuals
    ``toolbox.elite(halloffame)`` returns back
    (elitism; by default :func:`~mega_deap.operators.selElite`: the hall of fame's best, so ``E = 1`` with a
    hall of fame and 0 without); (3) evaluate the children (:func:`evaluate_invalid`) and update the hall
    of fame; (4) replace the population and record the statistics.

    :param population: a list of N individuals, replaced in place generation by generation.
    :param toolbox: with ``evaluate``, ``select``, ``clone``, ``mate``, ``mutate`` (and ``map``, ``elite``,
                    ``vary``).
    :param ngen: the number of generations.
    :param npar: parents drawn by ``toolbox.select`` per child (the paper's K=4; the first two mate).
    :param stats: a ``tools.Statistics``, or ``None``.
    :param halloffame: a ``tools.HallOfFame``; its best is carried over each generation (elitism).
    :param verbose: print the logbook, one line per generation (as DEAP's algorithms do).
    :param progress: a progress bar, on a terminal only (``None``: as ``verbose``).
    :param checkpoint: a file path: the run's state is written there after every generation (atomically,
                       safetensors + JSON), and a run started with an existing checkpoint resumes from it
                       (the population passed in is overwritten, in order, with the saved one); one
                       written with other registered operators or ``npar`` is refused.
    :param job: JSON-able settings that identify the job beyond the toolbox, ``npar`` and the initial
                population (:func:`merge` passes its seed: a first population of seeded individuals alone
                does not show it); a checkpoint written with other ones is refused.
    :returns: ``(population, logbook)``; the logbook records ``gen``, ``nevals`` and the stats.
    """
    _check(population, toolbox, ngen, npar)
    check_toolbox_settings(toolbox)
    main = distributed.is_main()  # in a process group, only rank 0 prints and writes
    verbose = verbose and main
    progress = (verbose if progress is None else progress) and main
    if checkpoint is not None:
        writable_file("checkpoint", checkpoint)
    settings = run_settings(toolbox, npar, population, job) if checkpoint is not None else None
    logbook, start, save = begin_run(population, toolbox, ngen, stats, halloffame, checkpoint, settings, verbose)

    bar = generation_bar(start, ngen, "eaMeGA", progress)
    for gen in bar:
        # 1. breed: npar tournament winners per child, the first two mate, the first child is kept
        elite = getattr(toolbox, "elite", selElite)(halloffame)
        offspring = getattr(toolbox, "vary", varMeGA)(population, toolbox, len(population) - len(elite), npar)
        # 2. elitism: the best ever goes back into the population
        offspring.extend(toolbox.clone(ind) for ind in elite)
        # 3. evaluate the new individuals, update the hall of fame
        nevals = evaluate_invalid(offspring, toolbox)
        if halloffame is not None:
            halloffame.update(offspring)
        # 4. replace the population, record
        population[:] = offspring
        del offspring
        record = stats.compile(population) if stats else {}
        logbook.record(gen=gen, nevals=nevals, **record)
        save(gen)
        if verbose:
            tqdm.write(logbook.stream)
        if progress and "max" in record:
            bar.set_postfix(best=f"{record['max']:.4f}")
    bar.close()
    return population, logbook
