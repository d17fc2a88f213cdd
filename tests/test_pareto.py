"""The Pareto merge and NSGA-II over tensor individuals, checked against a brute-force non-dominated sort
and per-group accuracies computed from the returned models."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import mega_deap
from mega_deap.checks import SettingError
from mega_deap.experiments.align_study import biased_parts
from mega_deap.pareto import nondominated

from conftest import load_script, train_mlp

GROUPS = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


@pytest.fixture(scope="module")
def biased_mlps(digits):
    X, y = digits["train"]
    return [train_mlp((X[idx], y[idx]), seed=i, epochs=20) for i, idx in enumerate(biased_parts(y, 5, seed=0))]


@torch.no_grad()
def per_group(model, X, y):
    pred = model(X).argmax(1).numpy()
    return tuple(float((pred[np.isin(y.numpy(), g)] == y.numpy()[np.isin(y.numpy(), g)]).mean()) for g in GROUPS)


def dominates(a, b):
    return all(x >= z for x, z in zip(a, b)) and any(x > z for x, z in zip(a, b))


def test_brute_force_nondominated():
    values = [(1, 0), (0, 1), (0.5, 0.5), (0.4, 0.4), (1, 0)]
    assert nondominated(values, (1.0, 1.0)) == [0, 1, 2, 4]
    assert nondominated(values, (-1.0, -1.0)) == [0, 1, 3, 4]  # (0.5, 0.5) is dominated by (0.4, 0.4)
    assert nondominated([(1, 5), (2, 5)], (-1.0, 1.0)) == [0]


def test_pareto_merge_front(digits, biased_mlps):
    X, y = digits["val"]
    r = mega_deap.merge(biased_mlps, digits["val"], objectives=GROUPS, popsize=16, ngen=6, seed=0, progress=False)
    # every reported value is the returned model's own per-group accuracy, computed independently
    for model, v in zip(r.models, r.values):
        assert per_group(model, X, y) == pytest.approx(v, abs=1e-12)
    for model, v in zip(biased_mlps, r.parents):
        assert per_group(model, X, y) == pytest.approx(v, abs=1e-12)
    # the front: no point dominated by another (brute force), distinct, best first in the first objective
    assert nondominated(r.values, (1.0, 1.0)) == list(range(len(r.values)))
    assert len(set(r.values)) == len(r.values) and r.values == sorted(r.values, reverse=True)
    # nothing of the last population dominates a point of the front; the parents (in the first population)
    # are each weakly dominated by a point of it
    last = [ind.fitness.values for ind in r.population]
    assert not any(dominates(p, v) for p in last for v in r.values)
    for p in r.parents:
        assert any(all(a >= b for a, b in zip(v, p)) for v in r.values)
    assert r.names == ["accuracy on classes 0-4", "accuracy on classes 5-9"]
    assert r.to_json()["front"] == [list(v) for v in r.values]


def test_pareto_result_plot(tmp_path, digits, biased_mlps):
    r = mega_deap.merge(biased_mlps, digits["val"], objectives=GROUPS, popsize=8, ngen=1, seed=0, progress=False)
    r.plot(str(tmp_path / "front.png"))
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_merge_is_reproducible_and_resumes_bit_for_bit(tmp_path, digits, biased_mlps):
    kw = dict(objectives=GROUPS, popsize=8, seed=3, progress=False)
    whole = mega_deap.merge(biased_mlps, digits["val"], ngen=4, **kw)
    again = mega_deap.merge(biased_mlps, digits["val"], ngen=4, **kw)
    assert again.values == whole.values and all(torch.equal(a, b) for a, b in zip(again.genomes, whole.genomes))
    ckpt = str(tmp_path / "pareto.ckpt")
    mega_deap.merge(biased_mlps, digits["val"], ngen=2, checkpoint=ckpt, **kw)  # "interrupted" after 2
    resumed = mega_deap.merge(biased_mlps, digits["val"], ngen=4, checkpoint=ckpt, **kw)
    assert resumed.values == whole.values
    assert all(torch.equal(a, b) for a, b in zip(resumed.genomes, whole.genomes))
    assert [dict(r) for r in resumed.logbook] == [dict(r) for r in whole.logbook]
    with pytest.raises(SettingError, match="another job|written with"):  # another job's checkpoint
        mega_deap.merge(biased_mlps, digits["val"], ngen=4, checkpoint=ckpt, **{**kw, "seed": 4})
    # four parents in a population of four: no blend shows the seed; the checkpoint still knows it
    four, ckpt4 = [*biased_mlps, *biased_mlps[::-1]], str(tmp_path / "four.ckpt")
    kw4 = {**kw, "popsize": 4, "checkpoint": ckpt4}
    mega_deap.merge(four, digits["val"], ngen=1, **kw4)
    with pytest.raises(SettingError, match=r"another job: its settings \(another seed\)"):
        mega_deap.merge(four, digits["val"], ngen=2, **{**kw4, "seed": 4})


def test_pareto_merge_refusals(digits, biased_mlps):
    val = digits["val"]
    with pytest.raises(SettingError, match="multiple of 4"):
        mega_deap.merge(biased_mlps, val, objectives=GROUPS, popsize=10)
    with pytest.raises(SettingError, match="metric='accuracy' belongs to the single-objective merge"):
        mega_deap.merge(biased_mlps, val, objectives=GROUPS, metric="accuracy")
    with pytest.raises(SettingError, match="cxpb=0.5 is NSGA-II's"):
        mega_deap.merge(biased_mlps, val, cxpb=0.5)
    with pytest.raises(SettingError, match="gives one value per genome"):
        mega_deap.merge(biased_mlps, val, objectives=mega_deap.Accuracy())
    with pytest.raises(SettingError, match="several objectives are a Pareto merge"):
        mega_deap.merge(biased_mlps, val, metric=mega_deap.GroupAccuracy(GROUPS))


def test_merge_takes_a_model_objective(digits, digit_mlps):
    """merge(metric=on_model(...)): no validation data; the fitness is the user's function of the model."""
    X, y = digits["val"]

    def neg_loss(model):
        with torch.no_grad():
            return -float(nn.functional.cross_entropy(model(X), y))

    r = mega_deap.merge(digit_mlps, None, metric=mega_deap.on_model(neg_loss), popsize=6, ngen=2, progress=False)
    with torch.no_grad():
        assert r.fitness == pytest.approx(neg_loss(r.model), abs=1e-6)
    parents = [neg_loss(m) for m in digit_mlps]
    assert r.fitness >= max(parents)  # the parents are in the first population; elitism keeps the best


