"""MeGA on CIFAR-10, the paper's protocol (arXiv 2406.04607, Table 1), reported honestly.

    python examples/merge_cifar.py                                   # digits when CIFAR-10 is not at hand
    python examples/merge_cifar.py --data-dir ~/data --model resnet56  # the paper's setting
    python examples/merge_cifar.py --align none                      # the paper: no alignment

Trains (or loads from the cache) two parents with the paper's recipe, merges them with the paper's GA
preset (N=20, G=20, K=4, tournament 3, mutation 0.02), and reports validation and test accuracy of each
parent, of weight averaging, of the output ensemble (two models run together: a reference, not a bound,
since a merge can beat it) and of MeGA. Fitness is validation accuracy (ties broken by the log-likelihood)
only: the test split never feeds the GA. By default (--align auto) the parents' hidden units are aligned
first by activation matching wherever the model allows it and their zip joins the first population
(``merge``'s default, chosen in rounds 3 and 4 of the held-out study), every candidate's BatchNorm
statistics are recomputed on --calibration training images before it is scored, and the report adds the
aligned average (with and without that repair) and the zip. --align none is the paper's MeGA. --distil adds
the merged model distilled towards the parents' output ensemble on the validation inputs (no labels read).

Writes to --out: results.json (every number and setting), fitness.png (best and mean fitness per
generation), merged.safetensors (load it with mega_deap.experiments.load_model_file) and the parents'
cache in parents/.
"""

import argparse
import os
import sys
import time

import mega_deap
from mega_deap import Evaluator, distributed
from mega_deap.adapters import TorchAdapter
from mega_deap.cli import add_align_argument, add_ga_arguments
from mega_deap.evaluation import get_metric
from mega_deap.align import align_parents, batchnorm_layers, distil, repair_batchnorm, zip_models
from mega_deap.experiments import (
    add_data_args,
    ensemble_accuracy,
    format_table,
    load_model_file,
    model_accuracy,
    plot_fitness,
    save_model,
    setup,
    train_or_load,
    weight_average,
    write_json,
)


