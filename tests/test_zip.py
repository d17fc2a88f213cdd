"""Zipping (ZipIt!) against independent references: the greedy pairing as a plain loop, the zipped weights
built unit by unit in float64, a model zipped with a permuted copy of itself, REPAIR's promised statistics
measured with hooks, and merge's use of it."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import mega_deap
from conftest import permuted_copy
from mega_deap.align import activation_matching, match_features, permutation_spec, repair_batchnorm, zip_models
from mega_deap.align import zip_states
from mega_deap.align.activations import unit_moments
from mega_deap.align.zipping import _greedy_pairs, _sorted_greedy
from mega_deap.experiments.heldout_study import LeNet, ResMLP
from mega_deap.experiments.models import MLP, SmallCNN
from mega_deap.experiments.report import weight_average


def _greedy_reference(corr):
    """Pairs by the plain rule: take the highest correlation among the units not yet paired, repeat."""
    c = np.array(corr, dtype=float)
    np.fill_diagonal(c, -np.inf)
    free, pairs = set(range(len(c))), []
    while free:
        best = max(((c[i, j], -i, -j) for i in free for j in free if i < j))
        i, j = -best[1], -best[2]
        pairs.append((i, j))
        free -= {i, j}
    return sorted(pairs)


@pytest.mark.parametrize("kind", ["distinct", "ties", "dead units", "all zero", "asymmetric"])
@pytest.mark.parametrize("seed", range(4))
def test_greedy_pairing_is_the_plain_rule(seed, kind):
    """The pairs, in the order chosen, of the plain rule (the best free pair, highest correlation first, ties:
    the lower indices; the upper triangle read), and of the sorted pass over all pairs; also where ties are
    everywhere (dead units: correlation 0), which sends the mutual-best rounds to the sorted pass."""
    rng = np.random.default_rng(seed)
    n = (12, 30, 64, 8)[seed]
    corr = np.corrcoef(rng.normal(size=(n + 10, n)).T)
    if kind == "ties":
        corr = np.round(corr, 1)
    elif kind == "dead units":
        dead = rng.random(n) < 0.5
        corr[dead], corr[:, dead] = 0.0, 0.0
    elif kind == "all zero":
        corr = np.zeros((n, n))
    elif kind == "asymmetric":
        corr = corr + np.tril(0.1 * rng.normal(size=(n, n)), -1)  # a lower triangle that is not the upper one
    pairs = _greedy_pairs(corr)
    assert sorted(pairs) == _greedy_reference(corr)
    assert pairs == _sorted_greedy(np.triu(corr, 1) + np.triu(corr, 1).T, np.arange(n))
    assert sorted(q for p in pairs for q in p) == list(range(n))  # every unit in exactly one pair


def _zip_mlp_by_hand(a, b, pairs):
    """A one-hidden-layer MLP (fc1, fc2) zipped unit by unit in float64: merged unit k is the mean of its
    pair's rows; each output row reads, from each model, the merged unit its original unit went to; the
    classifier is the two models' mean."""
    d = a.fc1.weight.shape[0]
    models = (a, b)
    W1 = torch.zeros_like(a.fc1.weight, dtype=torch.float64)
    b1 = torch.zeros(d, dtype=torch.float64)
    W2 = torch.zeros_like(a.fc2.weight, dtype=torch.float64)
    for k, pair in enumerate(pairs):
        for q in pair:
            m, u = models[q // d], q % d
            W1[k] += m.fc1.weight[u].double() / 2
            b1[k] += m.fc1.bias[u].double() / 2
            W2[:, k] += m.fc2.weight[:, u].double() / 2
    b2 = (a.fc2.bias.double() + b.fc2.bias.double()) / 2
    return W1, b1, W2, b2


class _OneHidden(nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, d), nn.Linear(d, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_zipped_weights_match_a_unit_by_unit_construction():
    torch.manual_seed(0)
    a, b = _OneHidden(), _OneHidden()
    spec = permutation_spec(a)
    (g,) = spec.sizes
    # pairs across and within the models: (a0, b3), (a1, a4), (b0, b1), (a2, b5), (a3, b2), (a5, b4)
    pairs = {g: [(0, 9), (1, 4), (6, 7), (2, 11), (3, 8), (5, 10)]}
    z = zip_states(spec, [a.state_dict(), b.state_dict()], pairs)
    W1, b1, W2, b2 = _zip_mlp_by_hand(a, b, pairs[g])
    torch.testing.assert_close(z["fc1.weight"].double(), W1)
    torch.testing.assert_close(z["fc1.bias"].double(), b1)
    torch.testing.assert_close(z["fc2.weight"].double(), W2)
    torch.testing.assert_close(z["fc2.bias"].double(), b2)


@pytest.mark.parametrize("make", [lambda: MLP(64, 10, hidden=(32, 16)), lambda: LeNet(1, 10, 8)], ids=["mlp", "lenet"])
def test_pairing_each_unit_with_its_namesake_is_the_plain_average(make):
    """Pairs (k, d + k) make the merge and unmerge matrices the plain average's (a flatten included)."""
    torch.manual_seed(0)
    a, b = make(), make()
    spec = permutation_spec(a)
    pairs = {g: [(k, d + k) for k in range(d)] for g, d in spec.sizes.items()}
    z = zip_states(spec, [a.state_dict(), b.state_dict()], pairs)
    avg = weight_average([a, b]).state_dict()
    for k in avg:
        torch.testing.assert_close(z[k], avg[k], msg=k)


MODELS = {
    "mlp": (lambda: MLP(64, 10, hidden=(32, 16)), (64,)),
    "lenet (flatten)": (lambda: LeNet(1, 10, 8), (1, 8, 8)),
    "residual mlp": (lambda: ResMLP(64, 10, width=24), (64,)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("repair", [False, True])
def test_a_model_zipped_with_a_permuted_copy_of_itself_is_itself(name, repair):
    """Each unit's best partner is its own copy in the other model (correlation 1): the zip pairs them, and
    the merged network computes what the model does."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    a = make().eval()
    b = permuted_copy(a, seed=1)
    X = torch.randn(300, *shape, generator=torch.Generator().manual_seed(2))
    z = zip_models([a, b], X, repair=repair)
    with torch.no_grad():
        torch.testing.assert_close(z(X), a(X), rtol=1e-4, atol=1e-5)
    spec = permutation_spec(a)
    spread = unit_moments(spec, [a, b], X, lambda rows: (torch.cat(rows, 1).std(0) > 0,))  # live units
    for g, pairs in match_features(spec, [a, b], X).items():
        d = spec.sizes[g]
        live = spread[g][0]
        across = [i < d <= j for i, j in pairs]
        assert all(c or not (live[i] or live[j]) for c, (i, j) in zip(across, pairs))  # dead units pair anyhow
        assert sum(across) >= d // 2
        # merged unit k holds the reference's unit k
        assert all(pairs[i][0] == i for i in range(d) if live[i])


def _pre_activation_stats(model, names, X):
    modules, out, hooks = dict(model.named_modules()), {}, []
    for n in names:
        hooks.append(modules[n].register_forward_hook(lambda _, __, o, n=n: out.__setitem__(n, o.double())))
    with torch.no_grad():
        model(X)
    for h in hooks:
        h.remove()
    return {n: (o.mean(0), o.std(0, unbiased=False)) for n, o in out.items()}


def test_repair_gives_each_zipped_unit_its_pairs_mean_statistics(digit_mlps, digits):
    """Measured with hooks in float64 on the same inputs: the zipped model's hidden units have the mean of
    their pair members' pre-activation means and spreads (as the parents compute them)."""
    a, b = digit_mlps
    X = digits["val"][0]
    z = zip_models([a, b], X)
    spec = permutation_spec(a)
    pairs = match_features(spec, [a, b], X)
    names = ["0"]  # the hidden layer of conftest's nn.Sequential MLPs
    stats = [_pre_activation_stats(m, names, X) for m in (a, b)]
    got = _pre_activation_stats(z, names, X)
    (g,) = spec.sizes
    d = spec.sizes[g]
    for name in names:
        want_mean = torch.stack([sum(stats[q // d][name][0][q % d] for q in p) / 2 for p in pairs[g]])
        want_sd = torch.stack([sum(stats[q // d][name][1][q % d] for q in p) / 2 for p in pairs[g]])
        torch.testing.assert_close(got[name][0], want_mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[name][1], want_sd, rtol=1e-4, atol=1e-4)
    unrepaired = _pre_activation_stats(zip_models([a, b], X, repair=False), names, X)
    assert not torch.allclose(unrepaired[names[0]][1], want_sd, rtol=1e-3, atol=1e-3)  # REPAIR did something


def test_batchnorm_models_get_their_statistics_recomputed():
    torch.manual_seed(0)
    a, b = SmallCNN(1, 10).eval(), SmallCNN(1, 10).eval()
    X = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    z = zip_models([a, b], X)
    reference = repair_batchnorm(zip_models([a, b], X, repair=False), X)
    for (k, v), w in zip(z.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)
    assert not torch.equal(z.bn1.running_mean, zip_models([a, b], X, repair=False).bn1.running_mean)


def test_zipping_class_biased_networks_beats_their_permuted_average(digits):
    """Parents that each saw mostly half the classes: the zip (REPAIRed) keeps more accuracy than the
    activation-matched average, the merge that pairs every unit across the models."""
    from conftest import train_mlp
    from mega_deap.experiments.align_study import biased_parts
    from mega_deap.experiments.train import model_accuracy

    X, y = digits["train"]
    parts = biased_parts(y, favoured=5, seed=0)
    parents = [train_mlp((X[i], y[i]), seed, epochs=30) for seed, i in enumerate(parts)]
    Xv, yv = digits["val"]
    a, b = activation_matching(parents, Xv)
    permuted = model_accuracy(weight_average([a, b]), Xv, yv)
    zipped = model_accuracy(zip_models(parents, Xv), Xv, yv)
    assert zipped > permuted + 0.02, (zipped, permuted)


def test_zip_models_refuses_what_it_cannot_zip():
    torch.manual_seed(0)
    a = _OneHidden()
    X = torch.randn(20, 5)
    with pytest.raises(ValueError, match="zips two models, got 3"):
        zip_models([a, copy.deepcopy(a), copy.deepcopy(a)], X)
    with pytest.raises(ValueError, match="at least two models"):
        zip_models([a], X)
    with pytest.raises(ValueError, match="fc1.weight"):
        zip_models([a, _OneHidden(d=7)], X)
    with pytest.raises(ValueError, match="calibration"):
        zip_models([a, copy.deepcopy(a)], torch.randn(1, 5))
    with pytest.raises(TypeError, match="calibration must be"):
        zip_models([a, copy.deepcopy(a)], "inputs")


def test_merge_seeds_the_zip_and_keeps_the_guarantee(digit_mlps, digits):
    """align="zip": the first population holds the parents aligned by activations, their average, the
    REPAIRed average and the zip (computed here independently); the result is never below the better
    parent on validation."""
    X, y = digits["val"]
    kw = dict(seed=0, progress=False, device="cpu", gate=None)
    first = mega_deap.merge(digit_mlps, (X, y), popsize=6, ngen=0, align="zip", **kw)
    act = mega_deap.merge(digit_mlps, (X, y), popsize=6, ngen=0, align="activations", **kw)
    ad = first.adapter
    for i in range(4):
        assert torch.equal(first.population[i].genome, act.population[i].genome)
    torch.testing.assert_close(first.population[4].genome, ad.genome(zip_models(list(digit_mlps), X)))
    assert first.align == "zip"
    r = mega_deap.merge(digit_mlps, (X, y), popsize=8, ngen=3, align="zip", **kw)
    from mega_deap.experiments.train import model_accuracy

    assert model_accuracy(r.model, X, y) >= max(model_accuracy(p, X, y) for p in digit_mlps)


def test_merge_refuses_zip_where_it_cannot_zip_before_any_work(digit_mlps, digits):
    three = [*digit_mlps, copy.deepcopy(digit_mlps[0])]
    val = digits["val"]
    with pytest.raises(ValueError, match="zips two models, got 3"):
        mega_deap.merge(three, val, align="zip")
    with pytest.raises(ValueError, match="seeds a weight genome"):
        mega_deap.merge(digit_mlps, val, align="zip", genome="coefficients")
    with pytest.raises(ValueError, match="one objective"):
        mega_deap.merge(digit_mlps, val, align="zip", objectives=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], popsize=8)
    with pytest.raises(ValueError, match="cannot hold the 2 parents and their average and its REPAIRed copy and"):
        mega_deap.merge(digit_mlps, val, align="zip", popsize=4)
    with pytest.raises(ValueError, match="include_parents=False holds blends only"):
        mega_deap.merge(digit_mlps, val, align="zip", include_parents=False)
    with pytest.raises(ValueError, match="align must be"):
        mega_deap.cma_merge(digit_mlps, val, align="zip")


def test_auto_zips_only_into_a_first_population_that_holds_the_parents(digit_mlps, digits):
    """include_parents=False (the paper's blends only): "auto" aligns by activations and says so, with the
    same bits as align="activations"; align_parents("zip") aligns as "activations" does."""
    from mega_deap.align import align_parents

    kw = dict(popsize=6, ngen=1, seed=0, progress=False, device="cpu", gate=None, include_parents=False)
    auto = mega_deap.merge(digit_mlps, digits["val"], **kw)
    assert auto.align == "activations"
    assert torch.equal(auto.genome, mega_deap.merge(digit_mlps, digits["val"], align="activations", **kw).genome)
    X = digits["val"][0]
    by_zip, by_activations = (align_parents(digit_mlps, m, X) for m in ("zip", "activations"))
    assert all(
        torch.equal(p, q) for p, q in zip(by_zip[1].state_dict().values(), by_activations[1].state_dict().values())
    )


def test_verbose_says_the_zip_was_seeded(digit_mlps, digits, capsys):
    kw = dict(popsize=6, ngen=0, seed=0, progress=False, device="cpu", gate=None, verbose=True)
    mega_deap.merge(digit_mlps, digits["val"], **kw)  # the default: align="auto"
    assert capsys.readouterr().out.splitlines()[0] == "align: activations matching, the zip seeded"
