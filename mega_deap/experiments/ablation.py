"""Ablations: named variants of the paper's toolbox, repeated over seeds, reported with uncertainty.

A variant is nothing but toolbox registrations on top of :func:`mega_deap.mega_toolbox`:
``(alias, function, keyword arguments)`` triples. A keyword value ``LAYOUT`` stands for the adapter's
layout. Adding a variant is one line::

    VARIANTS["blx-0.5"] = [("mate", cxBlend, {"alpha": 0.5})]

:func:`run_ablation` runs every variant over the same seeds, parents and data; :func:`summarize` gives
mean, standard deviation and a 95 % t confidence interval per variant, and a paired comparison (same
seed, same initial population) against the reference variant.
"""

import math

import numpy as np
from deap import tools
from tqdm.auto import tqdm

from .. import rng
from ..algorithms import eaMeGA
from ..individual import genome_equal
from ..operators import cxBlend, initBlend, mutLayerGaussian, selNoElite
from ..population import TensorPopulation
from ..presets import default_stats, ensure_creator_classes, mega_toolbox

__all__ = [
    "LAYOUT",
    "VARIANTS",
    "mutIdentity",
    "build_toolbox",
    "run_ablation",
    "summarize",
    "mean_ci",
    "paired",
    "margin_test",
    "holm",
]

LAYOUT = "<adapter.layout>"


def mutIdentity(individual):
    """No mutation: returns ``(individual,)`` unchanged."""
    return (individual,)


VARIANTS = {
    "paper": [],
    "no-mutation": [("mutate", mutIdentity, {})],
    "mutLayerGaussian": [("mutate", mutLayerGaussian, {"layout": LAYOUT, "mu": 0.0, "sigma": 0.1, "layerpb": 0.02})],
    "cxBlend-per-element": [("mate", cxBlend, {"per_element": True})],
    "cxUniform (DEAP)": [("mate", tools.cxUniform, {"indpb": 0.5})],
    "tournament-2": [("select", tools.selTournament, {"tournsize": 2})],
    "tournament-7": [("select", tools.selTournament, {"tournsize": 7})],
    "no-elitism": [("elite", selNoElite, {})],
    "random-selection": [("select", tools.selRandom, {})],
}


def build_toolbox(registrations, pop, evaluator, adapter, **preset):
    """The paper's preset with ``registrations`` applied on top (the mate and mutate repair decorators are
    re-applied to whatever is registered)."""
    tb = mega_toolbox(pop, evaluator, layout=adapter.layout, repair=None, **preset)
    for alias, func, kwargs in registrations:
        kwargs = {k: (adapter.layout if isinstance(v, str) and v == LAYOUT else v) for k, v in kwargs.items()}
        tb.register(alias, func, **kwargs)
    if hasattr(adapter, "keep_valid"):
        tb.decorate("mate", adapter.keep_valid())
        tb.decorate("mutate", adapter.keep_valid())
    return tb


######################################
# Statistics                         #
######################################


