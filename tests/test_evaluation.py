import math

import numpy as np
import pytest
import torch
from deap import algorithms, base, tools
from torch import nn

from mega_deap import Evaluator, TensorPopulation, initBlend, mutSparseGaussian, cxBlend
from mega_deap.adapters import TorchAdapter, accuracy, neg_mae, neg_mse

from conftest import SmallCNN


def rows(classes, adapter, genomes):
    pop = TensorPopulation(len(genomes), adapter.dim, device="cpu")
    inds = pop.individuals(classes["tensor"])
    for ind, g in zip(inds, genomes):
        ind.genome.copy_(g)
    return pop, inds


def test_accuracy_matches_manual(classes, digits, digit_mlps):
    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    ev = accuracy(ad, X, y, batch_size=64)
    _, inds = rows(classes, ad, [ad.genome(m) for m in digit_mlps])
    got = ev.map(ev, inds)
    for m, (acc,) in zip(digit_mlps, got):
        with torch.no_grad():
            assert acc == pytest.approx((m(X).argmax(1) == y).double().mean().item(), abs=1e-12)


@pytest.mark.parametrize("chunk", [None, 2])
def test_vmap_equals_loop_cnn(classes, chunk):
    torch.manual_seed(0)
    models = []
    for s in range(3):
        torch.manual_seed(s)
        m = SmallCNN()
        m.train()
        with torch.no_grad():
            m(torch.randn(32, 1, 8, 8))
        models.append(m.eval())
    ad = TorchAdapter(models[0])
    X, y = torch.randn(50, 1, 8, 8), torch.randint(0, 10, (50,))
    _, inds = rows(classes, ad, [ad.genome(m) for m in models])
    loop = Evaluator(ad, X, y, strategy="loop", batch_size=16).scores(inds)
    vm = Evaluator(ad, X, y, strategy="vmap", batch_size=16, chunk=chunk).scores(inds)
    assert loop == vm
    assert Evaluator(ad, X, y).strategy == "loop"  # auto on CPU: the measured rule
    meas = Evaluator(ad, X, y, batch_size=16, strategy="measure")
    assert meas.scores(inds + inds) == loop + loop  # measures on the first batch, same scores
    assert set(meas.measured_timings) == {"loop", "vmap"} and meas.chosen in ("loop", "vmap")


def test_regression_metrics_match_float64(classes):
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y / 100.0, dtype=torch.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 1))
    ad = TorchAdapter(model)
    _, inds = rows(classes, ad, [ad.genome()])
    with torch.no_grad():
        pred = model(X).squeeze(1).double().numpy()
    ref = y.double().numpy()
    (mse,) = neg_mse(ad, X, y, batch_size=100)(inds[0])
    (mae,) = neg_mae(ad, X, y, batch_size=100)(inds[0])
    assert mse == pytest.approx(-np.mean((pred - ref) ** 2), rel=1e-9)
    assert mae == pytest.approx(-np.mean(np.abs(pred - ref)), rel=1e-9)


def test_only_invalid_individuals_are_evaluated(classes, digits, digit_mlps):
    ad = TorchAdapter(digit_mlps[0])
    ev = accuracy(ad, *digits["val"])
    _, inds = rows(classes, ad, [ad.genome(m) for m in digit_mlps])
    inds[0].fitness.values = (0.123,)
    out = ev.map(ev, inds)
    assert ev.evaluations == 1 and out[0] == (0.123,)


def test_nan_outputs_get_worst_fitness(classes, digits, digit_mlps):
    ad = TorchAdapter(digit_mlps[0])
    X, y = digits["val"]
    bad = ad.genome().clone()
    bad[0] = float("nan")
    _, inds = rows(classes, ad, [ad.genome(), bad])
    for strategy in ("loop", "vmap"):
        acc = Evaluator(ad, X, y, strategy=strategy).scores(inds)
        assert acc[0] > 0.5 and acc[1] == 0.0
    reg = neg_mse(ad, X, torch.zeros(len(X), 10)).scores(inds)
    assert math.isfinite(reg[0]) and reg[1] == -math.inf


