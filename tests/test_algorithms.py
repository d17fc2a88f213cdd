import pytest
import torch
from deap import tools

import mega_deap
from mega_deap.presets import ensure_creator_classes
from mega_deap import TensorPopulation, eaMeGA, genome_equal, initBlend, mega_toolbox, merge
from mega_deap.adapters import TorchAdapter, accuracy


def val_acc(model, data):
    X, y = data
    with torch.no_grad():
        return (model(X).argmax(1) == y).double().mean().item()


@pytest.fixture(scope="module")
def merged(digits, digit_mlps):
    # gate=None: the GA's own result (the significance gate may return a parent after it)
    return merge(digit_mlps, digits["val"], popsize=12, ngen=6, seed=0, verbose=False, metric="accuracy", gate=None)


def test_merge_on_digits(merged, digits, digit_mlps):
    maxes = merged.logbook.select("max")
    assert len(maxes) == 7 and merged.logbook.select("gen") == list(range(7))
    assert all(b >= a for a, b in zip(maxes, maxes[1:]))  # elitism: never decreases
    assert merged.fitness >= maxes[0]  # at least the best initial blend
    assert merged.fitness == pytest.approx(val_acc(merged.model, digits["val"]), abs=1e-12)
    assert merged.logbook.select("nevals")[1:] == [11] * 6  # N - 1 children a generation
    assert torch.equal(merged.genome, merged.halloffame[0].genome)
    assert merged.fitness > 0.8


def test_merge_is_reproducible(merged, digits, digit_mlps):
    kw = dict(popsize=12, ngen=6, verbose=False, metric="accuracy", gate=None)
    again = merge(digit_mlps, digits["val"], seed=0, **kw)
    assert torch.equal(again.genome, merged.genome)
    assert again.logbook.select("avg") == merged.logbook.select("avg")
    other = merge(digit_mlps, digits["val"], seed=1, **kw)
    assert not torch.equal(other.genome, merged.genome)


def test_merge_layer_mutation_and_errors(digits, digit_mlps):
    r = merge(digit_mlps, digits["val"], popsize=6, ngen=2, mutation="layer", sigma=0.1, seed=0, verbose=False)
    assert len(r.logbook) == 3
    with pytest.raises(ValueError, match="at least two models"):
        merge(digit_mlps[:1], digits["val"])
    with pytest.raises(ValueError, match="smaller than npar=4"):
        merge(digit_mlps, digits["val"], popsize=3, verbose=False)
    with pytest.raises(ValueError, match="mutation"):
        merge(digit_mlps, digits["val"], mutation="dense", verbose=False)


def _setup(digits, digit_mlps, N=8, breeding="batched"):
    icls = ensure_creator_classes()
    ad = TorchAdapter(digit_mlps[0])
    ev = accuracy(ad, *digits["val"])
    pop = TensorPopulation(N, ad.dim, device="cpu")
    inds = initBlend(pop.individuals(icls), ad.genomes(digit_mlps))
    return pop, inds, mega_toolbox(pop, ev, repair=ad, breeding=breeding), ev


def test_eaMeGA_by_hand(digits, digit_mlps):
    """eaMeGA with the per-individual breeding step equals its steps written out by hand with the same
    toolbox and draws."""
    mega_deap.seed(4)
    pop, inds, tb, ev = _setup(digits, digit_mlps, breeding="per-individual")
    hof = tools.HallOfFame(1, similar=genome_equal)
    final, log = eaMeGA(inds, tb, 3, npar=4, halloffame=hof, verbose=False)

    mega_deap.seed(4)
    pop2, ref, tb2, _ = _setup(digits, digit_mlps, breeding="per-individual")
    hof2 = tools.HallOfFame(1, similar=genome_equal)
    for ind, fit in zip(ref, tb2.map(tb2.evaluate, ref)):
        ind.fitness.values = fit
    hof2.update(ref)
    for _ in range(3):
        kids = []
        for _ in range(len(ref) - 1):
            w = tb2.select(ref, 4)
            c1, c2 = tb2.clone(w[0]), tb2.clone(w[1])
            tb2.mate(c1, c2)
            tb2.mutate(c1)
            del c1.fitness.values
            kids.append(c1)
        kids.append(tb2.clone(hof2[0]))
        for ind, fit in zip(kids[:-1], tb2.map(tb2.evaluate, kids[:-1])):
            ind.fitness.values = fit
        hof2.update(kids)
        ref = kids
    assert all(genome_equal(a, b) for a, b in zip(final, ref))
    assert torch.equal(hof[0].genome, hof2[0].genome)
    # the population stayed in the buffer's rows: no stand-alone copies
    assert all(pop.row_of(ind) is not None for ind in final)


