"""A generation's breeding as a few tensor operations: the batched form of :func:`mega_deap.varMeGA`.

Per child, :func:`~mega_deap.varMeGA` makes a handful of Python calls (a tournament, two row clones, a
blend, a sparse mutation): about 200 us, which is the whole cost of a merge when fitness is cheap (small
models, large populations, a GPU). :func:`varMeGABatched` does the same for all children at once: every
tournament drawn from the fitness vector in one operation, the parents gathered by row index from the
population buffer, every blend one ``lerp`` over (children x D) written straight into the children's rows,
every sparse mutation one ``index_add_`` into the flattened buffer. Children are views of those rows, as
before.

It reads what the toolbox registers. When ``select`` is ``tools.selTournament``, ``mate`` is
:func:`cxBlend` (one coefficient per genome), ``mutate`` is :func:`mutSparseGaussian` or
:func:`mutLayerGaussian` (each possibly wrapped by an adapter's ``keep_valid()``), ``clone`` is a
:class:`TensorPopulation`'s and fitness has one objective, it breeds in batch with the same distributions;
for anything else it calls :func:`~mega_deap.varMeGA`, so swapping an operator for an ablation still works.

Random numbers: torch's generator of the buffer's device (seeded by :func:`mega_deap.seed`); the draws
differ from the per-individual path (which uses ``random`` for selection), the distributions do not.
"""

import functools
import random
from typing import Optional

import torch
from deap import base, tools

from .algorithms import varMeGA
from .operators import cxBlend, layout_spans, mutLayerGaussian, mutSparseGaussian, sparse_indices
from .population import TensorPopulation
from .resume import unwrap

__all__ = ["varMeGABatched", "batched_plan", "varMutants", "varMutantsBatched"]

_CHUNK_ELEMENTS = (
    2**20
)  # genes blended per tensor operation: 4 MiB temporaries (fresh pages cost more than the blend on CPU)


def _peel(f):
    """``(function, keywords, adapters)`` of a registration whose only layers are DEAP's keyword partials
    and adapters' ``keep_valid()`` decorators (``adapters``: those decorators' adapters, to repair with);
    ``(None, {}, [])`` when another layer's effect is unknown."""
    layers = []
    func, kw = unwrap(f, layers)
    adapters = []
    for layer in layers:
        if isinstance(layer, functools.partial):
            if layer.args:
                return None, {}, []
        elif hasattr(getattr(layer, "adapter", None), "repair_rows_"):  # an adapter's keep_valid()
            adapters.append(layer.adapter)
        else:
            return None, {}, []
    return func, kw, adapters


def batched_plan(toolbox: base.Toolbox, population: list) -> Optional[dict]:
    """What :func:`varMeGABatched` would do with this toolbox and population, or ``None`` when it must
    fall back to the per-individual :func:`~mega_deap.varMeGA` (a custom operator, a setting the batch
    does not cover, several objectives, individuals outside one buffer). Read every generation, so an
    operator swapped between generations is seen."""
    clone, ckw, crep = _peel(getattr(toolbox, "clone", None))
    if ckw or crep:
        return None
    pop = getattr(clone, "__self__", None)
    if not isinstance(pop, TensorPopulation) or getattr(clone, "__func__", None) is not TensorPopulation.clone:
        return None
    if not population or any(pop.row_of(ind) is None for ind in population):
        return None
    if len(population[0].fitness.weights) != 1:
        return None
    select, skw, srep = _peel(getattr(toolbox, "select", None))
    mate, mkw, mrep = _peel(getattr(toolbox, "mate", None))
    mutate, ukw, urep = _peel(getattr(toolbox, "mutate", None))
    if select is not tools.selTournament or set(skw) - {"tournsize", "fit_attr"} or srep:
        return None
    if skw.get("fit_attr", "fitness") != "fitness" or "tournsize" not in skw:
        return None
    if mate is not cxBlend or mkw.get("per_element", False) or set(mkw) - {"alpha", "per_element"}:
        return None
    if mutate is mutSparseGaussian and set(ukw) == {"mu", "sigma", "indpb"}:
        mutation = ("sparse", ukw)
    elif mutate is mutLayerGaussian and set(ukw) == {"layout", "mu", "sigma", "layerpb"}:
        mutation = ("layer", ukw)
    else:
        return None
    return {
        "pop": pop,
        "tournsize": int(skw["tournsize"]),
        "alpha": float(mkw.get("alpha", 0.0)),
        "mutation": mutation,
        "mate_repairs": mrep,
        "mutate_repairs": urep,
    }


