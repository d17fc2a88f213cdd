"""MeGA as a DEAP algorithm, its preset toolbox, and the one-call ``merge``.

``eaMeGA`` has DEAP's ``ea*`` signature and returns ``(population, logbook)``. ``mega_toolbox`` is the
paper's preset: nothing but registrations of operators, so any of them can be swapped for an ablation.
``merge`` builds the preset for a list of PyTorch models and runs it.
"""
import copy
import functools
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from deap import base, creator, tools
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from .evaluation import Accuracy, Evaluator, NegMAE, NegMSE
from .individual import TensorIndividual, genome_equal
from .operators import cxBlend, initBlend, mutLayerGaussian, mutSparseGaussian
from .population import TensorPopulation, default_device

__all__ = ["selElite", "selNoElite", "toolbox_fingerprint", "eaMeGA", "mega_toolbox", "merge", "merge_tree",
           "MergeResult", "TreeResult", "seed", "default_stats",
           "ensure_creator_classes"]


def seed(value):
    """Seed every random source a run draws from: ``random`` (DEAP's selection), NumPy and torch
    (CPU and every CUDA device)."""
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


_seed_all = seed


def default_stats():
    """``tools.Statistics`` over the first fitness value: avg, std, min, max."""
    stats = tools.Statistics(_first_fitness)
    stats.register("avg", np.mean)
    stats.register("std", np.std)
    stats.register("min", np.min)
    stats.register("max", np.max)
    return stats


def _first_fitness(ind):
    return ind.fitness.values[0]


def _tournsize(toolbox):
    return getattr(getattr(toolbox, "select", None), "keywords", {}).get("tournsize")


######################################
# The algorithm                      #
######################################

def selElite(halloffame):
    """Elitism (the default of :func:`eaMeGA`): the hall of fame's best goes back into the population.

    Register another as ``toolbox.register("elite", ...)`` to ablate it; it takes the hall of fame and
    returns the individuals to carry over (their clones fill places in the next population).
    """
    return [halloffame[0]] if halloffame is not None and len(halloffame) else []


def selNoElite(halloffame):
    """No elitism: nothing is carried over; the hall of fame still records the best ever."""
    return []


def _unwrap(f):
    """The function under partials and decorators, and the keywords the partials bind."""
    kw = {}
    while True:
        if isinstance(f, functools.partial):
            kw = {**f.keywords, **kw}
            f = f.func
            continue
        inner = getattr(f, "func", None) or getattr(f, "__wrapped__", None)
        if inner is None or inner is f:
            return f, kw
        f = inner


def toolbox_fingerprint(tb, aliases=("clone", "select", "mate", "mutate", "elite", "evaluate", "map")):
    """What a toolbox registers, as comparable JSON-able data: ``{alias: [function name, [[keyword, repr]]]}``
    (an adapter's ``layout`` keyword is named, not printed)."""
    out = {}
    for alias in aliases:
        f = getattr(tb, alias, None)
        if f is None:
            continue
        base_f, kw = _unwrap(f)
        out[alias] = [getattr(base_f, "__qualname__", type(base_f).__qualname__),
                      sorted([k, "layout" if k == "layout" else repr(v)] for k, v in kw.items())]
    return out


def _evaluate_invalid(population, toolbox):
    invalid = [ind for ind in population if not ind.fitness.valid]
    fitnesses = toolbox.map(toolbox.evaluate, invalid)
    for ind, fit in zip(invalid, fitnesses):
        ind.fitness.values = fit
    return len(invalid)


def _run_settings(toolbox, npar):
    return {"npar": npar, "toolbox": toolbox_fingerprint(toolbox)}


