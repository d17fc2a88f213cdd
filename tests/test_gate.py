"""The significance gate: McNemar's exact test against independent references, and what merge returns."""

import math
import os

import pytest
import torch
from scipy import stats
from torch import nn

import mega_deap
from mega_deap.align import cma_merge
from mega_deap.checks import SettingError
from mega_deap.experiments import model_accuracy
from mega_deap.gate import (
    correct_each,
    crossfit_test,
    gate_parent,
    held_out_test,
    mcnemar_greater,
    paired_test,
)
from mega_deap.adapters import TorchAdapter
from mega_deap.objectives import on_model
from mega_deap.evaluation import get_metric
from mega_deap.presets import _CrossFit, _gated
from conftest import train_mlp


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
        (dict(gate_holdout="half"), "gate_holdout must be 'auto', 'crossfit' or a fraction"),
        (dict(gate_holdout=1.0), "gate_holdout must be 'auto', 'crossfit' or a fraction"),
        (dict(gate_holdout=True), "gate_holdout must be 'auto', 'crossfit' or a fraction"),
        (dict(gate_holdout="crossfit", gate=None), r"no gate runs \(gate=None\)"),
        (dict(gate_holdout="crossfit", holdout=0.2), "both hold validation examples out of the fitness"),
        (dict(gate_holdout=0.3, gate=None), r"no gate runs \(gate=None\)"),
        (dict(gate_holdout=0.3, holdout=0.2), "both hold validation examples out of the fitness; use one"),
        (dict(gate_holdout=0.3, objectives=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]), "with objectives no gate runs"),
        (dict(gate_holdout=0.001), "gate_holdout=0.001 holds out 0 of 397 validation examples"),
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


def test_held_out_test_reads_the_held_examples_and_guards_the_whole_set():
    """The test's p reads only the held examples; the best parent and the guarantee read every example.
    Parent 1 is the more accurate on all 40; the merge wins 6 and loses 1 against it on the held examples
    (p = 0.0625) and loses 8 on the others: it is less accurate overall, so the guarantee fails."""
    n = 40
    p0 = _lookup([i < 20 for i in range(n)])
    p1 = _lookup([i < 30 for i in range(n)])  # the best parent: right on 0..29
    held = torch.arange(22, 40)  # the merge's wins and its one loss lie here
    right = [(8 <= i < 29) or (30 <= i < 36) for i in range(n)]  # wrong on 0..7 and 29, right on 30..35
    merged = _lookup(right)
    X, y = _data(n)
    runner = TorchAdapter(p0)
    genomes = [runner.genome(m) for m in (merged, p0, p1)]
    best, p, holds = held_out_test(runner, genomes[0], genomes[1:], X, y, held)
    assert best == 1 and p == pytest.approx(_reference_p(6, 1)) and not holds  # 27 right against 30
    # the same merge judged on every example (paired_test): 6 wins, 9 losses
    assert paired_test(runner, genomes[0], genomes[1:], X, y)[1] == pytest.approx(_reference_p(6, 9))
    # a merge right on 0..35 wins 6 with no loss on the held part and holds on the whole set
    better = runner.genome(_lookup([i < 36 for i in range(n)]))
    best, p, holds = held_out_test(runner, better, genomes[1:], X, y, held)
    assert (best, holds) == (1, True) and p == pytest.approx(_reference_p(6, 0))
    assert held_out_test(runner, genomes[2].clone(), genomes[1:], X, y, held) == (1, 1.0, True)
    # a merge that is the other parent (the best on a fitness part, not on every example) is no better than
    # the best: the guarantee fails and the gate returns the best parent, not the merge's
    best, p, holds = held_out_test(runner, genomes[1].clone(), genomes[1:], X, y, held)
    assert (best, holds) == (1, False)
    got = _gated(
        runner, (genomes[1], genomes[1], 0.5), genomes[1:], X, y, (X, y), get_metric("accuracy"), 1.0, None, held
    )
    assert got[4] == 1 and torch.equal(got[0], genomes[2])
    # merge's gate at 0.07: the first merge passes the held-out test (p = 0.0625) yet is less accurate on
    # the whole set, so the best parent comes back; the better merge is kept
    accuracy = get_metric("accuracy")
    for weights, parent in ((genomes[0], 1), (better, None)):
        got = _gated(runner, (weights, weights, 0.5), genomes[1:], X, y, (X, y), accuracy, 0.07, None, held)
        assert got[4] == parent and torch.equal(got[0], weights if parent is None else genomes[2])
    with pytest.raises(SettingError, match="indices into the 40 examples"):
        held_out_test(runner, better, genomes[1:], X, y, torch.tensor([3, 40]))


