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
    with pytest.raises(ValueError, match=r"ngen must be >= 0"):
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
    final, log = eaMeGA(inds, mega_toolbox(pop, ev), 3, stats=mega_deap.default_stats(), halloffame=hof, verbose=False)
    assert log.select("min")[0] == 0.0  # the NaN individuals scored the worst
    assert torch.isfinite(hof[0].genome).all() and hof[0].fitness.values[0] > 0.5


# -- every setting checked before any work -------------------------------------------------------------


@pytest.mark.parametrize(
    "setting,match",
    [
        ({"popsize": 20.5}, "popsize must be an integer, got 20.5"),
        ({"popsize": True}, "popsize must be an integer"),
        ({"ngen": 2.0}, "ngen must be an integer"),
        ({"npar": 1}, "npar must be >= 2"),
        ({"tournsize": 0}, "tournsize must be >= 1"),
        ({"sigma": -1}, "sigma must be a finite number >= 0, got -1"),
        ({"sigma": float("nan")}, "sigma must be a finite number"),
        ({"indpb": 1.5}, r"indpb must be a probability in \[0, 1\], got 1.5"),
        ({"layerpb": -0.1, "mutation": "layer"}, "layerpb must be a probability"),
        # a setting given without the mode it belongs to is refused, naming both
        ({"layerpb": 0.1}, "layerpb=0.1 belongs to mutation='layer', but mutation='sparse'"),
        ({"granularity": "layer"}, "granularity='layer' belongs to genome='coefficients', but genome='weights'"),
        ({"hof_size": 5}, "hof_size=5 is the hall of fame that holdout chooses from"),
        ({"mutation": "layer", "indpb": 0.1}, "indpb=0.1 is the per-gene rate of mutation='sparse'"),
        ({"align": "yes"}, "align must be True, False or one of"),
        ({"alpha": -0.5}, "alpha must be a finite number >= 0"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"breeding": "fast"}, "breeding must be one of 'batched', 'per-individual'"),
        ({"metric": "f1"}, "metric must be one of"),
    ],
)
def test_merge_settings_are_refused_before_any_work(tmp_path, digits, digit_mlps, setting, match):
    ckpt = tmp_path / "sub" / "run.ckpt"
    with pytest.raises((ValueError, TypeError), match=match):
        mega_deap.merge(
            digit_mlps, digits["val"], verbose=False, checkpoint=str(ckpt), **{"popsize": 4, "ngen": 1, **setting}
        )
    assert not (tmp_path / "sub").exists()  # nothing was written


def test_unwritable_checkpoint_is_refused_before_any_work(tmp_path, digits, digit_mlps):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="cannot be written"):
        mega_deap.merge(
            digit_mlps, digits["val"], popsize=4, ngen=1, verbose=False, checkpoint=str(tmp_path / "afile" / "run.ckpt")
        )
    with pytest.raises(ValueError, match="is a folder"):
        mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=1, verbose=False, checkpoint=str(tmp_path))


def test_eaMeGA_checks_the_registered_settings_before_generation_0(tmp_path, digits, digit_mlps):
    icls = ensure_creator_classes()
    from mega_deap.adapters import TorchAdapter, accuracy

    ad = TorchAdapter(digit_mlps[0])
    pop = TensorPopulation(4, ad.dim, device="cpu")
    inds = initBlend(pop.individuals(icls), ad.genomes(digit_mlps))
    tb = mega_toolbox(pop, accuracy(ad, *digits["val"]), sigma=-1.0)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(ValueError, match="toolbox.mutate's sigma must be a finite number >= 0, got -1.0"):
        eaMeGA(inds, tb, 2, verbose=False, checkpoint=str(ckpt))
    assert not ckpt.exists()
    from deap import tools

    tb = mega_toolbox(pop, accuracy(ad, *digits["val"]))
    tb.register("mutate", tools.mutGaussian, mu=0.0, sigma=0.1, indpb=2.0)  # DEAP's own, checked the same way
    with pytest.raises(ValueError, match="toolbox.mutate's indpb must be a probability"):
        eaMeGA(inds, tb, 2, verbose=False)
    with pytest.raises(TypeError, match="ngen must be an integer"):
        eaMeGA(inds, mega_toolbox(pop, accuracy(ad, *digits["val"])), 2.5, verbose=False)


@pytest.mark.parametrize(
    "labels,match",
    [
        (lambda y: y.unsqueeze(1), r"shape \(397, 1\).*y.squeeze\(1\)"),
        (lambda y: torch.nn.functional.one_hot(y, 10), r"one-hot or scores.*y.argmax\(1\)"),
        (lambda y: y == 1, "integer class labels, got dtype torch.bool"),
        (lambda y: y.float(), "integer class labels, got dtype torch.float32"),
    ],
)
def test_label_shapes_and_dtypes(digits, digit_mlps, labels, match):
    X, y = digits["val"]
    with pytest.raises(ValueError, match=match):
        mega_deap.merge(digit_mlps, (X, labels(y)), popsize=4, ngen=1, verbose=False)


def test_model_returning_a_tuple_is_named(digits):
    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            out = self.fc(x)
            return out, out.softmax(-1)

    with pytest.raises(TypeError, match="the model returns a tuple, not a tensor"):
        mega_deap.merge([Pair(), Pair()], digits["val"], popsize=4, ngen=1, verbose=False)


def test_operators_refuse_bad_settings(classes):
    pop = TensorPopulation(2, 5, device="cpu")
    a, b = pop.individuals(classes["tensor"])
    from mega_deap import cxBlend, mutLayerGaussian, mutSparseGaussian

    with pytest.raises(ValueError, match="sigma must be >= 0"):
        mutSparseGaussian(a, 0.0, -1.0, 0.1)
    with pytest.raises(ValueError, match="layerpb must be a probability"):
        mutLayerGaussian(a, [(0, 5)], 0.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        cxBlend(a, b, alpha=-1.0)
