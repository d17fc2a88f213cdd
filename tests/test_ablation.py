import importlib.util
import json
import math
import pathlib

import pytest

from mega_deap import TensorPopulation, cxBlend
from mega_deap.experiments.ablation import (
    margin_test,
    VARIANTS,
    build_toolbox,
    holm,
    mean_ci,
    paired,
    run_ablation,
    summarize,
)
from mega_deap.resume import toolbox_fingerprint
from mega_deap.adapters import TorchAdapter, accuracy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_variants_register_different_toolboxes(digits, digit_mlps):
    ad = TorchAdapter(digit_mlps[0])
    ev = accuracy(ad, *digits["val"])
    prints = {}
    for name, regs in VARIANTS.items():
        tb = build_toolbox(regs, TensorPopulation(4, ad.dim, device="cpu"), ev, ad)
        prints[name] = repr(sorted(toolbox_fingerprint(tb).items(), key=lambda kv: kv[0]))
    names = list(prints)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert prints[a] != prints[b], f"variants {a!r} and {b!r} register identical toolboxes"
    # adding a variant is one line, and a duplicate of the paper is caught by the fingerprint
    same = build_toolbox([("mate", cxBlend, {"alpha": 0.0})], TensorPopulation(4, ad.dim, device="cpu"), ev, ad)
    assert repr(sorted(toolbox_fingerprint(same).items())) == prints["paper"]


def test_statistics_on_known_numbers():
    mean, sd, half = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and sd == pytest.approx(math.sqrt(2.5))
    assert half == pytest.approx(2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5))  # t(0.975, 4)
    d, h, p = paired([2.0, 3.0, 5.0, 4.0], [1.0, 1.0, 2.0, 2.0])  # differences 1, 2, 3, 2
    assert d == 2.0 and h == pytest.approx(3.182446305284263 * math.sqrt(2 / 3) / 2)  # t(0.975, 3)
    t = 2.0 / (math.sqrt(2 / 3) / 2)
    from scipy import stats

    assert p == pytest.approx(2 * stats.t.sf(t, 3))
    assert paired([1.0, 2.0], [1.0, 2.0])[2] == 1.0


def test_margin_test_against_the_t_statistic_by_hand():
    """Both one-sided p-values of the mean difference against -margin, from the t statistic written out in
    float64; equal differences decide by their side; one difference cannot."""
    from scipy import stats

    d = [0.01, -0.002, 0.004, 0.0, 0.007]
    n, m = len(d), sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    t = (m + 0.005) / (sd / math.sqrt(n))
    above, below = margin_test(d, 0.005)
    assert above == pytest.approx(stats.t.sf(t, n - 1)) and below == pytest.approx(stats.t.cdf(t, n - 1))
    assert above < 0.05 < below  # a mean gain of 0.38 points is above -0.5, clearly
    assert margin_test([-0.02, -0.03, -0.025], 0.005)[1] < 0.05  # a loss of 2.5 points is below it
    assert margin_test([0.0, 0.0, 0.0], 0.005) == (0.0, 1.0)  # every seed equal to the parent
    assert margin_test([-0.01, -0.01], 0.005) == (1.0, 0.0)
    assert all(math.isnan(p) for p in margin_test([0.1], 0.005))


def test_holm_against_its_definition():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(that, 1*0.04): monotone step-down
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([0.2]) == [0.2]
    out = holm([0.01, float("nan"), 0.02])
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.02) and math.isnan(out[1])


def test_no_elitism_and_selection_variants_change_the_run(digits, digit_mlps):
    ad = TorchAdapter(digit_mlps[0])
    g = ad.genomes(digit_mlps)
    variants = {k: VARIANTS[k] for k in ("paper", "no-elitism", "random-selection")}
    res = run_ablation(
        ad,
        g,
        accuracy(ad, *digits["val"]),
        accuracy(ad, *digits["test"]),
        variants=variants,
        seeds=[0, 1],
        popsize=6,
        ngen=3,
        progress=False,
    )
    paper = res["paper"][0]["curve"]
    assert all(b >= a for a, b in zip(paper, paper[1:]))  # elitism: monotone
    assert res["no-elitism"][0]["curve"] != paper or res["random-selection"][0]["curve"] != paper
    rows = summarize(res)
    assert [r["variant"] for r in rows] == list(variants)
    assert "test_diff" not in rows[0] and "test_p" in rows[1]
    assert [r["test_p_holm"] for r in rows[1:]] == pytest.approx(holm([r["test_p"] for r in rows[1:]]))
    assert all(r["test_p_holm"] >= r["test_p"] for r in rows[1:])
    assert all(0.0 <= r["test_mean"] <= 1.0 for r in rows)


def test_ablation_example_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("ex_ablation", ROOT / "examples" / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows, results = mod.main(
        [
            "--dataset",
            "digits",
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
            "tournament-2",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert [r["variant"] for r in rows] == ["paper", "no-mutation", "tournament-2"]
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["rows"][1]["test_mean"] == rows[1]["test_mean"]
    assert (tmp_path / "ablation.csv").read_text().startswith("variant,")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