def _fitness_and_held(n, fraction, seed):
    """The split merge(gate_holdout=fraction, seed=seed) makes, as its documentation states: a seeded
    permutation of the n examples, the first round(fraction * n) held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    m = int(round(fraction * n))
    return perm[m:], perm[:m]


@pytest.fixture(scope="module")
def biased_mlps(digits):
    """Two MLPs, each trained on a class-biased part of the digits: their merges beat both beyond noise."""
    from mega_deap.experiments.align_study import biased_parts

    X, y = digits["train"]
    return [train_mlp((X[idx], y[idx]), seed=i, epochs=20) for i, idx in enumerate(biased_parts(y, 5, seed=0))]


@pytest.mark.parametrize("include_parents", [True, False])
def test_merge_gates_on_the_held_out_part_and_keeps_the_guarantee(
    digit_mlps, biased_mlps, digits, include_parents, capsys
):
    """With gate_holdout the fitness reads the kept part only (the same run as merge(gate=None) on it); the
    gate's p is McNemar's on the held part against the parent best on the whole set; the result is never
    less accurate than that parent on the whole validation set, with or without the parents among the
    candidates. Same-data parents give the parent back; class-biased ones, the merge (at least once)."""
    X, y = digits["val"]
    kw = dict(popsize=8, ngen=3, progress=False, device="cpu", include_parents=include_parents, gate=0.5)
    kw["align"] = False  # the parents as given: the gate's predictions are theirs to the bit
    kept_merges = {}
    for name, parents in (("same", digit_mlps), ("biased", biased_mlps)):
        accs = [model_accuracy(m, X, y) for m in parents]
        best = max(range(len(accs)), key=lambda i: (accs[i], -i))
        for seed in (0, 1, 2):
            kept, held = _fitness_and_held(len(y), 0.3, seed)
            plain = mega_deap.merge(parents, (X[kept], y[kept]), seed=seed, **{**kw, "gate": None})
            r = mega_deap.merge(parents, (X, y), seed=seed, gate_holdout=0.3, verbose=True, **kw)
            assert f"gate: p = {r.gate_p:.3g} on {len(held)} held-out examples" in capsys.readouterr().out
            assert model_accuracy(r.model, X, y) >= accs[best]
            runner = TorchAdapter(plain.model)
            right = correct_each(runner, [runner.genome(m) for m in (plain.model, *parents)], X, y)
            assert r.gate_p == pytest.approx(mcnemar_greater(right[0, held], right[1 + best, held])[2])
            if r.parent is None:  # the merge of the kept part, kept: it passed on the held part and holds
                assert torch.equal(TorchAdapter(r.model).genome(), runner.genome(plain.model))
                assert r.gate_p < 0.5 and int(right[0].sum()) >= int(right[1 + best].sum())
                assert r.fitness == plain.fitness
            else:
                assert r.parent == best
                assert torch.equal(TorchAdapter(r.model).genome(), runner.genome(parents[best]))
            kept_merges.setdefault(name, []).append(r.parent is None)
    assert not any(kept_merges["same"]) and any(kept_merges["biased"])  # both ways, as the docstring says


def test_gate_holdout_auto_is_the_default_fraction_where_a_gate_runs(biased_mlps, digits, monkeypatch):
    """ "auto" is DEFAULT_GATE_HOLDOUT where a gate runs and holdout holds nothing out; else 0."""
    val = digits["val"]
    kw = dict(popsize=6, ngen=2, seed=3, progress=False, device="cpu", align=False)

    def genome(r):
        return TorchAdapter(r.model).genome()

    whole = mega_deap.merge(biased_mlps, val, gate=0.5, gate_holdout=0.0, **kw)
    assert torch.equal(genome(mega_deap.merge(biased_mlps, val, gate=0.5, **kw)), genome(whole))
    monkeypatch.setattr(mega_deap.presets, "DEFAULT_GATE_HOLDOUT", 0.3)
    ungated = mega_deap.merge(biased_mlps, val, gate=None, **kw)  # no gate: nothing held out
    assert ungated.gate_p is None
    assert ungated.fitness == mega_deap.merge(biased_mlps, val, gate=None, gate_holdout=0.0, **kw).fitness
    explicit = mega_deap.merge(biased_mlps, val, gate=0.5, gate_holdout=0.3, **kw)
    auto = mega_deap.merge(biased_mlps, val, gate=0.5, **kw)
    assert torch.equal(genome(auto), genome(explicit)) and auto.gate_p == explicit.gate_p
    assert auto.gate_p != whole.gate_p  # the held-out test is another test
    # with holdout the hall of fame is chosen on the held-out part; auto holds nothing more out
    with_holdout = mega_deap.merge(biased_mlps, val, gate=0.5, holdout=0.2, **kw)
    monkeypatch.setattr(mega_deap.presets, "DEFAULT_GATE_HOLDOUT", 0.0)
    assert with_holdout.gate_p == mega_deap.merge(biased_mlps, val, gate=0.5, holdout=0.2, **kw).gate_p


def test_crossfit_test_pairs_each_halfs_merge_with_the_parent_chosen_on_that_half():
    """Halves a = 0..19 and b = 20..39. Parent 1 is the best on all 40 (30 right against 25), parent 0 the
    better on a, parent 1 on b. The merge searched on a is paired with parent 0 on b (9 wins, 2 losses), the
    merge searched on b with parent 1 on a (6 wins, 2 losses): p is McNemar's on 15 wins and 4 losses, where
    pairing both with parent 1 (the best overall, which neither search could know) would give another."""
    n = 40
    a, b = torch.arange(20), torch.arange(20, 40)
    p0 = _lookup([i < 25 for i in range(n)])
    p1 = _lookup([i >= 10 for i in range(n)])
    X, y = _data(n)
    runner = TorchAdapter(p0)
    parents = [runner.genome(p0), runner.genome(p1)]
    merged = runner.genome(_lookup([i < 36 for i in range(n)]))  # 36 right: it holds
    folds = [
        runner.genome(_lookup([22 <= i <= 33 for i in range(n)])),  # searched on a, judged on b
        runner.genome(_lookup([i <= 5 or 12 <= i <= 19 for i in range(n)])),  # searched on b, judged on a
    ]
    calls = []

    def fit(search, k):
        calls.append((search.tolist(), k))
        return folds[k]

    best, p, holds = crossfit_test(runner, merged, parents, X, y, (a, b), fit)
    assert (best, holds) == (1, True) and p == pytest.approx(_reference_p(15, 4))
    assert calls == [(a.tolist(), 0), (b.tolist(), 1)]
    right = correct_each(runner, [*folds, parents[1]], X, y)
    naive = mcnemar_greater(torch.cat([right[0, b], right[1, a]]), torch.cat([right[2, b], right[2, a]]))
    assert naive[:2] != (15, 4)  # against the best parent overall the counts differ
    # a merge equal to the best parent, or less accurate than it, is refused without running a search
    calls.clear()
    assert crossfit_test(runner, parents[1].clone(), parents, X, y, (a, b), fit) == (1, 1.0, True)
    worse = runner.genome(_lookup([i < 21 for i in range(n)]))
    assert crossfit_test(runner, worse, parents, X, y, (a, b), fit) == (1, 1.0, False) and calls == []
    # the gate: kept at a level above p, the best parent below it
    accuracy = get_metric("accuracy")
    assert 0.005 < _reference_p(15, 4) < 0.05
    for level, parent in ((0.005, 1), (0.05, None)):
        cross = _CrossFit((a, b), fit)
        got = _gated(runner, (merged, merged, 0.9), parents, X, y, (X, y), accuracy, level, None, cross)
        assert got[4] == parent and torch.equal(got[0], merged if parent is None else parents[1])
    with pytest.raises(SettingError, match="the second half must be a non-empty vector of indices into the 40"):
        crossfit_test(runner, merged, parents, X, y, (a, torch.tensor([39, 40])), fit)


@pytest.mark.parametrize("include_parents", [True, False])
def test_merge_crossfit_reruns_the_search_on_each_half_and_keeps_the_guarantee(
    digit_mlps, biased_mlps, digits, include_parents, capsys
):
    """gate_holdout="crossfit": the search reads every example (the merge is merge(gate=None)'s); its p is
    McNemar's on the wins and losses of merge(gate=None, seed=seed + 1 + k) run on each half of the seeded
    split, each against the parent best on its own half, on the other half; the result is never less
    accurate than the best parent on the whole set. Same-data parents give the parent back; class-biased ones
    the merge (at least once)."""
    X, y = digits["val"]
    kw = dict(popsize=8, ngen=3, progress=False, device="cpu", include_parents=include_parents, align=False)
    kept_merges = {}
    for name, parents in (("same", digit_mlps), ("biased", biased_mlps)):
        accs = [model_accuracy(m, X, y) for m in parents]
        best = max(range(len(accs)), key=lambda i: (accs[i], -i))
        for seed in (0, 1):
            plain = mega_deap.merge(parents, (X, y), seed=seed, gate=None, **kw)
            r = mega_deap.merge(parents, (X, y), seed=seed, gate=0.5, gate_holdout="crossfit", verbose=True, **kw)
            assert f"gate: p = {r.gate_p:.3g} cross-fitted on {len(y)} examples" in capsys.readouterr().out
            assert model_accuracy(r.model, X, y) >= accs[best]
            assert r.gate_p == pytest.approx(_crossfit_p(mega_deap.merge, plain, parents, best, X, y, seed, **kw))
            kept_merges.setdefault(name, []).append(_kept(r, plain, parents, best))
    assert not any(kept_merges["same"]) and any(kept_merges["biased"])


def _crossfit_p(method, plain, parents, best, X, y, seed, **kw):
    """The p of "crossfit"'s test of ``plain`` (``method(gate=None)``'s merge on all of ``(X, y)``), computed
    apart: 1 where it equals the best parent or is less accurate; else McNemar's on the wins and losses of
    ``method(gate=None, seed=seed + 1 + k)`` run on each half of the seeded split, each against the parent best
    on its own half, on the other half."""
    runner = TorchAdapter(plain.model)
    right = correct_each(runner, [runner.genome(m) for m in (plain.model, *parents)], X, y)
    if torch.equal(runner.genome(plain.model), runner.genome(parents[best])) or int(right[0].sum()) < int(
        right[1 + best].sum()
    ):
        return 1.0  # no rerun
    half_a, half_b = _fitness_and_held(len(y), 0.5, seed)  # the first search reads the kept part
    wins = losses = 0
    for k, (search, test) in enumerate(((half_a, half_b), (half_b, half_a))):
        fold = method(parents, (X[search], y[search]), seed=seed + 1 + k, gate=None, **kw)
        chosen = max(range(len(parents)), key=lambda j: (int(right[1 + j, search].sum()), -j))
        mine = correct_each(runner, [runner.genome(fold.model)], X[test], y[test])[0]
        w, l_, _ = mcnemar_greater(mine, right[1 + chosen, test])
        wins, losses = wins + w, losses + l_
    return _reference_p(wins, losses)


def _kept(r, plain, parents, best) -> bool:
    """Whether the gated run ``r`` kept its merge, which must then be ``plain`` (the same run without gate)
    with p below the tests' level 0.5; else ``r`` must be the best parent."""
    runner = TorchAdapter(plain.model)
    if r.parent is None:
        assert torch.equal(TorchAdapter(r.model).genome(), runner.genome(plain.model))
        assert r.gate_p < 0.5 and r.fitness == plain.fitness
    else:
        assert r.parent == best
        assert torch.equal(TorchAdapter(r.model).genome(), runner.genome(parents[best]))
    return r.parent is None


