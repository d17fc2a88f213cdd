"""The held-out study's machinery: the rule that chooses defaults, the gated rows, the tasks."""

import pytest
import torch

import mega_deap
from mega_deap.experiments import heldout_study as study
from mega_deap.experiments import model_accuracy


def _rows(deltas: dict) -> list:
    return [{"method": m, "delta": d} for m, d in deltas.items()]


def test_the_rule_takes_the_best_worst_table_then_the_best_mean():
    tables = {
        "t1": _rows({"a": -0.02, "b": -0.01, "c": -0.01}),
        "t2": _rows({"a": 0.10, "b": 0.00, "c": 0.02}),
    }
    chosen, scores = study.choose(tables, {"A": "a", "B": "b", "C": "c"})
    assert chosen == "C"  # B and C tie on the worst table (-0.01); C has the better mean
    assert scores["A"] == (-0.02, pytest.approx(0.04)) and scores["C"] == (-0.01, pytest.approx(0.005))
    # a candidate named by several rows is judged on the worst of any of them
    chosen, scores = study.choose(tables, {"AB": ("a", "b"), "C": "c"})
    assert scores["AB"][0] == -0.02 and chosen == "C"


def test_choose_gate_judges_the_four_default_methods_behind_each_level():
    bases = ("merge, accuracy", "merge(align='weights')", "coefficient GA, aligned", "cma_merge")
    deltas = {}
    for level in study.CANDIDATE_GATES:
        for b in bases:
            deltas[b if level is None else study.gated(b, level)] = 0.0
    deltas["cma_merge"] = -0.03  # no gate: one method's bad table decides
    deltas[study.gated("merge, accuracy", 0.01)] = -0.02
    deltas[study.gated("merge(align='weights')", 0.05)] = -0.01
    deltas["merge(align='activations')"] = -0.5  # not a default method: not read
    chosen, scores = study.choose_gate({"t": _rows(deltas)}, "accuracy", "weights")
    assert chosen == "0.2" and scores["none"][0] == -0.03 and scores["0.01"][0] == -0.02


def test_choose_gate_holdout_judges_merge_s_five_default_methods():
    """Round 5: the gate on the whole set against the gate on 30 % held out, each judged on the worst table of
    any of merge's five default methods; cma_merge and other rows are not read."""
    deltas = {}
    for b in study.HELD_GATED:
        deltas[study.gated(b, 0.2)] = 0.0
        deltas[study.held_gated(b)] = 0.01
    deltas[study.gated("coefficient GA, aligned", 0.2)] = -0.02  # one method's bad table decides
    deltas[study.held_gated(study.ZIP)] = -0.01
    deltas[study.gated("cma_merge", 0.2)] = -0.5  # not judged
    deltas["merge, accuracy"] = -0.5  # ungated: not judged
    chosen, scores = study.choose_gate_holdout({"t": _rows(deltas)}, 0.2)
    assert chosen == "0.3" and scores["0"][0] == -0.02 and scores["0.3"] == (-0.01, pytest.approx(0.006))
    assert len(study.HELD_GATED) == 5 and "cma_merge" not in study.HELD_GATED


def test_choose_gate_crossfit_judges_merge_s_five_default_methods():
    """Round 6: the gate on the whole set against the cross-fitted gate, each judged on the worst table of any
    of merge's five default methods; the held-out rows of round 5, cma_merge and ungated rows are not read."""
    deltas = {}
    for b in study.HELD_GATED:
        deltas[study.gated(b, 0.2)] = 0.0
        deltas[study.crossfit_gated(b)] = 0.02
        deltas[study.held_gated(b)] = -0.5  # round 5's candidate: not read
    deltas[study.crossfit_gated("merge, accuracy")] = -0.01  # one method's bad table decides
    deltas[study.gated("cma_merge", 0.2)] = -0.5
    chosen, scores = study.choose_gate_crossfit({"t": _rows(deltas)}, 0.2)
    assert chosen == "0" and scores["0"] == (0.0, 0.0) and scores["crossfit"] == (-0.01, pytest.approx(0.014))
    deltas[study.crossfit_gated("merge, accuracy")] = 0.01
    assert study.choose_gate_crossfit({"t": _rows(deltas)}, 0.2)[0] == "crossfit"


def test_choose_default_matching_judges_the_three_methods_that_align_with_align_true():
    """Round 7: weights against activations, each judged on the worst table of merge(align=...), the coefficient
    GA and cma_merge with that matching, behind the gate; merge()'s other rows and ungated rows are not read."""
    deltas = {}
    for m in study.CANDIDATE_MATCHINGS:
        for row in (f"merge(align={m!r})", study.coefficient_row(m), study.cma_row(m)):
            deltas[study.gated(row, 0.2)] = 0.01
            deltas[row] = -0.5  # ungated: not judged
    deltas[study.gated(study.cma_row("activations"), 0.2)] = -0.02  # one method's bad table decides
    deltas[study.gated(study.coefficient_row("weights"), 0.2)] = -0.01
    deltas[study.gated(study.ZIP, 0.2)] = -0.5  # merge(): not judged
    deltas[study.gated("merge, accuracy", 0.2)] = -0.5
    chosen, scores = study.choose_default_matching({"t": _rows(deltas)}, 0.2)
    assert chosen == "weights" and scores["weights"] == (-0.01, pytest.approx(0.01 / 3))
    assert scores["activations"] == (-0.02, pytest.approx(0.0))
    # the weight-matching rows are the study's rows of rounds 1 to 6
    assert study.coefficient_row("weights") == "coefficient GA, aligned" and study.cma_row("weights") == "cma_merge"
    deltas[study.gated(study.cma_row("activations"), 0.2)] = 0.0
    assert study.choose_default_matching({"t": _rows(deltas)}, 0.2)[0] == "activations"


