"""Hierarchical MeGA (the paper's section 4.3, Table 2): 2^k parents merged pairwise, 8 -> 4 -> 2 -> 1.

    python examples/merge_hierarchical.py                       # digits, 8 small CNNs
    python examples/merge_hierarchical.py --data-dir ~/data --model resnet56

Unlike the reference script, fitness is the validation split (never the test set) and nothing is
fine-tuned after merging. Writes results.json and tree.png (accuracy per level) to --out.
"""

import argparse
import os
import sys
import time

import mega_deap
from mega_deap.experiments import (
    add_data_args,
    format_table,
    model_accuracy,
    pyplot,
    save_figure,
    setup,
    train_or_load,
    write_json,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_data_args(p, cifar_model="resnet56")
    p.add_argument("--leaves", type=int, default=8, help="number of parents, a power of two")
    p.add_argument("--first-seed", type=int, default=56, help="parents use seeds first-seed, first-seed+1, ...")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--popsize", type=int, default=20)
    p.add_argument("--ngen", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/merge_hierarchical")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def plot_levels(levels_acc, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for split, marker in (("val_acc", "o"), ("test_acc", "s")):
        for lvl, accs in enumerate(levels_acc):
            ys = [a[split] for a in accs]
            ax.scatter(
                [lvl] * len(ys),
                ys,
                marker=marker,
                color="C0" if split == "val_acc" else "C1",
                label=split.replace("_acc", "") if lvl == 0 else None,
                alpha=0.8,
            )
    ax.set_xticks(range(len(levels_acc)), [f"{len(a)} model{'s' * (len(a) > 1)}" for a in levels_acc])
    ax.set_ylabel("accuracy")
    ax.set_title("hierarchical MeGA: accuracy per level")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    device, splits, model_name, epochs, factory = setup(args, seed=args.seed)

    t0 = time.perf_counter()
    parents = [
        train_or_load(
            factory,
            splits.train,
            cache_dir=os.path.join(args.out, "parents"),
            tag=f"{model_name}-{splits.name}",
            seed=args.first_seed + i,
            epochs=epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            device=device,
            progress=not args.quiet,
        )[0]
        for i in range(args.leaves)
    ]
    t_parents = time.perf_counter() - t0
    t0 = time.perf_counter()
    tree = mega_deap.merge_tree(
        parents, splits.val, popsize=args.popsize, ngen=args.ngen, seed=args.seed, device=device, verbose=False
    )
    t_merge = time.perf_counter() - t0

    levels_acc, rows = [], []
    for lvl, models in enumerate(tree.levels):
        accs = [
            {"val_acc": model_accuracy(m, *splits.val), "test_acc": model_accuracy(m, *splits.test)} for m in models
        ]
        levels_acc.append(accs)
        for j, a in enumerate(accs):
            rows.append({"level": lvl, "model": f"parent {j + 1}" if lvl == 0 else f"merge {lvl}.{j + 1}", **a})
    table = format_table(rows, columns=("level", "model", "val_acc", "test_acc"))
    os.makedirs(args.out, exist_ok=True)
    png = plot_levels(levels_acc, os.path.join(args.out, "tree.png"))
    report = {
        "dataset": splits.name,
        "model": model_name,
        "settings": vars(args) | {"epochs": epochs},
        "rows": rows,
        "seconds": {"parents": t_parents, "merge": t_merge},
        "logbooks": [[dict(r) for r in m.logbook] for m in tree.merges],
        "files": {"plot": png},
    }
    write_json(report, os.path.join(args.out, "results.json"))
    say(f"\n{splits.name}, {model_name}, {args.leaves} parents; parents {t_parents:.1f} s, merges {t_merge:.1f} s\n")
    say(table)
    print(f"wrote {os.path.join(args.out, 'results.json')}, {png}")  # even with --quiet
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