def _resume(path, population, toolbox, halloffame, logbook, settings):
    """Restore a run from ``path`` into ``population`` (in order), the hall of fame, the logbook and every
    random source; returns the first generation still to run. A checkpoint written by a run with other
    operators or ``npar`` is refused, naming the first difference."""
    meta, tensors = load_checkpoint(path)
    saved = meta.get("extra", {})
    for key in sorted(set(saved) | set(settings)):
        if key == "toolbox":
            old, new = saved.get(key, {}), settings[key]
            for alias in sorted(set(old) | set(new)):
                if old.get(alias) != new.get(alias):
                    raise ValueError(f"checkpoint {path!r} was written with toolbox.{alias} = {old.get(alias)}, "
                                     f"this run registers {new.get(alias)}; resume with the same toolbox or "
                                     f"start a new checkpoint")
        elif saved.get(key) != settings.get(key):
            raise ValueError(f"checkpoint {path!r} was written with {key}={saved.get(key)!r}, this run has "
                             f"{key}={settings.get(key)!r}")
    G = tensors["population"]
    D = len(population[0])
    if G.shape != (len(population), D):
        raise ValueError(f"checkpoint {path!r} holds a population of {G.shape[0]} x {G.shape[1]}, this run has "
                         f"{len(population)} x {D}")
    for ind, g, fit in zip(population, G, meta["fitness"]):
        ind.genome.copy_(g.to(device=ind.genome.device, dtype=ind.genome.dtype))
        if fit is None:
            del ind.fitness.values
        else:
            ind.fitness.values = tuple(fit)
    if halloffame is not None:
        halloffame.clear()
        if "halloffame" in tensors:
            for g, fit in zip(tensors["halloffame"], meta["halloffame_fitness"]):
                item = toolbox.clone(population[0])
                item.genome.copy_(g.to(device=item.genome.device, dtype=item.genome.dtype))
                item.fitness.values = tuple(fit)
                halloffame.insert(item)
                del item
    for record in meta["logbook"]:
        logbook.record(**record)
    set_rng_state(meta["rng"], tensors)
    return meta["gen"] + 1


def eaMeGA(population, toolbox, ngen, npar=4, stats=None, halloffame=None, verbose=__debug__,
           checkpoint=None):
    """The MeGA generational loop.

    Each generation: (1) evaluate the individuals whose fitness is invalid (one ``toolbox.map`` call);
    (2) update the hall of fame; (3) breed ``N - E`` children, each from ``npar`` parents drawn by
    ``toolbox.select``: the first two are cloned, mated, and the first child mutated; (4) put clones of
    the ``E`` individuals ``toolbox.elite(halloffame)`` returns back (elitism; by default
    :func:`selElite`: the hall of fame's best, so ``E = 1`` with a hall of fame and 0 without).

    :param population: a list of individuals, replaced in place generation by generation.
    :param toolbox: with ``evaluate``, ``select``, ``clone``, ``mate``, ``mutate`` (and ``map``).
    :param ngen: the number of generations.
    :param npar: parents drawn by ``toolbox.select`` per child (the paper's K=4; the first two mate).
    :param stats: a ``tools.Statistics``, or ``None``.
    :param halloffame: a ``tools.HallOfFame``; its best is carried over each generation (elitism).
    :param verbose: show a progress bar and print the logbook.
    :param checkpoint: a file path: the run's state is written there after every generation (atomically,
                       safetensors + JSON), and a run started with an existing checkpoint resumes from it
                       (the population passed in is overwritten, in order, with the saved one); one
                       written with other registered operators or ``npar`` is refused.
    :returns: ``(population, logbook)``; the logbook records ``gen``, ``nevals`` and the stats.
    """
    ngen, npar = int(ngen), int(npar)
    if ngen < 0:
        raise ValueError(f"ngen must be >= 0, got {ngen}")
    if npar < 2:
        raise ValueError(f"npar must be >= 2 (the first two winners mate), got {npar}")
    if len(population) < max(npar, 2):
        raise ValueError(f"population of {len(population)} is smaller than npar={npar}")
    tsize = _tournsize(toolbox)
    if tsize is not None and len(population) < tsize:
        raise ValueError(f"population of {len(population)} is smaller than the tournament size {tsize}")
    for name in ("evaluate", "select", "mate", "mutate", "clone"):
        if not hasattr(toolbox, name):
            raise ValueError(f"the toolbox has no {name!r} registered")

    logbook = tools.Logbook()
    logbook.header = ["gen", "nevals"] + (stats.fields if stats else [])

    settings = _run_settings(toolbox, npar) if checkpoint is not None else None
    if checkpoint is not None and os.path.exists(checkpoint):
        start = _resume(checkpoint, population, toolbox, halloffame, logbook, settings)
        if verbose:
            tqdm.write(f"resuming from {checkpoint} after generation {start - 1}")
    else:
        # generation 0: evaluate the initial population
        nevals = _evaluate_invalid(population, toolbox)
        if halloffame is not None:
            halloffame.update(population)
        logbook.record(gen=0, nevals=nevals, **(stats.compile(population) if stats else {}))
        if checkpoint is not None:
            save_checkpoint(checkpoint, gen=0, population=population, halloffame=halloffame, logbook=logbook,
                            extra=settings)
        start = 1
        if verbose:
            tqdm.write(logbook.stream)

    bar = tqdm(range(start, ngen + 1), desc="eaMeGA", disable=not verbose, leave=False,
               initial=start - 1, total=ngen)
    for gen in bar:
        # 1. breed: npar tournament winners per child, the first two mate, the first child is kept
        elite = getattr(toolbox, "elite", selElite)(halloffame)
        offspring = []
        for _ in range(len(population) - len(elite)):
            winners = toolbox.select(population, npar)
            child, other = toolbox.clone(winners[0]), toolbox.clone(winners[1])
            child, other = toolbox.mate(child, other)
            child, = toolbox.mutate(child)
            del child.fitness.values
            offspring.append(child)
            del winners, other  # free the second child's row now
        # 2. elitism: the best ever goes back into the population
        offspring.extend(toolbox.clone(ind) for ind in elite)
        # 3. evaluate the new individuals, update the hall of fame
        nevals = _evaluate_invalid(offspring, toolbox)
        if halloffame is not None:
            halloffame.update(offspring)
        # 4. replace the population, record
        population[:] = offspring
        del offspring
        record = stats.compile(population) if stats else {}
        logbook.record(gen=gen, nevals=nevals, **record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, gen=gen, population=population, halloffame=halloffame, logbook=logbook,
                            extra=settings)
        if verbose:
            tqdm.write(logbook.stream)
            if "max" in record:
                bar.set_postfix(best=f"{record['max']:.4f}")
    bar.close()
    return population, logbook


