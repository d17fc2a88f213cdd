"""DEAP's evaluation hooks around a batched scorer, and sharding around both.

:class:`BatchedFitness` is what every evaluator of the package shares: it is DEAP's fitness function
(``toolbox.register("evaluate", fitness)``) and DEAP's parallelism hook (``toolbox.register("map",
fitness.map)``): ``map`` receives the whole list of individuals to evaluate and hands it to the subclass's
:meth:`~BatchedFitness.scores` in one call, so DEAP's own ``eaSimple`` and ``eaMuPlusLambda`` batch as well as
``eaMeGA``. In a ``torch.distributed`` process group, :meth:`~BatchedFitness.evaluate` cuts the list between
the ranks (:class:`mega_deap.distributed.ShardedScores`) around the scorer, which never knows.

A fitness of several values (``nobj`` > 1, DEAP's ``weights`` saying which to maximise) gives a tuple per
individual; one of one value gives a float from :meth:`~BatchedFitness.scores` and a 1-tuple from
:meth:`~BatchedFitness.evaluate`.
"""

import functools
from typing import Any, Callable, Iterable, Sequence

import torch

from . import distributed
from .individual import TensorIndividual

__all__ = ["BatchedFitness", "registered_as", "finite_or_worst"]


def registered_as(func: Any, obj: Any) -> bool:
    """True when ``func`` is ``obj`` itself, or ``obj`` registered in a DEAP toolbox (a ``functools.partial``
    that binds nothing): how a ``toolbox.map`` recognises its own evaluator."""
    while isinstance(func, functools.partial) and not func.args and not func.keywords:
        func = func.func
    return func is obj


def finite_or_worst(values: torch.Tensor, valid: torch.Tensor, worst: Any) -> list:
    """``values`` (``(k,)`` or ``(k, m)``) as a list of floats or of ``m``-tuples, where a genome that is not
    ``valid`` (``(k,)`` bool) or a value that is not finite is replaced by ``worst`` (one number, or one per
    value)."""
    ok = torch.isfinite(values) & valid.view(-1, *([1] * (values.dim() - 1)))
    bad = torch.as_tensor(worst, dtype=values.dtype, device=values.device).expand_as(values)
    values = torch.where(ok, values, bad)
    if values.dim() == 1:
        return [float(v) for v in values.tolist()]
    return [tuple(float(v) for v in row) for row in values.tolist()]


class BatchedFitness:
    """DEAP's ``evaluate`` and ``map`` hooks over a subclass's batched :meth:`scores`.

    :param shares: in a ``torch.distributed`` process group, how the individuals to evaluate are cut
                   between the ranks: ``"equal"`` or ``"throughput"`` (:mod:`mega_deap.distributed`).

    ``nobj``: values per individual; ``weights``: DEAP's fitness weights for them (1: maximise, -1:
    minimise); ``evaluations``: genomes scored so far.
    """

    nobj: int = 1
    weights: tuple = (1.0,)

    def __init__(self, shares: str = "equal") -> None:
        self._sharded = distributed.ShardedScores(shares)
        self.evaluations = 0

    def scores(self, individuals: Sequence) -> list:
        """One value (a float, or a tuple of ``nobj``) per individual or ``(D,)`` genome, ignoring any
        fitness they hold. A subclass implements it."""
        raise NotImplementedError

    def _scorer(self, genomes: list) -> Callable:
        """What scores this rank's share of ``genomes`` (every rank holds all of them); a subclass may do
        work on all of them first."""
        return self.scores

    def __call__(self, individual: Any) -> tuple:
        """The fitness tuple of one individual (DEAP's ``evaluate`` contract)."""
        return self.evaluate([individual])[0]

    def map(self, func: Callable, iterable: Iterable) -> list:
        """DEAP's ``toolbox.map``: batched when ``func`` is this evaluator, the builtin ``map`` otherwise."""
        if registered_as(func, self):
            return self.evaluate(list(iterable))
        return list(map(func, iterable))

    def evaluate(self, individuals: Iterable) -> list:
        """Fitness tuples for ``individuals``; those whose fitness is already valid are not re-run."""
        individuals = list(individuals)
        todo = [i for i, ind in enumerate(individuals) if not (hasattr(ind, "fitness") and ind.fitness.valid)]
        pending = set(todo)
        results = [None if i in pending else tuple(ind.fitness.values) for i, ind in enumerate(individuals)]
        if todo:
            batch = [individuals[i] for i in todo]
            if distributed.active():  # every rank holds these individuals; each scores its share
                genomes = [ind.genome if isinstance(ind, TensorIndividual) else ind for ind in batch]
                scores = self._sharded(genomes, self._scorer(genomes), nobj=self.nobj)
            else:
                scores = self.scores(batch)
            for i, s in zip(todo, scores):
                results[i] = tuple(s) if isinstance(s, tuple) else (s,)
        return results
