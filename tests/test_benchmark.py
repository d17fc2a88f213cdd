"""The benchmark's --quick mode runs in CI so the script cannot rot; no timing is asserted."""

import importlib.util
import pathlib

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_merge_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_merge", ROOT / "benchmarks" / "bench_merge.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    res = bench.main(["--quick", "--device", "cpu", "--json", str(out)])
    assert out.exists() and {r["model"] for r in res["rows"]} == {"mlp-digits", "smallcnn-cifar"}
    for r in res["rows"]:
        assert set(r["seconds"]) == {"batched", "per_individual", "layer", "reference", "torchga", "floor"}
        assert all(t > 0 for t in r["seconds"].values()) and r["evals"] == 4 + 2 * 3
        assert all(lo <= r["seconds"][k] <= hi for k, (lo, hi) in r["spread"].items())
        assert set(r["child_us"]) == {"batched", "per_individual"}
    assert res["batch_sizes"] and set(res["batch_sizes"][0]["seconds"]) == {32, 64}
    (pt,) = res["parts"]  # the timers saw every part of a real merge, nested as they run, and were removed
    runs = {k: v[0] for k, v in pt["runs"].items()}
    assert all(runs[k] > 0 for k in ("breeding", "evaluation", "statistics and hall of fame", "eaMeGA"))
    assert (
        runs["breeding"] + runs["evaluation"] + runs["statistics and hall of fame"] <= runs["eaMeGA"] <= runs["merge"]
    )
    from deap import tools
    from mega_deap import Evaluator, algorithms, breeding, presets

    assert presets.eaMeGA is algorithms.eaMeGA and presets.varMeGABatched is breeding.varMeGABatched
    assert [f.__name__ for f in (Evaluator.map, tools.Statistics.compile, tools.HallOfFame.update)] == [
        "map",
        "compile",
        "update",
    ]
    assert res["mutation"]["sparse_s"] > 0 and res["memory"]["budget_bytes"] > 0
    assert res["kernels"] == torch.backends.cpu.get_cpu_capability() and res["threads"] == torch.get_num_threads()


def test_bench_merge_quick_takes_the_sizes_it_is_given(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_merge", ROOT / "benchmarks" / "bench_merge.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--models",
            "mlp-digits",
            "--popsize",
            "5",
            "--ngen",
            "3",
            "--val",
            "32",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    (r,) = res["rows"]
    assert r["evals"] == 5 + 3 * 4 and r["val"] == 32


def test_bench_peers_quick(tmp_path):
    """mega_deap's own row, and every peer either measured or skipped with the extra to install."""
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "bench_peers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "peers.json"
    res = bench.main(["--quick", "--json", str(out)])
    assert out.exists()
    ours = {r["task"]: r for r in res["rows"] if r["library"] == "mega_deap"}
    assert set(ours) == {"digits MLP", "CartPole policy"}
    for r in ours.values():
        assert r["N"] == 8 and r["s_per_gen"] > 0 and r["ratio_to_mega_deap"] == 1
    assert 0 <= ours["digits MLP"]["best"] <= 1 and 8 <= ours["CartPole policy"]["best"] <= 500
    ran = {r["library"] for r in res["rows"]}
    assert ran | set(res["skipped"]) == set(bench.PEERS)
    assert all("pip install" in why for why in res["skipped"].values())
    assert res["environment"]["kernels"] == torch.backends.cpu.get_cpu_capability()


def test_bench_pairing_quick():
    spec = importlib.util.spec_from_file_location("bench_pairing", ROOT / "benchmarks" / "bench_pairing.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--quick"])
    assert [(r["units"], r["dead"]) for r in res["rows"]] == [(64, 0.0), (64, 0.5), (128, 0.0), (128, 0.5)]
    assert all(r["same_pairs"] and min(min(v) for v in r["seconds"].values()) > 0 for r in res["rows"])
    assert "| 128 | 50 % |" in bench.table(res)
    assert res["environment"]["kernels"] == torch.backends.cpu.get_cpu_capability()
