"""The resumable ask-and-tell loop against DEAP's own eaGenerateUpdate, and cma_merge's checkpoints."""

import random

import numpy as np
import pytest
import torch
from deap import algorithms, base, cma, creator, tools

from mega_deap.align import cma_merge
from mega_deap.cmaes import eaGenerateUpdate


def _sphere_toolbox(seed):
    if not hasattr(creator, "CmaFit"):
        creator.create("CmaFit", base.Fitness, weights=(-1.0,))
        creator.create("CmaInd", list, fitness=creator.CmaFit)
    np.random.seed(seed)
    random.seed(seed)
    strategy = cma.Strategy(centroid=[3.0] * 5, sigma=0.5, lambda_=8)
    tb = base.Toolbox()
    tb.register("generate", strategy.generate, creator.CmaInd)
    tb.register("update", strategy.update)
    tb.register("evaluate", lambda ind: (float(sum(x * x for x in ind)),))
    stats = tools.Statistics(lambda ind: ind.fitness.values[0])
    stats.register("min", np.min)
    return tb, strategy, stats


def test_the_loop_is_deaps_draw_for_draw():
    tb, strategy, stats = _sphere_toolbox(7)
    hof = tools.HallOfFame(1)
    _, log = eaGenerateUpdate(tb, 12, strategy=strategy, stats=stats, halloffame=hof)
    tb2, strategy2, stats2 = _sphere_toolbox(7)
    hof2 = tools.HallOfFame(1)
    _, log2 = algorithms.eaGenerateUpdate(tb2, ngen=12, stats=stats2, halloffame=hof2, verbose=False)
    assert [dict(r) for r in log] == [dict(r) for r in log2]
    assert np.array_equal(strategy.centroid, strategy2.centroid) and list(hof[0]) == list(hof2[0])


def test_cma_merge_resumes_where_it_stopped_with_the_same_bits(digit_mlps, digits, tmp_path, capsys):
    kw = dict(lambda_=6, seed=3, device="cpu", metric="accuracy", sigma=0.5)
    whole = cma_merge(digit_mlps, digits["val"], ngen=4, **kw)
    path = tmp_path / "cma.ckpt"
    cma_merge(digit_mlps, digits["val"], ngen=2, checkpoint=str(path), **kw)  # stopped after generation 1
    resumed = cma_merge(digit_mlps, digits["val"], ngen=4, checkpoint=str(path), **kw)
    assert [dict(r) for r in resumed.logbook] == [dict(r) for r in whole.logbook]
    assert torch.equal(resumed.genome, whole.genome) and resumed.fitness == whole.fitness
    again = cma_merge(digit_mlps, digits["val"], ngen=4, checkpoint=str(path), **kw)  # nothing left to run
    assert torch.equal(again.genome, whole.genome) and len(again.logbook) == 4
    assert capsys.readouterr().out == ""  # a library call prints nothing it was not asked for


def test_cma_merge_refuses_a_checkpoint_of_another_job(digit_mlps, digits, tmp_path):
    import mega_deap

    path = tmp_path / "cma.ckpt"
    kw = dict(lambda_=4, device="cpu", checkpoint=str(path))
    cma_merge(digit_mlps, digits["val"], ngen=1, seed=0, **kw)
    with pytest.raises(ValueError, match="belongs to another job: its seed is 0, this run's is 1"):
        cma_merge(digit_mlps, digits["val"], ngen=2, seed=1, **kw)
    with pytest.raises(ValueError, match="belongs to another job: its evaluation"):
        cma_merge(digit_mlps, digits["val"], ngen=2, seed=0, metric="accuracy_ll", **kw)
    merged = tmp_path / "merge.ckpt"
    mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=1, progress=False, device="cpu", checkpoint=str(merged))
    with pytest.raises(ValueError, match="belongs to another job: its algorithm is None"):
        cma_merge(digit_mlps, digits["val"], ngen=2, lambda_=4, device="cpu", checkpoint=str(merged))
    with pytest.raises(ValueError, match="checkpoint"):
        cma_merge(digit_mlps, digits["val"], checkpoint=str(tmp_path))  # a folder: refused before any work