def test_pareto_example(tmp_path):
    argv = ["--dataset", "digits", "--epochs", "3", "--popsize", "8", "--out", str(tmp_path), "--quiet"]
    ckpt = ["--checkpoint", str(tmp_path / "run.ckpt")]
    report = load_script("pareto_merge").main(argv + ["--ngen", "2"])
    load_script("pareto_merge").main(argv + ckpt + ["--ngen", "1"])  # interrupted after one generation
    resumed = load_script("pareto_merge").main(argv + ckpt + ["--ngen", "2"])
    assert resumed["front"] == report["front"]  # the resumed run's front is the whole run's
    saved = json.loads((tmp_path / "front.json").read_text())
    assert saved["objectives"] == report["objectives"] and len(saved["front"]) >= 1
    assert all(len(p["values"]) == 2 and len(p["test"]) == 2 for p in saved["front"] + saved["parents"])
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ea_nsga2_tensor_individuals_match_deap_list_individuals():
    """The same NSGA-II run over DEAP's list individuals and over tensor individuals, with DEAP's own list
    operators on integer genes (exact in float32): the same populations and the same front."""
    import copy
    import random

    from deap import base, creator, tools

    from mega_deap import TensorIndividual, TensorPopulation, genome_equal
    from mega_deap.pareto import eaNSGA2

    if not hasattr(creator, "FitNSGA2Test"):
        creator.create("FitNSGA2Test", base.Fitness, weights=(1.0, -1.0))
        creator.create("ListNSGA2Test", list, fitness=creator.FitNSGA2Test)
        creator.create("TensorNSGA2Test", TensorIndividual, fitness=creator.FitNSGA2Test)

    def objectives(ind):
        v = [float(x) for x in ind]
        return sum(v[:6]), sum((x - 4.0) ** 2 for x in v[6:]) + v[0]

    def run(kind):
        random.seed(5)
        start = [[random.randint(0, 9) for _ in range(12)] for _ in range(16)]
        tb = base.Toolbox()
        tb.register("evaluate", objectives)
        tb.register("mate", tools.cxTwoPoint)
        tb.register("mutate", tools.mutUniformInt, low=0, up=9, indpb=0.2)
        tb.register("select", tools.selNSGA2)
        if kind == "list":
            pop = [creator.ListNSGA2Test(g) for g in start]
            tb.register("clone", copy.deepcopy)
            front = tools.ParetoFront()
        else:
            rows = TensorPopulation(16, 12, device="cpu")
            pop = rows.individuals(creator.TensorNSGA2Test)
            for ind, g in zip(pop, start):
                ind.genome.copy_(torch.tensor(g, dtype=torch.float32))
            tb.register("clone", rows.clone)
            front = tools.ParetoFront(similar=genome_equal)
        random.seed(6)
        pop, log = eaNSGA2(pop, tb, 6, cxpb=0.9, mutpb=0.5, halloffame=front, verbose=False)
        return [[float(x) for x in ind] for ind in pop], sorted(tuple(i.fitness.values) for i in front)

    lists, tensors = run("list"), run("tensor")
    assert lists[0] == tensors[0] and lists[1] == tensors[1]
    values = lists[1]
    assert nondominated(values, (1.0, -1.0)) == list(range(len(values)))
