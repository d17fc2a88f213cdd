"""Property tests over the operators' parameters (hypothesis)."""

import torch
from hypothesis import given, settings, strategies as st
from deap import tools

import mega_deap
from mega_deap.presets import ensure_creator_classes
from mega_deap import (
    TensorIndividual,
    TensorPopulation,
    cxBlend,
    eaMeGA,
    initBlend,
    mutLayerGaussian,
    mutSparseGaussian,
)

SETTINGS = settings(max_examples=30, deadline=None)
dtypes = st.sampled_from([torch.float32, torch.float64])


def pair(D, dtype, seed):
    pop = TensorPopulation(2, D, device="cpu", dtype=dtype)
    a, b = pop.individuals(TensorIndividual)
    g = torch.Generator().manual_seed(seed)
    a.genome.copy_(torch.randn(D, generator=g, dtype=dtype) * 3)
    b.genome.copy_(torch.randn(D, generator=g, dtype=dtype) * 3)
    return pop, a, b


@SETTINGS
@given(D=st.integers(1, 300), dtype=dtypes, alpha=st.floats(0, 1), per_element=st.booleans(), seed=st.integers(0, 99))
def test_cxBlend_properties(D, dtype, alpha, per_element, seed):
    pop, a, b = pair(D, dtype, seed)
    lo, hi = torch.minimum(a.genome, b.genome), torch.maximum(a.genome, b.genome)
    span = hi - lo
    cxBlend(a, b, alpha=alpha, per_element=per_element, generator=torch.Generator().manual_seed(seed))
    for c in (a, b):
        assert c.genome.shape == (D,) and c.genome.dtype == dtype and torch.isfinite(c.genome).all()
        tol = 1e-4 * (1 + hi.abs())
        assert (c.genome >= lo - alpha * span - tol).all() and (c.genome <= hi + alpha * span + tol).all()
    again = pair(D, dtype, seed)
    cxBlend(again[1], again[2], alpha=alpha, per_element=per_element, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(again[0].rows, pop.rows)


@SETTINGS
@given(
    D=st.integers(1, 2000),
    dtype=dtypes,
    mu=st.floats(-1, 1),
    sigma=st.floats(0, 10),
    indpb=st.floats(0, 1),
    seed=st.integers(0, 99),
)
def test_mutSparseGaussian_properties(D, dtype, mu, sigma, indpb, seed):
    pop, a, _ = pair(D, dtype, seed)
    before = a.genome.clone()
    mutSparseGaussian(a, mu, sigma, indpb, generator=torch.Generator().manual_seed(seed))
    assert a.genome.shape == (D,) and a.genome.dtype == dtype and torch.isfinite(a.genome).all()
    if indpb == 0:
        assert torch.equal(a.genome, before)
    again = pair(D, dtype, seed)
    mutSparseGaussian(again[1], mu, sigma, indpb, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(again[1].genome, a.genome)


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=6),
    dtype=dtypes,
    sigma=st.floats(0, 5),
    layerpb=st.floats(0, 1),
    seed=st.integers(0, 99),
)
def test_mutLayerGaussian_properties(sizes, dtype, sigma, layerpb, seed):
    layout, off = [], 0
    for n in sizes:
        layout.append((off, n))
        off += n
    pop, a, _ = pair(off, dtype, seed)
    mutLayerGaussian(a, layout, 0.0, sigma, layerpb, generator=torch.Generator().manual_seed(seed))
    assert a.genome.shape == (off,) and a.genome.dtype == dtype and torch.isfinite(a.genome).all()


@SETTINGS
@given(k=st.integers(2, 5), D=st.integers(1, 100), n=st.integers(1, 10), dtype=dtypes, seed=st.integers(0, 99))
def test_initBlend_convex(k, D, n, dtype, seed):
    parents = torch.randn(k, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    pop = TensorPopulation(n, D, device="cpu", dtype=dtype)
    inds = initBlend(pop.individuals(TensorIndividual), parents, generator=torch.Generator().manual_seed(seed))
    lo, hi = parents.min(0).values, parents.max(0).values
    tol = 1e-5 * (1 + parents.abs().max(0).values)
    for ind in inds:
        assert ((ind.genome >= lo - tol) & (ind.genome <= hi + tol)).all()


class SumFitness:
    """A cheap fitness (sum of the genome) that records what it evaluated."""

    def __init__(self):
        self.seen = []

    def __call__(self, ind):
        return self.map(None, [ind])[0]

    def map(self, func, items):
        items = list(items)
        self.seen.append(len(items))
        assert all(not ind.fitness.valid for ind in items)  # only invalid individuals arrive
        return [(float(ind.genome.sum()),) for ind in items]


@SETTINGS
@given(N=st.integers(4, 10), npar=st.integers(2, 4), ngen=st.integers(0, 4), seed=st.integers(0, 99))
def test_eaMeGA_invalidates_and_evaluates_every_child(N, npar, ngen, seed):
    icls = ensure_creator_classes()
    pop = TensorPopulation(N, 16, device="cpu")
    ev = SumFitness()
    tb = mega_deap.mega_toolbox(pop, ev)
    mega_deap.seed(seed)
    inds = initBlend(pop.individuals(icls), torch.randn(2, 16))
    hof = tools.HallOfFame(1, similar=mega_deap.genome_equal)
    final, log = eaMeGA(inds, tb, ngen, npar=npar, halloffame=hof, verbose=False)
    assert log.select("nevals") == [N] + [N - 1] * ngen == ev.seen
    assert all(ind.fitness.valid for ind in final) and len(final) == N
    for ind in final:  # every fitness belongs to the genome it sits on
        assert abs(ind.fitness.values[0] - float(ind.genome.sum())) < 1e-3
