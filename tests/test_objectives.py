"""Any objective: functions of a genome's outputs or of the model, one value or several, against plain
per-genome loops and independent references (scikit-learn's F1, float64 per-group counts)."""

import math

import numpy as np
import pytest
import torch
from deap import algorithms, base, creator, tools
from torch import nn

import mega_deap as md
from mega_deap import Evaluator, GroupAccuracy, ModelEvaluator, TensorPopulation, on_model, on_outputs
from mega_deap.adapters import TorchAdapter
from mega_deap.checks import SettingError
from mega_deap.pareto import nondominated

from conftest import SmallCNN


def genomes_near(adapter, models, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    base_ = adapter.genomes(models)
    return [base_[i % len(models)] + 0.05 * torch.randn(adapter.dim, generator=g) for i in range(k)]


def macro_f1(out, y):
    """Macro F1 in torch (the function under test)."""
    pred, f1s = out.argmax(-1), []
    for c in range(out.shape[-1]):
        tp = ((pred == c) & (y == c)).sum().double()
        fp = ((pred == c) & (y != c)).sum().double()
        fn = ((pred != c) & (y == c)).sum().double()
        f1s.append(0.0 if tp == 0 else float(2 * tp / (2 * tp + fp + fn)))
    return sum(f1s) / len(f1s)


@pytest.mark.parametrize("strategy,batch_size", [("loop", 50), ("stacked", 64), ("vmap", 397), ("loop", 397)])
def test_on_outputs_matches_sklearn_per_genome(digits, digit_mlps, strategy, batch_size):
    from sklearn.metrics import f1_score

    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    G = genomes_near(ad, digit_mlps, 6)
    ev = Evaluator(ad, X, y, on_outputs(macro_f1), strategy=strategy, batch_size=batch_size)
    got = ev.scores(G)
    for g, v in zip(G, got):
        with torch.no_grad():
            pred = ad.to_model(g)(X).argmax(1)
        assert v == pytest.approx(f1_score(y.numpy(), pred.numpy(), average="macro"), abs=1e-12)
    assert ev.nobj == 1 and ev.evaluations == 6


def test_on_outputs_vectorized_and_tuples(digits, digit_mlps):
    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    G = genomes_near(ad, digit_mlps, 5)

    def two(out, y):  # accuracy (maximised) and the mean squared logit (minimised)
        return float((out.argmax(-1) == y).double().mean()), float(out.double().pow(2).mean())

    def two_vec(out, y):
        return torch.stack([(out.argmax(-1) == y).double().mean(1), out.double().pow(2).mean((1, 2))], 1)

    per = Evaluator(ad, X, y, on_outputs(two, weights=(1.0, -1.0)), batch_size=100).scores(G)
    vec = Evaluator(ad, X, y, on_outputs(two_vec, weights=(1.0, -1.0), vectorized=True), batch_size=64).scores(G)
    assert all(isinstance(v, tuple) and len(v) == 2 for v in per)
    np.testing.assert_allclose(np.array(per), np.array(vec), rtol=1e-6)
    for g, (acc, sq) in zip(G, per):
        with torch.no_grad():
            out = ad.to_model(g)(X).double()
        assert acc == pytest.approx(float((out.argmax(1) == y).double().mean()), abs=1e-12)
        assert sq == pytest.approx(float(out.pow(2).mean()), rel=1e-5)


def test_nan_genome_gets_the_worst_of_each_objective(digits, digit_mlps):
    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    G = genomes_near(ad, digit_mlps, 2)
    G[1][0] = float("nan")
    ev = Evaluator(ad, X, y, on_outputs(lambda o, y: (1.0, 2.0), weights=(1.0, -1.0)))
    assert ev.scores(G) == [(1.0, 2.0), (-math.inf, math.inf)]


def test_wrong_number_of_values_is_refused_by_name(digits, digit_mlps):
    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])

    def three(out, y):
        return 1.0, 2.0, 3.0

    with pytest.raises(SettingError, match="objective 'three_values'.*2 values per genome"):
        Evaluator(ad, X, y, on_outputs(three, weights=(1, 1), name="three_values")).scores([ad.genome()])
    with pytest.raises(SettingError, match="weights"):
        on_outputs(three, weights=(1, 0))


