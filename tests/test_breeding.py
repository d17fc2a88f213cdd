"""The batched breeding step against the per-individual path: the same distributions of selection, blend
coefficients and mutations over many draws; the per-individual path itself whenever an operator is not
one of ours; and the preset using it."""

import math
from unittest import mock

import numpy as np
import pytest
import torch
from deap import base, tools
from scipy import stats

import mega_deap
from mega_deap import TensorPopulation, cxBlend, mutLayerGaussian, mutSparseGaussian, varMeGA, varMeGABatched
from mega_deap.breeding import batched_plan
from mega_deap.presets import ensure_creator_classes


def setup(N=8, D=None, mutate=None, fits=None, dtype=torch.float64, **select):
    """N individuals on the basis vectors e_i (D = N), fitness i (distinct), a toolbox of our operators."""
    D = D or N
    pop = TensorPopulation(N, D, device="cpu", dtype=dtype)
    inds = pop.individuals(ensure_creator_classes())
    for i, ind in enumerate(inds):
        if D == N:
            ind.genome[i] = 1.0
        ind.fitness.values = (float(i if fits is None else fits[i]),)
    tb = base.Toolbox()
    tb.register("clone", pop.clone)
    tb.register("select", tools.selTournament, tournsize=select.get("tournsize", 3))
    tb.register("mate", cxBlend)
    if mutate is None:
        tb.register("mutate", mutSparseGaussian, mu=0.0, sigma=1.0, indpb=0.0)
    else:
        tb.register("mutate", *mutate[0], **mutate[1])
    return pop, inds, tb


def batched(population, toolbox, lambda_, npar=4):
    """varMeGABatched with its fallback forbidden: a test of the batched path must run it."""
    with mock.patch("mega_deap.breeding.varMeGA", side_effect=AssertionError("fell back to varMeGA")):
        return varMeGABatched(population, toolbox, lambda_, npar)


def children_stats(vary, reps=1700, lam=7, seed=0):
    """Parents (first, second) and the blend coefficient of every child, read off the basis genomes."""
    mega_deap.seed(seed)
    firsts, seconds, betas = [], [], []
    for _ in range(reps):
        pop, inds, tb = setup()
        assert batched_plan(tb, inds) is not None  # the batched path really runs batched
        kids = vary(inds, tb, lam, 4)
        G = torch.stack([k.genome for k in kids])
        for row in G:
            nz = row.nonzero().flatten().tolist()
            if len(nz) == 1:  # both winners were the same individual
                firsts.append(nz[0])
                seconds.append(nz[0])
            else:
                # child = beta * e_a + (1 - beta) * e_b: which is which is not identifiable from the child
                a, b = nz
                firsts.append(a)
                seconds.append(b)
                betas.append(float(row[a]))
        del kids, G
    return np.array(firsts + seconds), np.array(betas)


def tournament_probabilities(N, k):
    """P(the winner is the individual of rank r), r = 0 worst .. N-1 best, aspirants drawn with replacement."""
    r = np.arange(N)
    return ((r + 1) ** k - r**k) / N**k


def test_selection_frequencies_match_the_per_individual_path_and_theory():
    """Selection counts of parents (both mates pooled): each path against the exact tournament law, and
    the two paths against each other (chi-square; 12,000 parents each)."""
    ref, _ = children_stats(varMeGA)
    bat, _ = children_stats(batched)
    p = tournament_probabilities(8, 3)
    for counts in (np.bincount(ref, minlength=8), np.bincount(bat, minlength=8)):
        assert stats.chisquare(counts, counts.sum() * p).pvalue > 1e-3
    table = np.stack([np.bincount(ref, minlength=8), np.bincount(bat, minlength=8)])
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_blend_coefficients_match():
    """The coefficient of a blend, read off the child, is U(0, 1) in both paths (Kolmogorov-Smirnov)."""
    _, ref = children_stats(varMeGA, reps=400)
    _, bat = children_stats(batched, reps=400)
    assert len(ref) > 1000 and len(bat) > 1000
    # the coefficient of the lower-indexed parent: beta or 1 - beta, both U(0, 1)
    assert stats.kstest(ref, "uniform").pvalue > 1e-3 and stats.kstest(bat, "uniform").pvalue > 1e-3
    assert stats.ks_2samp(ref, bat).pvalue > 1e-3