def test_eaMeGA_hof_copies_are_independent(digits, digit_mlps):
    mega_deap.seed(0)
    pop, inds, tb, _ = _setup(digits, digit_mlps)
    hof = tools.HallOfFame(1, similar=genome_equal)
    eaMeGA(inds, tb, 2, halloffame=hof, verbose=False)
    kept = hof[0].genome.clone()
    pop.rows.fill_(0.0)
    assert torch.equal(hof[0].genome, kept)


def test_eaMeGA_input_errors(digits, digit_mlps):
    pop, inds, tb, _ = _setup(digits, digit_mlps, N=3)
    with pytest.raises(ValueError, match="ngen"):
        eaMeGA(inds, tb, -1, verbose=False)
    with pytest.raises(ValueError, match="smaller than npar=4"):
        eaMeGA(inds, tb, 1, npar=4, verbose=False)
    with pytest.raises(ValueError, match="npar must be >= 2"):
        eaMeGA(inds, tb, 1, npar=1, verbose=False)
    tb.register("select", tools.selTournament, tournsize=5)
    with pytest.raises(ValueError, match="tournament size 5"):
        eaMeGA(inds, tb, 1, npar=2, verbose=False)


def _toy_toolbox(pop, mutate):
    """A toolbox over raw genomes: fitness is closeness to a fixed target, so a test can follow every gene."""
    from deap import base

    w = torch.linspace(0.0, 1.0, pop.dim, dtype=torch.float64)
    tb = base.Toolbox()
    tb.register("clone", pop.clone)
    tb.register("select", tools.selTournament, tournsize=3)
    tb.register("mate", mega_deap.cxBlend)
    tb.register("mutate", mutate)
    tb.register("evaluate", _linear_fitness, w=w)
    return tb


def _linear_fitness(ind, w):
    return (-float((ind.genome.double() - w).pow(2).sum()),)


def _no_mutation(ind):
    return (ind,)


def _wreck(ind):
    """A destructive mutation: every gene gets large noise (children are almost surely worse)."""
    ind.genome.add_(torch.randn(ind.genome.shape).mul_(10.0))
    return (ind,)


def test_elitism_keeps_the_best_genome():
    """Every child is wrecked by mutation; only elitism can carry the initial best through, bit for bit,
    and keep the population's best fitness from falling."""
    mega_deap.seed(0)
    icls = ensure_creator_classes()
    pop = TensorPopulation(10, 16, device="cpu")
    inds = pop.individuals(icls)
    for ind in inds:
        ind.genome.copy_(torch.rand(16))
    best0 = max(
        inds, key=lambda i: _linear_fitness(i, torch.linspace(0.0, 1.0, 16, dtype=torch.float64))[0]
    ).genome.clone()
    hof = tools.HallOfFame(1, similar=genome_equal)
    final, log = eaMeGA(
        inds, _toy_toolbox(pop, _wreck), 4, npar=2, stats=mega_deap.default_stats(), halloffame=hof, verbose=False
    )
    maxes = log.select("max")
    assert all(b >= a for a, b in zip(maxes, maxes[1:]))
    assert any(torch.equal(ind.genome, best0) for ind in final)
    assert torch.equal(hof[0].genome, best0)


def test_blend_children_depend_on_both_parents_end_to_end():
    """Start from the N basis vectors, no mutation: a child of a blend is a convex combination, so every
    genome stays on the simplex, and children hold genes of two or more initial individuals."""
    mega_deap.seed(1)
    N = 12
    icls = ensure_creator_classes()
    pop = TensorPopulation(N, N, device="cpu", dtype=torch.float64)
    inds = pop.individuals(icls)
    for i, ind in enumerate(inds):
        ind.genome[i] = 1.0
    final, _ = eaMeGA(inds, _toy_toolbox(pop, _no_mutation), 3, npar=2, halloffame=tools.HallOfFame(1), verbose=False)
    G = torch.stack([ind.genome for ind in final])
    assert (G >= 0).all()
    torch.testing.assert_close(G.sum(1), torch.ones(N, dtype=torch.float64))
    support = (G > 0).sum(1).double()
    assert support.mean() > 2.0, support.tolist()  # blends of blends: several ancestors per genome