@pytest.mark.parametrize("share", [0.3, "crossfit"])
def test_cma_merge_gates_where_merge_does(biased_mlps, digit_mlps, digits, share, capsys):
    """cma_merge's gate_holdout is merge's: with a fraction, CMA-ES reads the kept part only (the run of
    cma_merge(gate=None) on it) and McNemar's test the held part, against the parent best on the whole set; with
    "crossfit", CMA-ES reads every example and the test the wins and losses of cma_merge(gate=None,
    seed=seed + 1 + k) run on each half, against the parent best on that half, on the other half. The result
    is never less accurate than the best parent on the whole set."""
    X, y = digits["val"]
    kw = dict(ngen=8, lambda_=10, progress=False, device="cpu", align=False)  # the parents' bits: no alignment
    kept_merges = {}
    for name, parents in (("same", digit_mlps), ("biased", biased_mlps)):
        accs = [model_accuracy(m, X, y) for m in parents]
        best = max(range(len(accs)), key=lambda i: (accs[i], -i))
        for seed in (0, 1):
            kept, held = _fitness_and_held(len(y), 0.3, seed)  # the fraction's split
            fit = (X, y) if share == "crossfit" else (X[kept], y[kept])
            plain = cma_merge(parents, fit, seed=seed, gate=None, **kw)
            r = cma_merge(parents, (X, y), seed=seed, gate=0.5, gate_holdout=share, verbose=True, **kw)
            on = f"cross-fitted on {len(y)} examples" if share == "crossfit" else f"on {len(held)} held-out examples"
            assert f"gate: p = {r.gate_p:.3g} {on}" in capsys.readouterr().out
            assert model_accuracy(r.model, X, y) >= accs[best]
            if share == "crossfit":
                assert r.gate_p == pytest.approx(_crossfit_p(cma_merge, plain, parents, best, X, y, seed, **kw))
            else:
                runner = TorchAdapter(plain.model)
                right = correct_each(runner, [runner.genome(m) for m in (plain.model, *parents)], X, y)
                assert r.gate_p == pytest.approx(mcnemar_greater(right[0, held], right[1 + best, held])[2])
            kept_merges.setdefault(name, []).append(_kept(r, plain, parents, best))
    assert any(kept_merges["biased"]) and not all(kept_merges["same"] + kept_merges["biased"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gate_holdout="half"), "gate_holdout must be 'auto', 'crossfit' or a fraction"),
        (dict(gate_holdout=0.3, gate=None), r"no gate runs \(gate=None\)"),
        (dict(gate_holdout=0.001), "gate_holdout=0.001 holds out 0 of 397 validation examples"),
    ],
)
def test_cma_merge_refuses_bad_gate_holdouts_before_any_work(kwargs, match, digit_mlps, digits, monkeypatch):
    monkeypatch.setattr(mega_deap.presets, "_build", lambda *a, **k: pytest.fail("work began"))
    with pytest.raises(SettingError, match=match):
        cma_merge(digit_mlps, digits["val"], progress=False, **kwargs)


