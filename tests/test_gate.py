"""The significance gate: McNemar's exact test against independent references, and what merge returns."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

import mega_deap
from mega_deap.align import cma_merge
from mega_deap.checks import SettingError
from mega_deap.experiments import model_accuracy
from mega_deap.gate import correct_each, gate_parent, mcnemar_greater
from mega_deap.adapters import TorchAdapter
from mega_deap.objectives import on_model


def _reference_p(wins, losses):
    """P(Binomial(wins + losses, 1/2) >= wins), summed exactly in integers."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


@pytest.mark.parametrize("wins,losses", [(0, 0), (5, 0), (0, 5), (7, 3), (30, 14), (3, 9), (60, 60), (1, 0)])
def test_mcnemar_matches_an_exact_binomial_sum(wins, losses):
    """Counts and p-value against an integer sum and scipy's binomtest, on vectors built to have exactly
    those discordant pairs (plus agreements, which must not matter)."""
    a = torch.tensor([True] * wins + [False] * losses + [True] * 11 + [False] * 4)
    b = torch.tensor([False] * wins + [True] * losses + [True] * 11 + [False] * 4)
    w, l_, p = mcnemar_greater(a, b)
    assert (w, l_) == (wins, losses)
    assert p == pytest.approx(_reference_p(wins, losses), rel=1e-12, abs=1e-15)
    if wins + losses:
        assert p == pytest.approx(stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue, rel=1e-9)