def test_choose_coefficient_alignment_judges_the_coefficient_ga_behind_the_gate():
    """Round 8: no alignment against activation matching for a coefficient genome, judged on the coefficient GA's
    rows behind the gate alone (its ungated rows and every other method's are not read)."""
    none, act = study.coefficient_row(None), study.coefficient_row("activations")
    assert none == "coefficient GA, unaligned" and none in study.METHODS and study.gated(none, 0.2) in study.METHODS
    deltas = {study.gated(none, 0.2): -0.01, study.gated(act, 0.2): -0.02, none: -0.5, act: 0.5}
    deltas[study.gated(study.coefficient_row("weights"), 0.2)] = 0.3  # weight matching: not a candidate
    deltas[study.gated(study.ZIP, 0.2)] = -0.5
    chosen, scores = study.choose_coefficient_alignment({"t": _rows(deltas)}, 0.2)
    assert chosen == "none" and set(scores) == {"none", "activations"} and scores["none"] == (-0.01, -0.01)
    deltas[study.gated(act, 0.2)] = 0.0
    assert study.choose_coefficient_alignment({"t": _rows(deltas)}, 0.2)[0] == "activations"


def test_coefficient_effect_pairs_the_aligned_coefficient_ga_with_the_unaligned_one():
    """Round 8's table: the coefficient GA with activation matching minus unaligned, both behind the default
    gate, per kind of table; Wilcoxon on the runs that differ, Holm over the kinds."""
    from scipy.stats import wilcoxon

    ex = _example()
    new, old = (ex.round4_row(study.coefficient_row(m)) for m in ("activations", None))
    gains = [0.02, 0.01, 0.03, -0.01, 0.0, 0.04]
    results = {
        "a/x": {"role": "held out", "runs": [{new: (0, 0.5 + g), old: (0, 0.5)} for g in gains]},
        "b/x": {"role": "development", "runs": [{new: (0, 0.5), old: (0, 0.5)} for _ in range(3)]},
    }
    rows = {r["role"]: r for r in ex.coefficient_effect(results)}
    held = rows["held out"]
    assert (held["changed"], held["better"], held["worse"]) == (5, 4, 1)
    assert held["mean"] == pytest.approx(sum(gains) / 6)
    assert held["p"] == pytest.approx(min(1.0, 2 * wilcoxon([g for g in gains if g]).pvalue))
    assert rows["development"]["changed"] == 0
    assert "What round 8's candidate changes" in ex.coefficient_effect_lines(results)


def test_matching_effect_pairs_each_method_s_activation_row_with_its_weight_row():
    """Round 7's table: per kind of table and method, the activation-matching row minus the weight-matching row
    (both behind the default gate); Wilcoxon on the runs that differ, Holm over the three methods of a kind."""
    from scipy.stats import wilcoxon

    ex = _example()
    gains = [0.02, -0.01, 0.0, 0.03, 0.05, 0.01]
    pairs = ex.MATCHING_PAIRS
    assert [p[1:] for p in pairs] == [
        tuple(ex.round4_row(row(m)) for m in ("activations", "weights"))
        for row in (lambda m: f"merge(align={m!r})", study.coefficient_row, study.cma_row)
    ]

    def run(g):
        r = {row: (0, 0.6) for _, new, old in pairs for row in (new, old)}
        r[pairs[2][1]] = (0, 0.6 + g)  # cma_merge with activation matching: the only one that moves
        return r

    results = {"a/x": {"role": "held out", "runs": [run(g) for g in gains]}}
    rows = ex.matching_effect(results)
    assert [r["method"] for r in rows] == ["`merge(align=True)`", "coefficient GA", "`cma_merge`"]
    cma = rows[2]
    assert (cma["changed"], cma["better"], cma["worse"]) == (5, 4, 1) and cma["mean"] == pytest.approx(0.1 / 6)
    assert cma["p"] == pytest.approx(min(1.0, 3 * wilcoxon([g for g in gains if g]).pvalue))
    assert rows[0]["changed"] == 0 and rows[0]["p"] == 1.0
    assert "What round 7's candidate changes" in ex.matching_effect_lines(results)


