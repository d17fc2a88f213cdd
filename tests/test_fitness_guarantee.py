"""The default fitness and the guarantee stated in accuracy, on parents that over-fit their data.

Parents trained on small, class-biased parts of digits until they fit them are over-confident (as trained
networks are): a less confident blend has a better log-likelihood however many examples it gets wrong.
"""

import math
import random

import pytest
import torch
from deap import base, creator
from torch import nn

import mega_deap
from mega_deap import Evaluator
from mega_deap.adapters import TorchAdapter
from mega_deap.align import cma_merge
from mega_deap.evaluation import NegLogLossTempered, get_metric
from mega_deap.experiments import model_accuracy
from conftest import train_mlp


@pytest.fixture(scope="module")
def overconfident(digits):
    """Two MLPs, each fitted to 150 examples drawn mostly from its own half of the classes (95 %)."""
    from mega_deap.experiments.align_study import biased_parts

    X, y = digits["train"]
    parents = []
    for j, part in enumerate(biased_parts(y, seed=0)):
        idx = part[torch.randperm(len(part), generator=torch.Generator().manual_seed(j))[:150]]
        parents.append(train_mlp((X[idx], y[idx]), seed=10 + j, epochs=150))
    return parents


def _reference(logits, y):
    """(examples right, mean log-likelihood) in float64, computed directly."""
    logits = logits.double()
    return int((logits.argmax(1) == y).sum()), float(-nn.functional.cross_entropy(logits, y))


def test_parents_are_overconfident(overconfident, digits):
    """The fixture is what the tests below need: the parents fit their data, and they are far more
    confident than they are right on validation data."""
    X, y = digits["val"]
    for m in overconfident:
        with torch.no_grad():
            confidence = float(torch.softmax(m(X), 1).max(1).values.mean())
        assert confidence > model_accuracy(m, X, y) + 0.15


def test_accuracy_ll_orders_as_deaps_lexicographic_fitness(digits):
    """The one number orders candidates exactly as DEAP's two-valued fitness (weights (1, 1)) over
    (accuracy, log-likelihood) does, the reference computed independently in float64: among logits with
    many equal accuracies and very different confidences."""
    if not hasattr(creator, "LexFit"):
        creator.create("LexFit", base.Fitness, weights=(1.0, 1.0))
    X, y = digits["val"]
    torch.manual_seed(0)
    model = train_mlp(digits["train"], seed=3, epochs=3)
    ad = TorchAdapter(model)
    base_genome = ad.genome()
    genomes = [base_genome * s for s in (0.2, 0.5, 1.0, 3.0, 10.0, 40.0)]  # same argmax, other confidence
    genomes += [base_genome + 0.05 * torch.randn_like(base_genome) for _ in range(14)]
    scores = Evaluator(ad, X, y, get_metric("accuracy_ll"), batch_size=97).scores(genomes)
    lex = []
    for g in genomes:
        right, ll = _reference(ad.forward(g, X).detach(), y)
        fit = creator.LexFit()
        fit.values = (right / len(y), ll)
        lex.append(fit)
        assert scores[len(lex) - 1] == pytest.approx((right + math.exp(ll)) / len(y), rel=1e-12)
    order = list(range(len(genomes)))
    random.Random(0).shuffle(order)
    assert sorted(order, key=lambda i: scores[i]) == sorted(order, key=lambda i: lex[i])
    assert len({round(s * len(y)) for s in scores}) < len(scores)  # ties in accuracy were broken


def test_tempered_log_likelihood_is_the_best_over_its_temperatures(digit_mlps, digits):
    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    genomes = [ad.genome(), ad.genome() * 5]  # the second: the same network, five times as confident
    got = Evaluator(ad, X, y, get_metric("neg_log_loss_tempered"), batch_size=100).scores(genomes)
    for g, score in zip(genomes, got):
        logits = ad.forward(g, X).detach().double()
        ref = max(float(-nn.functional.cross_entropy(logits / t, y)) for t in NegLogLossTempered.TEMPERATURES)
        assert score == pytest.approx(ref, rel=1e-9)
    assert got[0] == pytest.approx(got[1], abs=0.02)  # nearly blind to confidence (the grid's resolution)


