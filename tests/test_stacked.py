"""The stacked forward (adapters.stacked): a chunk of genomes through an MLP as one batched product per layer."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mega_deap import Evaluator, NegLogLoss
from mega_deap.adapters import TorchAdapter

from conftest import SmallCNN


class Tied(nn.Module):
    """Flatten in forward, a bias-free layer, several activations, a tied weight, a product read twice,
    log_softmax on dim 1."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 24)
        self.b = nn.Linear(24, 24, bias=False)
        self.c = nn.Linear(24, 24)
        self.c.weight = self.b.weight  # tied: one tensor of the genome
        self.out = nn.Linear(24, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = torch.tanh(self.a(x.view(x.size(0), -1)))
        h = self.drop(F.leaky_relu(self.b(h), 0.1))
        z = self.c(h)
        h = torch.relu(z) + F.gelu(z) * 0.5  # z read twice: its relu must not run in place
        return F.log_softmax(self.out(torch.sigmoid(h)), dim=1)


class Scaled(nn.Module):
    """A math call on a traced value."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)) / math.sqrt(x.size(-1))


def mlp(seed, *layers):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), *layers).eval()


def genomes(adapter, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = adapter.genome()
    return base + 0.1 * torch.randn(k, adapter.dim, generator=g)


@pytest.mark.parametrize(
    "make",
    [
        lambda: mlp(0, nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
        lambda: mlp(1, nn.Linear(64, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.ReLU6(), nn.Linear(16, 3)),
        lambda: Tied().eval(),
    ],
    ids=["relu", "sigmoid-relu6", "tied-mixed"],
)
def test_stacked_equals_one_forward_per_genome(make):
    model = make()
    ad = TorchAdapter(model)
    plan, why = ad.stacked_forward()
    assert plan is not None, why
    x = torch.rand(37, 1, 8, 8)
    G = genomes(ad, 5)
    with torch.no_grad():
        got = plan(G, x)
        loop = torch.stack([ad.forward(g, x) for g in G])
        ref = torch.stack([ad.to_model(g).double()(x.double()) for g in G])  # float64, independent modules
    assert got.shape == loop.shape
    torch.testing.assert_close(got, loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


def test_a_genomes_outputs_do_not_depend_on_its_chunk():
    """What sharding across processes relies on: a genome gives the same bits alone or among others, and
    with reused buffers (the evaluator's call) as with new ones."""
    ad = TorchAdapter(mlp(0, nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    plan, _ = ad.stacked_forward()
    G = genomes(ad, 6)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # a kept buffer of the wrong shape would be resized, with a warning
        for n in (1, 5, 17, 256):
            x = torch.rand(n, 64)
            full = plan(G, x).clone()
            for lo, hi in [(0, 1), (5, 6), (1, 3), (2, 6)]:
                assert torch.equal(plan(G[lo:hi], x), full[lo:hi]), (n, lo, hi)
                assert torch.equal(plan(G[lo:hi], x, reuse=True), full[lo:hi]), (n, lo, hi)


@pytest.mark.parametrize(
    "model, named",
    [
        (SmallCNN(), "conv1"),
        (mlp(0, nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)), "'2' (BatchNorm1d)"),
        (mlp(0, nn.Linear(64, 8), nn.Softmax(dim=1), nn.Linear(8, 3)), "'2' (Softmax)"),
        (Scaled(), "torch.fx cannot trace it"),  # math is not autowrapped (a trace's cost)
    ],
)
def test_what_it_refuses_is_named(model, named):
    plan, why = TorchAdapter(model).stacked_forward()
    assert plan is None and named in why


def test_a_reduction_over_features_is_refused():
    class Mean(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).mean(1, keepdim=True)

    plan, why = TorchAdapter(Mean()).stacked_forward()
    assert plan is None and ".mean" in why


def test_evaluator_picks_stacked_for_mlps_on_cpu_and_scores_as_the_loop(classes, digits, digit_mlps, monkeypatch):
    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    G = [ad.genome(m) for m in digit_mlps] + list(genomes(ad, 9))
    auto = Evaluator(ad, X, y, NegLogLoss(), batch_size=100)
    assert auto.strategy == "stacked" and auto.stacked_reason is None
    loop = Evaluator(ad, X, y, NegLogLoss(), strategy="loop", batch_size=100)
    a, b = auto.scores(G), loop.scores(G)
    assert a == pytest.approx(b, rel=1e-6)
    assert auto.scores(G) == a  # the kept buffers give the same scores call after call
    assert auto.scores(G[3:5]) == a[3:5]  # and a genome's score does not depend on its company
    for chunk in (1, 2, 4):
        assert Evaluator(ad, X, y, NegLogLoss(), batch_size=100, chunk=chunk).scores(G) == a
    cnn = TorchAdapter(SmallCNN())
    Xc = torch.randn(6, 1, 8, 8)
    assert Evaluator(cnn, Xc, torch.zeros(6, dtype=torch.long)).strategy == "loop"
    with pytest.raises(ValueError, match="strategy='stacked'.*conv1"):
        Evaluator(cnn, Xc, torch.zeros(6, dtype=torch.long), strategy="stacked")
    monkeypatch.setattr(Evaluator, "STACKED_NUMBERS", 64 * 100 * 4 - 1)  # widest 64 x 100 inputs: chunks of 3
    assert Evaluator(ad, X, y, batch_size=100).strategy == "loop"  # fewer than 4 a chunk: no gain measured
    assert Evaluator(ad, X, y, batch_size=50).strategy == "stacked"
    monkeypatch.undo()
    meas = Evaluator(ad, X, y, NegLogLoss(), strategy="measure", batch_size=100)
    assert meas.scores(G) == pytest.approx(b, rel=1e-6)
    assert set(meas.measured_timings) == {"loop", "stacked", "vmap"}


def test_nan_screen_flags_nan_only(digits, digit_mlps):
    """One sum per genome screens for NaN; +inf and -inf together also sum to NaN, and the exact search
    then clears such a genome."""
    out = torch.zeros(3, 4, 5)
    out[1, 2, 3] = float("nan")
    out[2, 0, 0], out[2, 1, 1] = math.inf, -math.inf
    assert Evaluator._nan_count(out).tolist() == [0.0, 1.0, 0.0]
    assert Evaluator._nan_count(out[[0, 2]]).tolist() == [0.0, 0.0]


def test_eval_mode_restores_what_was_training():
    model = mlp(0, nn.Linear(64, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    ad = TorchAdapter(model)
    with ad.eval_mode():
        assert not any(m.training for m in model.modules())
    assert all(m.training for m in model.modules())
    model.eval()
    with ad.eval_mode():
        pass
    assert not any(m.training for m in model.modules())


def test_stacked_forward_under_autocast_runs_in_the_autocast_dtype(digit_mlps, digits):
    """The stacked forward writes into kept out= buffers, which autocast skips: under autocast=bfloat16 it ran
    in float32. Its scores under autocast now differ from float32's and follow the loop's under autocast."""
    from mega_deap import Evaluator
    from mega_deap.adapters import TorchAdapter
    from mega_deap.evaluation import get_metric

    ad = TorchAdapter(digit_mlps[0])
    X, y = digits["val"]
    genomes = [ad.genome(), ad.genome() * 0.9, ad.genome() * 1.1, ad.genome() * 0.8]

    def scores(strategy, autocast):
        ev = Evaluator(ad, X, y, get_metric("neg_log_loss"), strategy=strategy, autocast=autocast)
        return torch.tensor(ev.scores(genomes), dtype=torch.float64)

    full = scores("stacked", None)
    half = scores("stacked", torch.bfloat16)
    loop_half = scores("loop", torch.bfloat16)
    assert not torch.equal(half, full)  # it really ran in bfloat16
    torch.testing.assert_close(half, loop_half, rtol=0.02, atol=0.02)  # as the loop does under autocast
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)  # and near float32 all the same