@pytest.mark.parametrize(
    "effect,row,caption",
    [
        ("holdout_effect", study.held_gated, "What round 5's candidate changes"),
        ("crossfit_effect", study.crossfit_gated, "What round 6's candidate changes"),
    ],
)
def test_candidate_effects_pair_each_merge_method_with_its_whole_set_gate(effect, row, caption):
    """Per kind of table and method: the candidate gate's row (round 5's held-out test, round 6's cross-fitted
    test) minus the whole-set gate's row (round 4's); Wilcoxon on the runs that differ, Holm over the methods
    of a kind."""
    from scipy.stats import wilcoxon

    ex = _example()
    methods = ex.HELD_ORDER  # the five methods rounds 5 and 6 judged on, whatever the defaults are now
    assert sorted(methods) == sorted(study.HELD_GATED) and methods[0] == study.ZIP
    gains = [0.02, -0.01, 0.0, 0.03, 0.05, 0.01]

    def run(g):
        r = {study.gated(m, 0.2): (0, 0.6) for m in methods}
        r.update({study.held_gated(m): (0, 0.6) for m in methods})
        r.update({study.crossfit_gated(m): (0, 0.6) for m in methods})
        r[row(methods[0])] = (0, 0.6 + g)  # merge(): the only one that moves
        return r

    results = {
        "b/x": {"role": "development", "runs": [run(0.0)]},  # a kind of table before: read on its own
        "a/x": {"role": "held out", "runs": [run(g) for g in gains]},
    }
    rows = getattr(ex, effect)(results)
    assert [r["role"] for r in rows] == ["development"] * 5 + ["held out"] * 5
    rows = rows[5:]
    assert [r["method"] for r in rows] == [ex.label(m) for m in methods]
    assert rows[3]["method"] == "`merge(align='weights')`" and rows[0]["method"] == "`merge()`"
    first = rows[0]
    assert (first["changed"], first["better"], first["worse"]) == (5, 4, 1)
    assert first["mean"] == pytest.approx(sum(gains) / 6)
    # Holm over five methods: the only p below 1 is multiplied by five
    assert first["p"] == pytest.approx(min(1.0, 5 * wilcoxon([g for g in gains if g]).pvalue))
    assert all(r["p"] == 1.0 and r["changed"] == 0 for r in rows[1:])
    assert caption in getattr(ex, effect + "_lines")(results)


def test_gate_effect_pairs_each_default_method_with_itself_ungated_by_its_label():
    """The gate's table: per kind of table and default method (named as a user calls it), the gated row minus
    the ungated one; Wilcoxon on the runs that differ, Holm over the default methods of a kind."""
    from scipy.stats import wilcoxon

    ex = _example()
    methods = ex.DEFAULT_METHODS
    gains = [0.02, -0.01, 0.0, 0.03, 0.05, 0.01]

    def run(g):
        r = {row: (0, 0.6) for m in methods for row in (m, study.gated(m, ex.DEFAULT_GATE))}
        r[study.gated(methods[-1], ex.DEFAULT_GATE)] = (0, 0.6 + g)  # cma_merge: the only one that moves
        return r

    results = {"a/x": {"role": "held out", "runs": [run(g) for g in gains]}}
    rows = ex.gate_effect(results)
    assert [r["method"] for r in rows] == [ex.LABELS[m] for m in methods]
    assert rows[0]["method"] == "`merge()`" and rows[-1]["method"] == "`cma_merge`"
    last = rows[-1]
    assert (last["changed"], last["better"], last["worse"]) == (5, 4, 1)
    assert last["p"] == pytest.approx(min(1.0, len(methods) * wilcoxon([g for g in gains if g]).pvalue))
    assert all(r["changed"] == 0 and r["p"] == 1.0 for r in rows[:-1])
    text = ex.gate_effect_lines(results)
    assert text.startswith("What the gate at its default level") and "| held out | `cma_merge` | +1.67 |" in text


def test_gated_rows_are_what_merge_with_that_gate_returns():
    """The study applies the gate to a merge after the fact (the GA runs once); merge(gate=level) on the same
    parents and seed must give the same accuracies."""
    task = study.TASKS["digits-mlp-subset"]
    level = 0.2
    methods = ("best parent", "best parent by validation", "merge, accuracy", study.gated("merge, accuracy", level))
    methods += ("output ensemble",)
    out = study.run_task(task, "same-data", 0, popsize=4, ngen=2, methods=methods)
    splits = study.task_splits(task, 0)
    parents, _ = study.train_parents(task, splits, "same-data", 0)
    r = mega_deap.merge(
        parents, splits.val, popsize=4, ngen=2, seed=0, progress=False, device="cpu", gate=level, align=False
    )
    got = out[study.gated("merge, accuracy", level)]
    assert got[:2] == (model_accuracy(r.model, *splits.val), model_accuracy(r.model, *splits.test))
    assert out["gate_p"]["merge, accuracy"] == r.gate_p
    # round 5's rows are merge's own, with the gate's test on 30 % held out
    held = study.held_gated("merge, accuracy")
    out = study.run_task(task, "same-data", 0, popsize=4, ngen=2, methods=methods[:2] + (held, "output ensemble"))
    r = mega_deap.merge(
        parents,
        splits.val,
        popsize=4,
        ngen=2,
        seed=0,
        progress=False,
        device="cpu",
        gate=0.2,
        gate_holdout=0.3,
        align=False,
    )
    assert out[held][:2] == (model_accuracy(r.model, *splits.val), model_accuracy(r.model, *splits.test))
    # round 6's rows: merge's own, with the gate's test cross-fitted (a class-biased seed, where it is run)
    cross = study.crossfit_gated("merge, accuracy")
    parents, _ = study.train_parents(task, splits, "different-data", 0)
    out = study.run_task(task, "different-data", 0, popsize=4, ngen=2, methods=methods[:2] + (cross, "output ensemble"))
    kw = dict(popsize=4, ngen=2, seed=0, progress=False, device="cpu", align=False)
    r = mega_deap.merge(parents, splits.val, gate=study.CROSSFIT_LEVEL, gate_holdout="crossfit", **kw)
    assert out[cross][:2] == (model_accuracy(r.model, *splits.val), model_accuracy(r.model, *splits.test))
    assert r.gate_p != mega_deap.merge(parents, splits.val, gate=study.CROSSFIT_LEVEL, **kw).gate_p