def test_blend_alpha_range_matches():
    """BLX-alpha: with alpha = 0.5 the coefficients spread over U(-0.5, 1.5) in the batched path too."""
    mega_deap.seed(3)
    pop, inds, tb = setup(N=2)
    tb.register("select", tools.selTournament, tournsize=1)
    tb.register("mate", cxBlend, alpha=0.5)
    inds[0].genome[:] = torch.tensor([1.0, 0.0])
    inds[1].genome[:] = torch.tensor([0.0, 1.0])
    coef = []
    for _ in range(20):
        kids = batched(inds, tb, 1, 2)
        g = kids[0].genome
        if g.sum().item() == pytest.approx(1.0) and g.min() != 0:
            coef.append(float(g[0]))
        del kids
    assert coef and min(coef) >= -0.5 and max(coef) <= 1.5
    mega_deap.seed(4)
    many = []
    for _ in range(30):
        kids = batched(inds, tb, 1, 2)
        many.append(float(kids[0].genome[0]))
        del kids
    assert min(many) < 0.0 or max(many) > 1.0  # beyond the parents, as alpha > 0 allows


@pytest.mark.parametrize("path", [varMeGA, batched], ids=["per-individual", "batched"])
def test_mutation_counts_per_child_are_binomial(path):
    """Zero genomes, so every non-zero gene of a child is a mutation: counts per child ~ Binomial(D, p)
    and the noise ~ N(mu, sigma^2), in both paths."""
    D, p = 400, 0.02
    mega_deap.seed(5)
    counts, noise = [], []
    for _ in range(35):
        pop, inds, tb = setup(N=10, D=D, mutate=((mutSparseGaussian,), {"mu": 0.5, "sigma": 2.0, "indpb": p}))
        assert batched_plan(tb, inds) is not None
        kids = path(inds, tb, 9, 4)
        for k in kids:
            nz = k.genome[k.genome != 0]
            counts.append(nz.numel())
            noise.extend(nz.tolist())
        del kids
    counts = np.array(counts)
    expected = stats.binom.pmf(np.arange(0, 25), D, p) * len(counts)
    observed = np.bincount(counts, minlength=25)[:25]
    keep = expected > 5
    assert stats.chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum()).pvalue > 1e-3
    assert stats.kstest(noise, "norm", args=(0.5, 2.0)).pvalue > 1e-3


def test_layer_mutation_rate_per_tensor_matches():
    layout = [(0, 5), (5, 20), (25, 3)]
    rates = {}
    for path in (varMeGA, batched):
        mega_deap.seed(6)
        hits = np.zeros(3)
        total = 0
        for _ in range(200):
            pop, inds, tb = setup(
                N=6, D=28, mutate=((mutLayerGaussian,), {"layout": layout, "mu": 0.0, "sigma": 1.0, "layerpb": 0.3})
            )
            assert batched_plan(tb, inds) is not None
            kids = path(inds, tb, 5, 4)
            for k in kids:
                for j, (off, n) in enumerate(layout):
                    seg = k.genome[off : off + n]
                    assert bool((seg != 0).all()) or bool((seg == 0).all())
                    hits[j] += float((seg != 0).all())
            total += len(kids)
            del kids
        rates[path] = hits / total
        assert np.all(np.abs(hits / total - 0.3) < 5 * math.sqrt(0.3 * 0.7 / total))
    assert np.all(np.abs(rates[varMeGA] - rates[batched]) < 0.06)


