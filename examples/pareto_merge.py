"""Pareto merge: two parents that each know half of the classes, merged into a front of models (NSGA-II).

    python examples/pareto_merge.py --out results/pareto          # digits, small CNNs, a few minutes on 2 cores
    python examples/pareto_merge.py --data-dir ~/data --model resnet20 --out results/pareto

Each parent is trained on a class-biased part of the training split (95 % of the examples of its half of the
classes, 5 % of the others). ``mega_deap.merge(..., objectives=[first half, second half])`` evolves blends of
their aligned weights under two objectives, the validation accuracy on each half, and returns the
non-dominated merges: every trade-off between the two halves, not one compromise. Writes ``front.json``
(each point's objective values on validation, and its per-half accuracy on test, reported only) and
``front.png`` (the front, the parents and the output ensemble) to ``--out``.
"""

import argparse
import os
import sys
import time

import torch

import mega_deap
from mega_deap.experiments import add_data_args, format_table, setup, train_or_load, write_json
from mega_deap.experiments.align_study import biased_parts


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_data_args(p, cifar_model="resnet20")
    p.add_argument("--popsize", type=int, default=40, help="N, a multiple of 4 (NSGA-II's tournament)")
    p.add_argument("--ngen", type=int, default=40)
    p.add_argument("--align", choices=("weights", "activations", "none"), default="weights")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a file written after every generation; an interrupted run started again resumes from it",
    )
    p.add_argument("--out", default="results/pareto_merge")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.popsize < 4 or args.popsize % 4:
        p.error(f"--popsize {args.popsize}: NSGA-II's dominance tournament needs a multiple of 4")
    if args.ngen < 1:
        p.error(f"--ngen {args.ngen}: at least one generation")
    return args


@torch.no_grad()
def group_values(models, X, y, groups):
    """Per-group accuracy of the output ensemble of ``models`` (one model: itself), float64."""
    logits = torch.stack([m.eval()(X) for m in models]).mean(0)
    right = (logits.argmax(-1) == y).double()
    return tuple(float(right[torch.isin(y, torch.tensor(g))].mean()) for g in groups)


def main(argv=None):
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    device, splits, model_name, epochs, factory = setup(args, seed=args.seed)
    half = splits.num_classes // 2
    groups = [list(range(half)), list(range(half, splits.num_classes))]
    X, y = splits.train
    parts = biased_parts(y, favoured=half, seed=args.seed)
    t0 = time.perf_counter()
    parents = [
        train_or_load(
            factory,
            (X[idx], y[idx]),
            cache_dir=os.path.join(args.out, "parents"),
            tag=f"{model_name}-{splits.name}-half{i}",
            seed=args.seed + i,
            epochs=epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            device=device,
            progress=not args.quiet,
        )[0]
        for i, idx in enumerate(parts)
    ]
    t_parents = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = mega_deap.merge(
        parents,
        splits.val,
        objectives=groups,
        popsize=args.popsize,
        ngen=args.ngen,
        seed=args.seed,
        device=device,
        align=False if args.align == "none" else args.align,
        progress=not args.quiet,
        checkpoint=args.checkpoint,
    )
    t_merge = time.perf_counter() - t0

    Xt, yt = (t.to(device) for t in splits.test)
    Xv, yv = (t.to(device) for t in splits.val)
    test_of = [group_values([m], Xt, yt, groups) for m in result.models]
    ensemble_val = group_values(parents, Xv, yv, groups)
    rows = [
        {"model": f"parent {i + 1}", "val": v, "test": group_values([p], Xt, yt, groups)}
        for i, (p, v) in enumerate(zip(parents, result.parents))
    ]
    rows.append({"model": "output ensemble", "val": ensemble_val, "test": group_values(parents, Xt, yt, groups)})
    rows += [{"model": f"front {j + 1}", "val": v, "test": t} for j, (v, t) in enumerate(zip(result.values, test_of))]
    names = [f"classes {g[0]}-{g[-1]}" for g in groups]
    table = format_table(
        [
            {
                "model": r["model"],
                **{f"val_acc {n}": r["val"][k] for k, n in enumerate(names)},
                **{f"test_acc {n}": r["test"][k] for k, n in enumerate(names)},
            }
            for r in rows
        ],
        columns=["model"] + [f"val_acc {n}" for n in names] + [f"test_acc {n}" for n in names],
    )
    os.makedirs(args.out, exist_ok=True)
    png = result.plot(
        os.path.join(args.out, "front.png"),
        title="Pareto merge of two class-biased parents (validation)",
        extra={"output ensemble (2 models)": ensemble_val},
    )
    report = {
        "dataset": splits.name,
        "model": model_name,
        "objectives": result.names,
        "weights": list(result.weights),
        "groups": groups,
        "settings": vars(args) | {"epochs": epochs},
        "front": [{"values": list(v), "test": list(t)} for v, t in zip(result.values, test_of)],
        "parents": [{"values": list(r["val"]), "test": list(r["test"])} for r in rows[:2]],
        "output_ensemble": {"values": list(ensemble_val), "test": list(rows[2]["test"])},
        "seconds": {"parents": t_parents, "merge": t_merge},
        "files": {"plot": png},
    }
    write_json(report, os.path.join(args.out, "front.json"))
    say(f"\n{splits.name}, {model_name}, objectives {result.names}; parents {t_parents:.1f} s, merge {t_merge:.1f} s")
    say("objective values are validation accuracies (what NSGA-II saw); test is reported only\n")
    say(table)
    print(f"wrote {os.path.join(args.out, 'front.json')}, {png}")  # even with --quiet
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