@pytest.mark.parametrize(
    "task",
    study.HELD_OUT_4 + study.HELD_OUT_5 + study.HELD_OUT_6 + study.HELD_OUT_7 + study.HELD_OUT,
    ids=lambda t: t.name,
)
def test_the_new_held_out_tasks_build(task):
    """Each new task's splits and model fit together, and its hidden units permute (shapes and the
    permutation spec only: their results are for the study)."""
    from mega_deap.align import permutation_spec

    splits = study.task_splits(task, 0)
    model = study.build(task, splits)
    X, y = splits.val
    with torch.no_grad():
        assert model(X[:5]).shape == (5, splits.num_classes)
    assert permutation_spec(model).sizes
    role = {
        **{t: "round-4 held out" for t in study.HELD_OUT_4},
        **{t: "round-5 held out" for t in study.HELD_OUT_5},
        **{t: "round-6 held out" for t in study.HELD_OUT_6},
        **{t: "round-7 held out" for t in study.HELD_OUT_7},
    }
    role = role.get(task, "held out")
    assert int(y.max()) + 1 == splits.num_classes and study.ROLES[task.name] == role
    assert not set(study.ROLES).symmetric_difference(study.TASKS)
    assert (role in study.ROUNDS[8]) == (task not in study.HELD_OUT)  # round 8 reads every task but its own
    assert (role in study.ROUNDS[7]) == (task not in study.HELD_OUT + study.HELD_OUT_7)
    assert (role in study.ROUNDS[6]) == (task in study.HELD_OUT_4 + study.HELD_OUT_5)
    assert (role in study.ROUNDS[5]) == (task in study.HELD_OUT_4)


