"""Align, then evolve: weight matching from the model's graph, BatchNorm repair, coefficient genomes."""

import math
import copy

import pytest
import torch
from torch import nn

from mega_deap.align import (
    BatchNormRepair,
    activation_matching,
    CoefficientAdapter,
    cma_merge,
    permutation_spec,
    repair_batchnorm,
    weight_matching,
)
from mega_deap.experiments.models import MLP, CifarResNet, SmallCNN

from conftest import SmallCNN as TinyCNN, permuted_copy


class FlattenCNN(nn.Module):
    """Conv, BN, pooling, then nn.Flatten into a Linear: each channel covers a block of its inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(6 * 16, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc2(torch.relu(self.fc1(self.flat(x))))


def _randomised(model, seed=0):
    """``model`` in eval mode with random BatchNorm affine parameters and statistics (so that a wrong
    permutation of any of them shows in the outputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


CASES = [
    ("mlp", lambda: MLP(64, 10, hidden=(32, 16)), (5, 64)),
    ("smallcnn", lambda: SmallCNN(1, 10), (5, 1, 8, 8)),
    ("flatten-cnn", FlattenCNN, (4, 1, 8, 8)),
    ("resnet8", lambda: CifarResNet(8), (3, 3, 32, 32)),
    ("resnet20", lambda: CifarResNet(20), (2, 3, 32, 32)),
]


@pytest.mark.parametrize("name,factory,shape", CASES, ids=[c[0] for c in CASES])
def test_permutations_preserve_the_function_and_matching_recovers_the_identity(name, factory, shape):
    torch.manual_seed(0)
    model = _randomised(factory())
    x = torch.randn(*shape)
    other = permuted_copy(model, seed=1)
    changed = [k for k in model.state_dict() if not torch.equal(model.state_dict()[k], other.state_dict()[k])]
    assert changed, "the random permutation moved nothing"
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=1e-4, atol=1e-5)
    ref, aligned = weight_matching([model, other])
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k  # the identity is recovered exactly
        assert torch.equal(ref.state_dict()[k], v), k  # the reference comes back unchanged


def test_residual_streams_share_one_permutation_and_padded_channels_get_their_own():
    spec = permutation_spec(CifarResNet(8))
    stream1 = spec.axes["bn.weight"][0]
    assert len(stream1) == 1
    g = stream1[0].group
    # every block of stage 1 writes into the same stream, and stage 2's stream holds it in the middle
    assert spec.axes["blocks.0.bn2.weight"][0] == stream1
    stage2 = spec.axes["blocks.1.bn2.weight"][0]
    assert [s.group for s in stage2][1] == g and [spec.sizes[s.group] for s in stage2] == [8, 16, 8]
    assert [s.start for s in stage2] == [0, 8, 24]
    assert "fc.bias" not in spec.axes  # outputs are never permuted


def test_k_parents_all_align_to_the_reference():
    torch.manual_seed(0)
    model = _randomised(SmallCNN(1, 10))
    others = [permuted_copy(model, seed=s) for s in (1, 2, 3)]
    out = weight_matching([others[0], model, others[1], others[2]], reference=1)
    assert len(out) == 4
    for m in out:
        for k, v in model.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k
    assert all(a is not b for a, b in zip(out, [others[0], model, others[1], others[2]]))


def test_matching_independent_nets_keeps_their_function_and_brings_them_closer(digit_mlps, digits):
    a, b = digit_mlps
    X = digits["val"][0]
    _, b2 = weight_matching([a, b])
    with torch.no_grad():
        torch.testing.assert_close(b2(X), b(X), rtol=1e-4, atol=1e-5)

    def dist(m1, m2):
        return sum(float((p - q).detach().pow(2).sum()) for p, q in zip(m1.parameters(), m2.parameters()))

    assert dist(a, b2) < 0.8 * dist(a, b)


