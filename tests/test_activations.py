"""Activation matching and REPAIR, against independent references: a known permutation recovered, the
statistics REPAIR promises measured with forward hooks in float64, and merge's use of both."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import mega_deap
from conftest import permuted_copy
from mega_deap.adapters import TorchAdapter
from mega_deap.align import (
    activation_matching,
    repair_interpolation,
    weight_matching,
)
from mega_deap.experiments.heldout_study import PlainCNN
from mega_deap.experiments.models import MLP, SmallCNN, resnet_cifar
from mega_deap.experiments.report import weight_average


MODELS = {
    "mlp": (lambda: MLP(64, 10, hidden=(32, 16)), (64,)),
    "plain cnn": (lambda: PlainCNN(1, 10), (1, 8, 8)),
    "cnn with batchnorm": (lambda: SmallCNN(1, 10), (1, 8, 8)),
    "resnet-8 (padded shortcuts)": (lambda: resnet_cifar(8, 10, 3), (3, 16, 16)),
}


def _randomised(model, seed=0):
    """Random BatchNorm statistics, so that units differ in what they compute."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_activation_matching_recovers_a_known_permutation(name):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    a = _randomised(make())
    b = permuted_copy(a, seed=1)
    X = torch.randn(256, *shape, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(TorchAdapter(a).genome(), TorchAdapter(b).genome())
    ref, aligned = activation_matching([a, b], X)
    with torch.no_grad():
        torch.testing.assert_close(aligned(X), b(X), rtol=1e-4, atol=1e-5)  # the same function as before
    for (k, va), vb in zip(a.state_dict().items(), aligned.state_dict().values()):
        torch.testing.assert_close(vb, va, msg=k)  # and the units back where the reference has them
    assert torch.equal(TorchAdapter(ref).genome(), TorchAdapter(a).genome())


def test_activation_matching_aligns_independent_networks_better_than_none(digits):
    """On two independently trained MLPs the matched average keeps more accuracy than the naive one."""
    from conftest import train_mlp
    from mega_deap.experiments import model_accuracy

    models = [train_mlp(digits["train"], s, hidden=64) for s in (1, 2)]
    X, y = digits["val"]
    aligned = activation_matching(models, digits["train"])
    assert model_accuracy(weight_average(aligned), X, y) > model_accuracy(weight_average(models), X, y) + 0.02


def test_activation_matching_refuses_bad_input(digit_mlps, digits):
    with pytest.raises(ValueError, match="at least two models"):
        activation_matching(digit_mlps[:1], digits["train"])
    with pytest.raises(ValueError, match="reference"):
        activation_matching(digit_mlps, digits["train"], reference=2)
    with pytest.raises(TypeError, match="calibration"):
        activation_matching(digit_mlps, "inputs")
    with pytest.raises(ValueError, match="at least 2 inputs"):
        activation_matching(digit_mlps, digits["train"][0][:1])


def _preactivation_stats(model, X):
    """(mean, sd) of each Linear/Conv output unit, float64, measured with plain forward hooks."""
    stats, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):

            def save(_, __, out, name=name):
                rows = out.detach().double().movedim(1, -1).reshape(-1, out.shape[1])
                stats[name] = (rows.mean(0), rows.std(0, unbiased=False))

            hooks.append(m.register_forward_hook(save))
    with torch.no_grad():
        model(X)
    for h in hooks:
        h.remove()
    return stats