def _example():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "heldout_study.py"
    spec = importlib.util.spec_from_file_location("example_heldout_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_half_point_rule_reads_each_default_against_both_parents():
    """Per held-out table the mean over seeds of (method - parent), against the parent better on test and
    the one chosen on validation; the worst table, and the tables below -0.5 points."""
    ex = _example()
    row = ex.default_row(ex.DEFAULT_METHODS[0])  # merge() as it runs by default

    def run(best, by_val, merged):
        return {"best parent": (0, best), "best parent by validation": (0, by_val), row: (0, merged)}

    results = {
        "a/same-data": {"role": "held out", "runs": [run(0.90, 0.89, 0.89), run(0.80, 0.795, 0.79)]},  # -0.01
        "b/same-data": {"role": "held out", "runs": [run(0.70, 0.69, 0.698), run(0.60, 0.60, 0.60)]},  # -0.001
        "c/same-data": {"role": "development", "runs": [run(0.5, 0.5, 0.3)]},  # another role: not read
    }
    (got,) = ex.half_point(results)
    assert got["method"] == ex.DEFAULT_METHODS[0] and got["tables"] == 2
    assert got["worst"] == pytest.approx(-0.01) and got["below"] == 1
    assert got["worst_val"] == pytest.approx(-0.0025) and got["below_val"] == 0
    assert ex.half_point(results, role="round-2 held out") == []
    assert "| `merge()` | -1.00 | 1 of 2 | -0.25 | 0 of 2 |" in ex.half_point_lines(results)


def test_the_rule_test_reads_paired_differences_with_holm_over_a_method_s_tables():
    """Per held-out table: the mean of (method - best parent) per seed, its 95 % CI, both one-sided tests
    against -0.5 points Holm-corrected over the method's tables, and the verdict they give."""
    from scipy import stats

    from mega_deap.experiments.ablation import holm, margin_test

    ex = _example()
    row = ex.default_row(ex.DEFAULT_METHODS[0])

    def runs(deltas):
        return [{"best parent": (0, 0.8), row: (0, 0.8 + d)} for d in deltas]

    diffs = {
        "gain/same-data": [0.01, 0.012, 0.008, 0.011],  # above -0.5 points, clearly: meets
        "loss/same-data": [-0.03, -0.028, -0.032, -0.029],  # below, clearly: fails
        "noise/same-data": [0.05, -0.06, 0.04, -0.05],  # the seeds cannot tell
    }
    results = {k: {"role": "held out", "runs": runs(d)} for k, d in diffs.items()}
    results["dev/same-data"] = {"role": "development", "runs": runs([-0.5, -0.5])}  # another role: not read
    got = ex.rule_test(results)
    assert [(r["method"], r["table"]) for r in got] == [(ex.DEFAULT_METHODS[0], k) for k in diffs]
    assert [r["verdict"] for r in got] == ["meets", "fails", "undecided"]
    raw = [margin_test(d, 0.005) for d in diffs.values()]
    for i, key in enumerate(("p_meets", "p_fails")):
        assert [r[key] for r in got] == pytest.approx(holm([p[i] for p in raw]))
    assert got[1]["mean"] == pytest.approx(-0.02975)
    sd = stats.tstd(diffs["loss/same-data"])
    assert got[1]["half"] == pytest.approx(stats.t.ppf(0.975, 3) * sd / 2)
    lines = ex.rule_test_lines(results)
    assert "| `merge()` | loss/same-data | 4 | -2.98 ± " in lines and "| **fails** |" in lines
    assert "meets it on 1 of 3 tables, fails it on 1, undecided on 1; its worst table -2.98 points (95 % CI" in (
        ex.rule_test_summary(results)
    )
    assert ex.rule_test(results, role="round-2 held out") == [] and ex.rule_test_lines(results, "x") == ""


def test_rows_defaults_runs_only_the_default_methods_and_chooses_nothing(tmp_path, monkeypatch, capsys):
    """--rows defaults asks run_task for the default methods' rows and the baselines only, skips every
    round's rule (they read rows it leaves out), prints the rule test, and refuses --reuse in one line."""
    ex = _example()
    calls = []
    real = study.run_task
    monkeypatch.setattr(study, "run_task", lambda *a, **k: calls.append(k.get("methods")) or real(*a, **k))
    out = ex.main(
        ["--rows", "defaults", "--tasks", "digits-mlp-subset", "--settings", "same-data", "--seeds", "2"]
        + ["--popsize", "6", "--ngen", "1", "--out", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    assert "on the development tables, read with its uncertainty" in printed and "Holm" in printed
    assert calls == [ex.DEFAULT_ROWS, ex.DEFAULT_ROWS] and out["choices"] == {}
    run = out["results"]["digits-mlp-subset/same-data"]["runs"][0]
    assert {k for k in run if k in study.METHODS} == set(ex.DEFAULT_ROWS)
    assert {ex.default_row(m) for m in ex.DEFAULT_METHODS} <= set(run)
    assert len(ex.rule_test(out["results"], role="development")) == len(ex.DEFAULT_METHODS)
    with pytest.raises(SystemExit) as e:
        ex.parse_args(["--rows", "defaults", "--reuse", str(tmp_path / "results.json")])
    assert e.value.code == 2


def test_rows_distil_distils_merge_s_model_and_the_rule_chooses_the_setting(tmp_path, capsys):
    """--rows distil: merge() with the defaults as a user calls it, then each candidate distillation of it; each
    row is what merge() and distil give when called by hand; the rule's choice is the candidate whose worst
    table is best (computed here from the runs); the rule test and the change against merge() are printed."""
    import numpy as np

    from mega_deap.align import distil

    ex = _example()
    out = ex.main(
        ["--rows", "distil", "--tasks", "digits-mlp-subset", "--seeds", "1"]
        + ["--popsize", "6", "--ngen", "1", "--out", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    assert "The rule (the highest worst case) chooses" in printed and "What the distillation" in printed
    res = out["results"]
    run = res["digits-mlp-subset/different-data"]["runs"][0]
    assert {k for k in run if k in study.METHODS} == {"best parent", "best parent by validation", "output ensemble"}
    assert set(study.DISTILLED) | {study.DISTIL_START} <= set(run)
    # the rows by hand
    task = study.TASKS["digits-mlp-subset"]
    splits = study.task_splits(task, 0)
    parents, _ = study.train_parents(task, splits, "different-data", 0)
    merged = mega_deap.merge(parents, splits.val, seed=0, popsize=6, ngen=1, progress=False).model
    assert run[study.DISTIL_START][:2] == (model_accuracy(merged, *splits.val), model_accuracy(merged, *splits.test))
    for epochs, temperature in study.CANDIDATE_DISTILS[:2]:
        student = distil(merged, parents, splits.val[0], epochs=epochs, temperature=temperature, seed=0)
        assert run[study.distil_row(epochs, temperature)][1] == model_accuracy(student, *splits.test)
    # the rule: the highest worst table of mean test accuracy minus the best parent's
    worst = {
        name: min(np.mean([r[row][1] - r["best parent"][1] for r in table["runs"]]) for table in res.values())
        for name, row in ex.DISTIL_CANDIDATES.items()
    }
    chosen, scores = out["choices"]["distil"]
    assert worst[chosen] == max(worst.values())  # (the rule's tie-break by the mean: its own test above)
    assert {name: score[0] for name, score in scores.items()} == pytest.approx(worst)
    assert set(out["choices"]) == {"distil"}  # the other rounds' rules read rows this run leaves out


def _no_seconds(results):
    """The results as JSON data without the seconds (the third number of each row, and the run's total)."""
    import json

    data = json.loads(json.dumps(results, default=float))
    for res in data.values():
        for run in res["runs"]:
            for key, value in run.items():
                if key in study.METHODS:
                    run[key] = value[:2]
        for row in res["rows"]:
            row.pop("seconds", None)
    return data


def test_resume_after_a_stop_keeps_the_finished_runs_and_gives_a_run_from_scratch(tmp_path, monkeypatch):
    """The progress file is written after every run; a run stopped in its second run resumes with --resume,
    runs only what was left, and ends with the results of a run that never stopped (seconds aside). A
    progress file of another job (N, G, rows, code, environment) or not a progress file is refused in one
    line, before any run; without the file --resume runs from scratch."""
    import json

    ex = _example()
    argv = ["--rows", "defaults", "--tasks", "digits-mlp-subset", "--settings", "same-data", "--seeds", "2"]
    argv += ["--popsize", "6", "--ngen", "1", "--quiet"]
    scratch = ex.main(argv + ["--out", str(tmp_path / "scratch"), "--resume"])  # nothing to resume
    out = tmp_path / "stopped"
    real, calls = study.run_task, []

    def stop_in_the_second(*a, **k):
        calls.append(a[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(study, "run_task", stop_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        ex.main(argv + ["--out", str(out)])
    progress = json.loads((out / ex.PROGRESS).read_text())
    assert len(progress["runs"]["digits-mlp-subset/same-data"]) == 1 and not (out / "results.json").exists()
    calls.clear()
    monkeypatch.setattr(study, "run_task", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    resumed = ex.main(argv + ["--out", str(out), "--resume"])
    assert calls == [1]  # seed 0 came from the file
    assert _no_seconds(resumed["results"]) == _no_seconds(scratch["results"])
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["job"] == progress["job"] and "done" not in settings  # the job, not the runs again
    # another job's file, or not a progress file: refused in one line, nothing run
    calls.clear()
    for key, value in (("popsize", 7), ("rows", "all"), ("code", "0" * 64), ("environment", "another machine")):
        (out / ex.PROGRESS).write_text(json.dumps(dict(progress, job=dict(progress["job"], **{key: value}))))
        with pytest.raises(SystemExit) as e:
            ex.main(argv + ["--out", str(out), "--resume"])
        assert e.value.code == 2, key
    (out / ex.PROGRESS).write_text("{not json")
    with pytest.raises(SystemExit) as e:
        ex.main(argv + ["--out", str(out), "--resume"])
    assert e.value.code == 2 and calls == []


def test_a_progress_bar_over_the_runs_on_a_terminal_only(tmp_path, capsys):
    """On a terminal the study shows a bar over its runs (resumed ones counted), with the per-run lines above
    it; in a pipe, the lines alone; --quiet, nothing but the file it wrote."""
    import pathlib
    import sys

    from conftest import on_a_terminal

    script = str(pathlib.Path(__file__).resolve().parents[1] / "examples" / "heldout_study.py")
    argv = ["--rows", "defaults", "--tasks", "digits-mlp-subset", "--settings", "same-data", "--seeds", "2"]
    argv += ["--popsize", "6", "--ngen", "1", "--out", str(tmp_path)]
    text = on_a_terminal([sys.executable, script, *argv])
    assert "held-out runs" in text and "\r" in text and "2/2" in text, text[-2000:]
    assert "digits-mlp-subset same-data seed 1:" in text
    ex = _example()
    ex.main(argv + ["--resume"])  # both runs from the progress file: printed lines only, no bar in a pipe
    printed = capsys.readouterr()
    assert "held-out runs" not in printed.out + printed.err and "read with its uncertainty" in printed.out
    ex.main(argv + ["--resume", "--quiet"])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'results.json'}"


def test_align_effect_pairs_merge_with_its_unaligned_self_per_kind_of_table():
    """merge(align='activations') minus merge(align=False) (both behind the gate on the whole validation set,
    as round 3 ran them) per run; Wilcoxon on the runs that
    differ, Holm over the kinds of table."""
    from scipy.stats import wilcoxon

    ex = _example()
    new, old = ex.round4_row(ex.ROUND_3), ex.round4_row(ex.DEFAULT_METHODS[1])
    gains = [0.02, 0.01, 0.03, -0.01, 0.0, 0.04, 0.05, 0.02]
    results = {
        "a/same-data": {"role": "held out", "runs": [{new: (0, 0.5 + g), old: (0, 0.5)} for g in gains]},
        "b/same-data": {"role": "development", "runs": [{new: (0, 0.5), old: (0, 0.5)} for _ in range(3)]},
    }
    rows = {r["role"]: r for r in ex.align_effect(results)}
    held = rows["held out"]
    assert (held["changed"], held["runs"], held["better"], held["worse"]) == (7, 8, 6, 1)
    assert held["mean"] == pytest.approx(sum(gains) / 8)
    raw = wilcoxon([g for g in gains if g]).pvalue
    assert held["p"] == pytest.approx(min(1.0, 2 * raw))  # Holm over two kinds: the smaller p times two
    assert rows["development"]["p"] == 1.0 and rows["development"]["changed"] == 0


def test_zip_effect_pairs_merge_with_round_3_s_default():
    """merge(align='zip') minus merge(align='activations') (both behind the gate on the whole validation set,
    as round 4 ran them) per run, not
    against merge(align=False); Wilcoxon on the runs that differ, Holm over the kinds of table."""
    from scipy.stats import wilcoxon

    ex = _example()
    new, old = ex.round4_row(ex.DEFAULT_METHODS[0]), ex.round4_row(ex.ROUND_3)
    unaligned = ex.round4_row(ex.DEFAULT_METHODS[1])
    assert new != old and "zip" in new
    gains = [0.03, 0.01, 0.0, 0.05, -0.02, 0.04]
    results = {
        "a/x": {"role": "held out", "runs": [{new: (0, 0.6 + g), old: (0, 0.6), unaligned: (0, 0.9)} for g in gains]},
        "b/x": {"role": "round-3 held out", "runs": [{new: (0, 0.5), old: (0, 0.4), unaligned: (0, 0.1)}] * 3},
    }
    rows = {r["role"]: r for r in ex.zip_effect(results)}
    held = rows["held out"]
    assert (held["changed"], held["better"], held["worse"]) == (5, 4, 1)
    assert held["mean"] == pytest.approx(sum(gains) / 6)
    raw = wilcoxon([g for g in gains if g]).pvalue
    other = wilcoxon([0.1] * 3).pvalue
    # Holm by hand over the two kinds: the smaller p times two, the larger no smaller than that
    want = min(1.0, 2 * raw) if raw <= other else max(min(1.0, 2 * other), raw)
    assert held["p"] == pytest.approx(want)
    assert rows["round-3 held out"]["mean"] == pytest.approx(0.1)
    assert "What round 4 changed" in ex.zip_effect_lines(results)


def test_the_calibrated_baseline_is_read_where_the_models_have_batchnorm():
    """unaligned_baseline names the calibrated row where a run has one, else the plain unaligned merge;
    align_effect(calibrated=True) and rule_check pair merge() with it."""
    ex = _example()
    level = ex.DEFAULT_GATE
    new = ex.round4_row(ex.ROUND_3)
    plain, calibrated = study.gated("merge, accuracy", level), study.gated(study.CALIBRATED, level)
    aligned = {m: ex.round4_row(f"merge(align={m!r})") for m in study.CANDIDATE_MATCHINGS}

    def run(merged, unaligned, repaired=None, parent=0.5):
        r = {"best parent": (0, parent), new: (0, merged), plain: (0, unaligned), aligned["weights"]: (0, parent)}
        if repaired is not None:
            r[calibrated] = (0, repaired)
        return r

    assert study.unaligned_baseline(run(0.6, 0.5, 0.55), level) == calibrated
    assert study.unaligned_baseline(run(0.6, 0.5), None) == "merge, accuracy"
    results = {
        "bn/same-data": {"role": "held out", "runs": [run(0.60, 0.50, 0.58), run(0.70, 0.60, 0.69)]},
        "mlp/same-data": {"role": "held out", "runs": [run(0.55, 0.50), run(0.45, 0.50)]},
    }
    plain_rows = {r["role"]: r for r in ex.align_effect(results)}
    cal_rows = {r["role"]: r for r in ex.align_effect(results, calibrated=True)}
    assert plain_rows["held out"]["mean"] == pytest.approx((0.10 + 0.10 + 0.05 - 0.05) / 4)
    assert cal_rows["held out"]["mean"] == pytest.approx((0.02 + 0.01 + 0.05 - 0.05) / 4)
    # the rule on round 3's tables, with the calibrated baseline as its unaligned candidate
    results = {k: {**v, "role": "development"} for k, v in results.items()}
    chosen, scores = ex.rule_check(results)
    assert scores["none"] == (pytest.approx(0.0), pytest.approx((0.135 + 0.0) / 2))  # bn: +0.135; mlp: 0.0
    assert scores["activations"] == (pytest.approx(0.0), pytest.approx((0.15 + 0.0) / 2))
    assert chosen == "activations" and scores["weights"] == (0.0, 0.0)


def test_the_calibrated_row_is_merge_without_alignment_with_calibration_inputs():
    task = study.TASKS["cancer-mlp-bn-subset"]  # BatchNorm: the row exists
    unaligned = study.coefficient_row(None)  # round 8's: the coefficient GA unaligned, with calibration too
    methods = ("best parent", "best parent by validation", study.CALIBRATED, unaligned, "output ensemble")
    out = study.run_task(task, "same-data", 0, popsize=4, ngen=2, methods=methods)
    splits = study.task_splits(task, 0)
    parents, _ = study.train_parents(task, splits, "same-data", 0)
    order = torch.randperm(len(splits.train[0]), generator=torch.Generator().manual_seed(0))
    calib = splits.train[0][order[:512]]
    kw = dict(popsize=4, ngen=2, seed=0, progress=False, device="cpu", gate=None)
    r = mega_deap.merge(parents, splits.val, align=False, calibration=calib, **kw)
    assert out[study.CALIBRATED][:2] == (model_accuracy(r.model, *splits.val), model_accuracy(r.model, *splits.test))
    r = mega_deap.merge(parents, splits.val, align=False, calibration=calib, genome="coefficients", **kw)
    assert r.align is None
    assert out[unaligned][:2] == (model_accuracy(r.model, *splits.val), model_accuracy(r.model, *splits.test))
    plain = study.run_task(study.TASKS["digits-mlp-subset"], "same-data", 0, popsize=4, ngen=1, methods=methods)
    assert study.CALIBRATED not in plain  # no BatchNorm: nothing to calibrate, no row


def test_round_7_s_rows_are_what_the_coefficient_ga_and_cma_merge_return_with_each_matching():
    """The coefficient GA's and cma_merge's rows with each matching are merge(genome="coefficients", align=m)'s
    and cma_merge(align=m)'s on the same parents and seed; the two matchings give different merges."""
    from mega_deap.align import cma_merge

    task = study.TASKS["digits-mlp-subset"]
    rows = {m: (study.coefficient_row(m), study.cma_row(m)) for m in study.CANDIDATE_MATCHINGS}
    methods = ("best parent", "best parent by validation", *(r for pair in rows.values() for r in pair))
    out = study.run_task(task, "different-data", 0, popsize=4, ngen=2, methods=methods + ("output ensemble",))
    splits = study.task_splits(task, 0)
    parents, _ = study.train_parents(task, splits, "different-data", 0)
    kw = dict(seed=0, progress=False, device="cpu", gate=None)
    for m, (coef, cma) in rows.items():
        r = mega_deap.merge(parents, splits.val, popsize=4, ngen=2, genome="coefficients", align=m, **kw)
        assert out[coef][:2] == (model_accuracy(r.model, *splits.val), model_accuracy(r.model, *splits.test)), m
        r = cma_merge(parents, splits.val, ngen=2, lambda_=4, align=m, **kw)
        assert r.align == m and out[cma][:2] == (
            model_accuracy(r.model, *splits.val),
            model_accuracy(r.model, *splits.test),
        ), m
    assert out[rows["weights"][1]][:2] != out[rows["activations"][1]][:2]


def test_reuse_runs_only_the_missing_rows_and_gives_what_a_run_from_scratch_gives(tmp_path, monkeypatch):
    """--reuse: a stored run's rows are kept, the rows it lacks are run, and the result equals a run from scratch
    bit for bit; a stored run whose parents or spot-checked rows differ stops the run; a file of other settings
    is refused in one line."""
    import json

    ex = _example()
    task = study.TASKS["digits-mlp-subset"]
    base = ("best parent", "best parent by validation", *ex.REUSE_CHECKS, "output ensemble")
    new = (study.cma_row("activations"), study.gated(study.cma_row("activations"), 0.2))
    monkeypatch.setattr(study, "METHODS", base + new)
    kw = dict(popsize=4, ngen=2)
    old = json.loads(json.dumps(study.run_task(task, "same-data", 0, methods=base, **kw), default=float))
    scratch = json.loads(json.dumps(study.run_task(task, "same-data", 0, methods=base + new, **kw), default=float))
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"settings": {"seeds": 1, "popsize": 4, "ngen": 2}, "results": {}}))
    args = ex.parse_args(["--reuse", str(path), "--seeds", "1", "--popsize", "4", "--ngen", "2"])
    args.stored = {f"{task.name}/same-data": [old]}
    calls = []
    real = study.run_task
    monkeypatch.setattr(study, "run_task", lambda *a, **k: calls.append(k.get("methods")) or real(*a, **k))
    got = ex.run(task, "same-data", 0, args)
    assert calls == [tuple(m for m in study.METHODS if m in ex.REUSE_CHECKS or m in new)]
    for m in study.METHODS:
        assert list(got[m][:2]) == scratch[m][:2], m
    assert got["gate_p"] == scratch["gate_p"] and got["parents"] == scratch["parents"]
    assert got[ex.REUSE_CHECKS[0]] == old[ex.REUSE_CHECKS[0]]  # a stored row as stored, its seconds too
    # a stored run that is not this code's
    bad = dict(old, **{ex.REUSE_CHECKS[1]: [old[ex.REUSE_CHECKS[1]][0] + 0.01, *old[ex.REUSE_CHECKS[1]][1:]]})
    args.stored = {f"{task.name}/same-data": [bad]}
    with pytest.raises(SystemExit, match="merge\\(align='activations'\\) is"):
        ex.run(task, "same-data", 0, args)
    # a seed the file lacks runs from scratch
    args.stored = {f"{task.name}/same-data": []}
    calls.clear()
    monkeypatch.setattr(study, "run_task", lambda *a, **k: calls.append(k.get("methods")) or {})
    ex.run(task, "same-data", 0, args)
    assert calls == [None]  # every method
    with pytest.raises(SystemExit) as e:
        ex.parse_args(["--reuse", str(path), "--seeds", "2"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        ex.parse_args(["--reuse", str(tmp_path / "missing.json")])
