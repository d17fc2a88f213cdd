"""Ablations of MeGA: every variant is toolbox registrations on top of the paper's preset, run over the
same seeds, parents and data, reported with mean, standard deviation, 95 % confidence intervals and a
paired comparison against the paper's variant, its p-value corrected for the number of variants (Holm).

    python examples/ablation.py                         # digits, small CNN, 10 seeds: minutes on 2 cores
    python examples/ablation.py --data-dir ~/data       # CIFAR-10 (ResNet-20 by default)

Add a variant in one line: ``VARIANTS["blx-0.5"] = [("mate", mega_deap.cxBlend, {"alpha": 0.5})]``.
Writes ablation.csv, ablation.json and curves.png (best fitness per generation, mean and band over seeds).
"""

import argparse
import csv
import os

import numpy as np

from mega_deap.experiments.ablation import VARIANTS, run_ablation, summarize
from mega_deap.adapters import TorchAdapter, accuracy
from mega_deap.experiments import add_data_args, pyplot, save_figure, setup, train_or_load, write_json


def plot_curves(results, path):
    import matplotlib.ticker

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (name, runs) in enumerate(results.items()):
        curves = np.array([r["curve"] for r in runs], dtype=np.float64)
        mean, sd = curves.mean(0), curves.std(0)
        gens = np.arange(curves.shape[1])
        ax.plot(gens, mean, label=name, color=f"C{i % 10}", linewidth=2 if name == "paper" else 1.2)
        ax.fill_between(gens, mean - sd, mean + sd, color=f"C{i % 10}", alpha=0.12)
    ax.set_xlabel("generation")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("best validation fitness (mean ± sd over seeds)")
    ax.set_title("MeGA ablations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def table(rows):
    lines = [
        "| variant | best val (mean ± sd) | 95% CI | test (mean ± sd) | test 95% CI | Δ test vs paper [95% CI] | "
        "p | p (Holm) | Δ val vs paper | p val (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = (
            f"{round(100 * r['test_diff'], 2) + 0.0:+.2f} [±{100 * r['test_diff_ci95']:.2f}]"
            if "test_diff" in r
            else "reference"
        )
        p = f"{r['test_p']:.3f}" if "test_p" in r else ""
        ph = f"{r['test_p_holm']:.3f}" if "test_p_holm" in r else ""
        dv = f"{round(100 * r['best_val_diff'], 2) + 0.0:+.2f}" if "best_val_diff" in r else ""
        pv = f"{r['best_val_p_holm']:.3f}" if "best_val_p_holm" in r else ""
        lines.append(
            f"| {r['variant']} | {100 * r['best_val_mean']:.2f} ± {100 * r['best_val_std']:.2f} | "
            f"±{100 * r['best_val_ci95']:.2f} | {100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f} | "
            f"±{100 * r['test_ci95']:.2f} | {diff} | {p} | {ph} | {dv} | {pv} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p, cifar_model="resnet20")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--variants", nargs="*", default=None, help=f"a subset of {list(VARIANTS)}")
    p.add_argument("--popsize", type=int, default=20)
    p.add_argument("--ngen", type=int, default=20)
    p.add_argument("--out", default="results/ablation")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    device, splits, model_name, epochs, factory = setup(args)

    parents = [
        train_or_load(
            factory,
            splits.train,
            cache_dir=os.path.join(args.out, "parents"),
            tag=f"{model_name}-{splits.name}",
            seed=s,
            epochs=epochs,
            device=device,
            progress=not args.quiet,
        )[0]
        for s in (56, 57)
    ]
    adapter = TorchAdapter(parents[0])
    genomes = adapter.genomes(parents).to(device)
    val_ev, test_ev = accuracy(adapter, *splits.val), accuracy(adapter, *splits.test)
    variants = {k: VARIANTS[k] for k in (args.variants or VARIANTS)}
    results = run_ablation(
        adapter,
        genomes,
        val_ev,
        test_ev,
        variants=variants,
        seeds=range(args.seeds),
        popsize=args.popsize,
        ngen=args.ngen,
        progress=not args.quiet,
    )
    rows = summarize(results)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ablation.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}, key=lambda k: (k != "variant", k)))
        w.writeheader()
        w.writerows(rows)
    png = plot_curves(results, os.path.join(args.out, "curves.png"))
    write_json(
        {
            "dataset": splits.name,
            "model": model_name,
            "settings": vars(args),
            "rows": rows,
            "runs": results,
            "variants": {k: [(a, getattr(f, "__name__", repr(f)), kw) for a, f, kw in v] for k, v in variants.items()},
        },
        os.path.join(args.out, "ablation.json"),
    )
    if not args.quiet:
        print(f"\n{splits.name}, {model_name}, {args.seeds} seeds, N={args.popsize}, G={args.ngen}\n")
        print(table(rows))
    print(f"wrote {args.out}/ablation.csv, {args.out}/ablation.json, {png}")  # even with --quiet
    return rows, results


if __name__ == "__main__":
    main()