def test_children_are_views_of_free_rows_and_parents_untouched():
    mega_deap.seed(7)
    pop, inds, tb = setup(N=8)
    assert batched_plan(tb, inds) is not None
    before = torch.stack([i.genome.clone() for i in inds])
    kids = batched(inds, tb, 7, 4)
    rows = [pop.row_of(k) for k in kids]
    assert None not in rows and len(set(rows)) == 7
    assert not set(rows) & {pop.row_of(i) for i in inds}
    assert all(k.genome.data_ptr() == pop.rows[r].data_ptr() for k, r in zip(kids, rows))
    assert all(not k.fitness.valid for k in kids)
    assert torch.equal(torch.stack([i.genome for i in inds]), before)


def test_any_other_operator_takes_the_per_individual_path():
    """A custom mate, DEAP's selRandom, or DEAP's per-gene blend: same bits as varMeGA itself."""

    def custom(a, b):
        a.genome.mul_(0.5)
        return a, b

    for alias, func, kw in (
        ("mate", custom, {}),
        ("select", tools.selRandom, {}),
        ("mate", cxBlend, {"per_element": True}),
    ):
        results = []
        for path in (varMeGA, varMeGABatched):
            mega_deap.seed(8)
            pop, inds, tb = setup(N=8)
            tb.register(alias, func, **kw)
            assert batched_plan(tb, inds) is None
            results.append(torch.stack([k.genome.clone() for k in path(inds, tb, 7, 4)]))
        assert torch.equal(results[0], results[1])


def test_a_registration_changed_between_generations_is_used():
    """The plan is kept between generations while the registrations stay the same objects: an operator
    swapped after a batched generation takes the per-individual path, and new keywords are read."""

    def halve(a, b):
        a.genome.mul_(0.5)
        return a, b

    mega_deap.seed(11)
    pop, inds, tb = setup(N=8)
    batched(inds, tb, 7, 4)  # the plan is made and kept
    tb.register("mate", halve)  # an ablation from the next generation on
    assert batched_plan(tb, inds) is None
    kids = varMeGABatched(inds, tb, 7, 4)
    assert all(float(k.genome.sum()) == 0.5 for k in kids)  # halve of a basis vector, no blend, no mutation
    del kids
    tb.register("mate", cxBlend)
    batched(inds, tb, 7, 4)
    tb.register("mutate", mutSparseGaussian, mu=3.0, sigma=0.0, indpb=1.0)  # new keywords: every gene + 3
    kids = batched(inds, tb, 7, 4)
    assert all(torch.allclose(k.genome.sum(), torch.tensor(1.0 + 3.0 * 8, dtype=k.genome.dtype)) for k in kids)
    del kids
    tb.mutate.keywords["mu"] = -3.0  # the same registration, its keywords edited in place
    kids = batched(inds, tb, 7, 4)
    assert all(torch.allclose(k.genome.sum(), torch.tensor(1.0 - 3.0 * 8, dtype=k.genome.dtype)) for k in kids)


def test_keep_valid_repairs_batched_children():
    """A decorated mutation that would make BatchNorm variances negative: the batched children are
    repaired like the per-individual ones."""
    from torch import nn
    from mega_deap.adapters import TorchAdapter

    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    ad = TorchAdapter(model)
    mega_deap.seed(9)
    pop = TensorPopulation(6, ad.dim, device="cpu")
    inds = pop.individuals(ensure_creator_classes())
    for ind in inds:
        ind.genome.copy_(ad.genome())
        ind.fitness.values = (torch.rand(()).item(),)
    tb = base.Toolbox()
    tb.register("clone", pop.clone)
    tb.register("select", tools.selTournament, tournsize=3)
    tb.register("mate", cxBlend)
    tb.register("mutate", mutSparseGaussian, mu=-50.0, sigma=1.0, indpb=0.5)
    tb.decorate("mate", ad.keep_valid())
    tb.decorate("mutate", ad.keep_valid())
    assert batched_plan(tb, inds) is not None
    kids = batched(inds, tb, 5, 4)
    for k in kids:
        for off, n in ad.variance_spans:
            assert (k.genome[off : off + n] >= ad.var_floor).all()


