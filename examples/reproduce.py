"""Regenerate every table of the documentation (docs/studies/ and docs/benchmarks.md), with the environment
printed beside each.

    python examples/reproduce.py --out results/                      # everything (about two hours, 2 cores)
    python examples/reproduce.py --out results/ --only merge keras   # some sections
    python examples/reproduce.py --out results/ --quick              # tiny settings: checks the pipeline only
    python examples/reproduce.py --out results/ --resume             # continue a stopped run's held-out study

Each section runs its example over several seeds and writes ``<out>/<section>.md`` (the table, the command
and the environment) beside the example's own files. Unless ``--quick`` or ``--no-docs`` is given, the
table also replaces the block between ``<!-- reproduce:<section> -->`` and ``<!-- /reproduce:<section> -->``
in the page ``DOC`` names, so the numbers there are always this command's.

Same seed, same machine, same thread count: the same bits. Across thread counts CPU reductions add in
another order, so the last digits of losses and some accuracies can differ.
"""

import argparse
import importlib.util
import os
import pathlib
import re
import sys
import time

import numpy as np

from mega_deap.experiments import environment_line

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = (
    "merge",
    "hierarchical",
    "keras",
    "align",
    "heldout",
    "heldout-seeds",
    "distil",
    "hpo",
    "ablation",
    "pareto",
    "neuroevolution",
    "bench",
    "bench-dist",
    "bench-pairing",
    "bench-gpu",
    "bench-peers",
)
DOC = {
    "merge": "docs/studies/merge.md",
    "hierarchical": "docs/studies/merge.md",
    "keras": "docs/studies/keras.md",
    "align": "docs/studies/alignment.md",
    "heldout": "docs/studies/alignment.md",
    "heldout-seeds": "docs/studies/alignment.md",
    "distil": "docs/studies/alignment.md",
    "hpo": "docs/studies/hpo.md",
    "ablation": "docs/studies/ablation.md",
    "pareto": "docs/studies/toolkit.md",
    "neuroevolution": "docs/studies/toolkit.md",
    "bench-peers": "docs/benchmarks.md",
    "bench": "docs/benchmarks.md",
    "bench-dist": "docs/benchmarks.md",
    "bench-pairing": "docs/benchmarks.md",
    "bench-gpu": "docs/benchmarks.md",
}  # the page each section's table is written into
# the sections whose study writes a progress file after each run, and can resume from it
RESUMABLE = ("heldout", "heldout-seeds", "distil")
# the GPU table: no GPU here, so it is rendered from the JSON files that bench_merge.py wrote on one
GPU_RESULTS = ("benchmarks/results_gpu_resnet56.json", "benchmarks/results_gpu_mlp.json")
# the peers' table: EvoTorch, EvoX and PyGAD are an optional extra, so it is rendered from the JSON that
# bench_peers.py wrote in an environment that has them
PEERS_RESULTS = "benchmarks/results_peers.json"