def test_mcnemar_refuses_unpaired_predictions():
    with pytest.raises(SettingError, match="paired predictions"):
        mcnemar_greater(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def _lookup(right: list, n_classes=2) -> nn.Module:
    """A linear model on one-hot inputs whose prediction on example i is right exactly where ``right[i]``
    (the label of every example is 0)."""
    n = len(right)
    m = nn.Linear(n, n_classes, bias=False)
    with torch.no_grad():
        m.weight.zero_()
        for i, r in enumerate(right):
            m.weight[0 if r else 1, i] = 1.0
    return m


def _data(n):
    return torch.eye(n), torch.zeros(n, dtype=torch.long)


def test_correct_each_matches_a_plain_loop(digit_mlps, digits):
    X, y = digits["val"]
    adapter = TorchAdapter(digit_mlps[0])
    weights = adapter.genomes(digit_mlps)
    got = correct_each(adapter, list(weights), X, y, batch_size=50)
    for row, m in zip(got, digit_mlps):
        with torch.no_grad():
            assert torch.equal(row, m(X).argmax(1) == y)


def test_the_gate_keeps_the_best_parent_unless_the_merge_beats_it_beyond_noise():
    """Parent 1 is the more accurate (first of equals is not it); a merge right on 6 examples that parent 1
    gets wrong and wrong on 1 it gets right: p = (1 + 7)/128 = 0.0625, between the levels tried."""
    n = 40
    p0 = _lookup([i < 20 for i in range(n)])  # 20 right
    p1 = _lookup([i < 30 for i in range(n)])  # 30 right: the best parent
    merged = _lookup([(i < 29) or (30 <= i < 36) for i in range(n)])  # wins 6, loses 1 (example 29)
    X, y = _data(n)
    j, p = gate_parent(merged, [p0, p1], X, y, 0.06, device="cpu")
    assert j == 1 and p == pytest.approx(_reference_p(6, 1)) and p == pytest.approx(0.0625)
    j, p = gate_parent(merged, [p0, p1], X, y, 0.07, device="cpu")
    assert j is None  # p < 0.07: the merge stands
    # a merge with the very weights of a parent is that parent
    assert gate_parent(_lookup([i < 20 for i in range(n)]), [p0, p1], X, y, 0.5, device="cpu") == (0, 1.0)


def test_merge_with_the_gate_returns_the_gate_s_choice(digit_mlps, digits):
    """merge(gate=level) is merge(gate=None) followed by the gate: the same merge where it passes, the best
    parent (its weights, its fitness, its index) where it does not; p is recorded either way."""
    val = digits["val"]
    kw = dict(popsize=8, ngen=3, seed=0, progress=False, device="cpu", align=False)
    plain = mega_deap.merge(digit_mlps, val, gate=None, **kw)
    assert plain.gate_p is None and plain.parent is None
    for level in (1e-9, 1.0):
        r = mega_deap.merge(digit_mlps, val, gate=level, **kw)
        j, p = gate_parent(plain.model, digit_mlps, *val, level, device="cpu")
        assert r.gate_p == p and r.parent == j
        if j is None:
            assert torch.equal(TorchAdapter(r.model).genome(), TorchAdapter(plain.model).genome())
            assert r.fitness == plain.fitness
        else:
            assert torch.equal(TorchAdapter(r.model).genome(), TorchAdapter(digit_mlps[j]).genome())
            assert r.fitness == pytest.approx(model_accuracy(digit_mlps[j], *val), abs=1e-12)
            assert model_accuracy(digit_mlps[j], *val) == max(model_accuracy(m, *val) for m in digit_mlps)
    assert mega_deap.merge(digit_mlps, val, gate=1.0, **kw).parent is not None  # p <= 1: always a parent
    # merge aligns by default: the parent comes back with its units permuted, the same function
    aligned = mega_deap.merge(digit_mlps, val, gate=1e-9, **{**kw, "align": "auto"})
    assert aligned.align == "zip" and aligned.parent is not None
    with torch.no_grad():
        torch.testing.assert_close(aligned.model(val[0]), digit_mlps[aligned.parent](val[0]), rtol=1e-5, atol=1e-5)


def test_cma_merge_with_the_gate(digit_mlps, digits):
    val = digits["val"]
    kw = dict(ngen=2, lambda_=6, seed=0, progress=False, device="cpu")
    plain = cma_merge(digit_mlps, val, gate=None, **kw)
    r = cma_merge(digit_mlps, val, gate=1.0, **kw)
    j, p = gate_parent(plain.model, digit_mlps, *val, 1.0, device="cpu")
    assert (r.parent, r.gate_p) == (j, p) and j is not None
    # cma_merge aligns by default: the parent comes back with its units permuted, the same function
    with torch.no_grad():
        torch.testing.assert_close(r.model(val[0]), digit_mlps[j](val[0]), rtol=1e-5, atol=1e-5)
    assert r.fitness == model_accuracy(digit_mlps[j], *val)


def test_the_default_gate_applies_to_classification_metrics_only(digit_mlps, digits):
    val = digits["val"]
    kw = dict(popsize=4, ngen=1, seed=0, progress=False, device="cpu")
    assert mega_deap.merge(digit_mlps, val, **kw).gate_p is not None
    assert mega_deap.merge(digit_mlps, val, metric="neg_log_loss", **kw).gate_p is not None
    objective = on_model(lambda model: float(model[0].weight.mean()), name="mean weight")
    assert mega_deap.merge(digit_mlps, None, metric=objective, **kw).gate_p is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gate=0.0), "gate must be"),
        (dict(gate=1.5), "gate must be"),
        (dict(gate=True), "gate must be"),
        (dict(gate="always"), "gate must be"),
        (dict(gate=0.05, metric="neg_mse"), "not a built-in classification metric"),
        (dict(gate=0.05, objectives=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]), "whole front"),
    ],
)
def test_bad_gates_are_refused_before_any_work(kwargs, match, digit_mlps, digits, monkeypatch):
    monkeypatch.setattr(mega_deap.presets, "_build", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SettingError, match=match):
        mega_deap.merge(digit_mlps, digits["val"], popsize=8, ngen=1, progress=False, device="cpu", **kwargs)


def test_verbose_says_what_the_gate_did_and_quiet_says_nothing(digit_mlps, digits, capsys):
    kw = dict(popsize=4, ngen=1, seed=0, progress=False, device="cpu", gate=1.0)
    r = mega_deap.merge(digit_mlps, digits["val"], **kw)
    assert capsys.readouterr().out == ""
    mega_deap.merge(digit_mlps, digits["val"], verbose=True, **kw)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"gate: p = {r.gate_p:.3g} >= 1.0: parent {r.parent} is returned"
