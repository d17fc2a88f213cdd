"""TensorIndividual against DEAP's own tools, with list individuals as the reference."""

import copy
import pickle
import random

import pytest
import torch
from deap import algorithms, base, tools

from mega_deap import TensorIndividual, TensorPopulation, genome_equal


def make_pair(classes, D=12, N=6, seed=0):
    """The same N genomes as list individuals and as rows of one float64 TensorPopulation."""
    rng = random.Random(seed)
    values = [[rng.uniform(-1, 1) for _ in range(D)] for _ in range(N)]
    lists = [classes["list"](v) for v in values]
    pop = TensorPopulation(N, D, device="cpu", dtype=torch.float64)
    tens = pop.individuals(classes["tensor"])
    for t, v in zip(tens, values):
        t.genome.copy_(torch.tensor(v, dtype=torch.float64))
    return lists, tens, pop


def same(lists, tens):
    return all(list(t) == list(l) for l, t in zip(lists, tens))


def test_individuals_are_views_not_copies(classes):
    pop = TensorPopulation(4, 10, device="cpu")
    inds = pop.individuals(classes["tensor"])
    for i, ind in enumerate(inds):
        assert ind.genome.data_ptr() == pop.buffer[i].data_ptr()
    inds[2][3] = 7.0
    assert pop.buffer[2, 3] == 7.0


def test_sequence_protocol(classes):
    ind = classes["tensor"]([1.0, 2.0, 3.0])
    assert len(ind) == 3 and ind[1] == 2.0 and list(ind) == [1.0, 2.0, 3.0]
    s = ind[0:2]
    s[0] = 100.0
    assert ind[0] == 1.0  # slices are copies
    ind[0:2] = [5.0, 6.0]
    assert list(ind) == [5.0, 6.0, 3.0]
    assert ind == classes["tensor"]([5.0, 6.0, 3.0]) and ind != classes["tensor"]([5.0, 6.0, 4.0])
    with pytest.raises(ValueError, match="1-D"):
        TensorIndividual(torch.zeros(2, 2))


def test_clone_deepcopy_pickle_copy_one_row(classes):
    """A row of a 20 x 1,000,000 buffer: copies hold about 4 MB, never the 80 MB storage."""
    N, D = 20, 1_000_000
    pop = TensorPopulation(N, D, device="cpu")
    inds = pop.individuals(classes["tensor"])
    inds[3].genome.normal_()
    inds[3].fitness.values = (0.5,)
    row_bytes = D * 4
    assert inds[3].genome.untyped_storage().nbytes() > 20 * row_bytes  # the view sees the whole storage

    dc = copy.deepcopy(inds[3])
    assert dc.genome.untyped_storage().nbytes() == row_bytes
    assert torch.equal(dc.genome, inds[3].genome) and dc.fitness.values == (0.5,)
    assert dc.fitness is not inds[3].fitness

    cl = pop.clone(inds[3])
    assert pop.row_of(cl) is not None and pop.row_of(cl) >= N  # landed in the offspring buffer
    assert torch.equal(cl.genome, inds[3].genome) and cl.fitness.values == (0.5,)

    blob = pickle.dumps(inds[3])
    assert row_bytes <= len(blob) < 1.1 * row_bytes
    back = pickle.loads(blob)
    assert torch.equal(back.genome, inds[3].genome) and back.fitness.values == (0.5,)
    # DEAP 1.4 pickles creator classes by value (deap.creator.meta_create), for list individuals too
    assert type(back).__name__ == "TInd" and isinstance(back, TensorIndividual)


def test_rows_are_recycled_and_clone_falls_back(classes):
    pop = TensorPopulation(3, 5, device="cpu")
    inds = pop.individuals(classes["tensor"])
    assert pop.free_rows == 5
    extra = [pop.clone(inds[0]) for _ in range(5)]
    assert pop.free_rows == 0
    with pytest.warns(RuntimeWarning, match="stand-alone"):
        loose = pop.clone(inds[1])
    assert pop.row_of(loose) is None and torch.equal(loose.genome, inds[1].genome)
    del extra
    assert pop.free_rows == 5  # released when the individuals died