def load(name, folder="examples"):
    spec = importlib.util.spec_from_file_location(f"_reproduce_{name}", ROOT / folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ms(values, scale=100.0, digits=2):
    """``mean ± sd`` of ``values`` (sample sd over seeds), scaled (percent by default)."""
    v = np.asarray(values, dtype=np.float64) * scale
    sd = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{v.mean():.{digits}f} ± {sd:.{digits}f}"


######################################
# Sections                           #
######################################


def section_merge(out, quick):
    """README's main command over seeds: each seed cuts another validation split, trains its parents on the
    rest and runs the GA."""
    seeds = range(2 if quick else 5)
    quick_args = ["--epochs", "2", "--popsize", "4", "--ngen", "1"] if quick else []
    ex = load("merge_cifar")
    reports = [
        ex.main(
            ["--dataset", "digits", "--seed", str(s), "--out", str(out / "merge" / f"seed{s}"), "--quiet", *quick_args]
        )
        for s in seeds
    ]
    names = [r["model"].split(" (")[0] for r in reports[0]["rows"]]
    lines = ["| model | val_acc (mean ± sd) | test_acc (mean ± sd) |", "|---|---|---|"]
    for i, name in enumerate(names):
        lines.append(
            f"| {name} | {ms([r['rows'][i]['val_acc'] for r in reports])} | "
            f"{ms([r['rows'][i]['test_acc'] for r in reports])} |"
        )
    mega = [r["rows"][-1] for r in reports]
    best_val = [max(r["rows"][:2], key=lambda x: x["val_acc"]) for r in reports]  # chosen without the test split
    lines.append(
        f"| MeGA − the parent with the better validation accuracy | "
        f"{ms([m['val_acc'] - b['val_acc'] for m, b in zip(mega, best_val)])} | "
        f"{ms([m['test_acc'] - b['test_acc'] for m, b in zip(mega, best_val)])} |"
    )
    secs = [r["seconds"]["parents"] + r["seconds"]["merge"] for r in reports]
    s = reports[0]["sizes"]
    head = (
        f"digits, small CNN, {len(reports)} seeds (validation split and GA seed {seeds[0]}..{seeds[-1]}); "
        f"{s['train']:,} train / {s['val']} validation (fitness) / {s['test']} test images; "
        f"parents and merge {np.mean(secs):.1f} s a seed; the significance gate returned a parent in "
        f"{sum(r['gate']['parent'] is not None for r in reports)} of {len(reports)} seeds."
    )
    return head, "\n".join(lines), {"reports": reports}


def section_hierarchical(out, quick):
    seeds = range(1 if quick else 3)
    quick_args = ["--epochs", "2", "--popsize", "4", "--ngen", "1", "--leaves", "4"] if quick else []
    ex = load("merge_hierarchical")
    reports = [
        ex.main(
            [
                "--dataset",
                "digits",
                "--seed",
                str(s),
                "--out",
                str(out / "hierarchical" / f"seed{s}"),
                "--quiet",
                *quick_args,
            ]
        )
        for s in seeds
    ]
    levels = sorted({r["level"] for r in reports[0]["rows"]})
    lines = [
        "| level | models | val_acc (mean ± sd over seeds of the level's mean) | test_acc (same) | "
        "merges below the better input on test |",
        "|---|---|---|---|---|",
    ]
    for lvl in levels:
        per = [[x for x in r["rows"] if x["level"] == lvl] for r in reports]
        worse = ""
        if lvl > 0:
            below = total = 0
            for rep, rows in zip(reports, per):
                prev = [x for x in rep["rows"] if x["level"] == lvl - 1]
                for j, x in enumerate(rows):
                    total += 1
                    below += x["test_acc"] < max(prev[2 * j]["test_acc"], prev[2 * j + 1]["test_acc"])
            worse = f"{below} of {total}"
        lines.append(
            f"| {lvl} | {len(per[0])} | {ms([np.mean([x['val_acc'] for x in p]) for p in per])} | "
            f"{ms([np.mean([x['test_acc'] for x in p]) for p in per])} | {worse} |"
        )
    n = len(reports[0]["rows"]) - sum(1 for x in reports[0]["rows"] if x["level"] > 0)
    head = (
        f"digits, {n} small CNNs merged pairwise, {len(reports)} seeds (validation split and GA seeds); "
        f"{np.mean([r['seconds']['parents'] + r['seconds']['merge'] for r in reports]):.1f} s a seed."
    )
    return head, "\n".join(lines), {"reports": reports}


def section_keras(out, quick):
    try:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras  # noqa: F401
    except Exception as err:
        return f"Keras is not usable here ({type(err).__name__}); section skipped.", "", {}
    seeds = range(2 if quick else 5)
    quick_args = ["--epochs", "2", "--popsize", "4", "--ngen", "1"] if quick else []
    ex = load("merge_keras")
    runs = [ex.main(["--seed", str(s), "--quiet", *quick_args]) for s in seeds]
    lines = ["| model | val_acc (mean ± sd) | test_acc (mean ± sd) |", "|---|---|---|"]
    for i, (name, _, _) in enumerate(runs[0]["rows"]):
        lines.append(f"| {name} | {ms([r['rows'][i][1] for r in runs])} | {ms([r['rows'][i][2] for r in runs])} |")
    best = [max(r["rows"][:2], key=lambda x: x[1]) for r in runs]
    lines.append(
        f"| MeGA − the parent with the better validation accuracy | "
        f"{ms([r['rows'][-1][1] - b[1] for r, b in zip(runs, best)])} | "
        f"{ms([r['rows'][-1][2] - b[2] for r, b in zip(runs, best)])} |"
    )
    head = (
        f"two Keras MLPs with BatchNormalization on digits, torch backend, {len(runs)} seeds "
        f"(validation split and GA seed)."
    )
    return head, "\n".join(lines), {"runs": [{"rows": r["rows"], "fitness": r["fitness"]} for r in runs]}


def section_align(out, quick):
    """Align, then evolve: every merging method over seeds, on parents from the same data and on parents
    from class-biased parts of it (``examples/align_study.py``)."""
    ex = load("align_study")
    argv = ["--out", str(out / "align"), "--quiet"]
    if quick:
        argv += ["--models", "mlp", "--seeds", "2", "--epochs", "2", "--popsize", "4", "--ngen", "2"]
    results = ex.main(argv)
    seeds = len(next(iter(results.values()))["runs"])
    head = (
        f"{seeds} seeds per model and setting, N={4 if quick else 20}, G={2 if quick else 20}; accuracies in % "
        f"(mean ± sd over seeds); gap closed: of the gap from the best parent's test accuracy to the output "
        f'ensemble\'s, from the means over seeds ("no gap": the ensemble is less than a point above the best '
        f"parent); p: one-sided paired Wilcoxon test that the method beats the best "
        f"parent on test, Holm-corrected over the methods of a table."
    )
    return head, ex.table(results), {"results": results}


def studied(ex, argv) -> dict:
    """The held-out study's ``main(argv)`` with its printed lines and tables dropped (this section prints its
    own block) but its progress bar kept: hours of runs show progress on a terminal."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return ex.main(argv)


def section_heldout(out, quick, reuse=False, resume=False):
    """Merge defaults chosen on development tasks, reported on held-out ones (``examples/heldout_study.py``);
    ``reuse``: its ``--reuse`` of the runs in ``out/heldout/results.json``; ``resume``: its ``--resume``."""
    ex = load("heldout_study")
    argv = ["--out", str(out / "heldout")] + (["--resume"] if resume else [])
    if reuse:
        argv += ["--reuse", str(out / "heldout" / "results.json")]
    if quick:
        argv += [
            "--tasks",
            "digits-mlp-subset",
            "cancer-mlp-bn-subset",
            "--seeds",
            "2",
            "--popsize",
            "6",  # room for the parents, their average, its REPAIRed copy and their zip
            "--ngen",
            "2",
        ]
    res = studied(ex, argv)
    seeds = len(next(iter(res["results"].values()))["runs"])
    head = (
        f"{seeds} seeds per task and setting, N={6 if quick else 20}, G={2 if quick else 20}; accuracies in % "
        f"(mean ± sd over seeds); test − best parent: the method's test accuracy minus the better parent's "
        f"on test (mean ± sd over seeds, and the worst seed); gap closed: of the gap from the best parent's "
        f"test accuracy to the output ensemble's, from the means; the last column but one counts the seeds "
        f"whose validation accuracy is below the parent with the better validation accuracy."
    )
    res["summary"] = ex.summary(res["results"], res["choices"])  # README's short form
    return head, ex.table(res["results"], res["choices"]), res


# the half-point rule with more seeds: the seeds of each held-out table
RULE_SEEDS = 20


def section_heldout_seeds(out, quick, resume=False):
    """The half-point rule on the tasks the study's round 8 held out, with :data:`RULE_SEEDS` seeds and the
    default methods' rows only (``examples/heldout_study.py --rows defaults``), read with its uncertainty.
    ``quick``: a development task instead, 2 seeds, tiny N and G; ``resume``: the study's ``--resume``."""
    ex = load("heldout_study")
    if quick:
        tasks, role, seeds, popsize, ngen = ["digits-mlp-subset"], "development", 2, 6, 2
    else:
        tasks, role, seeds, popsize, ngen = [t.name for t in ex.study.HELD_OUT], "held out", RULE_SEEDS, 20, 20
    argv = ["--out", str(out / "heldout-seeds"), "--rows", "defaults", "--tasks", *tasks]
    argv += ["--resume"] if resume else []
    res = studied(ex, argv + ["--seeds", str(seeds), "--popsize", str(popsize), "--ngen", str(ngen)])
    head = (
        f"{seeds} seeds per task and setting (seeds 0 to {seeds - 1}; the study above ran 0 to 4), N={popsize}, "
        f"G={ngen}, on the tasks its round 8 held out ({', '.join(tasks)}); the default methods' rows only."
    )
    res["summary"] = ex.rule_test_summary(res["results"], role)
    return head, ex.rule_test_lines(res["results"], role), res


def section_distil(out, quick, resume=False):
    """Distillation after the merge (``examples/heldout_study.py --rows distil``): merge() as a user calls it,
    then :func:`mega_deap.align.distil` with each candidate setting, on every task of the study; the rule
    chooses on the development and round-1 to round-7 tables, round 8's held-out tables report. ``quick``: a
    development task, 2 seeds, tiny N and G; ``resume``: the study's ``--resume``."""
    ex = load("heldout_study")
    argv = ["--out", str(out / "distil"), "--rows", "distil"] + (["--resume"] if resume else [])
    seeds, popsize, ngen = (2, 6, 2) if quick else (5, 20, 20)
    if quick:
        argv += ["--tasks", "digits-mlp-subset"]
    res = studied(ex, argv + ["--seeds", str(seeds), "--popsize", str(popsize), "--ngen", str(ngen)])
    head = (
        f"{seeds} seeds per task and setting, N={popsize}, G={ngen}; `merge()` with its defaults, then "
        "`mega_deap.align.distil` on the validation inputs (no labels) towards the parents' output ensemble, "
        "Adam at lr 1e-3, batches of 64."
    )
    if "distil" in res["choices"]:
        res["summary"] = ex.distil_summary(res["results"], res["choices"])
    return head, ex.distil_lines(res["results"], res["choices"]), res


def section_hpo(out, quick):
    ex = load("hpo_weight_merge")
    argv = ["--out", str(out / "hpo"), "--quiet"]
    if quick:
        argv += ["--datasets", "wine", "--seeds", "2", "--popsize", "4", "--ngen", "1", "--no-until"]
    summary, runs = ex.main(argv)
    seeds = len({r["seed"] for r in runs})
    head = (
        f"{seeds} seeds per data set, population {4 if quick else 10}, {1 if quick else 6} generations, "
        f"early stopping with patience 3 on 15 % of the training split; time values are per fitness "
        f"evaluation (mean ± sd over seeds of the per-seed mean), scores mean ± sd over seeds of the best "
        f"individual; p compares the per-seed mean times of the two modes (paired t-test over seeds, Holm "
        f"over the data sets)."
    )
    return head, ex.table(summary), {"summary": summary}


def section_ablation(out, quick):
    ex = load("ablation")
    argv = ["--dataset", "digits", "--out", str(out / "ablation"), "--quiet"]
    if quick:
        argv += [
            "--epochs",
            "2",
            "--seeds",
            "2",
            "--popsize",
            "4",
            "--ngen",
            "2",
            "--variants",
            "paper",
            "no-mutation",
            "no-elitism",
        ]
    rows, results = ex.main(argv)
    seeds = len(next(iter(results.values())))
    head = (
        f"digits, two small CNNs, {seeds} seeds, N={4 if quick else 20}, G={2 if quick else 20}; accuracies "
        f"in %; Δ is the paired difference against the paper's variant, p its paired t-test and p (Holm) "
        f"that p corrected for the {len(rows) - 1} comparisons."
    )
    return head, ex.table(rows), {"rows": rows}


def section_pareto(out, quick):
    """The Pareto merge of two class-biased parents (digits, small CNNs) over seeds: the front's most
    balanced point (the best worst-group accuracy on validation) against the parents and their ensemble."""
    ex = load("pareto_merge")
    seeds = range(1 if quick else 5)
    rows = []
    for seed in seeds:
        argv = ["--dataset", "digits", "--seed", str(seed), "--out", str(out / "pareto" / f"seed{seed}"), "--quiet"]
        r = ex.main(argv + (["--epochs", "2", "--popsize", "8", "--ngen", "2"] if quick else []))
        balanced = max(r["front"], key=lambda p: (min(p["values"]), p["values"]))
        best_parent = max(r["parents"], key=lambda p: min(p["values"]))
        rows.append(
            {
                "front": len(r["front"]),
                "parent": best_parent,
                "ensemble": r["output_ensemble"],
                "balanced": balanced,
                "seconds": r["seconds"]["merge"],
            }
        )

    def cell(key, split):
        return ms([min(row[key][split]) for row in rows])

    def gain(split):
        d = [min(row["balanced"][split]) - min(row["parent"][split]) for row in rows]
        return f"{ms(d)}; above it in {sum(x > 0 for x in d)} of {len(d)} seeds"

    lines = [
        "| model | worst-group validation accuracy | worst-group test accuracy |",
        "|---|---|---|",
        f"| the better parent (on its worst group) | {cell('parent', 'values')} | {cell('parent', 'test')} |",
        f"| output ensemble of the two | {cell('ensemble', 'values')} | {cell('ensemble', 'test')} |",
        f"| the front's most balanced merge | {cell('balanced', 'values')} | {cell('balanced', 'test')} |",
        f"| most balanced merge minus the better parent, per seed | {gain('values')} | {gain('test')} |",
        "",
        f"Points on the front: {ms([row['front'] for row in rows], scale=1, digits=1)}; merge time "
        f"{ms([row['seconds'] for row in rows], scale=1, digits=1)} s.",
    ]
    head = (
        f"digits, two small CNNs each trained on a class-biased part (95 % of its half of the classes), "
        f"`merge(objectives=[[0..4], [5..9]], align='weights')`, N = 40, G = 40; mean ± std over "
        f"{len(rows)} seed(s); a model's score is its accuracy on its worse half of the classes"
    )
    return head, "\n".join(lines), {"rows": rows}


def section_neuroevolution(out, quick):
    """CartPole-v1 from scratch with the Deep GA example, over seeds."""
    ex = load("neuroevolution")
    seeds = range(2 if quick else 10)
    runs = []
    for seed in seeds:
        r = ex.main(["--seed", str(seed), "--out", str(out / "neuroevolution" / f"seed{seed}"), "--quiet"])
        runs.append(r)
    solved = sum(r["solved"] for r in runs)
    lines = [
        "| seeds | solved (mean return >= 475, 100 new episodes) | mean return | generations | evaluations | seconds |",
        "|---|---|---|---|---|---|",
        f"| {len(runs)} | {solved} of {len(runs)} | {ms([r['mean_return'] for r in runs], scale=1, digits=1)} | "
        f"{ms([r['generations'] for r in runs], scale=1, digits=1)} | "
        f"{ms([r['evaluations'] for r in runs], scale=1, digits=0)} | "
        f"{ms([r['seconds'] for r in runs], scale=1, digits=2)} |",
    ]
    head = (
        "CartPole-v1, a 4-16-2 tanh policy, N = 100, truncation to 20, sigma = 0.1, 3 episodes per individual "
        "and generation, elite re-scored on 30 episodes; mean ± std over seeds"
    )
    kept = [{k: r[k] for k in ("mean_return", "generations", "seconds")} for r in runs]
    return head, "\n".join(lines), {"runs": kept}


def section_bench_peers(out, quick):
    """The peers' table from the JSON ``benchmarks/bench_peers.py`` wrote (its command and environment are
    printed with it); nothing is run here."""
    import json

    path = ROOT / PEERS_RESULTS
    if not path.exists():
        return f"No {PEERS_RESULTS}.", "", {}
    res = json.loads(path.read_text())
    lines = load("bench_peers", folder="benchmarks").table(res["rows"])
    env = res["environment"]
    head = (
        f"weights from scratch (best fitness: validation accuracy for the digits MLP, mean return for the "
        f"CartPole policy), G = {res['ngen']}, {res['seeds']} seeds, N evaluations per "
        f"generation; seconds per generation are medians; produced by `{res['command']}` on "
        f"{env['cpu_count']} CPU cores, {env['threads']} threads, {env['machine']}, versions "
        f"{', '.join(f'{k} {v}' for k, v in env['versions'].items())}; rendered here from {PEERS_RESULTS}"
    )
    return head, "\n".join(lines), {"result": res}


def section_bench(out, quick):
    bench = load("bench_merge", folder="benchmarks")
    argv = ["--json", str(out / "bench.json")] + (["--quick", "--device", "cpu"] if quick else ["--device", "cpu"])
    res = bench.main(argv)
    lines = bench_table(res)
    m = res["mutation"]
    lines += [
        "",
        "| other measurement | result |",
        "|---|---|",
        f"| mutation, D = {m['D']:,}, indpb = {m['indpb']}: `mutSparseGaussian` against a dense random mask | "
        f"{m['sparse_s'] * 1e3:.1f} ms against {m['dense_s'] * 1e3:.1f} ms: {m['speedup']:.1f}x faster |",
    ]
    if res.get("memory"):
        mem = res["memory"]
        lines.append(
            f"| peak memory of `eaMeGA`, N = {mem['N']}, D = {mem['D']:,}, above the process's baseline | "
            f"{mem['peak_above_baseline_bytes'] / 2**30:.2f} GiB (budget (2N + 4) x D x 4 bytes + 1 GiB = "
            f"{mem['budget_bytes'] / 2**30:.2f} GiB) |"
        )
    head = (
        f"CPU, float32; each time is the median of {res['rows'][0]['repeats']} interleaved repeats, "
        f"[min, max] beside it; ratios are ratios of medians."
    )
    return head, "\n".join(lines), {"bench": res}


def section_bench_dist(out, quick):
    """Sharded evaluation on CPU: the same merge in 1 process and in 2 (torchrun, gloo, one thread each)."""
    bench = load("bench_distributed", "benchmarks")
    res = bench.main(
        ["--repeats", "1" if quick else "5", "--json", str(out / "bench_dist.json")] + (["--quick"] if quick else [])
    )
    head = (
        f"two small CNNs on {100 if quick else 1000} random 32x32x3 inputs, N=20, G={1 if quick else 5}, "
        f"{res['repeats']} interleaved repeats; `python benchmarks/bench_distributed.py"
        f"{' --quick' if quick else ''} --repeats {res['repeats']}`."
    )
    return head, bench.table(res), {"result": res}


def section_bench_pairing(out, quick):
    """The zip's unit pairing: the sorted greedy pass against the mutual-best rounds, on the same matrices."""
    bench = load("bench_pairing", "benchmarks")
    res = bench.main(["--json", str(out / "bench_pairing.json")] + (["--quick"] if quick else ["--repeats", "5"]))
    sizes = ", ".join(str(r["units"]) for r in res["rows"] if not r["dead"])
    head = (
        f"correlations of 2d Gaussian units (2d = {sizes}), with none and half of them dead; each time is the "
        f"median of {res['repeats']} interleaved repeats; `python benchmarks/bench_pairing.py"
        f"{' --quick' if quick else ' --repeats 5'}`."
    )
    return head, bench.table(res), {"result": res}


def section_bench_gpu(out, quick):
    """The GPU table from the JSON files ``benchmarks/bench_merge.py --device cuda`` wrote (their commands
    and machine are printed with it); nothing is run."""
    import json

    parts = [json.loads((ROOT / f).read_text()) for f in GPU_RESULTS if (ROOT / f).exists()]
    if not parts:
        return "No GPU results in benchmarks/.", "", {}
    res = {"rows": [r for p in parts for r in p["rows"]]}
    lines = bench_table(res)
    lines += ["", "| other measurement | result |", "|---|---|"]
    m = parts[0]["mutation"]
    lines.append(
        f"| mutation, D = {m['D']:,}, indpb = {m['indpb']}: `mutSparseGaussian` against a dense random "
        f"mask | {m['sparse_s'] * 1e3:.2f} ms against {m['dense_s'] * 1e3:.2f} ms: {m['speedup']:.1f}x faster |"
    )
    commands = "; ".join(f"`python {p['command'].split(' --json')[0]}`" for p in parts)
    head = (
        f"{parts[0]['gpu']}, torch {parts[0]['torch']}, float32 unless bf16; each time is the median of "
        f"{res['rows'][0]['repeats']} interleaved repeats, [min, max] beside it. Produced by {commands} "
        f"(JSON in {', '.join(GPU_RESULTS)}), rendered here from those files."
    )
    return head, "\n".join(lines), {"bench": res}


def bench_table(res):
    """The benchmark's rows as Markdown lines (shared by the CPU and GPU tables)."""

    def t(r, k):
        if k not in r["seconds"]:
            return ""
        lo, hi = r["spread"][k]
        return f"{r['seconds'][k]:.3f} [{lo:.3f}, {hi:.3f}]"

    def ratio(r, k, digits=3):
        return f"{r[k]:.{digits}f}" if k in r else ""

    extra = [k for k in ("vmap", "bf16") if any(k in r["seconds"] for r in res["rows"])]
    lines = [
        "| model | D | val | N | G | evals | (a) batched s | (a0) per-individual s | "
        + "".join(f"(a) {k} s | " for k in extra)
        + "(d) floor s | (a)/(d) | (a0)/(d) | us/child (a) | us/child (a0) | (a2)/(d) | (b)/(a) | (c)/(a) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra) + "---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['model']} | {r['D']:,} | {r['val']:,} | {r['N']} | {r['G']} | {r['evals']:,} | "
            f"{t(r, 'batched')} | {t(r, 'per_individual')} | "
            + "".join(f"{t(r, k)} | " for k in extra)
            + f"{t(r, 'floor')} | **{r['a/d']:.3f}** | {r['a0/d']:.3f} | {r['child_us']['batched']:.0f} | "
            f"{r['child_us']['per_individual']:.0f} | {ratio(r, 'a2/d')} | {ratio(r, 'b/a', 2)} | "
            f"{ratio(r, 'c/a', 2)} |"
        )
    for st in res.get("strategies", []):
        us = st["us"]
        parts = [f"loop {us['loop']:.0f} us ({us['loop'] / us['floor']:.2f} of the floor's)"]
        if "stacked" in us:
            parts.append(f"stacked {us['stacked']:.0f} us ({us['stacked'] / us['floor']:.2f})")
        lines += [
            "",
            f"Scoring one genome of {st['model']} on {st['val']:,} inputs, median of {st['k']} genomes "
            f"x 9 interleaved repeats: floor (`model(X)` and its accuracy) {us['floor']:.0f} us, "
            + ", ".join(parts)
            + f'; `strategy="auto"` picks {st["auto"]}'
            + (f" (chunks of {st['chunk']})." if st["chunk"] else "."),
        ]
    if res.get("parts"):
        names = list(res["parts"][0]["parts_us"])
        n = res["parts"][0]["repeats"]
        lines += [
            "",
            "Where a merge's time goes beyond its forward passes, microseconds per generation (the real "
            f"`merge` with its parts timed, median{'s' if n > 1 else ''} of {n} repeat{'s' if n > 1 else ''}), "
            "and as a share of the floor's forward passes per generation (the floor's N + G(N - 1) passes / "
            "G; the shares add up to merge/floor - 1):",
            "",
            "| model | N | G | floor per generation | " + " | ".join(names) + " | all | merge/floor |",
            "|---|---:|---:|---:|" + "---:|" * (len(names) + 2),
        ]
        for pt in res["parts"]:
            f = pt["floor_per_generation_us"]
            cells = [f"{v:.0f} ({100 * v / f:.1f} %)" for v in pt["parts_us"].values()]
            total = sum(pt["parts_us"].values())
            lines.append(
                f"| {pt['model']} | {pt['N']} | {pt['G']} | {f:.0f} | "
                + " | ".join(cells)
                + f" | {total:.0f} ({100 * total / f:.1f} %) | {pt['a/d']:.3f} |"
            )
    for sz in res.get("batch_sizes", []):
        best = min(sz["seconds"], key=sz["seconds"].get)
        lines += [
            "",
            f"Evaluation time of one genome on {sz['val']:,} inputs of {sz['model']} by batch size "
            f"(median of 5): "
            + ", ".join(f"{b}: {1e3 * s:.2f} ms" for b, s in sz["seconds"].items())
            + f"; fastest: {best}.",
        ]
    return lines