# the report's words for the alignment a merge ran (MergeResult.align)
ALIGNED = {
    "weights": "aligned by weights",
    "activations": "aligned by activations",
    "zip": "aligned by activations, zip seeded",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_data_args(p, cifar_model="resnet56")
    p.add_argument(
        "--parents",
        nargs="*",
        default=None,
        metavar="CKPT",
        help="use these checkpoints (.safetensors or torch state dicts) as parents instead of training",
    )
    p.add_argument("--parent-seeds", type=int, nargs="+", default=[56, 57])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=256)
    add_ga_arguments(p)  # --metric --popsize --ngen --npar --tournsize --sigma --indpb --genome --no-parents --gate
    p.add_argument("--seed", type=int, default=0, help="fixes the validation split and every GA draw")
    add_align_argument(p, also="; with alignment, BatchNorm statistics of every candidate are repaired")
    p.add_argument(
        "--calibration",
        type=int,
        default=1024,
        metavar="N",
        help="unless --align none: training images for BatchNorm repair and matching (0: none)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="write the GA's state here every generation; re-running with it resumes",
    )
    p.add_argument("--out", default="results/merge_cifar")
    p.add_argument(
        "--distil",
        action="store_true",
        help="also distil the merged model towards the parents' output ensemble on the validation inputs "
        "(mega_deap.align.distil, no labels read) and report it; its validation accuracy is biased upwards",
    )
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    distributed.init_from_env()  # launched by torchrun: evaluations sharded over the ranks
    main_rank = distributed.is_main()  # rank 0 (or the only process) prints and writes
    say = (lambda *a: None) if args.quiet or not main_rank else print
    device, splits, model_name, epochs, factory = setup(
        args, seed=args.seed, say=print if main_rank else (lambda *a: None)
    )
    device = distributed.local_device(device)

    # 1. parents: given checkpoints, or trained with the paper's recipe and cached
    t0 = time.perf_counter()
    parents, sources = [], []
    if args.parents:
        for path in args.parents:
            parents.append(load_model_file(factory(), path).to(device))
            sources.append(path)
    else:
        # in a process group rank 0 trains and caches the parents first; the others then load the same bits
        for turn in (0, 1) if distributed.active() else (0,):
            if (turn == 0) == main_rank:
                for s in args.parent_seeds:
                    m, path, cached = train_or_load(
                        factory,
                        splits.train,
                        cache_dir=os.path.join(args.out, "parents"),
                        tag=f"{model_name}-{splits.name}",
                        seed=s,
                        epochs=epochs,
                        lr=args.lr,
                        batch_size=args.batch_size,
                        device=device,
                        progress=not args.quiet and main_rank,
                    )
                    parents.append(m)
                    sources.append(path + (" (cached)" if cached else ""))
            distributed.barrier()
    t_parents = time.perf_counter() - t0

    # 2. the merge: fitness on the validation split only
    calibration = None
    if args.align is not False and args.calibration > 0 and batchnorm_layers(parents[0]):
        calibration = splits.train[0][: args.calibration]  # inputs only: labels are never used
    t0 = time.perf_counter()
    result = mega_deap.merge(
        parents,
        splits.val,
        popsize=args.popsize,
        ngen=args.ngen,
        npar=args.npar,
        tournsize=args.tournsize,
        indpb=args.indpb,
        sigma=args.sigma,
        seed=args.seed,
        device=device,
        progress=not args.quiet,
        checkpoint=args.checkpoint,
        align=args.align,
        calibration=calibration,
        genome=args.genome,
        include_parents=not args.no_parents,
        metric=args.metric,
        gate=args.gate,
    )
    t_merge = time.perf_counter() - t0

    if not main_rank:  # the other ranks helped evaluate; rank 0 reports and writes
        return {"rank": distributed.rank()}

    # 3. the report: validation and test accuracy, side by side, never mixed
    def accs(model):
        return {"val_acc": model_accuracy(model, *splits.val), "test_acc": model_accuracy(model, *splits.test)}

    rows = [
        {"model": f"parent {i + 1} (seed {s})" if not args.parents else f"parent {i + 1}", **accs(m)}
        for i, (m, s) in enumerate(zip(parents, args.parent_seeds if not args.parents else sources))
    ]
    rows.append({"model": "weight averaging", **accs(weight_average(parents))})
    if result.align:  # the matching the merge ran (auto: activations, where the model allows it)
        inputs = calibration if calibration is not None else splits.val[0]
        aligned_avg = weight_average(align_parents(parents, result.align, inputs))
        rows.append({"model": "aligned weight averaging", **accs(aligned_avg)})
        if calibration is not None:
            rows.append(
                {"model": "aligned averaging + BatchNorm repair", **accs(repair_batchnorm(aligned_avg, calibration))}
            )
        if result.align == "zip":  # the zip the merge started from (REPAIRed or BatchNorm-repaired)
            rows.append({"model": "the parents zipped (ZipIt!)", **accs(zip_models(parents, inputs))})
    rows.append(
        {
            "model": "output ensemble",
            "val_acc": ensemble_accuracy(parents, *splits.val),
            "test_acc": ensemble_accuracy(parents, *splits.test),
        }
    )
    kept = "" if result.parent is None else f" (the gate kept {rows[result.parent]['model']}, p = {result.gate_p:.3g})"
    rows.append({"model": "MeGA" + (f", {ALIGNED[result.align]}" if result.align else "") + kept, **accs(result.model)})
    better = max(rows[: len(parents)], key=lambda r: r["val_acc"])  # the parent one would pick without the test split
    gain = {k: rows[-1][k] - better[k] for k in ("val_acc", "test_acc")}
    # the report's last row: the paired difference (points), the number a user of this merge looks for
    last = [{"model": f"MeGA − the better parent on validation ({better['model']})", **gain}]
    t_distil = None
    if args.distil:  # after the GA, with gradients: the merged model towards the parents' ensemble
        t0 = time.perf_counter()
        student = distil(result.model, parents, splits.val[0], seed=args.seed)
        t_distil = time.perf_counter() - t0
        rows.append({"model": "MeGA + distil (validation biased: distilled on its inputs)", **accs(student)})
    table = format_table(rows + last)

    os.makedirs(args.out, exist_ok=True)
    merged_path = save_model(
        result.model,
        os.path.join(args.out, "merged.safetensors"),
        metadata={"model": model_name, "dataset": splits.name},
    )
    fit = Evaluator(TorchAdapter(parents[0]), *splits.val, get_metric(args.metric))
    png = plot_fitness(
        result.logbook,
        os.path.join(args.out, "fitness.png"),
        title=f"MeGA on {splits.name}, {model_name}: validation fitness ({args.metric})",
        extra={r["model"]: v for r, v in zip(rows, fit.scores([fit.adapter.genome(p) for p in parents]))},
    )
    report = {
        "dataset": splits.name,
        "model": model_name,
        "device": str(device),
        "sizes": {"train": len(splits.train[1]), "val": len(splits.val[1]), "test": len(splits.test[1])},
        # the model that ran, not the CIFAR-10 default that did not apply
        "settings": {k: v for k, v in vars(args).items() if k != "cifar_model"}
        | {"epochs": epochs, "model": model_name},
        "parents": sources,
        "rows": rows,
        "logbook": [dict(r) for r in result.logbook],
        "metric": args.metric,
        "mega_val_fitness": result.fitness,
        "gate": {"p": result.gate_p, "parent": result.parent},
        "align": result.align,
        "mega_minus_better_parent": gain,
        "seconds": {"parents": t_parents, "merge": t_merge} | ({"distil": t_distil} if args.distil else {}),
        "files": {"merged_model": merged_path, "plot": png},
    }
    write_json(report, os.path.join(args.out, "results.json"))
    say(
        f"\n{splits.name}, {model_name}: {len(splits.train[1])} train / {len(splits.val[1])} validation "
        f"(fitness) / {len(splits.test[1])} test images; parents {t_parents:.1f} s, merge {t_merge:.1f} s\n"
    )
    say(table)
    print(f"\nwrote {os.path.join(args.out, 'results.json')}, {png}, {merged_path}")  # even with --quiet
    return report


if __name__ == "__main__":
    report = main()
    distributed.shutdown()
    sys.exit(0 if report else 1)