def _mutate_rows(rows: torch.Tensor, dest: torch.Tensor, mu: float, sigma: float, indpb: float) -> None:
    """:func:`mutSparseGaussian` on the buffer rows ``dest``, all at once: one draw of the hit positions over
    their genes, one ``index_add_`` of N(mu, sigma^2) noise."""
    D = rows.shape[1]
    hits = sparse_indices(dest.shape[0] * D, indpb, device=rows.device)
    if hits.numel():
        flat = dest[hits // D] * D + hits % D
        noise = torch.normal(mu, sigma, hits.shape, dtype=rows.dtype, device=rows.device)
        rows.view(-1).index_add_(0, flat, noise)


def varMeGABatched(population: list, toolbox: base.Toolbox, lambda_: int, npar: int = 4) -> list:
    """:func:`~mega_deap.varMeGA`'s children, bred for the whole generation at once (see the module).

    Register it as ``toolbox.register("vary", varMeGABatched)``; :func:`~mega_deap.eaMeGA` calls
    ``toolbox.vary`` when one is registered. ``npar`` tournaments are drawn per child in the
    per-individual path, of which the first two mate; here only those two are drawn (the others never
    reach a child).

    :returns: ``lambda_`` children, views of free rows of the population's buffer, fitness invalid.
    """
    plan = batched_plan(toolbox, population)
    if plan is None or lambda_ < 1:
        return varMeGA(population, toolbox, lambda_, npar)
    pop = plan["pop"]
    taken = pop.take_rows(type(population[0]), lambda_)
    if taken is None:  # old generations kept alive: no free rows for a batch
        return varMeGA(population, toolbox, lambda_, npar)
    children, dest = taken
    rows, device, D = pop.rows, pop.device, pop.dim

    # 1. every tournament at once: aspirants drawn with replacement, the first best wins (as DEAP's max)
    src = torch.tensor([pop.row_of(ind) for ind in population], dtype=torch.long, device=device)
    fit = torch.tensor([ind.fitness.wvalues[0] for ind in population], dtype=torch.float64, device=device)
    aspirants = torch.randint(len(population), (lambda_, 2, plan["tournsize"]), device=device)
    best = fit[aspirants].argmax(-1, keepdim=True)
    parents = src[aspirants.gather(-1, best).squeeze(-1)]  # (children, 2) rows

    # 2. every blend: child = beta * p1 + (1 - beta) * p2, one beta per child, straight into its row
    alpha = plan["alpha"]
    beta = torch.rand(lambda_, dtype=torch.float64) * (1.0 + 2.0 * alpha) - alpha
    weight = (1.0 - beta).to(device=device, dtype=rows.dtype).unsqueeze(1)
    step = max(1, _CHUNK_ELEMENTS // (2 * D))
    for c in range(0, lambda_, step):
        sl = slice(c, c + step)
        k = parents[sl].shape[0]
        both = rows.index_select(0, parents[sl].t().reshape(-1))  # first parents, then second parents
        rows.index_copy_(0, dest[sl], torch.lerp(both[:k], both[k:], weight[sl]))
        del both
    for adapter in plan["mate_repairs"]:
        adapter.repair_rows_(rows, dest)

    # 3. every mutation: one draw of hit positions over all children's genes, one scatter
    kind, kw = plan["mutation"]
    if kind == "sparse":
        _mutate_rows(rows, dest, float(kw["mu"]), float(kw["sigma"]), float(kw["indpb"]))
    else:
        spans = layout_spans(kw["layout"])
        struck = torch.rand(lambda_, len(spans), dtype=torch.float64, device=device) < kw["layerpb"]
        dest_rows = dest.tolist()
        for child, tensor in struck.nonzero().tolist():
            off, n = spans[tensor]
            seg = rows[dest_rows[child], off : off + n]  # a view of the child's row
            seg.add_(torch.randn(n, dtype=rows.dtype, device=device).mul_(kw["sigma"]).add_(kw["mu"]))
    for adapter in plan["mutate_repairs"]:
        adapter.repair_rows_(rows, dest)
    return children


######################################
# Mutants of parents (the Deep GA)   #
######################################


def varMutants(parents: list, toolbox: base.Toolbox, lambda_: int) -> list:
    """The Deep GA's breeding (Such et al., 2017): ``lambda_`` children, each ``toolbox.mutate`` of a clone of
    a parent drawn uniformly (``random.choice``), fitness invalidated. Only calls the toolbox, as DEAP's
    ``varAnd`` does; with truncation selection (``tools.selBest``) for ``parents`` and an elite kept aside,
    it is the whole algorithm.

    :returns: the ``lambda_`` children, in order.
    """
    children = []
    for _ in range(lambda_):
        (child,) = toolbox.mutate(toolbox.clone(random.choice(parents)))
        del child.fitness.values
        children.append(child)
    return children


def varMutantsBatched(parents: list, toolbox: base.Toolbox, lambda_: int) -> list:
    """:func:`varMutants`'s children, bred at once: the parents drawn in one ``randint``, their rows gathered
    into the children's rows, and every mutation one ``index_add_`` (``indpb`` < 1) or one dense Gaussian
    (``indpb`` = 1). Used when ``clone`` is a :class:`TensorPopulation`'s and ``mutate`` is
    :func:`mutSparseGaussian` (possibly under an adapter's ``keep_valid()``); anything else falls back to
    :func:`varMutants`. Random numbers: torch's generator of the buffer's device (the draws differ from the
    per-individual path, which draws the parents from ``random``; the distributions do not).

    :returns: ``lambda_`` children, views of free rows of the population's buffer, fitness invalid.
    """
    clone, ckw, crep = _peel(getattr(toolbox, "clone", None))
    mutate, ukw, urep = _peel(getattr(toolbox, "mutate", None))
    pop = getattr(clone, "__self__", None)
    if not (
        lambda_ >= 1
        and parents
        and not ckw
        and not crep
        and isinstance(pop, TensorPopulation)
        and getattr(clone, "__func__", None) is TensorPopulation.clone
        and mutate is mutSparseGaussian
        and set(ukw) == {"mu", "sigma", "indpb"}
    ):
        return varMutants(parents, toolbox, lambda_)
    parent_rows = [pop.row_of(ind) for ind in parents]
    taken = None if None in parent_rows else pop.take_rows(type(parents[0]), lambda_)
    if taken is None:  # a parent outside the buffer, or no free rows for a batch
        return varMutants(parents, toolbox, lambda_)
    children, dest = taken
    rows, device, D = pop.rows, pop.device, pop.dim
    src = torch.tensor(parent_rows, dtype=torch.long, device=device)
    chosen = src[torch.randint(len(parents), (lambda_,), device=device)]
    step = max(1, _CHUNK_ELEMENTS // D)
    mu, sigma, indpb = float(ukw["mu"]), float(ukw["sigma"]), float(ukw["indpb"])
    for c in range(0, lambda_, step):
        sl = slice(c, c + step)
        block = rows.index_select(0, chosen[sl])
        if indpb == 1.0:  # every gene: a dense draw, the same distribution as a hit on every position
            block.add_(torch.normal(mu, sigma, block.shape, dtype=rows.dtype, device=device))
        rows.index_copy_(0, dest[sl], block)
        del block
    if indpb < 1.0:
        _mutate_rows(rows, dest, mu, sigma, indpb)
    for adapter in urep:
        adapter.repair_rows_(rows, dest)
    return children