def test_group_accuracy_against_float64_counts(digits, digit_mlps):
    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    G = genomes_near(ad, digit_mlps, 4)
    groups = [[0, 1, 2, 3, 4], [5, 6, 7], [9]]  # class 8 in no group
    for batch_size in (33, 397):
        got = Evaluator(ad, X, y, GroupAccuracy(groups), batch_size=batch_size).scores(G)
        for g, row in zip(G, got):
            with torch.no_grad():
                pred = ad.to_model(g)(X).argmax(1)
            for k, grp in enumerate(groups):
                mask = np.isin(y.numpy(), grp)
                assert row[k] == pytest.approx(float((pred.numpy()[mask] == y.numpy()[mask]).mean()), abs=1e-12)
    with pytest.raises(SettingError, match="class 3 is in group 0 and in group 1"):
        GroupAccuracy([[1, 3], [3, 4]])
    with pytest.raises(SettingError, match="group 1 holds class 12"):
        Evaluator(ad, X, y, GroupAccuracy([[0], [12]]))


def test_on_model_swaps_views_and_restores_the_template(digits, digit_mlps):
    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    before = ad.genome().clone()
    G = genomes_near(ad, digit_mlps, 4)
    seen = []

    def loss(model):
        seen.append(model.__class__)
        return float(nn.functional.cross_entropy(model(X), y))

    ev = ModelEvaluator(ad, on_model(loss, weights=-1.0))
    got = ev.scores(G)
    for g, v in zip(G, got):
        with torch.no_grad():
            want = float(nn.functional.cross_entropy(ad.to_model(g)(X), y))
        assert v == want
    assert seen == [nn.Sequential] * 4  # the module itself, not a wrapper
    assert torch.equal(ad.genome(), before)  # the template's own weights came back
    assert ev.weights == (-1.0,) and ev.evaluate(G[:1]) == [(got[0],)]


def rollout_returns(policy, obs_seed=0, steps=3):
    """A toy rollout: each genome sees its own inputs, depending on its own previous actions."""
    g = torch.Generator().manual_seed(obs_seed)
    k = len(policy)
    x = torch.randn(5, 64, generator=g).expand(k, 5, 64)  # the same start for all; then each its own
    total = torch.zeros(k, dtype=torch.float64)
    for _ in range(steps):
        out = policy(x)
        act = out.argmax(-1)  # (k, 5)
        total += act.double().mean(1)
        x = x.roll(1, -1) + act.unsqueeze(-1).float() / 10
    return total


@pytest.mark.parametrize("chunk", [None, 3])
def test_batched_policy_equals_a_per_genome_loop(digit_mlps, chunk):
    ad = TorchAdapter(digit_mlps[0])
    G = genomes_near(ad, digit_mlps, 7, seed=3)
    stacked = ModelEvaluator(ad, on_model(rollout_returns, batched=True), strategy="stacked", chunk=chunk)
    loop = ModelEvaluator(ad, on_model(rollout_returns, batched=True), strategy="loop", chunk=chunk)
    a, b = stacked.scores(G), loop.scores(G)
    assert stacked._plan is not False and loop._plan is False  # the stacked forward really ran
    assert a == pytest.approx(b, abs=1e-12)
    # an independent reference: each genome alone, its own model
    for i, g in enumerate(G):
        m = ad.to_model(g)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(5, 64, generator=gen)
            total = 0.0
            for _ in range(3):
                act = m(x).argmax(-1)
                total += float(act.double().mean())
                x = x.roll(1, -1) + act.unsqueeze(-1).float() / 10
        assert a[i] == pytest.approx(total, abs=1e-12)


