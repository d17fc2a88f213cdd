"""Every tensor operator through DEAP's contract, then each against an independent reference."""

import math
import random
from unittest import mock

import pytest
import torch
from deap import tools

from mega_deap import TensorPopulation, cxBlend, initBlend, mutLayerGaussian, mutSparseGaussian
from mega_deap.operators import sparse_indices

LAYOUT = [(0, 4), (4, 10), (14, 6)]

# (name, kind, operator, kwargs): one table, the same contract checks for each
OPERATORS = [
    ("cxBlend", "cx", cxBlend, {}),
    ("cxBlend-blx", "cx", cxBlend, {"alpha": 0.5}),
    ("cxBlend-per-element", "cx", cxBlend, {"per_element": True}),
    ("mutSparseGaussian", "mut", mutSparseGaussian, {"mu": 0.0, "sigma": 0.1, "indpb": 0.3}),
    ("mutLayerGaussian", "mut", mutLayerGaussian, {"layout": LAYOUT, "mu": 0.0, "sigma": 0.1, "layerpb": 0.7}),
]


def two(classes, D=20, seed=0):
    pop = TensorPopulation(2, D, device="cpu")
    a, b = pop.individuals(classes["tensor"])
    g = torch.Generator().manual_seed(seed)
    a.genome.copy_(torch.randn(D, generator=g))
    b.genome.copy_(torch.randn(D, generator=g))
    return pop, a, b


@pytest.mark.parametrize("name,kind,op,kwargs", OPERATORS, ids=[o[0] for o in OPERATORS])
def test_contract(classes, name, kind, op, kwargs):
    pop, a, b = two(classes)
    before = pop.rows.clone()
    ptr_a, ptr_b = a.genome.data_ptr(), b.genome.data_ptr()
    a.fitness.values = (1.0,)
    gen = torch.Generator().manual_seed(1)
    out = op(a, b, generator=gen, **kwargs) if kind == "cx" else op(a, generator=gen, **kwargs)
    assert isinstance(out, tuple)
    if kind == "cx":
        assert len(out) == 2 and out[0] is a and out[1] is b
    else:
        assert len(out) == 1 and out[0] is a
        assert torch.equal(b.genome, before[1])
    assert a.genome.data_ptr() == ptr_a and b.genome.data_ptr() == ptr_b  # in place, still views
    assert a.genome.dtype == torch.float32 and a.genome.shape == (20,)
    assert not torch.equal(pop.rows[:2], before[:2])  # something changed, in the buffer itself
    assert torch.isfinite(pop.rows).all()
    assert a.fitness.valid  # invalidating is the algorithm's job
    # the same generator state gives the same result
    pop2, a2, b2 = two(classes)
    gen2 = torch.Generator().manual_seed(1)
    op(a2, b2, generator=gen2, **kwargs) if kind == "cx" else op(a2, generator=gen2, **kwargs)
    assert torch.equal(pop.rows, pop2.rows)


def test_initBlend_two_parents_reference(classes):
    D = 50
    pop = TensorPopulation(30, D, device="cpu", dtype=torch.float64)
    inds = pop.individuals(classes["tensor"])
    p1, p2 = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    initBlend(inds, [p1, p2], generator=gen)
    ref_gen = torch.Generator().manual_seed(5)
    alphas = []
    for ind in inds:
        a = torch.rand((), generator=ref_gen, dtype=torch.float64).item()
        alphas.append(a)
        torch.testing.assert_close(ind.genome, a * p1 + (1 - a) * p2, rtol=0, atol=1e-14)
    assert len(set(alphas)) == 30 and 0 <= min(alphas) and max(alphas) < 1