def test_bad_labels_are_named(digit_mlps, digits):
    ad = TorchAdapter(digit_mlps[0])
    X, y = digits["val"]
    with pytest.raises(ValueError, match=r"labels span \[0, 12\].*10 classes"):
        accuracy(ad, X, torch.where(y == 3, 12, y))
    with pytest.raises(ValueError, match="X has"):
        accuracy(ad, X, y[:-1])
    with pytest.raises(ValueError, match="strategy"):
        accuracy(ad, X, y, strategy="fast")


def test_deap_eaSimple_batches_through_map(classes, digits, digit_mlps):
    """DEAP's own eaSimple: every generation's evaluations arrive in one map call."""
    ad = TorchAdapter(digit_mlps[0])
    ev = accuracy(ad, *digits["val"])
    pop = TensorPopulation(8, ad.dim, device="cpu")
    inds = initBlend(pop.individuals(classes["tensor"]), ad.genomes(digit_mlps))
    calls = []

    def counting_map(func, items):
        items = list(items)
        calls.append(len(items))
        return ev.map(func, items)

    tb = base.Toolbox()
    tb.register("evaluate", ev)
    tb.register("map", counting_map)
    tb.register("clone", pop.clone)
    tb.register("mate", cxBlend)
    tb.register("mutate", mutSparseGaussian, mu=0.0, sigma=0.01, indpb=0.02)
    tb.register("select", tools.selTournament, tournsize=3)
    _, log = algorithms.eaSimple(inds, tb, cxpb=0.5, mutpb=0.5, ngen=3, verbose=False)
    assert len(calls) == 4 and calls == log.select("nevals")
    assert ev.evaluations == sum(calls)


def test_channels_last_and_autocast_options(classes):
    torch.manual_seed(0)
    m = SmallCNN()
    m.train()
    with torch.no_grad():
        m(torch.randn(32, 1, 8, 8))
    m.eval()
    ad = TorchAdapter(m)
    X, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    _, inds = rows(classes, ad, [ad.genome()])
    plain = Evaluator(ad, X, y).scores(inds)
    cl = Evaluator(ad, X, y, channels_last=True)
    assert cl.X.is_contiguous(memory_format=torch.channels_last) and cl.scores(inds) == plain
    bf16 = Evaluator(ad, X, y, autocast=torch.bfloat16).scores(inds)
    assert abs(bf16[0] - plain[0]) <= 0.05  # mixed precision may flip a few argmaxes, not many
    with pytest.raises(ValueError, match="channels_last needs 4-D"):
        accuracy(TorchAdapter(nn.Linear(64, 10)), X.flatten(1), y, channels_last=True)


def test_default_batch_size_rule_and_bad_batch_size(digits, digit_mlps):
    from mega_deap.adapters import TorchAdapter, accuracy
    from mega_deap.evaluation import default_batch_size

    assert default_batch_size(torch.zeros(3, 1, 8, 8)) == 256 and default_batch_size(torch.zeros(3, 64)) == 2048
    ad = TorchAdapter(digit_mlps[0])
    assert accuracy(ad, *digits["val"]).batch_size == 2048
    with pytest.raises(ValueError, match="batch_size must be a positive number"):
        accuracy(ad, *digits["val"], batch_size=0)


class _Branchy(torch.nn.Module):
    """A model vmap cannot batch: control flow on a tensor's value."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        out = self.fc(x)
        return out if float(out.sum()) > -1e9 else -out


def test_measure_with_fewer_than_four_genomes_measures_and_never_picks_a_failing_strategy(digits):
    """Two genomes in the first call (a rank's share of a small population, a small CMA-ES generation): the
    strategies are still measured, each warmed up and timed more than once, and vmap, which cannot run
    this model, is not chosen; the scores are the loop's."""
    from mega_deap import Evaluator
    from mega_deap.adapters import TorchAdapter

    torch.manual_seed(0)
    ad = TorchAdapter(_Branchy())
    X, y = digits["val"]
    genomes = [ad.genome(), ad.genome() * 0.5]
    loop = Evaluator(ad, X, y, strategy="loop").scores(genomes)
    meas = Evaluator(ad, X, y, strategy="measure")
    assert meas.scores(genomes) == loop
    assert meas.chosen == "loop" and meas.measured_timings["vmap"] == float("inf")
    assert "vmap" in meas.measure_error or meas.measure_error
    assert meas.scores(genomes[:1]) == loop[:1]  # later calls use what it chose