@pytest.mark.parametrize(
    "op,kwargs",
    [
        (tools.cxTwoPoint, {}),
        (tools.cxOnePoint, {}),
        (tools.cxUniform, {"indpb": 0.5}),
        (tools.cxBlend, {"alpha": 0.3}),
    ],
)
def test_deap_crossovers_match_lists(classes, op, kwargs):
    """The rows of one buffer, swapped by DEAP's slice crossovers: no aliasing, same genomes as lists."""
    lists, tens, _ = make_pair(classes)
    for k in range(0, 6, 2):
        random.seed(100 + k)
        op(lists[k], lists[k + 1], **kwargs)
        random.seed(100 + k)
        out = op(tens[k], tens[k + 1], **kwargs)
        assert out[0] is tens[k] and out[1] is tens[k + 1]
    assert same(lists, tens)


def test_deap_mutgaussian_matches_lists(classes):
    lists, tens, _ = make_pair(classes)
    for l, t in zip(lists, tens):
        random.seed(7)
        tools.mutGaussian(l, mu=0.0, sigma=0.3, indpb=0.4)
        random.seed(7)
        tools.mutGaussian(t, mu=0.0, sigma=0.3, indpb=0.4)
    assert same(lists, tens)


def _toolbox(clone):
    tb = base.Toolbox()
    tb.register("evaluate", lambda ind: (sum(ind),))
    tb.register("mate", tools.cxTwoPoint)
    tb.register("mutate", tools.mutGaussian, mu=0.0, sigma=0.5, indpb=0.2)
    tb.register("select", tools.selTournament, tournsize=3)
    tb.register("clone", clone)
    return tb


def test_eaSimple_selection_hof_stats_match_lists(classes):
    """DEAP's eaSimple (varAnd, selTournament, HallOfFame, Statistics, Logbook) on both kinds."""
    lists, tens, pop = make_pair(classes, D=10, N=8)
    results = {}
    for kind, population, clone in (("list", lists, copy.deepcopy), ("tensor", tens, pop.clone)):
        stats = tools.Statistics(lambda ind: ind.fitness.values[0])
        stats.register("max", max)
        hof = tools.HallOfFame(2, similar=genome_equal) if kind == "tensor" else tools.HallOfFame(2)
        random.seed(3)
        final, log = algorithms.eaSimple(
            population, _toolbox(clone), cxpb=0.6, mutpb=0.4, ngen=6, stats=stats, halloffame=hof, verbose=False
        )
        results[kind] = (final, log, hof)
    (lf, llog, lhof), (tf, tlog, thof) = results["list"], results["tensor"]
    assert same(lf, tf)
    assert llog.select("max") == tlog.select("max") and llog.select("nevals") == tlog.select("nevals")
    assert same(lhof, thof) and [h.fitness.values for h in lhof] == [h.fitness.values for h in thof]
    # the clones lived in the population's rows
    assert all(pop.row_of(ind) is not None for ind in tf)
    # the hall of fame holds independent copies: overwriting every row leaves it intact
    kept = [list(h) for h in thof]
    pop.rows.fill_(-123.0)
    assert [list(h) for h in thof] == kept


def test_varAnd_matches_lists(classes):
    lists, tens, pop = make_pair(classes)
    random.seed(11)
    lo = algorithms.varAnd(lists, _toolbox(copy.deepcopy), cxpb=0.7, mutpb=0.5)
    random.seed(11)
    to = algorithms.varAnd(tens, _toolbox(pop.clone), cxpb=0.7, mutpb=0.5)
    assert same(lo, to)
    assert same(lists, tens)  # the parents were not touched through aliasing