def test_aligned_average_beats_the_naive_average_on_real_data(digit_mlps, digits):
    from mega_deap.experiments import model_accuracy, weight_average

    a, b = digit_mlps
    naive = model_accuracy(weight_average([a, b]), *digits["test"])
    aligned = model_accuracy(weight_average(weight_matching([a, b])), *digits["test"])
    assert aligned > naive + 0.02, (naive, aligned)


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ("sort", "sort"),
        ("grouped", "groups=2"),
        ("transpose", "transpose"),
    ],
)
def test_an_unsupported_graph_is_refused_naming_the_node(bad, fragment):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.conv0 = nn.Conv2d(4, 8, 1)
            self.conv = nn.Conv2d(8, 8, 1, groups=2)
            self.fc2 = nn.Linear(8, 2)

        def forward(self, x):
            if bad == "grouped":
                return self.fc2(self.conv(self.conv0(x.view(-1, 4, 1, 1))).flatten(1))
            h = self.fc1(x)
            h = torch.sort(h, dim=1).values if bad == "sort" else h.transpose(0, 1).transpose(0, 1)
            return self.fc2(h)

    with pytest.raises(ValueError, match=fragment):
        weight_matching([Bad(), Bad()])


def test_weight_matching_checks_its_arguments():
    with pytest.raises(ValueError, match="at least two"):
        weight_matching([MLP(4, 2)])
    with pytest.raises(ValueError, match="reference"):
        weight_matching([MLP(4, 2), MLP(4, 2)], reference=2)
    with pytest.raises(ValueError, match="model 1: .*differs from the template"):
        weight_matching([MLP(4, 2), MLP(4, 2, hidden=(8,))])
    with pytest.raises(TypeError, match="model 0"):
        weight_matching(["a", MLP(4, 2)])


# -- BatchNorm repair -----------------------------------------------------------------


