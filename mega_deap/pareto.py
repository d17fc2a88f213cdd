"""Several objectives: NSGA-II over tensor individuals, and the Pareto merge.

:func:`eaNSGA2` is Deb et al.'s NSGA-II as DEAP's own NSGA-II example composes it, with DEAP's ``ea*``
signature: each generation, mates are drawn by ``tools.selTournamentDCD`` (dominance, then crowding
distance), cloned, mated and mutated, and ``toolbox.select`` (register ``tools.selNSGA2``) keeps the best
``mu`` of parents and children. The crowding distances the tournament reads are computed on the population
at the start of every generation (a function of the population alone), so a run resumed from its
checkpoint continues bit for bit. ``halloffame``: a ``tools.ParetoFront``.

:func:`pareto_merge` (``merge(..., objectives=...)``) merges parents that each know part of the classes into
the front of merges over per-group accuracies (:class:`mega_deap.metrics.GroupAccuracy`) or any objectives of
several values, and :meth:`ParetoResult.plot` draws the front with the parents on it.
"""

import random
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from deap import base, creator, tools
from tqdm.auto import tqdm

from . import distributed
from .algorithms import begin_run, evaluate_invalid, generation_bar, require_registered
from .checks import SettingError, writable_file
from .individual import TensorIndividual, genome_equal
from .resume import run_settings

__all__ = ["eaNSGA2", "pareto_merge", "ParetoResult", "pareto_classes", "nondominated"]


def nondominated(values: list, weights: tuple) -> list:
    """Indices of the values (tuples) that no other dominates, under DEAP's ``weights`` (brute force, for
    checks and reports)."""
    w = [np.sign(x) for x in weights]
    v = [tuple(a * s for a, s in zip(row, w)) for row in values]

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, a in enumerate(v) if not any(dominates(b, a) for j, b in enumerate(v) if j != i)]


def _crowding(population: list) -> None:
    """The crowding distance of every individual within its non-dominated front (what
    ``tools.selTournamentDCD`` reads)."""
    for front in tools.sortNondominated(population, len(population)):
        tools.emo.assignCrowdingDist(front)


def eaNSGA2(
    population: list,
    toolbox: base.Toolbox,
    ngen: int,
    cxpb: float = 1.0,
    mutpb: float = 1.0,
    stats: Optional[tools.Statistics] = None,
    halloffame: Optional[tools.HallOfFame] = None,
    verbose: bool = __debug__,
    checkpoint: Optional[str] = None,
    progress: Optional[bool] = None,
    job: Optional[dict] = None,
) -> tuple:
    """NSGA-II, ``mu = len(population)`` parents and as many children per generation.

    :param population: the initial population, its length a multiple of 4 (``selTournamentDCD``'s rule);
                       replaced in place generation by generation.
    :param toolbox: with ``evaluate`` (multi-valued), ``map``, ``clone``, ``mate``, ``mutate`` and ``select``
                    (``tools.selNSGA2``).
    :param ngen: the number of generations.
    :param cxpb: the probability that a pair of mates is crossed.
    :param mutpb: the probability that each child is mutated.
    :param stats: a ``tools.Statistics``, or ``None``.
    :param halloffame: a ``tools.ParetoFront`` (or any hall of fame), updated with every evaluated child.
    :param verbose: print the logbook, one line per generation.
    :param checkpoint: a file written after every generation; an existing one is resumed (as ``eaMeGA``).
    :param progress: a progress bar, on a terminal only (``None``: as ``verbose``).
    :param job: settings that identify the job beyond the toolbox and the first population, as ``eaMeGA``'s
                (the Pareto merge passes its seed).
    :returns: ``(population, logbook)``.
    """
    mu = len(population)
    if mu < 4 or mu % 4:
        raise SettingError(f"NSGA-II's dominance tournament needs a population that is a multiple of 4, got {mu}")
    require_registered(toolbox, ("evaluate", "select", "mate", "mutate", "clone"))
    for name, p in (("cxpb", cxpb), ("mutpb", mutpb)):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise SettingError(f"{name} must be a probability in [0, 1], got {p!r}")
    if checkpoint is not None:
        writable_file("checkpoint", checkpoint)
    main = distributed.is_main()
    verbose = verbose and main
    progress = (verbose if progress is None else progress) and main
    settings = None
    if checkpoint is not None:
        settings = run_settings(toolbox, 2, population, job)
        settings["nsga2"] = [float(cxpb), float(mutpb)]
    logbook, start, save = begin_run(population, toolbox, ngen, stats, halloffame, checkpoint, settings, verbose)
    bar = generation_bar(start, ngen, "NSGA-II", progress)
    for gen in bar:
        _crowding(population)
        offspring = [toolbox.clone(ind) for ind in tools.selTournamentDCD(population, mu)]
        for a, b in zip(offspring[::2], offspring[1::2]):
            if random.random() <= cxpb:
                toolbox.mate(a, b)
            for child in (a, b):
                if random.random() <= mutpb:
                    toolbox.mutate(child)
                del child.fitness.values
        a = b = child = None  # hold no row past the selection below (the population has 2N + 2 rows)
        nevals = evaluate_invalid(offspring, toolbox)
        if halloffame is not None:
            halloffame.update(offspring)
        population[:] = toolbox.select(population + offspring, mu)
        del offspring
        logbook.record(gen=gen, nevals=nevals, **(stats.compile(population) if stats else {}))
        save(gen)
        if verbose:
            tqdm.write(logbook.stream)
    bar.close()
    return population, logbook