######################################
# The paper's preset                 #
######################################

def ensure_creator_classes():
    """``creator.FitnessMeGA`` (maximise one value) and ``creator.MeGAIndividual`` (a TensorIndividual),
    created on first use and reused after."""
    if not hasattr(creator, "FitnessMeGA"):
        creator.create("FitnessMeGA", base.Fitness, weights=(1.0,))
    if not hasattr(creator, "MeGAIndividual"):
        creator.create("MeGAIndividual", TensorIndividual, fitness=creator.FitnessMeGA)
    return creator.MeGAIndividual


def mega_toolbox(pop, evaluator, *, tournsize=3, mutation="sparse", mu=0.0, sigma=0.01, indpb=0.02,
                 layerpb=0.02, alpha=0.0, layout=None, repair=None):
    """The paper's toolbox: registrations only.

    ``clone``: :meth:`TensorPopulation.clone`; ``select``: ``tools.selTournament(tournsize)``;
    ``elite``: :func:`selElite`; ``mate``: :func:`cxBlend`; ``mutate``: :func:`mutSparseGaussian` (``mutation="sparse"``, each
    element with ``indpb`` gets N(mu, sigma^2)) or :func:`mutLayerGaussian` (``mutation="layer"``, each
    tensor of ``layout`` with ``layerpb``); ``evaluate`` and ``map``: the evaluator. ``repair``: an
    adapter whose ``keep_valid()`` decorates mate and mutate (BatchNorm variances stay positive).
    """
    tb = base.Toolbox()
    tb.register("clone", pop.clone)
    tb.register("select", tools.selTournament, tournsize=tournsize)
    tb.register("mate", cxBlend, alpha=alpha)
    if mutation == "sparse":
        tb.register("mutate", mutSparseGaussian, mu=mu, sigma=sigma, indpb=indpb)
    elif mutation == "layer":
        if layout is None:
            raise ValueError("mutation='layer' needs the genome's layout (adapter.layout)")
        tb.register("mutate", mutLayerGaussian, layout=layout, mu=mu, sigma=sigma, layerpb=layerpb)
    else:
        raise ValueError(f"mutation must be 'sparse' or 'layer', got {mutation!r}")
    tb.register("elite", selElite)
    tb.register("evaluate", evaluator)
    tb.register("map", evaluator.map)
    if repair is not None:
        tb.decorate("mate", repair.keep_valid())
        tb.decorate("mutate", repair.keep_valid())
    return tb


@dataclass
class MergeResult:
    """What :func:`merge` returns."""
    model: object                 # the merged model (a new module)
    genome: torch.Tensor          # its genome, (D,)
    fitness: float                # its validation fitness
    logbook: tools.Logbook
    halloffame: tools.HallOfFame
    adapter: object
    population: list = field(repr=False, default=None)
    toolbox: base.Toolbox = field(repr=False, default=None)


_METRICS = {"accuracy": Accuracy, "neg_mse": NegMSE, "neg_mae": NegMAE}


def _as_xy(val_data):
    if isinstance(val_data, (tuple, list)) and len(val_data) == 2:
        return val_data
    if hasattr(val_data, "__iter__"):  # a DataLoader or any iterable of (x, y) batches
        xs, ys = zip(*[(x, y) for x, y in val_data])
        return torch.cat([torch.as_tensor(x) for x in xs]), torch.cat([torch.as_tensor(y) for y in ys])
    raise TypeError("val_data must be (X, y) or an iterable of (x, y) batches, "
                    f"got {type(val_data).__name__}")


