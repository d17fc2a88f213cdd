"""Coefficient genomes: an individual is a few mixing coefficients per tensor (or per layer) and per
parent, decoded into weights from the (aligned) parents.

A genome of D weights is a space no GA of 20 x 20 evaluations can search; ``G x k`` coefficients (``G``
tensors or layers, ``k`` parents) is one it can. :class:`CoefficientAdapter` is an ordinary
:class:`~mega_deap.adapters.Adapter` whose genome is ``(G * k,)``: the population, the operators, the
toolbox, the evaluator and ``eaMeGA`` serve it unchanged, and the population holds ``O(N x G x k)``
numbers. Tensor ``t`` of group ``g`` decodes to ``sum_j c[g, j] * parent_j[t]``; parent ``j`` is the
one-hot genome ``c[:, j] = 1``.

:func:`cma_merge` drives the same genome with DEAP's own CMA-ES (``deap.cma.Strategy`` and
``deap.algorithms.eaGenerateUpdate``).
"""
import functools
from typing import Literal, Optional

import numpy as np
import torch
from deap import algorithms as deap_algorithms
from deap import cma, tools

from ..adapters.base import Adapter, LayoutEntry

__all__ = ["CoefficientAdapter", "GRANULARITIES", "cma_merge"]

GRANULARITIES = ("tensor", "layer", "unit")