METHODS = {
    "merge": lambda ps, val: mega_deap.merge(ps, val, popsize=8, ngen=4, seed=0, progress=False, device="cpu"),
    "merge(align=True)": lambda ps, val: mega_deap.merge(
        ps, val, popsize=8, ngen=4, seed=0, progress=False, device="cpu", align=True
    ),
    "coefficient GA": lambda ps, val: mega_deap.merge(
        ps, val, popsize=8, ngen=4, seed=0, progress=False, device="cpu", align=True, genome="coefficients"
    ),
    "cma_merge": lambda ps, val: cma_merge(ps, val, ngen=4, lambda_=8, seed=0, device="cpu"),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_is_at_least_as_accurate_as_the_best_parent(method, overconfident, digits):
    """With the defaults, every method returns a model whose validation accuracy (computed directly from the
    returned model) is at least the best parent's."""
    val = digits["val"]
    best = max(model_accuracy(m, *val) for m in overconfident)
    result = METHODS[method](overconfident, val)
    assert model_accuracy(result.model, *val) >= best


def test_the_log_likelihood_alone_trades_accuracy_for_confidence(overconfident, digits):
    """Why the log-likelihood is no longer the default: on these parents it keeps a blend less accurate than
    the best parent (its 'never worse' holds in log-likelihood only)."""
    val = digits["val"]
    best = max(model_accuracy(m, *val) for m in overconfident)
    kw = dict(popsize=8, ngen=4, seed=0, progress=False, device="cpu", metric="neg_log_loss")
    r = mega_deap.merge(overconfident, val, gate=None, **kw)
    assert model_accuracy(r.model, *val) < best
    assert r.fitness > max(_reference(m(val[0]).detach(), val[1])[1] for m in overconfident)
    # the significance gate (on by default) sees a merge less accurate than the best parent, and returns it
    gated = mega_deap.merge(overconfident, val, **kw)
    assert gated.parent is not None and gated.gate_p > 0.5
    assert model_accuracy(gated.model, *val) == best


def test_cma_merge_keeps_the_parents_among_its_candidates(overconfident, digits):
    """A wild CMA-ES (one generation of two samples, a large step) finds nothing as good as a parent: the
    parents, scored before it starts, are what it returns; without them (and without the significance gate)
    it ends below the best parent; the gate alone brings the best parent back."""
    val = digits["val"]
    best = max(model_accuracy(m, *val) for m in overconfident)
    wild = dict(ngen=1, lambda_=2, sigma=3.0, seed=0, device="cpu")
    assert model_accuracy(cma_merge(overconfident, val, gate=None, **wild).model, *val) >= best
    alone = cma_merge(overconfident, val, include_parents=False, gate=None, **wild)
    assert model_accuracy(alone.model, *val) < best
    gated = cma_merge(overconfident, val, include_parents=False, **wild)
    assert gated.parent is not None and model_accuracy(gated.model, *val) == best


@pytest.fixture(scope="module")
def bn_cnns(digits):
    """Two small BatchNorm CNNs trained on digits images (8x8), from two seeds."""
    from conftest import SmallCNN

    X, y = digits["train"]
    X = X.reshape(-1, 1, 8, 8)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = SmallCNN()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(m(X), y).backward()
            opt.step()
        models.append(m.eval())
    return models


@pytest.mark.parametrize("method", ["merge", "merge(align=True)", "coefficient GA", "cma_merge"])
def test_the_guarantee_holds_for_the_parents_as_given_when_batchnorm_is_repaired(method, bn_cnns, digits):
    """With ``calibration`` every candidate, the parents included, is BatchNorm-repaired before it is scored.
    Calibration inputs unlike the data (here: pure noise) spoil every repaired candidate; the merge then
    returns the best parent as it was given, not a repaired one less accurate than it."""
    X, y = digits["val"]
    val = (X.reshape(-1, 1, 8, 8), y)
    best = max(model_accuracy(m, *val) for m in bn_cnns)
    noise = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 5
    common = dict(calibration=noise, seed=0, device="cpu")
    if method == "cma_merge":
        result = cma_merge(bn_cnns, val, ngen=2, lambda_=4, **common)
    else:
        result = mega_deap.merge(
            bn_cnns,
            val,
            popsize=4,
            ngen=2,
            progress=False,
            align=method != "merge",
            genome="coefficients" if method == "coefficient GA" else "weights",
            **common,
        )
    assert model_accuracy(result.model, *val) >= best
    assert result.fitness == pytest.approx(
        Evaluator(TorchAdapter(result.model), *val, get_metric("accuracy")).scores(
            [TorchAdapter(result.model).genome()]
        )[0],
        rel=1e-9,
    )
