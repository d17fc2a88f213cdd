"""The align-then-evolve study: every way of merging two parents, on parents trained on the same data
(different seeds) and on different data (each on a class-biased part of the training set).

One call of :func:`run_setting` trains (or loads) the two parents of one seed and scores every method on
the validation split (the only data any method's fitness or choice sees) and on the test split. The
calibration inputs of BatchNorm repair are the training split's inputs (no labels).
"""

import time

import torch

from mega_deap import merge
from mega_deap.align import batchnorm_layers, cma_merge, repair_batchnorm, weight_matching
from .models import build_model
from .train import model_accuracy, train_model
from .ablation import holm
from .report import ensemble_accuracy, weight_average

__all__ = ["METHODS", "SETTINGS", "biased_parts", "train_parents", "run_setting", "summarize", "gap_closed"]

SETTINGS = ("same-data", "different-data")
METHODS = (
    "best parent",
    "naive average",
    "aligned average",
    "aligned average + repair",
    "MeGA (paper)",
    "MeGA, aligned parents",
    "MeGA, aligned parents, accuracy fitness",
    "MeGA, aligned parents, selection split",
    "coefficient GA, aligned",
    "CMA-ES, coefficients",
    "output ensemble",
)


def biased_parts(y: torch.Tensor, favoured: int = 5, share: float = 0.95, seed: int = 0):
    """Two disjoint index sets of a training split: part 0 holds ``share`` of the examples of classes
    ``< favoured`` and ``1 - share`` of the others, part 1 the rest (each part sees few examples of the
    other part's classes)."""
    g = torch.Generator().manual_seed(seed)
    a, b = [], []
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = int(round((share if c < favoured else 1 - share) * len(idx)))
        a.append(idx[:cut])
        b.append(idx[cut:])
    return torch.cat(a).sort().values, torch.cat(b).sort().values


def _accs(model, splits):
    return model_accuracy(model, *splits.val), model_accuracy(model, *splits.test)


