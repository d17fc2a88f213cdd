"""Bad input gets a clear error naming the offending thing, before any work is done."""
import copy
import math

import pytest
import torch
from deap import tools

import mega_deap
from mega_deap import TensorPopulation, eaMeGA, genome_equal, initBlend, mega_toolbox
from mega_deap.presets import ensure_creator_classes
from mega_deap.adapters import TorchAdapter, accuracy


def test_parents_of_other_dtype_or_device(digit_mlps):
    with pytest.raises(ValueError, match="dtype torch.float64, the template has torch.float32"):
        mega_deap.merge([digit_mlps[0], copy.deepcopy(digit_mlps[1]).double()], (torch.zeros(2, 64), torch.zeros(2)))
    meta = copy.deepcopy(digit_mlps[1]).to("meta")
    with pytest.raises(ValueError, match="is on meta, the template is on cpu"):
        TorchAdapter(digit_mlps[0]).genomes([digit_mlps[0], meta])


def test_population_too_big_is_refused_before_allocating():
    with pytest.raises(MemoryError, match=r"needs [\d.]+ GiB on cpu.*only [\d.]+ GiB is free"):
        TensorPopulation(1000, 10**10, device="cpu")


def test_other_population_errors(classes):
    with pytest.raises(ValueError, match="population size"):
        TensorPopulation(0, 5)
    with pytest.raises(ValueError, match="floating-point"):
        TensorPopulation(2, 5, dtype=torch.int64)
    pop = TensorPopulation(2, 5, device="cpu")
    with pytest.raises(ValueError, match=r"genome shape \(4,\), the population holds \(5,\)"):
        pop.clone(classes["tensor"]([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(TypeError, match="TensorIndividual subclass"):
        pop.individuals(list)


def test_merge_argument_errors(digits, digit_mlps):
    with pytest.raises(ValueError, match="at least two models"):
        mega_deap.merge([], digits["val"])
    with pytest.raises(ValueError, match=r"ngen\) must be >= 0"):
        mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=-1, verbose=False)
    with pytest.raises(ValueError, match="metric must be one of"):
        mega_deap.merge(digit_mlps, digits["val"], metric="f1")
    with pytest.raises(TypeError, match="no adapter is registered for builtins.str"):
        mega_deap.merge(["a", "b"], digits["val"])
    X, y = digits["val"]
    with pytest.raises(ValueError, match=r"labels span \[1, 11\].*10 classes"):
        mega_deap.merge(digit_mlps, (X, torch.where(y == 0, 11, y)), verbose=False)


def test_nan_model_gets_worst_fitness_and_the_run_goes_on(digits, digit_mlps):
    icls = ensure_creator_classes()
    ad = TorchAdapter(digit_mlps[0])
    ev = accuracy(ad, *digits["val"])
    pop = TensorPopulation(8, ad.dim, device="cpu")
    mega_deap.seed(0)
    inds = initBlend(pop.individuals(icls), ad.genomes(digit_mlps))
    for ind in inds[:3]:
        ind.genome[5] = math.nan
    hof = tools.HallOfFame(1, similar=genome_equal)
    final, log = eaMeGA(inds, mega_toolbox(pop, ev), 3, stats=mega_deap.default_stats(), halloffame=hof,
                        verbose=False)
    assert log.select("min")[0] == 0.0                   # the NaN individuals scored the worst
    assert torch.isfinite(hof[0].genome).all() and hof[0].fitness.values[0] > 0.5