def test_batched_policy_falls_back_for_a_cnn_and_refuses_stacked():
    torch.manual_seed(0)
    ad = TorchAdapter(SmallCNN().eval())

    def fn(policy):
        return policy(torch.randn(len(policy), 2, 1, 8, 8)).mean((1, 2))

    G = [ad.genome() + 0.01 * i for i in range(3)]
    ev = ModelEvaluator(ad, on_model(fn, batched=True))
    assert len(ev.scores(G)) == 3 and ev._plan is False
    with pytest.raises(SettingError, match="strategy='stacked'"):
        ModelEvaluator(ad, on_model(fn, batched=True), strategy="stacked")


def test_deap_algorithms_take_objectives(digits, digit_mlps):
    """DEAP's own eaSimple (one objective on outputs) and eaMuPlusLambda with selNSGA2 (two, on the model)."""
    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    if not hasattr(creator, "FitObj2"):
        creator.create("FitObj2", base.Fitness, weights=(1.0, -1.0))
        creator.create("IndObj2", md.TensorIndividual, fitness=creator.FitObj2)
    if not hasattr(creator, "FitObj1"):
        creator.create("FitObj1", base.Fitness, weights=(1.0,))
        creator.create("IndObj1", md.TensorIndividual, fitness=creator.FitObj1)
    ev1 = Evaluator(ad, X, y, on_outputs(macro_f1))
    pop = TensorPopulation(12, ad.dim, device="cpu")
    tb = base.Toolbox()
    tb.register("evaluate", ev1)
    tb.register("map", ev1.map)
    tb.register("clone", pop.clone)
    tb.register("mate", md.cxBlend)
    tb.register("mutate", md.mutSparseGaussian, mu=0.0, sigma=0.01, indpb=0.05)
    tb.register("select", tools.selTournament, tournsize=3)
    md.seed(0)
    inds = md.initBlend(pop.individuals(creator.IndObj1), ad.genomes(digit_mlps))
    inds, log = algorithms.eaSimple(inds, tb, 0.5, 0.5, 3, verbose=False)
    for ind in inds:
        assert ind.fitness.values[0] == pytest.approx(macro_f1(ad.forward(ind.genome, X), y), abs=1e-12)

    def acc_and_norm(model):
        with torch.no_grad():
            acc = float((model(X).argmax(1) == y).double().mean())
        return acc, float(sum(p.double().pow(2).sum() for p in model.parameters()))

    ev2 = ModelEvaluator(ad, on_model(acc_and_norm, weights=(1.0, -1.0)))
    pop2 = TensorPopulation(18, ad.dim, device="cpu")  # mu + lambda = 2 x 12 rows, and the clones in flight
    tb.register("evaluate", ev2)
    tb.register("map", ev2.map)
    tb.register("clone", pop2.clone)
    tb.register("select", tools.selNSGA2)
    front = tools.ParetoFront(similar=md.genome_equal)
    inds2 = md.initBlend(pop2.individuals(creator.IndObj2)[:12], ad.genomes(digit_mlps))
    inds2, _ = algorithms.eaMuPlusLambda(inds2, tb, 12, 12, 0.5, 0.5, 3, halloffame=front, verbose=False)
    values = [ind.fitness.values for ind in front]
    assert nondominated(values, (1.0, -1.0)) == list(range(len(values)))  # the front: no point dominated
    everything = [ind.fitness.values for ind in inds2] + values
    best = set(tuple(everything[i]) for i in nondominated(everything, (1.0, -1.0)))
    assert best <= set(map(tuple, values))


def test_merge_takes_an_outputs_objective(digits, digit_mlps):
    """merge(metric=on_outputs(...)): eaMeGA under the user's non-decomposable metric; the result's fitness is
    that metric of the returned model, and never below the parents' (they are in the first population)."""
    X, y = digits["val"]
    r = md.merge(digit_mlps, digits["val"], metric=on_outputs(macro_f1), popsize=6, ngen=2, progress=False)
    with torch.no_grad():
        assert r.fitness == pytest.approx(macro_f1(r.model(X), y), abs=1e-12)
        assert r.fitness >= max(macro_f1(m(X), y) for m in digit_mlps)
