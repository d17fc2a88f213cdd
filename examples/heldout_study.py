"""Merge defaults chosen on development tasks and reported on held-out ones, with over-fitting parents.

    python examples/heldout_study.py --out results/heldout   # docs/studies/alignment.md (1.5 to 3+ hours, 2 cores)
    python examples/heldout_study.py --out results/heldout --resume   # continue it where it stopped
    python examples/heldout_study.py --out results/heldout --reuse results/heldout/results.json   # new rows only
    python examples/heldout_study.py --tasks digits-mlp-subset --seeds 2   # a quick look

Tasks (``mega_deap.experiments.heldout_study``), in eight rounds of choosing:

- development (round 1 chose merge's default fitness and matching on them; rounds 2 to 8 too): a digits
  MLP on 30 % of its training data, digits CNNs with and without BatchNorm on 20 %-noisy labels;
- round-1 held out (reported in round 1; rounds 2 to 8 chose on them): a wider digits CNN without
  BatchNorm on 30 % of its data, a BatchNorm MLP on 30 % of breast cancer, a two-hidden-layer MLP on noisy
  labels of a 10-class synthetic task;
- round-2 held out (reported in round 2; rounds 3 to 8 chose on them): a three-block BatchNorm CNN on 20 %
  of digits, a BatchNorm MLP on 30 %-noisy digits labels, an MLP on 25 % of a 6-class synthetic task;
- round-3 held out (reported in round 3; rounds 4 to 8 chose on them): a residual MLP on 25 %-noisy
  digits labels, a LeNet-style CNN (a hidden linear layer after the convolutions) on 25 % of digits, a
  BatchNorm MLP on 25 %-noisy labels of an 8-class synthetic task;
- round-4 held out (reported in round 4; rounds 5 to 8 chose on them): a VGG-style CNN without BatchNorm on
  20 %-noisy digits labels, a residual BatchNorm CNN on 25 % of digits, a GELU MLP on 20 %-noisy labels of a
  12-class synthetic task;
- round-5 held out (reported in round 5; rounds 6 to 8 chose on them): a tanh CNN with average pooling and no
  BatchNorm on 25 %-noisy digits labels, a residual MLP with BatchNorm on 30 % of a 16-class synthetic task,
  a SiLU MLP of three hidden layers on 20 % of digits;
- round-6 held out (reported in round 6; rounds 7 and 8 chose on them): a LeNet-style CNN with BatchNorm and leaky
  ReLU on 20 %-noisy digits labels, a one-hidden-layer ELU MLP (256 wide) on 25 % of a 20-class synthetic task,
  a CNN of three convolutions without pooling (the second strided) on 25 % of digits;
- round-7 held out (reported in round 7; round 8 chose on them): a CNN with BatchNorm, SiLU and average pooling
  on 25 % of digits, a tanh MLP of three hidden layers on 20 %-noisy labels of a 24-class synthetic task, a CNN
  without BatchNorm of a 5x5, a 3x3 and a 1x1 convolution on 25 %-noisy digits labels;
- held out (new in round 8, reported only): a Mish MLP on 25 %-noisy digits labels, an MLP of two
  Linear-BatchNorm-hardswish layers on 30 % of a 28-class synthetic task, a CNN without BatchNorm of three 3x3
  convolutions with ELU and global max pooling on 20 %-noisy digits labels.

Round 1 chose the fitness and what ``align=True`` means, round 2 the significance gate's level, round 3
``merge``'s default alignment, round 4 whether it also seeds the two parents' zip, round 5 whether the gate
tests on a part of the validation set held out of the fitness, round 6 whether it tests by cross-fitting,
round 7 what ``align=True`` means again, for the three methods that align with it by default, round 8 whether
``align="auto"`` (the default) aligns a coefficient genome.
Every parent is trained until it fits its
data. Each task in two settings: same-data parents (two seeds) and different-data parents (class-biased
parts). The rules (``choose_metric``, ``choose_matching``, ``choose_gate``, ``choose_alignment``,
``choose_zip``, ``choose_gate_holdout``, ``choose_gate_crossfit``, ``choose_default_matching``,
``choose_coefficient_alignment``) read only the tables of their round; the held-out tables are printed beside them.

After every run (one seed of one setting of one task) the study writes ``OUT/progress.json``, atomically;
``--resume`` keeps the runs it holds and runs the rest, so a run stopped at any instant loses at most the run
under way. A progress file of another job (other N, G or rows, other code, another machine's versions,
threads or CPU kernels) is refused in one line.

``--reuse FILE`` takes each run's rows from an earlier ``results.json`` of the same seeds, N and G and runs
only the rows it lacks (new tasks, new methods). Each reused run's parents and the rows of
:data:`REUSE_CHECKS` are computed again and must equal the stored ones bit for bit, else the run stops: rows
do not depend on which other rows run (each merge is seeded on its own), so a reused file gives the numbers a
run from scratch gives.
"""

import argparse
import json
import os
import sys
import time

from tqdm.auto import tqdm