def test_preset_breeds_in_batch_and_merges(digits, digit_mlps):
    r = mega_deap.merge(digit_mlps, digits["val"], popsize=12, ngen=4, seed=0, verbose=False, metric="accuracy")
    assert r.toolbox.vary.func is varMeGABatched
    assert batched_plan(r.toolbox, r.population) is not None
    maxes = r.logbook.select("max")
    assert all(b >= a for a, b in zip(maxes, maxes[1:])) and r.fitness > 0.8
    again = mega_deap.merge(digit_mlps, digits["val"], popsize=12, ngen=4, seed=0, verbose=False, metric="accuracy")
    assert torch.equal(again.genome, r.genome)  # one seed, same bits


@pytest.mark.parametrize("path", [varMeGA, batched], ids=["per-individual", "batched"])
def test_every_position_of_every_child_mutates_at_the_stated_rate(path):
    """Per position (the first and last of each child's row included): hit rate indpb, 5-sigma band."""
    D, p = 10, 0.3
    mega_deap.seed(11)
    hits, total = np.zeros(D), 0
    for _ in range(300):
        pop, inds, tb = setup(N=12, D=D, mutate=((mutSparseGaussian,), {"mu": 0.0, "sigma": 1.0, "indpb": p}))
        for ind in inds:
            ind.genome.zero_()
        kids = path(inds, tb, 11, 4)
        for k in kids:
            hits += (k.genome != 0).numpy()
        total += len(kids)
        del kids
    assert np.all(np.abs(hits / total - p) < 5 * math.sqrt(p * (1 - p) / total)), hits / total


def test_var_mutants_batched_against_the_per_individual_path(classes):
    """The Deep GA's children bred at once: each is one parent plus N(mu, sigma^2) on the genes indpb picks,
    the parents drawn uniformly, as varMutants does one child at a time; any other operator falls back."""
    from deap import base

    from mega_deap import TensorPopulation, mutSparseGaussian, varMutants, varMutantsBatched

    D, n_par, lam = 300, 4, 400
    for indpb in (1.0, 0.1):
        pop = TensorPopulation(lam + n_par, D, device="cpu")
        parents = pop.individuals(classes["tensor"], n_par)
        for i, p in enumerate(parents):
            p.genome.fill_(1000.0 * i)
            p.fitness.values = (float(i),)
        tb = base.Toolbox()
        tb.register("clone", pop.clone)
        tb.register("mutate", mutSparseGaussian, mu=0.5, sigma=2.0, indpb=indpb)
        torch.manual_seed(0)
        kids = varMutantsBatched(parents, tb, lam)
        assert len(kids) == lam and all(pop.row_of(k) is not None and not k.fitness.valid for k in kids)
        G = torch.stack([k.genome for k in kids]).double()
        which = (G / 1000.0).round()  # each child's parent, from its genes (the noise is small against 1000)
        assert bool((which == which[:, :1]).all())  # one parent per child
        counts = torch.bincount(which[:, 0].long(), minlength=n_par)
        assert counts.min() > lam / n_par * 0.7  # parents drawn uniformly (expected 100 each)
        noise = G - 1000.0 * which
        hit = noise != 0
        assert abs(float(hit.double().mean()) - indpb) < 0.02
        assert abs(float(noise[hit].mean()) - 0.5) < 0.05 and abs(float(noise[hit].std()) - 2.0) < 0.05
        for i, p in enumerate(parents):  # the parents are untouched
            assert bool((p.genome == 1000.0 * i).all())
    tb.register("mutate", lambda ind: (ind,))  # a custom operator: the per-individual path
    random_kids = varMutantsBatched(parents, tb, 5)
    assert all(any(torch.equal(k.genome, p.genome) for p in parents) for k in random_kids)
    assert varMutants(parents, tb, 3)[0].fitness.valid is False