def pareto_classes(weights: tuple) -> type:
    """``creator.FitnessPareto<...>`` with these ``weights`` and a TensorIndividual class carrying it,
    created on first use."""
    tag = "_".join(("p" if w > 0 else "m") + str(abs(w)).replace(".", "d") for w in weights)
    fit, ind = f"FitnessPareto_{tag}", f"ParetoIndividual_{tag}"
    if not hasattr(creator, fit):
        creator.create(fit, base.Fitness, weights=tuple(weights))
    if not hasattr(creator, ind):
        creator.create(ind, TensorIndividual, fitness=getattr(creator, fit))
    return getattr(creator, ind)


@dataclass
class ParetoResult:
    """What ``merge(..., objectives=...)`` returns: the front of merges, best first in the first objective."""

    models: list  # one merged model per point of the front
    genomes: list  # their genomes, (D,) each
    values: list  # their objective values, tuples
    names: list  # the objectives' names
    weights: tuple  # DEAP's weights of the objectives
    parents: list  # the parents' objective values (as given; BatchNorm-repaired where calibration is given)
    logbook: tools.Logbook
    front: tools.ParetoFront
    adapter: Any
    population: Optional[list] = field(repr=False, default=None)

    def to_json(self) -> dict:
        """The front and the parents as plain data: ``{"objectives", "weights", "front", "parents"}``."""
        return {
            "objectives": list(self.names),
            "weights": list(self.weights),
            "front": [list(v) for v in self.values],
            "parents": [list(v) for v in self.parents],
        }

    def plot(self, path: str, title: str = "Pareto merge: the front of merges", extra: Optional[dict] = None) -> str:
        """The front (the first two objectives, as measured on the fitness data) with the parents on it, as a
        PNG at ``path`` (matplotlib); ``extra``: more points to draw, ``{label: (x, y)}`` (an ensemble, say).
        Where both objectives are maximised, a step line shows what the front attains. Returns ``path``."""
        from .experiments.report import pyplot, save_figure

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5.8, 4.6), dpi=120)
        pts = sorted(self.values, key=lambda v: v[0])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if all(w > 0 for w in self.weights[:2]):
            ax.step(xs, ys, where="pre", color="C0", alpha=0.4)
        ax.plot(xs, ys, "o", color="C0", label=f"front of merges ({len(pts)})")
        for i, p in enumerate(self.parents):
            ax.plot(p[0], p[1], "s", color=f"C{i + 1}", markersize=9, label=f"parent {i + 1}")
        for label, (x, y) in (extra or {}).items():
            ax.plot(x, y, "*", color="k", markersize=12, label=label)
        ax.set_xlabel(self.names[0])
        ax.set_ylabel(self.names[1] if len(self.names) > 1 else "")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        return save_figure(fig, path)


def pareto_merge(
    models: list,
    X: Any,
    y: Any,
    objective: Any,
    *,
    popsize: int,
    ngen: int,
    seed: int,
    cxpb: float,
    mutpb: float,
    toolbox_kwargs: dict,
    build_kwargs: dict,
    include_parents: bool,
    verbose: bool,
    progress: bool,
    checkpoint: Optional[str],
) -> ParetoResult:
    """The Pareto merge behind ``merge(..., objectives=...)`` (settings already checked there): parents,
    their blends and (with alignment) their average as the first population, NSGA-II over ``objective``,
    the front of the last population and the run's ``tools.ParetoFront`` decoded into models."""
    from . import rng
    from .operators import initBlend
    from .population import TensorPopulation
    from .presets import _build, _weights_of, mega_toolbox

    adapter, genomes, evaluator, prepare = _build(models, X, y, objective, **build_kwargs)
    if evaluator.nobj < 2:
        raise SettingError(f"objectives must give two or more values per genome (weights), got {evaluator.nobj}")
    pop = TensorPopulation(popsize, adapter.dim, device=adapter.device, dtype=adapter.dtype)
    rng.seed(seed)
    icls = pareto_classes(evaluator.weights)
    toolbox = mega_toolbox(pop, evaluator, layout=adapter.layout, repair=adapter, **toolbox_kwargs)
    toolbox.register("select", tools.selNSGA2)
    toolbox.unregister("vary")
    toolbox.unregister("elite")
    individuals = list(initBlend(pop.individuals(icls), genomes))
    if include_parents:
        starts = list(genomes) + ([genomes.mean(0)] if build_kwargs.get("align") else [])
        for ind, g in zip(individuals, starts):
            ind.genome.copy_(g)
    for ind in individuals:
        adapter.repair_(ind)
    del ind  # the population's 2N + 2 rows: a name kept on a dropped individual would hold one
    front = tools.ParetoFront(similar=genome_equal)
    individuals, logbook = eaNSGA2(
        individuals,
        toolbox,
        ngen,
        cxpb,
        mutpb,
        halloffame=front,
        verbose=verbose,
        checkpoint=checkpoint,
        progress=progress,
        job={"seed": seed},
    )
    points, seen = [], set()  # one merge per distinct point of the front, best first in the first objective
    for item in sorted(front, key=lambda i: tuple(-w * v for w, v in zip(evaluator.weights, i.fitness.values))):
        if tuple(item.fitness.values) not in seen:
            seen.add(tuple(item.fitness.values))
            points.append(item)
    parent_values = evaluator.scores([g.clone() for g in genomes])  # (coefficient genomes: one-hot rows)
    names = getattr(evaluator.metric, "names", None) or [f"{evaluator.metric.name}[{i}]" for i in range(evaluator.nobj)]
    return ParetoResult(
        models=[adapter.runner.to_model(_weights_of(adapter, ind, prepare)) for ind in points],
        genomes=[ind.genome.clone() for ind in points],
        values=[tuple(ind.fitness.values) for ind in points],
        names=list(names),
        weights=tuple(evaluator.weights),
        parents=[tuple(v) for v in parent_values],
        logbook=logbook,
        front=front,
        adapter=adapter,
        population=individuals,
    )
