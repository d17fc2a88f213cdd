"""GA hyper-parameter search, "basic" (children train from scratch) against "merge" (children start from
the merge of their parents' trained weights), as in Gonzalez & Varrun (KTH, 2021).

    python examples/hpo_weight_merge.py                 # digits, diabetes (MAE) and wine, 3 seeds each

Both modes run DEAP's toolbox with the same seeds and budgets; they differ by their variation
registrations: "basic" trains every child from scratch (``cxScratch``, ``mutGenes(inherit=False)``), "merge"
starts children from their parents' trained weights (``cxWeightMerge``, ``mutGenes(inherit=True)``).
Training stops early on a held-out part of the training split (``--patience`` epochs without improvement;
the ``epochs`` gene is the most a network may train), so a child that starts trained can stop sooner.
Per data set: the fitness-function time (train + validation score) per evaluation, its mean, median and
skewness, and the per-seed mean time compared between modes (paired over seeds, Holm-corrected over data
sets); epochs trained; the share of evaluations that started from weights; the best validation score and
its test score; the total duration; the median training loss networks start from (measured outside the
timed fitness function); and the study's stopping rule "until accepted": generations and seconds until the
best validation score reaches the accepted value. Writes results.json, times_hist.png and durations.png to --out.
"""

import argparse
import os
import random
import time

import numpy as np
import torch
from deap import base, creator, tools
from scipy import stats as sstats
from tqdm.auto import tqdm

import mega_deap
from mega_deap import distributed
from mega_deap.experiments.ablation import holm
from mega_deap.experiments import pyplot, save_figure, write_json
from mega_deap.experiments.hpo import (
    SPACE,
    Candidate,
    TrainEvaluator,
    cxScratch,
    cxWeightMerge,
    eaUntil,
    mutGenes,
    random_genes,
)

DATASETS = {"digits": "classification", "diabetes": "regression", "wine": "classification"}
ACCEPT = {"digits": 0.975, "diabetes": 42.0, "wine": 0.99}
# the study's search space, with the epochs gene as the most a network may train (early stopping decides)
STUDY_SPACE = dict(SPACE, epochs=(10, 20, 40))


def load(name, seed=0):
    """Standardised features; 60 / 20 / 20 train / validation / test with a fixed seed."""
    from sklearn import datasets

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(1000 + seed))
    n_tr, n_va = int(0.6 * len(X)), int(0.2 * len(X))
    tr, va, te = perm[:n_tr], perm[n_tr : n_tr + n_va], perm[n_tr + n_va :]
    mean, std = X[tr].mean(0), X[tr].std(0).clamp_min(1e-8)
    X = (X - mean) / std
    y = torch.tensor(y, dtype=torch.long if DATASETS[name] == "classification" else torch.float32)
    return (X[tr], y[tr]), (X[va], y[va]), (X[te], y[te])


def classes():
    if not hasattr(creator, "HPOFitMax"):
        creator.create("HPOFitMax", base.Fitness, weights=(1.0,))
        creator.create("HPOFitMin", base.Fitness, weights=(-1.0,))
        creator.create("NetMax", Candidate, fitness=creator.HPOFitMax)
        creator.create("NetMin", Candidate, fitness=creator.HPOFitMin)
    return creator.NetMax, creator.NetMin


def toolbox_for(mode, evaluator, icls, space_rng, space=STUDY_SPACE):
    tb = base.Toolbox()
    shape = {"in_features": evaluator.in_features, "out_features": evaluator.out_features}
    tb.register("individual", lambda: icls(random_genes(space, rng=space_rng)))  # noqa: E731 (local, never pickled)
    tb.register("evaluate", evaluator)
    tb.register("map", evaluator.map)  # in a torch.distributed process group: each rank trains its share
    tb.register("select", tools.selTournament, tournsize=3)
    merge = mode == "merge"  # the difference between the modes: do children keep trained weights?
    tb.register("mate", cxWeightMerge if merge else cxScratch, **shape)
    tb.register("mutate", mutGenes, indpb=0.2, inherit=merge, space=space, **shape)
    return tb