class CoefficientAdapter(Adapter):
    """Per-tensor (``granularity="tensor"``), per-layer (``"layer"``: the tensors of one module share
    coefficients) or per-unit (``"unit"``: every row of every tensor along its first axis, i.e. every
    output unit, has its own) x per-parent mixing coefficients over ``parents``.

    :param inner: the adapter of the parents' architecture (``TorchAdapter``, ``KerasAdapter``, ...).
    :param parents: the parents' genomes, ``(k, D)``, on the inner adapter's device.
    :returns: an adapter with ``dim = G * k``; ``layout`` has one entry of shape ``(k,)`` per group, named
              after its tensor or layer.
    """

    def __init__(self, inner: Adapter, parents: torch.Tensor, *,
                 granularity: Literal["tensor", "layer", "unit"] = "tensor"):
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if parents.dim() != 2 or parents.shape[1] != inner.dim or parents.shape[0] < 2:
            raise ValueError(f"parents must be (k >= 2, {inner.dim}) genomes, got shape {tuple(parents.shape)}")
        self.inner, self.granularity = inner, granularity
        self.model = inner.model
        self.k = parents.shape[0]
        self.dtype, self.device = inner.dtype, inner.device
        self.parents = parents.to(device=inner.device, dtype=inner.dtype)
        self._pt = self.parents.T.contiguous()  # (D, k)
        names, members = [], {}
        gid = torch.empty(inner.dim, dtype=torch.long)
        if granularity == "unit":
            for i, e in enumerate(inner.layout):
                rows = e.shape[0] if e.shape else 1
                per_row = e.numel // rows
                gid[e.offset:e.offset + e.numel] = len(names) + torch.arange(rows).repeat_interleave(per_row)
                names.extend(f"{e.name}[{r}]" for r in range(rows))
                for r in range(rows):
                    members[names[-rows + r]] = [i]
        else:
            for i, e in enumerate(inner.layout):
                key = e.name if granularity == "tensor" else e.name.rpartition(".")[0]
                if key not in members:
                    names.append(key)
                    members[key] = []
                members[key].append(i)
            for g, key in enumerate(names):
                for i in members[key]:
                    e = inner.layout[i]
                    gid[e.offset:e.offset + e.numel] = g
        self.gid = gid.to(inner.device)
        self.groups = tuple((key, tuple(inner.layout[i].name for i in members[key])) for key in names)
        self.layout = tuple(LayoutEntry(key or "(model)", (self.k,), g * self.k, self.k, "parameter")
                            for g, key in enumerate(names))
        self.dim = len(names) * self.k

    @classmethod
    def from_parents(cls, models: list, *, device=None, buffers: bool = True,
                     granularity: Literal["tensor", "layer", "unit"] = "tensor") -> tuple:
        """``(adapter, genomes)``: the coefficient adapter over ``models`` and the parents as coefficient
        genomes (one-hot), ``(k, G * k)``."""
        from ..adapters import adapter_for
        inner, weights = adapter_for(models[0]).from_parents(models, device=device, buffers=buffers)
        inner.fix_nonfinite(weights)
        adapter = cls(inner, weights, granularity=granularity)
        return adapter, adapter.one_hot()

    def one_hot(self) -> torch.Tensor:
        """The parents as coefficient genomes, ``(k, G * k)``: row ``j`` decodes to parent ``j``."""
        eye = torch.eye(self.k, dtype=self.dtype, device=self.device)
        return eye.repeat(1, len(self.layout))

    def __repr__(self):
        return (f"CoefficientAdapter({self.inner!r}, k={self.k}, groups={len(self.layout)}, "
                f"granularity={self.granularity!r})")

    # -- decoding ---------------------------------------------------------------
    def decode(self, genome) -> torch.Tensor:
        """The weights a coefficient genome (``(G * k,)``) stands for: a new ``(D,)`` tensor, repaired by
        the inner adapter (running variances kept positive)."""
        c = self._check_genome(genome)
        coef = c.view(-1, self.k).index_select(0, self.gid)  # (D, k)
        w = (coef * self._pt).sum(1)
        return self.inner.repair_(w)

    def decode_rows(self, genomes: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` for ``(m, G * k)`` genomes -> ``(m, D)``."""
        return torch.stack([self.decode(g) for g in genomes])

    # -- the adapter contract ------------------------------------------------------
    def check(self, model) -> None:
        self.inner.check(model)

    def genome(self, model=None) -> torch.Tensor:
        """The coefficients whose decoding is nearest (least squares, per group) to ``model``'s weights
        (default: the template, a copy of parent 0); a parent gets its one-hot genome."""
        w = self.inner.genome(model).to(torch.float64)
        P = self._pt.to(torch.float64)
        out = torch.empty(len(self.layout), self.k, dtype=torch.float64, device=self.device)
        for g in range(len(self.layout)):
            mask = self.gid == g
            out[g] = torch.linalg.lstsq(P[mask], w[mask].unsqueeze(1)).solution.squeeze(1)
        return out.reshape(-1).to(self.dtype)

    def load(self, genome, model=None):
        return self.inner.load(self.decode(genome), model)

    def to_model(self, genome):
        return self.inner.to_model(self.decode(genome))

    def state_dict(self, genome) -> dict:
        return self.inner.state_dict(self.decode(genome))

    def forward(self, genome, x) -> torch.Tensor:
        return self.inner.forward(self.decode(genome), x)

    def forward_batch(self, genomes: torch.Tensor, x) -> torch.Tensor:
        return self.inner.forward_batch(self.decode_rows(genomes), x)

    def eval_mode(self):
        return self.inner.eval_mode()


######################################
# DEAP's CMA-ES over coefficients    #
######################################

def _individual(icls, device, dtype, values):
    return icls(torch.as_tensor(np.asarray(values), dtype=dtype, device=device))


def cma_merge(models: list, val_data, *, ngen: int = 20, lambda_: Optional[int] = None, sigma: float = 0.3,
              seed: int = 0, align: bool = True, calibration=None,
              granularity: Literal["tensor", "layer", "unit"] = "tensor", metric: str = "neg_log_loss",
              batch_size: Optional[int] = None, device=None, verbose: bool = False):
    """Merge ``models`` by DEAP's CMA-ES (``deap.cma.Strategy``, ``deap.algorithms.eaGenerateUpdate``)
    over per-tensor (or per-layer) x per-parent coefficients, starting from the parents' average.

    :param ngen: generations; :param lambda_: offspring per generation (CMA-ES's default
                 ``4 + 3 ln(G k)`` when ``None``); :param sigma: the initial step size.
    :param align: weight-match the parents to the first one first (:func:`~mega_deap.align.weight_matching`).
    :param calibration: inputs to recompute BatchNorm statistics on for every candidate (and the result).
    :returns: a :class:`~mega_deap.MergeResult`; its ``genome`` is the coefficient genome.
    Random source: NumPy's global generator (CMA-ES's samples), seeded from ``seed``.
    """
    from .. import rng
    from ..checks import integer, nonnegative
    from ..presets import MergeResult, _as_xy, default_stats, ensure_creator_classes
    from ..evaluation import Evaluator, get_metric
    from .matching import weight_matching
    from .repair import BatchNormRepair
    integer("ngen", ngen, 1)
    integer("seed", seed)
    nonnegative("sigma", sigma)
    if lambda_ is not None:
        integer("lambda_", lambda_, 2)
    scorer = get_metric(metric)
    models = list(models)
    if align:
        models = weight_matching(models)
    adapter, genomes = CoefficientAdapter.from_parents(models, device=device, granularity=granularity)
    prepare = BatchNormRepair(adapter.inner, calibration) if calibration is not None else None
    X, y = _as_xy(val_data)
    evaluator = Evaluator(adapter, X, y, scorer, batch_size=batch_size, prepare=prepare)
    rng.seed(seed)
    icls = ensure_creator_classes()
    centroid = genomes.mean(0).double().cpu().numpy()
    kwargs = {} if lambda_ is None else {"lambda_": lambda_}
    strategy = cma.Strategy(centroid=centroid, sigma=sigma, **kwargs)
    toolbox = __import__("deap").base.Toolbox()
    toolbox.register("generate", strategy.generate,
                     functools.partial(_individual, icls, adapter.device, adapter.dtype))
    toolbox.register("update", strategy.update)
    toolbox.register("evaluate", evaluator)
    toolbox.register("map", evaluator.map)
    hof = tools.HallOfFame(1)
    population, logbook = deap_algorithms.eaGenerateUpdate(toolbox, ngen=ngen, stats=default_stats(),
                                                           halloffame=hof, verbose=verbose)
    best = hof[0]
    weights = adapter.decode(best)
    if prepare is not None:
        prepare(weights)
    return MergeResult(model=adapter.inner.to_model(weights), genome=best.genome.clone(),
                       fitness=best.fitness.values[0], logbook=logbook, halloffame=hof, adapter=adapter,
                       population=population, toolbox=toolbox)