@pytest.mark.parametrize("name", ["mlp", "plain cnn"])
def test_repair_sets_each_hidden_unit_to_the_interpolated_statistics(name):
    make, shape = MODELS[name]
    torch.manual_seed(3)
    parents = [make().eval(), make().eval()]
    X = torch.randn(300, *shape, generator=torch.Generator().manual_seed(4))
    w = (0.3, 0.7)
    merged = make().eval()
    merged.load_state_dict(
        {k: w[0] * a + w[1] * b for (k, a), b in zip(parents[0].state_dict().items(), parents[1].state_dict().values())}
    )
    before = _preactivation_stats(merged, X)
    repair_interpolation(merged, parents, X, weights=w, batch_size=128)
    got = _preactivation_stats(merged, X)
    want = [_preactivation_stats(p, X) for p in parents]
    hidden = [n for n in got if n not in ("net.4", "fc")]  # the output layer is not a hidden layer
    assert hidden
    for n in hidden:
        mean = w[0] * want[0][n][0] + w[1] * want[1][n][0]
        sd = w[0] * want[0][n][1] + w[1] * want[1][n][1]
        torch.testing.assert_close(got[n][0], mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[n][1], sd, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(before[n][1], sd, rtol=1e-2)  # it had something to repair
    out_layer = "net.4" if name == "mlp" else "fc"
    assert not torch.allclose(
        got[out_layer][1], w[0] * want[0][out_layer][1] + w[1] * want[1][out_layer][1], rtol=1e-3
    )  # outputs are never forced


def test_repair_of_a_parent_interpolated_with_itself_changes_nothing():
    make, shape = MODELS["mlp"]
    torch.manual_seed(5)
    p = make().eval()
    m = copy.deepcopy(p)
    repair_interpolation(m, [p, p], torch.randn(200, *shape))
    torch.testing.assert_close(TorchAdapter(m).genome(), TorchAdapter(p).genome(), rtol=1e-5, atol=1e-6)


def test_merge_aligns_by_activations_and_seeds_the_repaired_average(digit_mlps, digits):
    """align="activations" matches on the validation inputs (no calibration given); the first population
    holds the parents, their average and the REPAIRed average (no BatchNorm here). align=True is the
    default matching, activation matching (round 7); align="weights" is weight matching."""
    X, y = digits["val"]
    r = mega_deap.merge(
        digit_mlps, (X, y), popsize=6, ngen=0, seed=0, progress=False, device="cpu", align="activations"
    )
    a, b = activation_matching(list(digit_mlps), X)
    ad = r.adapter
    assert torch.equal(r.population[1].genome, ad.genome(b))
    average = (ad.genome(a) + ad.genome(b)) / 2
    assert torch.equal(r.population[2].genome, average)
    repaired = repair_interpolation(weight_average([a, b]), [a, b], X)
    torch.testing.assert_close(r.population[3].genome, ad.genome(repaired))
    kw = dict(popsize=6, ngen=0, seed=0, progress=False, device="cpu")
    t = mega_deap.merge(digit_mlps, (X, y), align=True, **kw)  # the default matching
    assert t.align == "activations" and torch.equal(t.population[1].genome, r.population[1].genome)
    w = mega_deap.merge(digit_mlps, (X, y), align="weights", **kw)
    wa, wb = weight_matching(list(digit_mlps))
    assert torch.equal(w.population[1].genome, ad.genome(wb))
    assert not torch.equal(w.population[1].genome, r.population[1].genome)


def test_merge_refuses_an_unknown_matching_and_unused_calibration(digit_mlps, digits):
    with pytest.raises(ValueError, match="align must be True, False or one of"):
        mega_deap.merge(digit_mlps, digits["val"], align="correlation")
    with pytest.raises(ValueError, match="calibration inputs were given"):
        mega_deap.merge(digit_mlps, digits["val"], calibration=digits["train"][0], align=False)
    with pytest.raises(ValueError, match="align must be"):
        mega_deap.cma_merge(digit_mlps, digits["val"], align="yes")
    # with align, calibration inputs serve the matching and REPAIR: accepted
    r = mega_deap.merge(
        digit_mlps,
        digits["val"],
        popsize=6,
        ngen=0,
        seed=0,
        progress=False,
        device="cpu",
        align="activations",
        calibration=digits["train"][0][:200],
    )
    a, b = activation_matching(list(digit_mlps), digits["train"][0][:200])
    assert torch.equal(r.population[1].genome, r.adapter.genome(b))
    assert np.isfinite(r.fitness)