def test_a_crossfit_run_interrupted_in_a_rerun_resumes_there(biased_mlps, digits, tmp_path, monkeypatch):
    """With a checkpoint, each of "crossfit"'s reruns writes its own beside it: a run stopped in the second
    rerun resumes in that rerun (the search and the first rerun are not run again) and gives the bits of a run
    never stopped."""
    import mega_deap.algorithms as algorithms

    kw = dict(popsize=8, ngen=3, seed=0, progress=False, device="cpu", align=False, gate=0.5, gate_holdout="crossfit")
    whole = mega_deap.merge(biased_mlps, digits["val"], **kw)
    assert whole.gate_p < 1.0  # the reruns ran
    ckpt = str(tmp_path / "run.ckpt")
    save, saved = algorithms.save_checkpoint, []

    def stopping(path, **state):  # records each save; stops the run once the second rerun saved generation 1
        saved.append((os.path.basename(path), state["gen"]))
        save(path, **state)
        if stop and saved[-1] == ("run.ckpt.fold1", 1):
            raise KeyboardInterrupt

    monkeypatch.setattr(algorithms, "save_checkpoint", stopping)
    stop = True
    with pytest.raises(KeyboardInterrupt):
        mega_deap.merge(biased_mlps, digits["val"], checkpoint=ckpt, **kw)
    assert [name for name, _ in saved] == ["run.ckpt"] * 4 + ["run.ckpt.fold0"] * 4 + ["run.ckpt.fold1"] * 2
    stop, saved[:] = False, []
    resumed = mega_deap.merge(biased_mlps, digits["val"], checkpoint=ckpt, **kw)
    assert saved == [("run.ckpt.fold1", 2), ("run.ckpt.fold1", 3)]
    assert torch.equal(resumed.genome, whole.genome) and resumed.gate_p == whole.gate_p
    assert resumed.parent == whole.parent and resumed.fitness == whole.fitness