def merge(models, val_data, *, population=20, generations=20, parents=4, tournsize=3, seed=0,
          device=None, mutation="sparse", sigma=0.01, indpb=0.02, layerpb=0.02, alpha=0.0,
          metric="accuracy", batch_size=1024, strategy="auto", buffers=True, verbose=True, checkpoint=None):
    """Merge models of one architecture with MeGA (the paper's preset) and return a :class:`MergeResult`.

    :param models: two or more ``nn.Module`` (or Keras 3 models) of one architecture (parents).
    :param val_data: the validation set: ``(X, y)`` or an iterable of ``(x, y)`` batches. Fitness is
                     computed on it alone; keep the test split out.
    :param population: N individuals; :param generations: G; :param parents: K winners per child.
    :param tournsize: tournament size of ``tools.selTournament``.
    :param seed: fixes every random draw of the run.
    :param device: where the population and the evaluation live (``cuda`` when available by default).
    :param mutation: ``"sparse"`` (each element with ``indpb`` gets N(0, sigma^2)) or ``"layer"``
                     (each tensor with ``layerpb``, as the reference code).
    :param metric: ``"accuracy"``, ``"neg_mse"`` or ``"neg_mae"``.
    :param checkpoint: a file to write after every generation and to resume from when it exists.
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"merge needs at least two models, got {len(models)}")
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if int(generations) < 0:
        raise ValueError(f"generations (ngen) must be >= 0, got {generations}")
    if population < max(parents, tournsize, 2):
        raise ValueError(f"population={population} is smaller than parents={parents} or tournsize={tournsize}")
    if type(models[0]).__module__.startswith("keras"):  # first: on the torch backend it is an nn.Module too
        from .adapters.keras import KerasAdapter  # Keras places the weights: the device is its choice
        adapter = KerasAdapter(models[0], buffers=buffers)
        device = adapter.device
        genomes = adapter.genomes(models).to(device)
    elif isinstance(models[0], torch.nn.Module):
        from .adapters.torch import TorchAdapter
        device = torch.device(device) if device is not None else default_device()
        genomes = TorchAdapter(models[0], buffers=buffers).genomes(models).to(device)
        template = copy.deepcopy(models[0]).to(device).eval()
        adapter = TorchAdapter(template, buffers=buffers)
    else:
        raise TypeError(f"merge takes torch.nn.Module or keras.Model parents, got {type(models[0]).__name__}")
    X, y = _as_xy(val_data)
    evaluator = Evaluator(adapter, X, y, _METRICS[metric](), batch_size=batch_size, strategy=strategy)
    pop = TensorPopulation(population, adapter.dim, device=device, dtype=adapter.dtype)

    _seed_all(seed)
    icls = ensure_creator_classes()
    toolbox = mega_toolbox(pop, evaluator, tournsize=tournsize, mutation=mutation, sigma=sigma,
                           indpb=indpb, layerpb=layerpb, alpha=alpha, layout=adapter.layout, repair=adapter)
    individuals = initBlend(pop.individuals(icls), genomes)
    hof = tools.HallOfFame(1, similar=genome_equal)
    individuals, logbook = eaMeGA(individuals, toolbox, generations, npar=parents, stats=default_stats(),
                                  halloffame=hof, verbose=verbose, checkpoint=checkpoint)
    best = hof[0]
    return MergeResult(model=adapter.to_model(best), genome=best.genome.clone(),
                       fitness=best.fitness.values[0], logbook=logbook, halloffame=hof, adapter=adapter,
                       population=individuals, toolbox=toolbox)


@dataclass
class TreeResult:
    """What :func:`merge_tree` returns: ``levels[0]`` the inputs, ``levels[-1]`` the one merged model."""
    model: object
    levels: list
    merges: list


def merge_tree(models, val_data, *, seed=0, **kwargs):
    """Merge 2^k models pairwise, level by level (8 -> 4 -> 2 -> 1), each pair with :func:`merge`.

    The pair ``j`` of the run gets seed ``seed + j``; other keyword arguments go to :func:`merge`.
    """
    models = list(models)
    n = len(models)
    if n < 2 or n & (n - 1):
        raise ValueError(f"merge_tree merges a power of two of models (2, 4, 8, ...), got {n}")
    levels, merges = [models], []
    while len(levels[-1]) > 1:
        level = levels[-1]
        nxt = []
        for i in range(0, len(level), 2):
            r = merge(level[i:i + 2], val_data, seed=seed + len(merges), **kwargs)
            merges.append(r)
            nxt.append(r.model)
        levels.append(nxt)
    return TreeResult(model=levels[-1][0], levels=levels, merges=merges)