######################################
# Writing                            #
######################################


def block(section, head, table, env, command):
    where = "rendered with" if section in ("bench-gpu", "bench-peers") else "ran with"
    return (
        f"<!-- reproduce:{section} -->\n*{head}*\n\n{table}\n\n"
        f"<sub>`{command}` {where}: {env}</sub>\n<!-- /reproduce:{section} -->"
    )


def update_doc(path, section, text, tag="reproduce"):
    """Replace the section's marked block in ``path``; an absent marker is an error, not a silent skip."""
    doc = path.read_text()
    pattern = re.compile(rf"<!-- {tag}:{section} -->.*?<!-- /{tag}:{section} -->", re.S)
    if not pattern.search(doc):
        raise SystemExit(f"reproduce: {path.name} has no '<!-- {tag}:{section} -->' block to update")
    path.write_text(pattern.sub(lambda _: text, doc, count=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results", help="folder for every section's files")
    p.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=None,
        metavar="SECTION",
        help=f"run these sections only (of {', '.join(SECTIONS)})",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings; never written into the docs")
    p.add_argument("--no-docs", action="store_true", help="leave the documentation pages as they are")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="heldout: run only the rows OUT/heldout/results.json lacks (examples/heldout_study.py --reuse)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"{', '.join(RESUMABLE)}: continue a stopped run where it stopped (examples/heldout_study.py "
        "--resume); the tables are those of a run from scratch",
    )
    args = p.parse_args(argv)
    if args.resume and not set(RESUMABLE) & set(args.only or SECTIONS):
        named = f"{', '.join(RESUMABLE[:-1])} and {RESUMABLE[-1]}"
        p.error(f"--resume belongs to the {named} sections, which this run leaves out")
    if args.reuse and "heldout" not in (args.only or SECTIONS):
        p.error("--reuse belongs to the heldout section, which this run leaves out")
    if args.reuse and not (pathlib.Path(args.out) / "heldout" / "results.json").is_file():
        p.error(f"--reuse: {pathlib.Path(args.out) / 'heldout' / 'results.json'} does not exist")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment_line()
    written = {}
    for section in args.only or SECTIONS:
        t0 = time.perf_counter()
        print(f"[reproduce] {section} ...", file=sys.stderr, flush=True)
        reuse = args.reuse and section == "heldout"
        kwargs = {"reuse": True} if reuse else {}
        if args.resume and section in RESUMABLE:  # the same job's runs: the tables of a run from scratch
            kwargs["resume"] = True
        head, table, data = globals()[f"section_{section.replace('-', '_')}"](out, args.quick, **kwargs)
        command = f"python examples/reproduce.py --out {args.out} --only {section}" + (" --reuse" if reuse else "")
        text = block(section, head, table, env, command)
        (out / f"{section}.md").write_text(text + "\n")
        written[section] = {"head": head, "table": table, "seconds": time.perf_counter() - t0}
        if not (args.quick or args.no_docs) and table:
            update_doc(ROOT / DOC[section], section, text)
            if isinstance(data, dict) and "summary" in data:  # a short form on README's front page
                update_doc(
                    ROOT / "README.md",
                    section,
                    f"<!-- summary:{section} -->\n{data['summary']}\n\n"
                    f"<sub>`{command}` ran with: {env}</sub>\n<!-- /summary:{section} -->",
                    tag="summary",
                )
        print(text + "\n", flush=True)
    print(f"[reproduce] {env}", file=sys.stderr)
    return written


if __name__ == "__main__":
    main()