def test_repair_batchnorm_sets_the_statistics_of_the_calibration_inputs():
    torch.manual_seed(0)
    model = _randomised(TinyCNN())
    model.bn1.momentum = 0.3
    X = torch.randn(96, 1, 8, 8)
    repair_batchnorm(model, X, batch_size=32)
    assert not model.training and model.bn1.momentum == 0.3  # mode and momentum restored
    with torch.no_grad():  # reference: float64, batch by batch, averaged (PyTorch's cumulative average)
        pre = model.conv1(X).double()
        means = torch.stack([pre[i : i + 32].mean((0, 2, 3)) for i in range(0, 96, 32)])
        vars_ = torch.stack([pre[i : i + 32].var((0, 2, 3), unbiased=True) for i in range(0, 96, 32)])
    torch.testing.assert_close(model.bn1.running_mean.double(), means.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.running_var.double(), vars_.mean(0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no BatchNorm"):
        repair_batchnorm(MLP(4, 2), torch.randn(8, 4))


def test_batchnorm_repair_inside_the_fitness_writes_into_the_individual(classes):
    from mega_deap import Evaluator, TensorPopulation
    from mega_deap.adapters import TorchAdapter
    from mega_deap.experiments import model_accuracy

    torch.manual_seed(0)
    model = _randomised(TinyCNN())
    adapter = TorchAdapter(model)
    calib = torch.randn(64, 1, 8, 8)
    X, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    ev = Evaluator(adapter, X, y, prepare=BatchNormRepair(adapter, calib))
    pop = TensorPopulation(2, adapter.dim)
    ind = pop.individuals(classes["tensor"])[0]
    ind.genome.copy_(adapter.genome())
    before = ind.genome.clone()
    (score,) = ev.scores([ind])
    assert not torch.equal(ind.genome, before)  # the statistics in the genome were rewritten
    reference = repair_batchnorm(adapter.to_model(before), calib)
    torch.testing.assert_close(ind.genome, TorchAdapter(reference).genome())
    assert score == pytest.approx(model_accuracy(reference, X, y))
    assert "prepare" in ev.fingerprint()
    with pytest.raises(ValueError, match="no BatchNorm"):
        BatchNormRepair(TorchAdapter(MLP(4, 2)), torch.randn(8, 4))


# -- coefficient genomes -----------------------------------------------------------------


def test_coefficient_genomes_decode_like_a_plain_per_tensor_loop(digit_mlps):
    adapter, genomes = CoefficientAdapter.from_parents(list(digit_mlps), device="cpu")
    inner = adapter.inner
    assert adapter.dim == len(inner.layout) * 2 == genomes.shape[1]
    parents = inner.genomes(list(digit_mlps))
    for j in range(2):  # one-hot genomes are the parents, exactly
        assert torch.equal(adapter.decode(genomes[j]), parents[j])
        torch.testing.assert_close(adapter.genome(digit_mlps[j]), genomes[j], atol=1e-5, rtol=0)
    c = torch.randn(adapter.dim, generator=torch.Generator().manual_seed(0))
    ref = []
    for g, e in enumerate(inner.layout):  # float64 reference, tensor by tensor
        a, b = (p[e.offset : e.offset + e.numel].double() for p in parents)
        ref.append(c[2 * g].double() * a + c[2 * g + 1].double() * b)
    torch.testing.assert_close(adapter.decode(c).double(), torch.cat(ref), rtol=1e-5, atol=1e-6)


def test_layer_granularity_shares_coefficients_within_a_module():
    torch.manual_seed(0)
    models = [_randomised(TinyCNN(), s) for s in (0, 1)]
    adapter, _ = CoefficientAdapter.from_parents(models, device="cpu", granularity="layer")
    assert [name for name, _ in adapter.groups] == ["conv1", "bn1", "conv2", "bn2", "fc"]
    assert dict(adapter.groups)["bn1"] == ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var")


def test_a_coefficient_merge_is_the_same_toolbox_and_its_model_scores_its_fitness(digit_mlps, digits):
    import mega_deap
    from mega_deap.experiments import model_accuracy

    r = mega_deap.merge(
        digit_mlps,
        digits["val"],
        genome="coefficients",
        popsize=8,
        ngen=3,
        seed=0,
        progress=False,
        device="cpu",
        metric="accuracy",
    )
    assert isinstance(r.adapter, CoefficientAdapter)
    assert r.genome.shape == (r.adapter.dim,) and r.adapter.dim == 8
    assert r.fitness == pytest.approx(model_accuracy(r.model, *digits["val"]))
    assert r.toolbox.vary.func is mega_deap.varMeGABatched  # the same toolbox: batched breeding, our operators
    pop = r.toolbox.clone.func.__self__  # the TensorPopulation: (2N + 2) x (G * k) numbers, never x D
    assert pop.rows.shape == (2 * 8 + 2, 8) and r.adapter.inner.dim == 2410
    again = mega_deap.merge(
        digit_mlps,
        digits["val"],
        genome="coefficients",
        popsize=8,
        ngen=3,
        seed=0,
        progress=False,
        device="cpu",
        metric="accuracy",
    )
    assert torch.equal(again.genome, r.genome)


def test_cma_es_over_coefficients_runs_deaps_strategy_reproducibly(digit_mlps, digits):
    from mega_deap.experiments import model_accuracy

    a = cma_merge(digit_mlps, digits["val"], ngen=4, lambda_=6, seed=3, device="cpu", metric="accuracy")
    b = cma_merge(digit_mlps, digits["val"], ngen=4, lambda_=6, seed=3, device="cpu", metric="accuracy")
    assert torch.equal(a.genome, b.genome) and len(a.logbook) == 4
    assert sum(r["nevals"] for r in a.logbook) == 24
    assert a.fitness == pytest.approx(model_accuracy(a.model, *digits["val"]))
    # the hall of fame holds the best ever, the parents and their average (scored first) included
    assert a.fitness >= max(r["max"] for r in a.logbook)
    assert a.fitness >= max(model_accuracy(m, *digits["val"]) for m in digit_mlps)
    c = cma_merge(
        digit_mlps,
        digits["val"],
        ngen=4,
        lambda_=6,
        seed=3,
        device="cpu",
        metric="accuracy",
        include_parents=False,
        gate=None,  # the search's own best (the gate would bring a parent back)
    )
    assert c.fitness == max(r["max"] for r in c.logbook)


# -- the merge: parents in the initial population, selection split ------------------------


def _destructive(individual):
    individual.genome.add_(torch.randn_like(individual.genome) * 10)
    return (individual,)


def _accuracy(model, X, y):
    """Validation accuracy, computed independently."""
    with torch.no_grad():
        return int((model(X).argmax(1) == y).sum()) / len(y)


def _accuracy_ll(model, X, y):
    """The default fitness, computed independently: (examples right + exp(mean log-likelihood)) / n."""
    with torch.no_grad():
        logits = model(X).double()
        loglik = float(-nn.functional.cross_entropy(logits, y))
        return (int((logits.argmax(1) == y).sum()) + math.exp(loglik)) / len(y)


def test_with_parents_in_the_population_the_merge_is_never_worse_than_the_best_parent(digit_mlps, digits):
    import mega_deap

    best_parent = max(_accuracy(m, *digits["val"]) for m in digit_mlps)
    kw = dict(popsize=6, ngen=0, seed=0, progress=False, device="cpu", align=False)
    r = mega_deap.merge(digit_mlps, digits["val"], **kw)
    first = r.population  # generation 0: rows 0 and 1 are the parents
    assert any(torch.equal(ind.genome, r.adapter.genome(digit_mlps[0])) for ind in first)
    assert r.fitness >= best_parent - 1e-9
    assert r.fitness == _accuracy(r.model, *digits["val"])  # the default fitness, computed independently
    lex = mega_deap.merge(digit_mlps, digits["val"], metric="accuracy_ll", **kw)
    assert lex.fitness == pytest.approx(_accuracy_ll(lex.model, *digits["val"]), rel=1e-9)
    paper = mega_deap.merge(digit_mlps, digits["val"], include_parents=False, **kw)
    assert not any(torch.equal(ind.genome, paper.adapter.genome(m)) for ind in paper.population for m in digit_mlps)
    # the rows after the parents are the paper's blends, drawn identically
    assert all(torch.equal(x.genome, y.genome) for x, y in zip(r.population[2:], paper.population[2:]))
    aligned = mega_deap.merge(
        digit_mlps, digits["val"], popsize=6, ngen=0, seed=0, progress=False, device="cpu", align="weights"
    )
    a, b = weight_matching(list(digit_mlps))
    average = (aligned.adapter.genome(a) + aligned.adapter.genome(b)) / 2
    assert torch.equal(aligned.population[2].genome, average)


def test_selection_split_chooses_among_the_hall_of_fame_on_held_out_data(digit_mlps, digits):
    import mega_deap

    X, y = digits["val"]
    m = round(0.5 * len(y))
    chosen = []
    for seed in range(4):
        split = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))  # merge's held-out split
        held = (X[split[:m]], y[split[:m]])
        r = mega_deap.merge(
            digit_mlps,
            (X, y),
            popsize=8,
            ngen=3,
            seed=seed,
            progress=False,
            device="cpu",
            holdout=0.5,
            hof_size=5,
            metric="accuracy_ll",  # a fitness fine enough to order the hall of fame without ties
            gate=None,  # the hall of fame's choice itself (the gate may return a parent after it)
        )
        assert len(r.halloffame) == 5
        assert len(r.toolbox.evaluate.y) == len(y) - m  # the held-out half never feeds the fitness
        scores = [_accuracy_ll(r.adapter.to_model(h), *held) for h in r.halloffame]
        best = max(range(5), key=lambda i: scores[i])
        assert torch.equal(r.genome, r.halloffame[best].genome), seed
        assert r.fitness == r.halloffame[best].fitness.values[0]
        chosen.append(best)
    assert any(b != 0 for b in chosen), chosen  # the held-out choice is not just the fitness's best
    with pytest.raises(ValueError, match="holdout"):
        mega_deap.merge(digit_mlps, (X, y), holdout=1.0)