def train_parents(splits, model_name, setting, seed, epochs, lr=0.01, batch_size=64):
    """The two parents of ``seed`` for ``setting``: same data and different initialisations, or each on a
    class-biased part (:func:`biased_parts`)."""
    X, y = splits.train
    if setting == "same-data":
        parts = [(X, y), (X, y)]
    else:
        ia, ib = biased_parts(y, favoured=splits.num_classes // 2, seed=seed)
        parts = [(X[ia], y[ia]), (X[ib], y[ib])]
    parents = []
    for j, data in enumerate(parts):
        torch.manual_seed(1000 * seed + j)
        m = build_model(model_name, splits.in_channels, splits.num_classes, splits.image_size)
        parents.append(
            train_model(m, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=1000 * seed + j, progress=False)
        )
    return parents


def run_setting(
    splits,
    model_name,
    setting,
    seed,
    *,
    epochs=30,
    popsize=20,
    ngen=20,
    calibration_size=512,
    methods=METHODS,
    say=None,
) -> dict:
    """Scores ``{method: (val_acc, test_acc, seconds)}`` for one seed of one setting."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    parents = train_parents(splits, model_name, setting, seed, epochs)
    has_bn = bool(batchnorm_layers(parents[0]))
    calib = (
        splits.train[0][
            torch.randperm(len(splits.train[0]), generator=torch.Generator().manual_seed(seed))[:calibration_size]
        ]
        if has_bn
        else None
    )
    out = {}

    def timed(name, fn):
        if name not in methods:
            return
        t = time.perf_counter()
        model = fn()
        out[name] = (*_accs(model, splits), time.perf_counter() - t)
        if say:
            say(f"  {setting} seed {seed} {name}: val {out[name][0]:.4f} test {out[name][1]:.4f}")

    accs = [_accs(p, splits) for p in parents]
    best = max(range(2), key=lambda i: accs[i][1])
    out["best parent"] = (*accs[best], 0.0)
    aligned = weight_matching(parents)
    timed("naive average", lambda: weight_average(parents))
    timed("aligned average", lambda: weight_average(aligned))
    if has_bn:
        timed("aligned average + repair", lambda: repair_batchnorm(weight_average(aligned), calib))
    # gate=None: this study ran before the significance gate (see the held-out study); pinned, as the
    # fitness below, so that the published table stays this command's. Every row names its alignment
    # (merge aligns by default since round 3 of the held-out study).
    common = dict(popsize=popsize, ngen=ngen, seed=seed, progress=False, device="cpu", gate=None)
    timed(
        "MeGA (paper)",
        lambda: merge(parents, splits.val, include_parents=False, metric="accuracy", align=False, **common).model,
    )
    # the fitness this study was run with, before accuracy became merge's default (see the held-out
    # study): pinned here so that the published table stays this command's
    ll = dict(metric="neg_log_loss", **common)
    timed("MeGA, aligned parents", lambda: merge(parents, splits.val, align=True, calibration=calib, **ll).model)
    timed(
        "MeGA, aligned parents, accuracy fitness",
        lambda: merge(parents, splits.val, align=True, calibration=calib, metric="accuracy", **common).model,
    )
    timed(
        "MeGA, aligned parents, selection split",
        lambda: merge(parents, splits.val, align=True, calibration=calib, holdout=0.3, **ll).model,
    )
    timed(
        "coefficient GA, aligned",
        lambda: merge(parents, splits.val, align=True, calibration=calib, genome="coefficients", **ll).model,
    )
    timed(
        "CMA-ES, coefficients",
        lambda: (
            cma_merge(
                parents,
                splits.val,
                ngen=ngen,
                lambda_=popsize,
                seed=seed,
                calibration=calib,
                device="cpu",
                metric="neg_log_loss",
                include_parents=False,
                gate=None,
            ).model
        ),
    )
    if "output ensemble" in methods:
        out["output ensemble"] = (
            ensemble_accuracy(parents, *splits.val),
            ensemble_accuracy(parents, *splits.test),
            0.0,
        )
    return out


def gap_closed(merged: float, best_parent: float, ensemble: float, minimum: float = 0.01) -> float:
    """The fraction of the gap from the best parent's accuracy to the ensemble's that a merge closes; nan
    when the ensemble is less than ``minimum`` above the best parent (no gap to speak of: the ratio of two
    small differences is noise)."""
    gap = ensemble - best_parent
    return float("nan") if gap < minimum else (merged - best_parent) / gap


def summarize(runs: list) -> list:
    """Rows ``{method, val, val_sd, test, test_sd, gap, p_holm}`` over seeds: mean and sd of each
    accuracy, the fraction of the test gap closed on average (:func:`gap_closed` of the means over seeds),
    and the Holm-corrected p-value of a paired one-sided Wilcoxon test that the method's test accuracy beats
    the best parent's."""
    import numpy as np
    from scipy.stats import wilcoxon

    rows = []
    for name in METHODS:
        vals = [r[name] for r in runs if name in r]
        if not vals:
            continue
        v = np.array([x[0] for x in vals])
        t = np.array([x[1] for x in vals])
        used = [r for r in runs if name in r]
        gap = gap_closed(
            float(t.mean()),
            float(np.mean([r["best parent"][1] for r in used])),
            float(np.mean([r["output ensemble"][1] for r in used])),
        )
        diff = t - np.array([r["best parent"][1] for r in runs if name in r])
        p = float("nan")
        if name not in ("best parent", "output ensemble") and np.any(diff != 0):
            p = float(wilcoxon(diff, alternative="greater", zero_method="zsplit").pvalue)
        rows.append(
            {
                "method": name,
                "val": float(v.mean()),
                "val_sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "test": float(t.mean()),
                "test_sd": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
                "gap": gap,
                "seconds": float(np.mean([x[2] for x in vals])),
                "p": p,
            }
        )
    ps = [r["p"] for r in rows]
    finite = [i for i, p in enumerate(ps) if p == p]
    for i, q in zip(finite, holm([ps[i] for i in finite])):
        rows[i]["p_holm"] = q
    for r in rows:
        r.setdefault("p_holm", float("nan"))
    return rows