def mean_ci(values, level=0.95):
    """``(mean, sample std, half-width of the t confidence interval)``; std and CI are nan for one value."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = float(x.std(ddof=1))
    return mean, sd, float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))


def holm(pvalues):
    """Holm's step-down adjustment of ``pvalues`` for the number of comparisons (nan entries are left out
    and stay nan). Controls the family-wise error rate without assuming independence."""
    idx = [i for i, p in enumerate(pvalues) if p == p]
    order = sorted(idx, key=lambda i: pvalues[i])
    out, running = [float(p) for p in pvalues], 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        out[i] = running
    return out


def paired(values, reference, level=0.95):
    """Paired comparison of ``values`` against ``reference`` (same seeds): mean difference, its CI
    half-width, and the two-sided paired t-test p-value (1.0 when every difference is 0)."""
    from scipy import stats

    d = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    mean, _, half = mean_ci(d, level)
    if len(d) < 2 or np.all(d == d[0]):
        p = 1.0 if np.all(d == 0) else (0.0 if len(d) >= 2 else float("nan"))
    else:
        p = float(stats.ttest_rel(values, reference).pvalue)
    return mean, half, p


def margin_test(differences, margin):
    """Two one-sided t-tests of the mean of paired ``differences`` against ``-margin``: ``(p_above,
    p_below)``, the p-values of "the mean is above ``-margin``" (a non-inferiority test) and of "it is below".
    Where every difference is equal, each is 0.0 where the difference is on its side and 1.0 otherwise; nan
    for fewer than two differences."""
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    if len(d) < 2:
        return float("nan"), float("nan")
    if np.all(d == d[0]):
        return (0.0 if d[0] > -margin else 1.0), (0.0 if d[0] < -margin else 1.0)
    above = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    below = stats.ttest_1samp(d, -margin, alternative="less").pvalue
    return float(above), float(below)


######################################
# Running                            #
######################################


def run_ablation(
    adapter,
    parents,
    evaluator,
    test_evaluator=None,
    *,
    variants=None,
    seeds=(0, 1, 2),
    popsize=20,
    ngen=20,
    npar=4,
    device=None,
    progress=True,
    **preset,
):
    """Run every variant over ``seeds``; returns ``{variant: [run, ...]}``, a run being a dict with
    ``seed``, ``best_val`` (the hall of fame's validation fitness), ``test`` (its test score, when a
    ``test_evaluator`` is given; never used for selection) and ``curve`` (best fitness per generation).

    :param parents: the parents' genomes, ``(k, D)``.
    """
    variants = VARIANTS if variants is None else variants
    device = device or parents.device
    icls = ensure_creator_classes()
    results = {}
    total = len(variants) * len(seeds)
    with tqdm(total=total, desc="ablation", disable=None if progress else True) as bar:
        for name, registrations in variants.items():
            runs = []
            for s in seeds:
                pop = TensorPopulation(popsize, adapter.dim, device=device, dtype=parents.dtype)
                tb = build_toolbox(registrations, pop, evaluator, adapter, **preset)
                rng.seed(s)
                inds = initBlend(pop.individuals(icls), parents)
                hof = tools.HallOfFame(1, similar=genome_equal)
                _, log = eaMeGA(inds, tb, ngen, npar=npar, stats=default_stats(), halloffame=hof, verbose=False)
                best = hof[0]
                run = {"seed": s, "best_val": best.fitness.values[0], "curve": log.select("max")}
                if test_evaluator is not None:
                    run["test"] = test_evaluator.scores([best])[0]
                runs.append(run)
                bar.update(1)
                bar.set_postfix(variant=name, refresh=False)
            results[name] = runs
    return results


def summarize(results, reference="paper", level=0.95):
    """One row per variant: mean, std, CI of the best validation fitness and of the test score, and the
    paired difference against ``reference`` (mean, CI half-width, p-value, and the p-value corrected by
    :func:`holm` for the number of variants compared)."""
    ref = results.get(reference)
    rows = []
    for name, runs in results.items():
        row = {"variant": name, "seeds": len(runs)}
        for key in ("best_val", "test"):
            if key not in runs[0]:
                continue
            vals = [r[key] for r in runs]
            row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_ci95"] = mean_ci(vals, level)
            if ref is not None and name != reference:
                by_seed = {r["seed"]: r[key] for r in ref}
                common = [r for r in runs if r["seed"] in by_seed]
                d, h, p = paired([r[key] for r in common], [by_seed[r["seed"]] for r in common], level)
                row[f"{key}_diff"], row[f"{key}_diff_ci95"], row[f"{key}_p"] = d, h, p
        rows.append(row)
    for key in ("best_val", "test"):
        compared = [r for r in rows if f"{key}_p" in r]
        for r, p in zip(compared, holm([r[f"{key}_p"] for r in compared])):
            r[f"{key}_p_holm"] = p
    return rows
