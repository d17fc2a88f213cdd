"""Merge defaults chosen on development tasks and reported on held-out ones, with over-fitting parents.

    python examples/heldout_study.py --out results/heldout   # docs/studies/alignment.md (about 15 min, 2 cores)
    python examples/heldout_study.py --tasks digits-mlp-subset --seeds 2   # a quick look

Tasks (``mega_deap.experiments.heldout_study``): development, on which merge's default fitness and
matching are chosen: a digits MLP on 30 % of its training data, digits CNNs with and without BatchNorm on
20 %-noisy labels; held out, reported only: a wider digits CNN without BatchNorm on 30 % of its data, a
BatchNorm MLP on 30 % of breast cancer, a two-hidden-layer MLP on noisy labels of a 10-class synthetic
task. Every parent is trained until it fits its data.
Each task in two settings: same-data parents (two seeds) and different-data parents (class-biased
parts). The rule (:func:`~mega_deap.experiments.heldout_study.choose_metric`) reads the development tables
only; the held-out tables are printed beside it, never used by it.
"""

import argparse
import os
import sys
import time

from mega_deap.experiments import heldout_study as study
from mega_deap.presets import DEFAULT_MATCHING, DEFAULT_METRIC
from mega_deap.experiments import write_json
from mega_deap.experiments.align_study import SETTINGS


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", choices=tuple(study.TASKS), default=list(study.TASKS))
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--popsize", type=int, default=20)
    p.add_argument("--ngen", type=int, default=20)
    p.add_argument("--out", default="results/heldout")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for name in ("seeds", "popsize", "ngen"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    results, t0 = {}, time.perf_counter()
    for name in args.tasks:
        task = study.TASKS[name]
        for setting in args.settings:
            runs = []
            for seed in range(args.seeds):
                runs.append(study.run_task(task, setting, seed, popsize=args.popsize, ngen=args.ngen))
                say(
                    f"{name} {setting} seed {seed}: "
                    + ", ".join(f"{m} {v[1]:.3f}" for m, v in runs[-1].items() if m in study.METHODS)
                )
            results[f"{name}/{setting}"] = {
                "runs": runs,
                "rows": study.summarize(runs),
                "held_out": task not in study.DEVELOPMENT,
            }
    dev = {k: r["rows"] for k, r in results.items() if not r["held_out"]}
    choices = {"fitness": study.choose_metric(dev), "matching": study.choose_matching(dev)} if dev else {}
    os.makedirs(args.out, exist_ok=True)
    write_json(
        {"settings": vars(args), "results": results, "choices": choices, "seconds": time.perf_counter() - t0},
        os.path.join(args.out, "results.json"),
    )
    say(table(results, choices))
    print(f"wrote {os.path.join(args.out, 'results.json')}")
    return {"results": results, "choices": choices}


def summary(results, choices) -> str:
    """README's short form: per table, each default method's test accuracy minus the best parent's (mean and
    sd over seeds, points), the gap to the ensemble that merge(align=True) closes, and the rule's choices."""
    methods = (
        ("best parent by validation", "the parent chosen on validation"),
        (f"merge, {DEFAULT_METRIC}", "`merge()`"),
        (f"merge(align={DEFAULT_MATCHING!r})", "`merge(align=True)`"),
        ("coefficient GA, aligned", "coefficient GA"),
        ("cma_merge", "`cma_merge`"),
    )
    out = [
        "| task / parents | tasks | best parent, test % | "
        + " | ".join(m for _, m in methods)
        + " | ensemble | gap closed by `merge(align=True)` |",
        "|---" * (len(methods) + 5) + "|",
    ]
    for held in (False, True):
        for key, res in results.items():
            if res["held_out"] != held:
                continue
            rows = {r["method"]: r for r in res["rows"]}
            best = rows["best parent"]
            cells = [
                f"{100 * rows[m]['delta']:+.2f} ± {100 * rows[m]['delta_sd']:.2f}" if m in rows else ""
                for m, _ in methods
            ]
            ens = rows["output ensemble"]["test"] - best["test"]
            gap = rows.get(f"merge(align={DEFAULT_MATCHING!r})", {}).get("gap", float("nan"))
            out.append(
                f"| {key} | {'held out' if held else 'development'} | {100 * best['test']:.2f} | "
                + " | ".join(cells)
                + f" | {100 * ens:+.2f} | "
                + ("no gap" if gap != gap else f"{100 * gap:.0f} %")
                + " |"
            )
    lines = [
        f"- {what}: the rule chooses `{chosen}` ("
        + ", ".join(f"`{m}` worst {100 * w:+.2f}, mean {100 * a:+.2f}" for m, (w, a) in scores.items())
        + ")"
        for what, (chosen, scores) in choices.items()
    ]
    return (
        f"`merge()` is `merge(metric={DEFAULT_METRIC!r})`, `merge(align=True)` is `merge(align={DEFAULT_MATCHING!r})`. "
        "Test accuracy minus the best parent's (points, mean ± sd over seeds; the best parent is the one "
        "better on test, the harder baseline: an oracle no method that sees only validation data can match, as "
        "the column of the parent chosen on validation shows); ensemble: the output ensemble's, for scale.\n\n"
        + "\n".join(out)
        + "\n\nOn the development tables (test accuracy minus the best parent's, worst "
        "table and mean):\n\n" + "\n".join(lines)
    )


def table(results, choices) -> str:
    """The rule's choices, then one Markdown table per task and setting, development first."""
    out = []
    for what, (chosen, scores) in choices.items():
        out.append(
            f"Development tables only, each candidate {what}'s worst and mean test accuracy minus the best "
            "parent's (points): "
            + "; ".join(f"`{m}` {100 * w:+.2f} / {100 * a:+.2f}" for m, (w, a) in scores.items())
            + f". The rule (the highest worst case) chooses **`{chosen}`**.\n"
        )
    for held in (False, True):
        for key, res in results.items():
            if res["held_out"] != held:
                continue
            parents = res["runs"][0]["parents"]
            out.append(
                f"**{key}** ({'held out' if held else 'development'}, {len(res['runs'])} seeds; seed 0's "
                f"parents: training accuracy {', '.join(f'{100 * a:.0f} %' for a in parents['train_acc'])}, "
                f"mean confidence on validation {', '.join(f'{100 * c:.0f} %' for c in parents['mean_confidence'])}, "
                f"validation accuracy {', '.join(f'{100 * a:.0f} %' for a in parents['val_acc'])})\n"
            )
            out.append(
                "| method | val % | test % | test − best parent (points) | worst seed | gap closed | "
                "seeds below the better parent on val | s a run |"
            )
            out.append("|---|---|---|---|---|---|---|---|")
            for r in res["rows"]:
                plain = r["method"] in ("best parent", "output ensemble")
                gap = "" if plain else ("no gap" if r["gap"] != r["gap"] else f"{100 * r['gap']:.0f} %")
                delta = "" if plain else f"{100 * r['delta']:+.2f} ± {100 * r['delta_sd']:.2f}"
                worst = "" if plain else f"{100 * r['delta_min']:+.2f}"
                below = "" if plain else str(r["below_val"])
                out.append(
                    f"| {r['method']} | {100 * r['val']:.2f} ± {100 * r['val_sd']:.2f} | "
                    f"{100 * r['test']:.2f} ± {100 * r['test_sd']:.2f} | {delta} | {worst} | {gap} | "
                    f"{below} | {r['seconds']:.1f} |"
                )
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