class _Branchy(nn.Module):
    """A hidden layer behind data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.sum() > 0:
            h = h * 1.0
        return self.b(h)


def test_merge_aligns_by_activations_and_zips_by_default_where_it_can(digit_mlps, digits):
    """align="auto" (the default) is align="zip" wherever the merge can align two parents and has room: the
    same bits; with no room for the zip, or more than two parents, align="activations"."""
    import mega_deap

    kw = dict(popsize=6, ngen=2, seed=0, progress=False, device="cpu", gate=None)
    auto = mega_deap.merge(digit_mlps, digits["val"], **kw)
    explicit = mega_deap.merge(digit_mlps, digits["val"], align="zip", **kw)
    assert auto.align == explicit.align == "zip"
    assert torch.equal(auto.genome, explicit.genome) and auto.fitness == explicit.fitness
    # its first population holds the parents matched on the validation inputs (computed here independently)
    first = mega_deap.merge(digit_mlps, digits["val"], **{**kw, "ngen": 0})
    _, b = activation_matching(list(digit_mlps), digits["val"][0])
    assert torch.equal(first.population[1].genome, first.adapter.genome(b))
    assert not torch.equal(first.population[1].genome, first.adapter.genome(digit_mlps[1]))
    plain = mega_deap.merge(digit_mlps, digits["val"], align=False, **kw)
    assert plain.align is None and not torch.equal(plain.genome, auto.genome)
    # no room for the zip beside the parents, their average and its REPAIRed copy: activations only
    small = {**kw, "popsize": 4}
    four = mega_deap.merge(digit_mlps, digits["val"], **small)
    assert four.align == "activations"
    assert torch.equal(four.genome, mega_deap.merge(digit_mlps, digits["val"], align="activations", **small).genome)
    # three parents in a population of four: the parents first, the average where there is room; no error
    three = [*digit_mlps, copy.deepcopy(digit_mlps[0])]
    r = mega_deap.merge(three, digits["val"], popsize=4, ngen=1, seed=0, progress=False, device="cpu")
    assert r.align == "activations"
    with pytest.raises(ValueError, match="cannot hold the 3 parents and their average"):
        mega_deap.merge(three, digits["val"], popsize=4, ngen=1, align="activations")


def test_auto_alignment_falls_back_to_none_and_says_why(digit_mlps, digits, capsys):
    import mega_deap

    kw = dict(popsize=4, ngen=1, seed=0, progress=False, device="cpu", gate=None)
    X, y = digits["val"]
    branchy = []
    for s in (0, 1):
        torch.manual_seed(s)
        branchy.append(_Branchy())
    cases = [
        (branchy, {}, "do not derive"),  # torch.fx cannot trace the model
        ([nn.Sequential(nn.Linear(64, 10)) for _ in range(2)], {}, "no hidden units"),  # nothing to permute
    ]
    for models, extra, why in cases:
        r = mega_deap.merge(models, (X, y), verbose=True, **{**kw, **extra})
        assert r.align is None
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("align: none: ") and why in out[0], out[0]
    # an explicit matching on such a model is refused, naming the node or the tracing failure
    for align in ("activations", True, "weights"):  # the message names no one matching
        with pytest.raises(ValueError, match=r"^alignment \(weight or activation matching\) needs .* torch.fx"):
            mega_deap.merge(branchy, (X, y), align=align, **kw)
    # several objectives: no alignment unless asked for
    groups = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    front = mega_deap.merge(digit_mlps, (X, y), objectives=groups, **kw)
    unaligned = mega_deap.merge(digit_mlps, (X, y), objectives=groups, align=False, **kw)
    assert all(torch.equal(g, h) for g, h in zip(front.genomes, unaligned.genomes))
    # unaligned, "auto" gives the same bits as align=False
    same = mega_deap.merge(branchy, (X, y), **kw)
    assert torch.equal(same.genome, mega_deap.merge(branchy, (X, y), align=False, **kw).genome)


def test_align_parents_is_what_merge_aligns_with(digit_mlps, digits):
    """align_parents, the one entry point merge and the examples share: each matching as called directly."""
    from mega_deap.adapters import TorchAdapter
    from mega_deap.align import align_parents

    ad = TorchAdapter(digit_mlps[0])
    by_weights, by_activations = (align_parents(digit_mlps, m, digits["val"][0]) for m in ("weights", "activations"))
    assert torch.equal(ad.genome(by_weights[1]), ad.genome(weight_matching(list(digit_mlps))[1]))
    direct = activation_matching(list(digit_mlps), digits["val"][0])[1]
    assert torch.equal(ad.genome(by_activations[1]), ad.genome(direct))
    with pytest.raises(ValueError, match="give calibration inputs"):
        align_parents(digit_mlps, "activations")
    with pytest.raises(ValueError, match="matching must be 'weights', 'activations' or 'zip', got 'correlation'"):
        align_parents(digit_mlps, "correlation")


def test_auto_aligns_a_coefficient_genome_by_activations(digit_mlps, digits, capsys):
    """Round 8: align="auto" with genome="coefficients" is activation matching (no zip): the same bits as
    align="activations"; where it cannot align (no inputs to match on), no alignment, and verbose says why."""
    import mega_deap
    from mega_deap.objectives import on_model

    kw = dict(popsize=4, ngen=2, seed=0, progress=False, device="cpu", genome="coefficients")
    auto = mega_deap.merge(digit_mlps, digits["val"], **kw)
    explicit = mega_deap.merge(digit_mlps, digits["val"], align="activations", **kw)
    assert auto.align == explicit.align == "activations"
    assert torch.equal(auto.genome, explicit.genome) and torch.equal(auto.adapter.parents, explicit.adapter.parents)
    plain = mega_deap.merge(digit_mlps, digits["val"], align=False, **kw)
    assert plain.align is None and not torch.equal(plain.adapter.parents, auto.adapter.parents)
    size = on_model(lambda m: float(sum(p.abs().sum() for p in m.parameters())), name="size")
    none = mega_deap.merge(digit_mlps, None, metric=size, verbose=True, **dict(kw, ngen=1))
    assert none.align is None and "no inputs to match activations on" in capsys.readouterr().out


def test_auto_alignment_falls_back_when_the_matching_itself_fails(digit_mlps, digits, monkeypatch, capsys):
    """A default must not fail where align=False works: a matching that raises on a graph that derives
    leaves "auto" unaligned (the same bits as align=False) and says why; an explicit matching raises. An
    error that is not the matching's still comes through."""
    import mega_deap
    import mega_deap.align as align

    def broken(*a, **k):
        raise RuntimeError("the interpreter cannot run this graph")

    monkeypatch.setattr(align, "activation_matching", broken)
    kw = dict(popsize=6, ngen=1, seed=0, progress=False, device="cpu", gate=None)
    r = mega_deap.merge(digit_mlps, digits["val"], verbose=True, **kw)
    first = capsys.readouterr().out.splitlines()[0]
    assert r.align is None and first == (
        "align: none: activation matching failed (RuntimeError: the interpreter cannot run this graph)"
    )
    assert torch.equal(r.genome, mega_deap.merge(digit_mlps, digits["val"], align=False, **kw).genome)
    with pytest.raises(RuntimeError, match="cannot run this graph"):
        mega_deap.merge(digit_mlps, digits["val"], align="activations", **kw)
    # the zip that "auto" adds fails the same way: unaligned, saying so
    monkeypatch.undo()
    monkeypatch.setattr(align, "zip_models", broken)
    r = mega_deap.merge(digit_mlps, digits["val"], verbose=True, **kw)
    first = capsys.readouterr().out.splitlines()[0]
    assert (
        r.align is None and first == "align: none: zipping failed (RuntimeError: the interpreter cannot run this graph)"
    )
    with pytest.raises(RuntimeError, match="cannot run this graph"):
        mega_deap.merge(digit_mlps, digits["val"], align="zip", **kw)
    bad = [copy.deepcopy(m) for m in digit_mlps]
    with torch.no_grad():
        bad[1][0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN|nan|not finite|non-finite"):
        mega_deap.merge(bad, digits["val"], **kw)


def test_merge_refuses_bad_alignment_settings_before_any_work(digit_mlps, digits):
    import mega_deap

    with pytest.raises(ValueError, match="genome"):
        mega_deap.merge(digit_mlps, digits["val"], genome="layers")
    with pytest.raises(ValueError, match="cannot hold the 2 parents and their average"):
        mega_deap.merge(digit_mlps, digits["val"], popsize=2, npar=2, tournsize=2, align=True)
    with pytest.raises(ValueError, match="no BatchNorm"):
        mega_deap.merge(digit_mlps, digits["val"], calibration=digits["train"][0], progress=False, align=False)
    # align=True names activation matching, which reads inputs: a merge on an objective of the model alone has
    # none; weight matching needs none
    from mega_deap.objectives import on_model

    size = on_model(lambda m: float(sum(p.abs().sum() for p in m.parameters())), name="size")
    kw = dict(metric=size, popsize=4, ngen=1, progress=False, device="cpu")
    for align in (True, "activations"):
        with pytest.raises(ValueError, match=f"align={align!r}.*has none: give calibration inputs"):
            mega_deap.merge(digit_mlps, None, align=align, **kw)
    assert mega_deap.merge(digit_mlps, None, align="weights", **kw).align == "weights"
    X = digits["val"][0]
    assert mega_deap.merge(digit_mlps, None, align=True, calibration=X[:64], **kw).align == "activations"


def test_neg_log_loss_is_the_mean_log_likelihood(digit_mlps, digits):
    from mega_deap import Evaluator
    from mega_deap.adapters import TorchAdapter
    from mega_deap.evaluation import get_metric

    X, y = digits["val"]
    ad = TorchAdapter(digit_mlps[0])
    (score,) = Evaluator(ad, X, y, get_metric("neg_log_loss"), batch_size=100).scores([ad.genome()])
    with torch.no_grad():
        ref = -nn.functional.cross_entropy(digit_mlps[0](X).double(), y)
    assert score == pytest.approx(float(ref), rel=1e-6)


def test_merge_tree_passes_the_alignment_keywords_on(digit_mlps, digits):
    import mega_deap

    tree = mega_deap.merge_tree(
        list(digit_mlps) * 2,
        digits["val"],
        popsize=4,
        ngen=1,
        progress=False,
        device="cpu",
        align=True,
        genome="coefficients",
    )
    assert [len(level) for level in tree.levels] == [4, 2, 1]
    assert all(isinstance(m.adapter, CoefficientAdapter) and m.adapter.dim == 8 for m in tree.merges)


def test_coefficient_genomes_are_decoded_a_bounded_chunk_at_a_time(digit_mlps, digits, monkeypatch):
    """A coefficient genome is G x k numbers; its weights are D. The evaluator decodes a bounded number of
    genomes at a time (DECODED_NUMBERS weights), with the same scores as all at once."""
    from mega_deap import Evaluator

    adapter, parents = CoefficientAdapter.from_parents(list(digit_mlps), device="cpu")
    genomes = [parents[0], parents[1], parents.mean(0)] + [parents.mean(0) + 0.1 * i for i in range(5)]
    whole = Evaluator(adapter, *digits["val"]).scores(genomes)
    sizes = []
    decode = adapter.decode_many
    monkeypatch.setattr(adapter, "decode_many", lambda gs: sizes.append(len(gs)) or decode(gs))
    monkeypatch.setattr(Evaluator, "DECODED_NUMBERS", 3 * adapter.inner.dim)
    assert Evaluator(adapter, *digits["val"]).scores(genomes) == whole
    assert sizes[-3:] == [3, 3, 2] and max(sizes) * adapter.inner.dim <= 3 * adapter.inner.dim


def test_unit_coefficients_of_rank_deficient_groups_decode_back(digit_mlps):
    """granularity="unit" makes one-element groups (a bias entry) and, with two equal parents, every group is
    rank-deficient: genome() still finds coefficients that decode back to the model (CUDA's least squares
    refuses such systems; the CPU's SVD driver solves them)."""
    twins = [digit_mlps[0], copy.deepcopy(digit_mlps[0])]
    adapter, _ = CoefficientAdapter.from_parents(twins, device="cpu", granularity="unit")
    genome = adapter.genome(digit_mlps[0])
    assert torch.isfinite(genome).all()
    torch.testing.assert_close(adapter.decode(genome), adapter.inner.genome(digit_mlps[0]), rtol=1e-5, atol=1e-6)