from mega_deap.experiments import heldout_study as study
from mega_deap.presets import (
    CROSSFIT,
    DEFAULT_ALIGN,
    DEFAULT_GATE,
    DEFAULT_GATE_HOLDOUT,
    DEFAULT_MATCHING,
    DEFAULT_METRIC,
)
from mega_deap.experiments import environment_line, write_json
from mega_deap.files import source_digest
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
    p.add_argument(
        "--quiet", action="store_true", help="no per-run lines, tables or progress bar; only the file written"
    )
    p.add_argument(
        "--reuse",
        metavar="RESULTS_JSON",
        default=None,
        help="take each run's rows from this earlier results.json (same --seeds, --popsize, --ngen) and run only "
        "the rows it lacks; the parents and a spot check of rows are recomputed and must match it",
    )
    p.add_argument(
        "--rows",
        choices=("all", "defaults", "distil"),
        default="all",
        help="defaults: run only the rows of the default methods (and the parents and their ensemble), for the "
        "half-point rule with more seeds; no round's rule can choose on them. distil: only merge() and its "
        "distillations (mega_deap.align.distil) and the baselines; the rule chooses the distillation's settings",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue a stopped run of the same job from OUT/{PROGRESS}: its finished runs are kept, the rest "
        "run (from scratch where there is no such file); a file another job wrote (other N, G, rows, code or "
        "environment) is refused",
    )
    args = p.parse_args(argv)
    args.job, args.done = job(args), {}
    if args.resume:
        args.done = resumable(os.path.join(args.out, PROGRESS), args.job, p.error)
    if args.rows != "all" and args.reuse is not None:
        p.error(f"--reuse takes the rows an earlier run of every row lacks; with --rows {args.rows}, run from scratch")
    for name in ("seeds", "popsize", "ngen"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    args.stored = {}
    if args.reuse is not None:
        try:
            with open(args.reuse) as f:
                old = json.load(f)  # JSON: no unpickling
            stored, settings = old["results"], old["settings"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"--reuse {args.reuse}: not a results.json of this study ({type(e).__name__}: {e})")
        for name in ("seeds", "popsize", "ngen"):
            if settings.get(name) != getattr(args, name):
                p.error(
                    f"--reuse {args.reuse}: its runs have {name}={settings.get(name)}, this run {getattr(args, name)}"
                )
        args.stored = {key: res["runs"] for key, res in stored.items()}
    return args


# the file a run writes after each of its runs, and --resume continues from
PROGRESS = "progress.json"


def job(args) -> dict:
    """What a run's results depend on besides the task, the setting and the seed: N, G, the rows, the code
    (:func:`~mega_deap.files.source_digest`) and the machine (versions, threads, CPU kernels). A run
    resumes only from a progress file of the same job."""
    return {
        "popsize": args.popsize,
        "ngen": args.ngen,
        "rows": args.rows,
        "code": source_digest(),
        "environment": environment_line(),
    }


def resumable(path: str, this: dict, error) -> dict:
    """The finished runs ``{"task/setting": [run, ...]}`` of the progress file at ``path`` (``{}`` where there
    is none); ``error(message)`` (one line) where it is not a progress file or another job wrote it."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            old = json.load(f)  # JSON: no unpickling
        theirs, runs = old["job"], old["runs"]
        if not isinstance(theirs, dict) or not isinstance(runs, dict):
            raise TypeError("its job or runs is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        error(f"--resume {path}: not a progress file of this study ({type(e).__name__}: {e})")
    for key, value in this.items():
        if theirs.get(key) != value:
            error(
                f"--resume {path}: another job wrote it: its {key} is {theirs.get(key)!r}, this run's {value!r}; "
                "delete it or choose another --out"
            )
    return runs


# the rows a reused run computes again, to check that the stored run is this code's: the unaligned merge and
# the aligned one (every run has both), beside the parents
REUSE_CHECKS = ("merge, accuracy", "merge(align='activations')")


def run(task, setting: str, seed: int, args) -> dict:
    """One seed of one setting: :func:`~mega_deap.experiments.heldout_study.run_task`, or, with ``--reuse`` and
    a stored run of it, the stored rows (with their seconds) and the rows it lacks; the parents' accuracies and
    the rows of :data:`REUSE_CHECKS` are computed again and compared with the stored ones (``SystemExit`` where
    they differ)."""
    runs = args.stored.get(f"{task.name}/{setting}", [])
    kw = dict(popsize=args.popsize, ngen=args.ngen)
    if args.rows != "all":
        return study.run_task(task, setting, seed, methods=ROWS[args.rows], **kw)
    if seed >= len(runs):
        return study.run_task(task, setting, seed, **kw)
    old = runs[seed]
    methods = tuple(m for m in study.METHODS if m not in old or m in REUSE_CHECKS)
    new = study.run_task(task, setting, seed, methods=methods, **kw)
    for key in ("best parent", "best parent by validation", "parents", *REUSE_CHECKS):
        here, there = json.loads(json.dumps(new[key], default=float)), old.get(key)
        if key != "parents":  # accuracies; not the seconds
            here, there = here[:2], (there or [])[:2]
        if here != there:
            raise SystemExit(
                f"--reuse {args.reuse}: {task.name} {setting} seed {seed}: {key} is {here} here and {there} there; "
                "the stored runs are not this code's"
            )
    # the stored rows as they were (their seconds too); the checks above only compared
    return {**new, **old, "gate_p": {**new.get("gate_p", {}), **old.get("gate_p", {})}}


def main(argv=None):
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else tqdm.write  # printed lines, above the bar where there is one
    results, t0 = {}, time.perf_counter()
    # written after every run, atomically: a run stopped at any instant resumes from it (--resume)
    progress = {"job": args.job, "runs": dict(args.done)}
    # the runs, on a terminal only (stderr), resumed ones counted as done
    bar = tqdm(
        total=len(args.tasks) * len(args.settings) * args.seeds,
        desc="held-out runs",
        unit="run",
        disable=True if args.quiet else None,
    )
    for name in args.tasks:
        task = study.TASKS[name]
        for setting in args.settings:
            runs, done = [], args.done.get(f"{name}/{setting}", [])
            for seed in range(args.seeds):
                if seed < len(done):  # finished before the stop: the same job's, so the same bits
                    runs.append(done[seed])
                    bar.update()
                    continue
                bar.set_postfix_str(f"{name} {setting} seed {seed}")
                runs.append(run(task, setting, seed, args))
                progress["runs"][f"{name}/{setting}"] = runs + done[len(runs) :]
                write_json(progress, os.path.join(args.out, PROGRESS))
                bar.update()
                say(
                    f"{name} {setting} seed {seed}: "
                    + ", ".join(f"{m} {v[1]:.3f}" for m, v in runs[-1].items() if m in SHOWN)
                )
            results[f"{name}/{setting}"] = {"runs": runs, "rows": study.summarize(runs), "role": study.ROLES[name]}
    bar.close()
    choices: dict = {}
    seen = [{k: r["rows"] for k, r in results.items() if r["role"] in study.ROUNDS[n]} for n in sorted(study.ROUNDS)]
    if args.rows == "distil" and seen[7]:  # the distillation's settings, on every table but round 8's held-out ones
        choices["distil"] = study.choose(seen[7], DISTIL_CANDIDATES)
    if args.rows != "all":  # the rules read rows this run leaves out
        seen = [{} for _ in seen]
    if seen[0]:  # round 1: the fitness and the matching, on the development tasks
        choices.update(fitness=study.choose_metric(seen[0]), matching=study.choose_matching(seen[0]))
    if seen[1]:  # round 2: the gate, on the development and round-1 held-out tasks, with the defaults
        choices["gate"] = study.choose_gate(seen[1], DEFAULT_METRIC, ROUND_1_MATCHING)
    if seen[2]:  # round 3: merge's default alignment, on every table but the new held-out ones
        choices["alignment"] = study.choose_alignment(seen[2], DEFAULT_METRIC, DEFAULT_GATE)
    if seen[3]:  # round 4: with or without the parents' zip, on every table but the new held-out ones
        choices["zip"] = study.choose_zip(seen[3], DEFAULT_METRIC, DEFAULT_GATE)
    if seen[4]:  # round 5: where the gate's test reads, on every table but the new held-out ones
        choices["gate_holdout"] = study.choose_gate_holdout(seen[4], DEFAULT_GATE)
    if seen[5]:  # round 6: the gate's test on the whole set or cross-fitted, on every table but the new ones
        choices["gate_crossfit"] = study.choose_gate_crossfit(seen[5], DEFAULT_GATE)
    if seen[6]:  # round 7: what align=True means, for the three methods that align with it by default
        choices["default_matching"] = study.choose_default_matching(seen[6], DEFAULT_GATE)
    if seen[7]:  # round 8: whether align="auto" aligns a coefficient genome, on the coefficient GA
        choices["coefficient_alignment"] = study.choose_coefficient_alignment(seen[7], DEFAULT_GATE)
    os.makedirs(args.out, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("stored", "done")}  # not the runs again
    write_json(
        {"settings": settings, "results": results, "choices": choices, "seconds": time.perf_counter() - t0},
        os.path.join(args.out, "results.json"),
    )
    if args.rows == "distil":
        say(distil_lines(results, choices))
    elif args.rows == "defaults":  # the per-table rows and effects read rows this run leaves out
        say("\n".join(text for role in ROLE_ORDER if (text := rule_test_lines(results, role))))
    else:
        say(table(results, choices))
    print(f"wrote {os.path.join(args.out, 'results.json')}")
    return {"results": results, "choices": choices}


ROLE_ORDER = study.ROLE_ORDER
# what each choice's rule read (the table's first words)
READ = {
    "fitness": "Development",
    "matching": "Development",
    "gate": "Development and round-1 held-out",
    "alignment": "Development, round-1 and round-2 held-out",
    "zip": "Development, round-1, round-2 and round-3 held-out",
    "gate_holdout": "Development, round-1 to round-4 held-out",
    "gate_crossfit": "Development, round-1 to round-5 held-out",
    "default_matching": "Development, round-1 to round-6 held-out",
    "coefficient_alignment": "Development, round-1 to round-7 held-out",
    "distil": "Development, round-1 to round-7 held-out",
}
# the methods each default runs as: merge() (the round-4 alignment), merge(align=False) (round 2's merge()),
# merge(align='activations') (round 3's merge()), merge(align=True), the coefficient GA and cma_merge
ROUND_3 = "merge(align='activations')"
# what align=True named when round 2 chose the gate (round 1's choice): round 2's rule reads its rows whatever
# align=True names now
ROUND_1_MATCHING = "weights"
# (row, how a user calls it); the coefficient GA and cma_merge align with what align=True means
_DEFAULTS = (
    (f"merge(align={DEFAULT_ALIGN!r})", "`merge()`"),
    (f"merge, {DEFAULT_METRIC}", "`merge(align=False)`"),
    (ROUND_3, "`merge(align='activations')`"),
    (f"merge(align={DEFAULT_MATCHING!r})", "`merge(align=True)`"),
    (study.coefficient_row(DEFAULT_MATCHING), "coefficient GA"),
    (study.cma_row(DEFAULT_MATCHING), "`cma_merge`"),
)
# their names in the tables; two calls that run one row share it
LABELS: dict = {}
for _row, _label in _DEFAULTS:
    LABELS[_row] = f"{LABELS[_row]} = {_label}" if _row in LABELS else _label
DEFAULT_METHODS = tuple(LABELS)
# the methods rounds 5 and 6 judged their candidates on (merge's five default methods then, when align=True
# named weight matching), in the tables' order, and the names of rows that are not defaults now
HELD_ORDER = (study.ZIP, "merge, accuracy", ROUND_3, "merge(align='weights')", study.coefficient_row("weights"))
OTHER_LABELS = {
    "merge(align='weights')": "`merge(align='weights')`",
    study.coefficient_row("weights"): "coefficient GA (weight matching)",
    study.coefficient_row("activations"): "coefficient GA (activation matching)",
    study.cma_row("weights"): "`cma_merge(align='weights')`",
    study.cma_row("activations"): "`cma_merge(align='activations')`",
    study.coefficient_row(None): "coefficient GA (unaligned)",
}


def label(row: str) -> str:
    """How a user calls the method of ``row``: its default's name, or the call that names its alignment."""
    return LABELS.get(row) or OTHER_LABELS[row]


# rows of the gate at levels other than the default: chosen among, not shown in the tables
HIDDEN = {study.gated(m, g) for m in study.GATED for g in study.CANDIDATE_GATES if g not in (None, DEFAULT_GATE)}


def default_row(method: str) -> str:
    """The row of ``method`` as its defaults run it: behind the default gate, if any, testing on the part of
    the validation set held out of the fitness where the default holds one out, or by cross-fitting where
    the default cross-fits (merge's methods)."""
    if DEFAULT_GATE_HOLDOUT == CROSSFIT and method in study.HELD_GATED:
        if DEFAULT_GATE != study.CROSSFIT_LEVEL:
            raise ValueError(f"the study has no cross-fitted rows at gate={DEFAULT_GATE}")
        return study.crossfit_gated(method)
    if DEFAULT_GATE_HOLDOUT and method in study.HELD_GATED:
        if DEFAULT_GATE_HOLDOUT != study.GATE_HOLDOUT or DEFAULT_GATE != study.HELD_GATE_LEVEL:
            raise ValueError(f"the study has no rows of gate_holdout={DEFAULT_GATE_HOLDOUT}, gate={DEFAULT_GATE}")
        return study.held_gated(method)
    return study.gated(method, DEFAULT_GATE)


def round4_row(method: str) -> str:
    """The row of ``method`` as round 4's defaults ran it: behind the default gate on the whole validation
    set."""
    return study.gated(method, DEFAULT_GATE)


# what --rows defaults runs: the default methods, their rows as the defaults run them, and the baselines
DEFAULT_ROWS = (
    "best parent",
    "best parent by validation",
    "output ensemble",
    *DEFAULT_METHODS,
    *dict.fromkeys(default_row(m) for m in DEFAULT_METHODS),
)
# the rows a run's line names (test accuracy)
SHOWN = set(study.METHODS) | {study.DISTIL_START, *study.DISTILLED}
# what --rows distil runs: merge() as a user calls it, its distillations, and the baselines
DISTIL_ROWS = ("best parent", "best parent by validation", "output ensemble", *study.DISTILLED)
ROWS = {"defaults": DEFAULT_ROWS, "distil": DISTIL_ROWS}
# the rule's candidates for the distillation's settings: {name: the row it names}
DISTIL_CANDIDATES = {f"{e} epochs, T={t:g}": study.distil_row(e, t) for e, t in study.CANDIDATE_DISTILS}
# the half-point rule: a default may lose at most this much mean test accuracy on any held-out table
HALF_POINT = 0.005


def differences(results, role: str, method: str, baseline: str = "best parent") -> dict:
    """``{table: [d, ...]}`` over the tables of ``role`` that ran ``method``'s default row: per seed, that row's
    test accuracy minus ``baseline``'s (the parent better on test by default), the paired differences both
    readings of the half-point rule start from."""
    name = default_row(method)
    out = {}
    for key, res in results.items():
        runs = [r for r in res["runs"] if name in r]
        if res["role"] == role and runs:
            out[key] = [r[name][1] - r[baseline][1] for r in runs]
    return out


def half_point(results, role="held out") -> list:
    """The half-point rule on the tables of ``role``, per default method: rows ``{method, worst, below,
    tables, worst_val, below_val}``: its worst table's mean test accuracy minus the best parent's (the one
    better on test), and the tables where it loses more than :data:`HALF_POINT`; ``*_val``: the same against
    the parent chosen on validation (what a user without the test split would keep instead)."""
    rows = []
    for method in DEFAULT_METHODS:
        deltas = [sum(d) / len(d) for d in differences(results, role, method).values()]
        by_val = differences(results, role, method, "best parent by validation")
        deltas_val = [sum(d) / len(d) for d in by_val.values()]
        if deltas:
            rows.append(
                {
                    "method": method,
                    "worst": min(deltas),
                    "below": sum(d < -HALF_POINT for d in deltas),
                    "tables": len(deltas),
                    "worst_val": min(deltas_val),
                    "below_val": sum(d < -HALF_POINT for d in deltas_val),
                }
            )
    return rows


def half_point_lines(results, role="held out") -> str:
    """:func:`half_point` as a Markdown table (points)."""
    rows = half_point(results, role)
    if not rows:
        return ""
    return markdown(
        f"The half-point rule on the {role} tables (test accuracy, points): each default method's worst table, "
        "and the tables where it loses more than half a point, against the best parent (better on test) and "
        "against the parent chosen on validation.",
        (
            "method",
            "worst table vs best parent",
            "tables below -0.5",
            "worst table vs parent chosen on validation",
            "tables below -0.5",
        ),
        [
            (
                LABELS[r["method"]],
                f"{100 * r['worst']:+.2f}",
                f"{r['below']} of {r['tables']}",
                f"{100 * r['worst_val']:+.2f}",
                f"{r['below_val']} of {r['tables']}",
            )
            for r in rows
        ],
    )


# the half-point rule read with its uncertainty: each one-sided test at this level, Holm-corrected over a
# method's tables
RULE_LEVEL = 0.05


def margin_rows(diffs: dict) -> list:
    """The half-point rule read with its uncertainty on ``diffs`` (``{table: [paired difference per seed]}``):
    rows ``{table, seeds, mean, half, p_meets, p_fails, verdict}``. ``mean``: the mean difference; ``half``:
    its 95 % t confidence interval's half-width; ``p_meets`` and ``p_fails``: the one-sided t-tests that the
    mean is above and below ``-HALF_POINT`` (:func:`~mega_deap.experiments.ablation.margin_test`), each
    Holm-corrected over the tables; ``verdict``: ``"meets"`` or ``"fails"`` where that test's corrected p is
    below :data:`RULE_LEVEL`, else ``"undecided"`` (the seeds cannot tell)."""
    from mega_deap.experiments.ablation import holm, margin_test, mean_ci

    rows = []
    for key, d in diffs.items():
        mean, _, half = mean_ci(d)
        above, below = margin_test(d, HALF_POINT)
        rows.append({"table": key, "seeds": len(d), "mean": mean, "half": half, "p_meets": above, "p_fails": below})
    for key in ("p_meets", "p_fails"):
        for r, q in zip(rows, holm([r[key] for r in rows])):
            r[key] = q
    for r in rows:
        r["verdict"] = "meets" if r["p_meets"] < RULE_LEVEL else "fails" if r["p_fails"] < RULE_LEVEL else "undecided"
    return rows


def margin_cells(r: dict) -> tuple:
    """A :func:`margin_rows` row's cells (points): table, seeds, the mean ± its 95 % CI, both p-values, the
    verdict (in bold where it fails)."""
    return (
        r["table"],
        str(r["seeds"]),
        f"{100 * r['mean']:+.2f} ± {100 * r['half']:.2f}",
        f"{r['p_meets']:.2g}",
        f"{r['p_fails']:.2g}",
        f"**{r['verdict']}**" if r["verdict"] == "fails" else r["verdict"],
    )


def rule_test(results, role="held out") -> list:
    """The half-point rule on the tables of ``role``, read with its uncertainty, per default method and
    table: :func:`margin_rows` of the method's test accuracy minus the best parent's (the one better on test),
    one paired difference per seed, Holm-corrected over the method's tables; each row also names its
    ``method``."""
    rows = []
    for method in DEFAULT_METHODS:
        rows += [{"method": method, **r} for r in margin_rows(differences(results, role, method))]
    return rows


def rule_test_lines(results, role="held out") -> str:
    """:func:`rule_test` as a Markdown table (points)."""
    rows = rule_test(results, role)
    if not rows:
        return ""
    return markdown(
        f"The half-point rule on the {role} tables, read with its uncertainty (test accuracy, points): per "
        "default method and table, its test accuracy minus the best parent's (better on test), mean over seeds "
        "and 95 % t confidence interval of the paired differences; the one-sided t-tests that the mean is "
        f"above -0.5 (the rule met) and below it (the rule failed), each Holm-corrected over the method's "
        f"tables; the verdict at {RULE_LEVEL}, undecided where neither test is.",
        ("method", "table", "seeds", "test - best parent", "p (above -0.5)", "p (below -0.5)", "verdict"),
        [
            (
                LABELS[r["method"]],
                *margin_cells(r),
            )
            for r in rows
        ],
    )


def rule_test_summary(results, role="held out") -> str:
    """One line per default method: on how many of the tables of ``role`` :func:`rule_test` finds it meets
    the rule, fails it, or cannot tell."""
    rows = rule_test(results, role)
    lines = []
    for method in DEFAULT_METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        count = {v: sum(r["verdict"] == v for r in mine) for v in ("meets", "fails", "undecided")}
        worst = min(mine, key=lambda r: r["mean"])
        lines.append(
            f"- {LABELS[method]}: meets it on {count['meets']} of {len(mine)} tables, fails it on {count['fails']}, "
            f"undecided on {count['undecided']}; its worst table {100 * worst['mean']:+.2f} points (95 % CI "
            f"± {100 * worst['half']:.2f}, {worst['table']})"
        )
    return "\n".join(lines)


def chosen_distil(choices) -> str:
    """The row of the distillation the rule chose (``--rows distil``)."""
    return DISTIL_CANDIDATES[choices["distil"][0]]


def distil_effect(results, row: str) -> list:
    """What the distillation ``row`` changes: its test accuracy minus merge()'s (the model it starts from)
    over every seed of every table of each role (:func:`paired`), Holm-corrected over the roles."""
    from mega_deap.experiments.ablation import holm

    rows = []
    for role in ROLE_ORDER:
        runs = [run for res in results.values() if res["role"] == role for run in res["runs"] if row in run]
        if runs:
            rows.append({"role": role, **paired(runs, row, study.DISTIL_START)})
    for r, p in zip(rows, holm([r["p"] for r in rows])):
        r["p"] = p
    return rows


def distil_rule(results, row: str, role: str = "held out") -> list:
    """The half-point rule for the distillation ``row`` on the tables of ``role``: :func:`margin_rows` of its
    test accuracy minus the best parent's, one paired difference per seed."""
    diffs = {}
    for key, res in results.items():
        runs = [r for r in res["runs"] if row in r]
        if res["role"] == role and runs:
            diffs[key] = [r[row][1] - r["best parent"][1] for r in runs]
    return margin_rows(diffs)


def distil_summary(results, choices, role: str = "held out") -> str:
    """README's short form of ``--rows distil``: per table of ``role``, merge()'s and the chosen
    distillation's test accuracy minus the best parent's and the gap each closes."""
    row = chosen_distil(choices)
    cells = []
    for key, res in results.items():
        if res["role"] != role:
            continue
        by = {r["method"]: r for r in res["rows"]}
        best, ens = by["best parent"]["test"], by["output ensemble"]["test"]
        m, d = by[study.DISTIL_START], by[row]
        cells.append(
            (
                key,
                f"{100 * best:.2f}",
                f"{100 * (ens - best):+.2f}",
                f"{100 * m['delta']:+.2f} ± {100 * m['delta_sd']:.2f}",
                _gap(m),
                f"{100 * d['delta']:+.2f} ± {100 * d['delta_sd']:.2f}",
                _gap(d),
            )
        )
    return markdown(
        f"`distil(merge(...).model, parents, X_val)` with the settings the rule chose ({choices['distil'][0]}), on "
        f"the {role} tables ({len(next(iter(results.values()))['runs'])} seeds; test accuracy minus the best "
        "parent's, mean ± sd over seeds, points; gap closed: of the gap to the output ensemble, from the means).",
        ("table", "best parent, test %", "ensemble", "`merge()`", "gap closed", "`merge()` + `distil`", "gap closed"),
        cells,
    )


def _gap(r: dict) -> str:
    """A row's gap closed, in % (``"no gap"`` where the ensemble is not a point above the best parent)."""
    return "no gap" if r["gap"] != r["gap"] else f"{100 * r['gap']:.0f} %"


def distil_lines(results, choices) -> str:
    """What ``--rows distil`` prints: the rule's choice of the distillation's settings; the half-point rule and
    the change against merge() for the chosen one; and per table every candidate's test accuracy minus the
    best parent's."""
    out = []
    if "distil" in choices:
        chosen = choices["distil"][0]
        out.append(choice_line("distil", choices["distil"], "distillation"))
        row = chosen_distil(choices)
        if rule := distil_rule(results, row):
            out.append(
                markdown(
                    f"The half-point rule for `merge()` + `distil` ({chosen}) on the held out tables (test "
                    "accuracy, points): its test accuracy minus the best parent's, mean and 95 % t confidence "
                    "interval over seeds; one-sided t-tests of a mean above and below -0.5, Holm-corrected over "
                    f"the tables; the verdict at {RULE_LEVEL}.",
                    ("table", "seeds", "test - best parent", "p (above -0.5)", "p (below -0.5)", "verdict"),
                    [margin_cells(r) for r in rule],
                )
            )
        out.append(
            _kind_changes(
                distil_effect(results, row),
                f"What the distillation ({chosen}) changes: test accuracy of `merge()` + `distil` minus `merge()`'s, "
                "over every seed of every table of a kind (points); p: two-sided Wilcoxon signed-rank test on the "
                "runs that differ, Holm-corrected over the kinds of table.",
            )
        )
    names = (study.DISTIL_START, *study.DISTILLED)
    chosen = chosen_distil(choices) if "distil" in choices else None
    cells = []
    for role in ROLE_ORDER:
        for key, res in results.items():
            if res["role"] != role:
                continue
            by = {r["method"]: r for r in res["rows"]}
            best, ens = by["best parent"]["test"], by["output ensemble"]["test"]
            cells.append(
                (key, role, f"{100 * best:.2f}", f"{100 * (ens - best):+.2f}")
                + tuple(f"{100 * by[n]['delta']:+.2f}" if n in by else "" for n in names)
                + tuple(f"{by[n]['below_val']}" for n in (study.DISTIL_START, chosen) if n in by)
            )
    header = ("table", "tables", "best parent, test %", "ensemble") + tuple(
        "`merge()`" if n == study.DISTIL_START else n.replace("merge() + distil(", "distil(") for n in names
    )
    out.append(
        markdown(
            "Every table, every candidate: test accuracy minus the best parent's (mean over seeds, points), the "
            "output ensemble's beside it; the last columns count the seeds that ended below the better parent on "
            "validation: `merge()` (its guarantee rules that out) and the chosen distillation (which has no such "
            "guarantee, and whose validation accuracy is biased upwards: it trained on those inputs).",
            header + ("`merge()` below on val",) + (("`distil` below on val",) if chosen else ()),
            cells,
        )
    )
    return "\n".join(out)


def markdown(caption: str, header: tuple, cells: list) -> str:
    """``caption``, a blank line, and a Markdown table of ``header`` and rows of ``cells`` (strings)."""
    lines = [caption + "\n", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def summary(results, choices) -> str:
    """README's short form: per table, each default method's test accuracy minus the best parent's (mean and
    sd over seeds, points), the gap to the ensemble that ``merge()`` closes, and the rule's choices."""
    methods = (("best parent by validation", "the parent chosen on validation"),) + tuple(
        (default_row(m), LABELS[m]) for m in DEFAULT_METHODS
    )
    out = [
        "| task / parents | tasks | best parent, test % | "
        + " | ".join(m for _, m in methods)
        + " | ensemble | gap closed by `merge()` |",
        "|---" * (len(methods) + 5) + "|",
    ]
    for role in ROLE_ORDER:
        for key, res in results.items():
            if res["role"] != role:
                continue
            rows = {r["method"]: r for r in res["rows"]}
            best = rows["best parent"]
            cells = [
                f"{100 * rows[m]['delta']:+.2f} ± {100 * rows[m]['delta_sd']:.2f}" if m in rows else ""
                for m, _ in methods
            ]
            ens = rows["output ensemble"]["test"] - best["test"]
            merged = rows.get(default_row(f"merge(align={DEFAULT_ALIGN!r})"), {"gap": float("nan")})
            out.append(
                f"| {key} | {role} | {100 * best['test']:.2f} | "
                + " | ".join(cells)
                + f" | {100 * ens:+.2f} | "
                + _gap(merged)
                + " |"
            )
    lines = [
        f"- {what}: the rule chooses `{chosen}` ("
        + ", ".join(f"`{m}` worst {100 * w:+.2f}, mean {100 * a:+.2f}" for m, (w, a) in scores.items())
        + ")"
        for what, (chosen, scores) in choices.items()
    ]
    return (
        f"`merge()` is `merge(align={DEFAULT_ALIGN!r}, metric={DEFAULT_METRIC!r}, gate={DEFAULT_GATE!r}, "
        f"gate_holdout={DEFAULT_GATE_HOLDOUT!r})` on these models, `merge(align=True)` is "
        f"`merge(align={DEFAULT_MATCHING!r})`; every method runs with the default gate"
        + (
            " (the merges testing by cross-fitting; `cma_merge` on the whole set). "
            if DEFAULT_GATE_HOLDOUT == CROSSFIT
            else (
                f" (the merges testing on {100 * DEFAULT_GATE_HOLDOUT:.0f} % of the validation set held out of "
                "their fitness; `cma_merge` on the whole set). "
                if DEFAULT_GATE_HOLDOUT
                else ". "
            )
        )
        + "Test accuracy minus the best parent's (points, mean ± sd over seeds; the best parent is the one "
        "better on test, the harder baseline: an oracle no method that sees only validation data can match, as "
        "the column of the parent chosen on validation shows); ensemble: the output ensemble's, for scale.\n\n"
        + "\n".join(out)
        + "\n\nOn the tables each round chose on (the fitness and the matching: development; the gate: "
        "development and round-1 held out; `merge()`'s alignment: development, round-1 and round-2 held out; "
        "the zip: development and round-1 to round-3 held out; the gate's test data: development and round-1 to "
        "round-4 held out; the cross-fitted test: development and round-1 to round-5 held out; what `align=True` "
        "means: development and round-1 to round-6 held out; what `align='auto'` does with a coefficient genome: "
        "development and round-1 to round-7 held out; test accuracy minus the best parent's, worst table and "
        "mean):\n\n"
        + "\n".join(lines)
        + ("\n\n" + half if (half := half_point_lines(results)) else "")
        + "".join("\n" + text for text in _effects(results, (LABELS[DEFAULT_METHODS[0]],)) if text)
    ).rstrip()


def _effects(results, merge_only=None) -> tuple:
    """The tables of what each round's candidate and choice changed, newest first, then round 3's rule check
    (each empty where its rows are missing); ``merge_only``: the labels rounds 5's and 6's tables keep."""
    return (
        coefficient_effect_lines(results),
        matching_effect_lines(results),
        crossfit_effect_lines(results, merge_only),
        holdout_effect_lines(results, merge_only),
        zip_effect_lines(results),
        align_effect_lines(results),
        rule_check_line(results),
    )


def gate_effect(results, level=DEFAULT_GATE) -> list:
    """What the gate at ``level`` changes, per role of the tables and default method (:func:`_changes`, by the
    methods' labels): test accuracy gated minus ungated over every seed of every table of that role."""
    return _changes(results, [(LABELS[b], study.gated(b, level), b) for b in DEFAULT_METHODS])


def gate_effect_lines(results) -> str:
    """:func:`gate_effect` at the default level as a Markdown table (points); empty where it has no row."""
    return _method_changes(
        gate_effect(results),
        None,
        f"What the gate at its default level ({DEFAULT_GATE}), testing on the whole validation set, changes: test "
        "accuracy of each default method with the gate minus without, over every seed of every table of a kind "
        "(points); p: two-sided Wilcoxon signed-rank test on the runs it changes, Holm-corrected over the "
        f"{len(DEFAULT_METHODS)} methods of a kind.",
    )


def paired(runs, new: str, old) -> dict:
    """Test accuracy of row ``new`` minus row ``old`` (a name, or a function of the run that names it) over
    ``runs`` (the same seeds): ``{mean, changed, runs, better, worse, p}``; p: a two-sided Wilcoxon
    signed-rank test on the runs that differ (1 where fewer than two do)."""
    from scipy.stats import wilcoxon

    row = old if callable(old) else (lambda run: old)
    d = [run[new][1] - run[row(run)][1] for run in runs]
    moved = [x for x in d if x != 0]
    return {
        "mean": sum(d) / len(d),
        "changed": len(moved),
        "runs": len(d),
        "better": sum(x > 0 for x in moved),
        "worse": sum(x < 0 for x in moved),
        "p": float(wilcoxon(moved).pvalue) if len(moved) > 1 else 1.0,
    }


def align_effect(results, calibrated: bool = False, new_method: str = ROUND_3, old_method=None) -> list:
    """What a default alignment changes: ``new_method`` (default: round 3's, ``merge(align='activations')``)
    minus ``old_method`` (default: ``merge(align=False)``), both as rounds 3 and 4 ran them (behind the default
    gate, testing on the whole validation set, :func:`round4_row`),
    over every seed of every table of each role (:func:`paired`), Holm-corrected over the roles.
    ``calibrated``: against ``merge(align=False)`` as README runs it, with calibration inputs where the
    models have BatchNorm (:func:`~mega_deap.experiments.heldout_study.unaligned_baseline`). Rows ``{role,
    mean, changed, runs, better, worse, p}``."""
    from mega_deap.experiments.ablation import holm

    new, old = round4_row(new_method), round4_row(old_method or DEFAULT_METHODS[1])
    base = (lambda run: study.unaligned_baseline(run, DEFAULT_GATE)) if calibrated else old
    rows = []
    for role in ROLE_ORDER:
        runs = [run for res in results.values() if res["role"] == role for run in res["runs"]]
        if runs and new in runs[0] and old in runs[0]:
            rows.append({"role": role, **paired(runs, new, base)})
    for row, p in zip(rows, holm([r["p"] for r in rows])):
        row["p"] = p
    return rows


def align_effect_lines(results) -> str:
    """:func:`align_effect` as a Markdown table (points), against both baselines."""
    rows = align_effect(results) + [{**r, "role": r["role"] + ", calibrated"} for r in align_effect(results, True)]
    return _kind_changes(
        rows,
        "What round 3 changed: test accuracy of `merge(align='activations')` (round 3's `merge()`) minus "
        "`merge(align=False)` (the default before it), both with the gate on the whole validation set as round 3 "
        "ran them, over every seed of every table of a kind (points); p: "
        "two-sided Wilcoxon signed-rank test on the runs that differ, Holm-corrected over the kinds of table. "
        "The unaligned candidate round 3 compared ran without calibration inputs; the rows marked calibrated "
        "compare with `merge(align=False)` as README tells users of BatchNorm models to run it (with "
        "calibration inputs; the same merge on the other models), a check added after the choice.",
    )


def _kind_changes(rows: list, caption: str) -> str:
    """``caption`` and a Markdown table of :func:`align_effect`-like rows (points), a row per kind of table;
    empty where there is no row."""
    if not rows:
        return ""
    return markdown(
        caption,
        ("tables", "mean change", "runs that differ", "better / worse", "p (Holm)"),
        [(r["role"], *_change_cells(r)) for r in rows],
    )


def zip_effect(results) -> list:
    """What round 4 changed: ``merge()`` (with the parents' zip) minus round 3's ``merge(align='activations')``,
    as :func:`align_effect` pairs them."""
    return align_effect(results, new_method=f"merge(align={DEFAULT_ALIGN!r})", old_method=ROUND_3)


def zip_effect_lines(results) -> str:
    """:func:`zip_effect` as a Markdown table (points)."""
    return _kind_changes(
        zip_effect(results),
        f"What round 4 changed: test accuracy of `merge(align={DEFAULT_ALIGN!r})` minus "
        "`merge(align='activations')` (round 3's `merge()`), both with the gate on the whole validation set as "
        "round 4 ran them, over every seed of every table of a kind (points); "
        "p: two-sided Wilcoxon signed-rank test on the runs that differ, Holm-corrected over the kinds of table.",
    )


def holdout_effect(results, candidate=study.held_gated) -> list:
    """What round 5's candidate changes, per role of the tables and merge default method: test accuracy with
    the gate's test on :data:`~mega_deap.experiments.heldout_study.GATE_HOLDOUT` of the validation set held
    out of the fitness (``candidate``: the name of a method's candidate row) minus with the gate on the whole set
    (round 4's), over every seed of every table of that role (:func:`paired`), Holm-corrected over the
    methods of a role. Rows ``{role, method, mean, changed, runs, better, worse, p}``."""
    pairs = [(label(b), candidate(b), round4_row(b)) for b in HELD_ORDER]
    return _changes(results, pairs)


def _changes(results, pairs) -> list:
    """Per role of the tables and ``(label, new row, old row)`` of ``pairs``: test accuracy of the new row minus
    the old over every seed of every table of that role (:func:`paired`; where both rows exist),
    Holm-corrected over the pairs of a role. Rows ``{role, method, mean, changed, runs, better, worse, p}``."""
    from mega_deap.experiments.ablation import holm

    rows = []
    for role in ROLE_ORDER:
        runs = [run for res in results.values() if res["role"] == role for run in res["runs"]]
        group = [
            {"role": role, "method": label, **paired(runs, new, old)}
            for label, new, old in pairs
            if runs and new in runs[0] and old in runs[0]
        ]
        for row, p in zip(group, holm([r["p"] for r in group])):
            row["p"] = p
        rows += group
    return rows


# round 7's candidate against what align=True named before: (label, row with activation matching, row with
# weight matching), each behind the default gate on the whole validation set
MATCHING_PAIRS = tuple(
    (label, *(round4_row(row(m)) for m in ("activations", "weights")))
    for label, row in (
        ("`merge(align=True)`", lambda m: f"merge(align={m!r})"),
        ("coefficient GA", study.coefficient_row),
        ("`cma_merge`", study.cma_row),
    )
)


def matching_effect(results) -> list:
    """What round 7's candidate changes: :func:`_changes` over :data:`MATCHING_PAIRS`."""
    return _changes(results, MATCHING_PAIRS)


def matching_effect_lines(results) -> str:
    """:func:`matching_effect` as a Markdown table (points)."""
    return _method_changes(
        matching_effect(results),
        None,
        "What round 7's candidate changes: test accuracy with activation matching minus with weight matching, for "
        f"the three methods that align with what `align=True` means, each with the gate (level {DEFAULT_GATE}) on "
        "the whole validation set, over every seed of every table of a kind (points); p: two-sided Wilcoxon "
        "signed-rank test on the runs that differ, Holm-corrected over the methods of a kind.",
    )


def coefficient_effect(results) -> list:
    """What round 8's candidate changes: the coefficient GA aligned by activation matching minus unaligned, as
    :func:`align_effect` pairs them (behind the default gate on the whole validation set)."""
    return align_effect(
        results, new_method=study.coefficient_row("activations"), old_method=study.coefficient_row(None)
    )


def coefficient_effect_lines(results) -> str:
    """:func:`coefficient_effect` as a Markdown table (points)."""
    return _kind_changes(
        coefficient_effect(results),
        "What round 8's candidate changes: test accuracy of the coefficient GA (`merge(genome='coefficients')`) "
        "aligned by activation matching minus unaligned (what `align='auto'` did with a coefficient genome before "
        f"round 8), both with the gate (level {DEFAULT_GATE}) on the whole validation set, over every seed of every "
        "table of a kind (points); p: two-sided Wilcoxon signed-rank test on the runs that differ, Holm-corrected "
        "over the kinds of table.",
    )


def holdout_effect_lines(results, methods=None) -> str:
    """:func:`holdout_effect` as a Markdown table (points); ``methods``: only the rows of these labels."""
    return _method_changes(
        holdout_effect(results),
        methods,
        f"What round 5's candidate changes: test accuracy with the gate (level {study.HELD_GATE_LEVEL}) testing on "
        f"{100 * study.GATE_HOLDOUT:.0f} % of the validation set held out of the fitness (`gate_holdout="
        f"{study.GATE_HOLDOUT}`) minus with the gate on the whole validation set (round 4's), over every seed of "
        "every table of a kind (points); p: two-sided Wilcoxon signed-rank test on the runs that differ, "
        "Holm-corrected over the methods of a kind.",
    )


def _method_changes(rows: list, methods, caption: str) -> str:
    """``caption`` and a Markdown table of :func:`holdout_effect`-like rows (points), a row per kind of table
    and method; ``methods``: only the rows of these labels (``None``: all). Empty where no row is left."""
    rows = [r for r in rows if methods is None or r["method"] in methods]
    if not rows:
        return ""
    return markdown(
        caption,
        ("tables", "method", "mean change", "runs that differ", "better / worse", "p (Holm)"),
        [(r["role"], r["method"], *_change_cells(r)) for r in rows],
    )


def crossfit_effect(results) -> list:
    """What round 6's candidate changes: :func:`holdout_effect` with the gate's test cross-fitted."""
    return holdout_effect(results, study.crossfit_gated)


def crossfit_effect_lines(results, methods=None) -> str:
    """:func:`crossfit_effect` as a Markdown table (points); ``methods``: only the rows of these labels."""
    return _method_changes(
        crossfit_effect(results),
        methods,
        f"What round 6's candidate changes: test accuracy with the gate (level {study.CROSSFIT_LEVEL}) testing by "
        "cross-fitting (`gate_holdout='crossfit'`: the search runs again on each half of the validation set, "
        "and each half's merge is tested on the other half) minus with the gate on the whole validation set "
        "(round 4's), over every seed of every table of a kind (points); p: two-sided Wilcoxon signed-rank test "
        "on the runs that differ, Holm-corrected over the methods of a kind.",
    )


def rule_check(results) -> tuple:
    """Round 3's rule with its unaligned candidate run as README tells users of BatchNorm models to run it
    (:func:`~mega_deap.experiments.heldout_study.unaligned_baseline`), on the tables round 3 read: ``(chosen,
    scores)`` as :func:`~mega_deap.experiments.heldout_study.choose`. A check added after the choice."""
    tables = {}
    for key, res in results.items():
        if res["role"] not in study.ROUNDS[3]:
            continue
        runs = res["runs"]
        rows = [
            {
                "method": name,
                "delta": sum(run[row(run)][1] - run["best parent"][1] for run in runs) / len(runs),
            }
            for name, row in (
                ("none", lambda run: study.unaligned_baseline(run, DEFAULT_GATE)),
                *((m, lambda run, m=m: round4_row(f"merge(align={m!r})")) for m in study.CANDIDATE_MATCHINGS),
            )
        ]
        tables[key] = rows
    if not tables:
        return None, {}
    return study.choose(tables, {"none": "none", **{m: m for m in study.CANDIDATE_MATCHINGS}})


def rule_check_line(results) -> str:
    chosen, scores = rule_check(results)
    if chosen is None:
        return ""
    return (
        "Round 3's rule again, with its unaligned candidate run as README tells users of BatchNorm models to "
        "run it (with calibration inputs), a check added after the choice: "
        + "; ".join(f"`{m}` {100 * w:+.2f} / {100 * a:+.2f}" for m, (w, a) in scores.items())
        + f" (worst / mean). It chooses **`{chosen}`**.\n"
    )


def _change_cells(r: dict) -> tuple:
    """A :func:`paired` row's cells: the mean change, the runs that differ, better / worse, p."""
    return f"{100 * r['mean']:+.2f}", f"{r['changed']} of {r['runs']}", f"{r['better']} / {r['worse']}", f"{r['p']:.2g}"


def choice_line(what: str, choice: tuple, noun: str = "") -> str:
    """One rule's choice in words: what it read (:data:`READ`), each candidate's worst and mean table, and the
    candidate it chose; ``noun``: what the candidates are called (``what`` by default)."""
    chosen, scores = choice
    return (
        f"{READ[what]} tables only, each candidate {noun or what}'s worst and mean test accuracy minus the best "
        "parent's (points): "
        + "; ".join(f"`{m}` {100 * w:+.2f} / {100 * a:+.2f}" for m, (w, a) in scores.items())
        + f". The rule (the highest worst case) chooses **`{chosen}`**.\n"
    )


def table(results, choices) -> str:
    """The rule's choices, then one Markdown table per task and setting, development first."""
    out = []
    for what, choice in choices.items():
        out.append(choice_line(what, choice))
    for role in ROLE_ORDER[1:]:  # each round's held-out tables, as its rule would have judged them
        if half := half_point_lines(results, role):
            out.append(half)
    out += [text for text in _effects(results) if text]
    if DEFAULT_GATE is not None and (effect := gate_effect_lines(results)):
        out.append(effect)
    for role in ROLE_ORDER:
        for key, res in results.items():
            if res["role"] != role:
                continue
            parents = res["runs"][0]["parents"]
            out.append(
                f"**{key}** ({role}, {len(res['runs'])} seeds; seed 0's "
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
                if r["method"] in HIDDEN:  # the gate's other levels: in the rule's line above only
                    continue
                plain = r["method"] in ("best parent", "output ensemble")
                gap = "" if plain else _gap(r)
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