def test_initBlend_dirichlet_weights(classes):
    """k=3 one-hot parents: each individual is its own weight vector, on the simplex, mean 1/3."""
    pop = TensorPopulation(2000, 3, device="cpu", dtype=torch.float64)
    inds = pop.individuals(classes["tensor"], 2000)
    initBlend(inds, torch.eye(3, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    W = pop.buffer
    assert (W >= 0).all()
    torch.testing.assert_close(W.sum(1), torch.ones(2000, dtype=torch.float64))
    torch.testing.assert_close(W.mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02, rtol=0)
    # flat Dirichlet(1,1,1): Var = (1/3)(2/3)/4 = 1/18
    torch.testing.assert_close(W.var(0), torch.full((3,), 1 / 18, dtype=torch.float64), atol=0.006, rtol=0)


def test_initBlend_errors(classes):
    pop = TensorPopulation(2, 4, device="cpu")
    inds = pop.individuals(classes["tensor"])
    with pytest.raises(ValueError, match="at least two parents"):
        initBlend(inds, [torch.zeros(4)])
    with pytest.raises(ValueError, match="parent 1 has genome shape"):
        initBlend(inds, [torch.zeros(4), torch.zeros(5)])


def test_cxBlend_reference_formula(classes):
    pop = TensorPopulation(2, 100, device="cpu", dtype=torch.float64)
    a, b = pop.individuals(classes["tensor"])
    x, y = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    a.genome.copy_(x)
    b.genome.copy_(y)
    cxBlend(a, b, generator=torch.Generator().manual_seed(9))
    beta = torch.rand((), generator=torch.Generator().manual_seed(9), dtype=torch.float64).item()
    torch.testing.assert_close(a.genome, beta * x + (1 - beta) * y, rtol=0, atol=1e-14)
    torch.testing.assert_close(b.genome, (1 - beta) * x + beta * y, rtol=0, atol=1e-14)


def test_cxBlend_alpha_widens_range(classes):
    betas = []
    for s in range(400):
        pop = TensorPopulation(2, 1, device="cpu", dtype=torch.float64)
        a, b = pop.individuals(classes["tensor"])
        a.genome.fill_(1.0)  # child1 = beta * 1 + (1 - beta) * 0 = beta
        cxBlend(a, b, alpha=0.5, generator=torch.Generator().manual_seed(s))
        betas.append(a[0])
    assert min(betas) < -0.3 and max(betas) > 1.3 and -0.5 <= min(betas) and max(betas) <= 1.5


def test_cxBlend_per_element_equals_deap(classes):
    """The same uniform draws fed to DEAP's tools.cxBlend give the same children, bit for bit."""
    D, alpha = 64, 0.25
    x = [random.Random(1).uniform(-2, 2) for _ in range(D)]
    y = [random.Random(2).uniform(-2, 2) for _ in range(D)]
    pop = TensorPopulation(2, D, device="cpu", dtype=torch.float64)
    a, b = pop.individuals(classes["tensor"])
    a.genome.copy_(torch.tensor(x, dtype=torch.float64))
    b.genome.copy_(torch.tensor(y, dtype=torch.float64))
    cxBlend(a, b, alpha=alpha, per_element=True, generator=torch.Generator().manual_seed(3))
    u = torch.rand(D, generator=torch.Generator().manual_seed(3), dtype=torch.float64).tolist()
    la, lb = classes["list"](x), classes["list"](y)
    with mock.patch("random.random", side_effect=u):
        tools.cxBlend(la, lb, alpha)
    assert list(a) == list(la) and list(b) == list(lb)


def test_sparse_indices_is_bernoulli_and_never_dense():
    gen = torch.Generator().manual_seed(0)
    D, p, trials = 10_000, 0.02, 200
    counts = torch.zeros(D)
    sizes = []
    for _ in range(trials):
        idx = sparse_indices(D, p, generator=gen)
        assert (idx[1:] > idx[:-1]).all() and idx.min() >= 0 and idx.max() < D  # sorted, distinct, in range
        counts[idx] += 1
        sizes.append(idx.numel())
    mean, n = sum(sizes) / trials, D * p
    sd = math.sqrt(D * p * (1 - p))
    assert abs(mean - n) < 4 * sd / math.sqrt(trials)  # Binomial(D, p) mean
    var = sum((s - mean) ** 2 for s in sizes) / (trials - 1)
    assert 0.6 < var / sd**2 < 1.5  # and its variance
    # a D of 10^12 would need a 4 TB dense mask; the sparse draw touches ~100 positions
    huge = sparse_indices(10**12, 1e-10, generator=gen)
    assert huge.numel() < 1000 and (huge < 10**12).all()
    assert sparse_indices(10, 0.0).numel() == 0 and sparse_indices(10, 1.0).tolist() == list(range(10))
    with pytest.raises(ValueError, match="indpb"):
        sparse_indices(10, 1.5)


def test_mutSparseGaussian_statistics(classes):
    D = 200_000
    pop = TensorPopulation(1, D, device="cpu", dtype=torch.float64)
    (ind,) = pop.individuals(classes["tensor"], 1)
    mutSparseGaussian(ind, mu=0.5, sigma=2.0, indpb=0.05, generator=torch.Generator().manual_seed(0))
    changed = ind.genome[ind.genome != 0]
    frac = changed.numel() / D
    assert abs(frac - 0.05) < 4 * math.sqrt(0.05 * 0.95 / D)
    assert abs(changed.mean().item() - 0.5) < 4 * 2.0 / math.sqrt(changed.numel())
    assert abs(changed.std().item() - 2.0) < 0.05


def test_sparse_indices_every_position_at_the_stated_rate():
    """Each position, the first and the last included, is hit at rate indpb: a 5-sigma binomial band per
    position over many draws (a draw that skipped any position, or shifted them, fails here)."""
    gen = torch.Generator().manual_seed(1)
    D, p, trials = 12, 0.3, 6000
    counts = torch.zeros(D)
    for _ in range(trials):
        counts[sparse_indices(D, p, generator=gen)] += 1
    rate = counts / trials
    band = 5 * math.sqrt(p * (1 - p) / trials)
    assert ((rate - p).abs() < band).all(), rate.tolist()


def test_mutSparseGaussian_every_position_at_the_stated_rate(classes):
    """Through the operator itself: per position, the fraction of children whose gene changed is indpb."""
    D, p, trials = 10, 0.25, 4000
    pop = TensorPopulation(1, D, device="cpu", dtype=torch.float64)
    (ind,) = pop.individuals(classes["tensor"], 1)
    gen = torch.Generator().manual_seed(2)
    changed = torch.zeros(D)
    for _ in range(trials):
        ind.genome.zero_()
        mutSparseGaussian(ind, mu=0.0, sigma=1.0, indpb=p, generator=gen)
        changed += (ind.genome != 0).double()
    rate = changed / trials
    assert ((rate - p).abs() < 5 * math.sqrt(p * (1 - p) / trials)).all(), rate.tolist()


def test_mutLayerGaussian_whole_tensors_at_the_stated_rate(classes):
    """Each tensor mutates whole or not at all, and each one (first and last included) at rate layerpb."""
    layout = [(0, 100), (100, 300), (400, 50), (450, 1)]
    p, trials = 0.2, 3000
    pop = TensorPopulation(1, 451, device="cpu")
    (ind,) = pop.individuals(classes["tensor"], 1)
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(len(layout))
    for _ in range(trials):
        ind.genome.zero_()
        mutLayerGaussian(ind, layout, mu=0.0, sigma=1.0, layerpb=p, generator=gen)
        for j, (off, n) in enumerate(layout):
            seg = ind.genome[off : off + n]
            assert bool((seg != 0).all()) or bool((seg == 0).all())  # a tensor mutates whole or not at all
            hits[j] += float((seg != 0).all())
    rate = hits / trials
    assert ((rate - p).abs() < 5 * math.sqrt(p * (1 - p) / trials)).all(), rate.tolist()
