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


@pytest.mark.parametrize("task", study.HELD_OUT, ids=lambda t: t.name)
def test_the_new_held_out_tasks_build(task):
    """Each new task's splits and model fit together (shapes only: their results are for the study)."""
    splits = study.task_splits(task, 0)
    model = study.build(task, splits)
    X, y = splits.val
    with torch.no_grad():
        assert model(X[:5]).shape == (5, splits.num_classes)
    assert int(y.max()) + 1 == splits.num_classes and study.ROLES[task.name] == "held out"
    assert not set(study.ROLES).symmetric_difference(study.TASKS)