def run(name, mode, seed, popsize, ngen, accept=None, patience=3):
    train, val, test = load(name, seed)
    task = DATASETS[name]
    ev = TrainEvaluator(train, val, task=task, seed=seed, patience=patience)
    icls = classes()[0 if task == "classification" else 1]
    mega_deap.seed(seed)
    tb = toolbox_for(mode, ev, icls, random.Random(seed))
    pop = [tb.individual() for _ in range(popsize)]
    hof = tools.HallOfFame(1)
    t0 = time.perf_counter()
    _, log = eaUntil(pop, tb, cxpb=0.6, mutpb=0.3, ngen=ngen, accept=accept, halloffame=hof)
    total = time.perf_counter() - t0
    best = hof[0]
    return {
        "dataset": name,
        "mode": mode,
        "seed": seed,
        "times": ev.times,
        "total": total,
        "val": best.fitness.values[0],
        "test": ev.test_score(best, *test),
        "genes": best.genes,
        "generations": log.select("gen")[-1],
        "initial_losses": ev.initial_losses,
        "epochs_run": ev.epochs_run,
        "warm": ev.warm,
    }


def summarize(runs, datasets=DATASETS):
    out = {}
    for name in datasets:
        row = {"dataset": name, "metric": "accuracy" if DATASETS[name] == "classification" else "MAE"}
        per_seed = {}
        for mode in ("basic", "merge"):
            rs = sorted(
                (r for r in runs if r["dataset"] == name and r["mode"] == mode and not r.get("until")),
                key=lambda r: r["seed"],
            )
            if not rs:
                continue
            times = np.concatenate([r["times"] for r in rs])
            per_seed[mode] = {r["seed"]: float(np.mean(r["times"])) for r in rs}
            seed_means = list(per_seed[mode].values())
            row[f"{mode}_time_mean"] = float(times.mean())
            row[f"{mode}_time_median"] = float(np.median(times))
            row[f"{mode}_time_skew"] = float(sstats.skew(times)) if len(times) > 2 else float("nan")
            row[f"{mode}_time_seed_sd"] = float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else float("nan")
            row[f"{mode}_evaluations"] = int(len(times))
            row[f"{mode}_epochs_mean"] = float(np.mean(np.concatenate([r["epochs_run"] for r in rs])))
            row[f"{mode}_warm_share"] = float(np.mean(np.concatenate([np.asarray(r["warm"], float) for r in rs])))
            row[f"{mode}_start_loss"] = float(np.median(np.concatenate([r["initial_losses"] for r in rs])))
            for key in ("val", "test", "total"):
                vals = [r[key] for r in rs]
                row[f"{mode}_{key}"] = float(np.mean(vals))
                row[f"{mode}_{key}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            until = [r for r in runs if r["dataset"] == name and r["mode"] == mode and r.get("until")]
            if until:
                row[f"{mode}_until_seconds"] = float(np.mean([r["total"] for r in until]))
                row[f"{mode}_until_generations"] = float(np.mean([r["generations"] for r in until]))
        if "basic_time_mean" in row and "merge_time_mean" in row:
            row["time_saving"] = 1 - row["merge_time_mean"] / row["basic_time_mean"]
            seeds = sorted(set(per_seed["basic"]) & set(per_seed["merge"]))
            b = [per_seed["basic"][s] for s in seeds]
            m = [per_seed["merge"][s] for s in seeds]
            row["time_p"] = float(sstats.ttest_rel(b, m).pvalue) if len(seeds) > 1 else float("nan")
        out[name] = row
    names = [n for n in out if "time_p" in out[n]]
    for n, p in zip(names, holm([out[n]["time_p"] for n in names])):
        out[n]["time_p_holm"] = p
    return out


def table(summary):
    lines = [
        "| data set | metric | fitness time mean basic / merge (s) | saving | p (Holm) | median basic / merge (s) | "
        "skewness basic / merge | epochs trained basic / merge | evaluations from weights basic / merge | "
        "median starting train loss basic / merge | best val basic / merge | test basic / merge | "
        "until accepted: s (gens) basic / merge |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.values():
        f = (lambda v: f"{v:.4f}") if r["metric"] == "accuracy" else (lambda v: f"{v:.2f}")
        until = (
            f"{r['basic_until_seconds']:.1f} ({r['basic_until_generations']:.1f}) / "
            f"{r['merge_until_seconds']:.1f} ({r['merge_until_generations']:.1f})"
            if "merge_until_seconds" in r
            else ""
        )
        lines.append(
            f"| {r['dataset']} | {r['metric']} | {r['basic_time_mean']:.3f} ± {r['basic_time_seed_sd']:.3f} / "
            f"{r['merge_time_mean']:.3f} ± {r['merge_time_seed_sd']:.3f} | {100 * r['time_saving']:.0f}% | "
            f"{r.get('time_p_holm', float('nan')):.3f} | {r['basic_time_median']:.3f} / {r['merge_time_median']:.3f} | "
            f"{r['basic_time_skew']:.2f} / {r['merge_time_skew']:.2f} | "
            f"{r['basic_epochs_mean']:.1f} / {r['merge_epochs_mean']:.1f} | "
            f"{100 * r['basic_warm_share']:.0f}% / {100 * r['merge_warm_share']:.0f}% | "
            f"{r['basic_start_loss']:.3g} / {r['merge_start_loss']:.3g} | "
            f"{f(r['basic_val'])} ± {f(r['basic_val_sd'])} / {f(r['merge_val'])} ± {f(r['merge_val_sd'])} | "
            f"{f(r['basic_test'])} ± {f(r['basic_test_sd'])} / {f(r['merge_test'])} ± {f(r['merge_test_sd'])} | "
            f"{until} |"
        )
    return "\n".join(lines)


def plots(runs, out, datasets=DATASETS):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.5), dpi=110)
    for ax, name in zip(np.atleast_1d(axes), datasets):
        times = {
            mode: np.concatenate(
                [r["times"] for r in runs if r["dataset"] == name and r["mode"] == mode and not r.get("until")]
                or [np.zeros(0)]
            )
            for mode in ("basic", "merge")
        }
        bins = np.histogram_bin_edges(np.concatenate(list(times.values())), bins=25)  # shared: comparable bars
        for mode, color in (("basic", "C0"), ("merge", "C1")):
            ax.hist(times[mode], bins=bins, alpha=0.55, color=color, label=f"{mode} ({len(times[mode])})")
        ax.set_title(name)
        ax.set_xlabel("fitness-function time (s)")
    np.atleast_1d(axes)[0].set_ylabel("evaluations")
    for ax in np.atleast_1d(axes):
        ax.legend(fontsize=8)
    hist = save_figure(fig, os.path.join(out, "times_hist.png"))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    x = np.arange(len(datasets))
    for k, (mode, color) in enumerate((("basic", "C0"), ("merge", "C1"))):
        vals = [
            np.mean([r["total"] for r in runs if r["dataset"] == n and r["mode"] == mode and not r.get("until")] or [0])
            for n in datasets
        ]
        ax.bar(x + (k - 0.5) * 0.38, vals, width=0.38, color=color, label=mode)
    ax.set_xticks(x, list(datasets))
    ax.set_ylabel("total duration (s)")
    ax.legend()
    bars = save_figure(fig, os.path.join(out, "durations.png"))
    return hist, bars


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument(
        "--patience", type=int, default=3, help="early stopping: epochs without improvement on the held-out split"
    )
    p.add_argument("--popsize", type=int, default=10)
    p.add_argument("--ngen", type=int, default=6)
    p.add_argument("--no-until", action="store_true", help="skip the 'until accepted accuracy' runs")
    p.add_argument("--out", default="results/hpo_weight_merge")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    distributed.init_from_env()  # launched by torchrun: each generation's trainings sharded over the ranks
    quiet = args.quiet or not distributed.is_main()
    datasets = [k for k in DATASETS if k in args.datasets]
    runs = []
    plan = [(name, seed, mode) for name in datasets for seed in range(args.seeds) for mode in ("basic", "merge")]
    bar = tqdm(plan, desc="hpo", disable=True if quiet else None)  # a bar on a terminal only
    for name, seed, mode in bar:
        bar.set_postfix(data=name, seed=seed, mode=mode)
        runs.append(run(name, mode, seed, args.popsize, args.ngen, patience=args.patience))
        best = runs[-1]["val"]
        if not args.no_until:
            r = run(name, mode, seed, args.popsize, 3 * args.ngen, accept=ACCEPT[name], patience=args.patience)
            runs.append(r | {"until": True})
        if not quiet:
            tqdm.write(f"{name} {mode} seed {seed}: best validation {best:.4f}")
    summary = summarize(runs, datasets)
    if not distributed.is_main():  # the other ranks trained their shares; rank 0 writes
        return summary, runs
    os.makedirs(args.out, exist_ok=True)
    hist, bars = plots(runs, args.out, datasets)
    write_json(
        {
            "settings": vars(args),
            "summary": summary,
            "runs": runs,
            "accept": ACCEPT,
            "files": {"histogram": hist, "durations": bars},
        },
        os.path.join(args.out, "results.json"),
    )
    if not quiet:
        print()
        print(table(summary))
    return summary, runs


if __name__ == "__main__":
    main()
    distributed.shutdown()
