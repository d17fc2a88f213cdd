"""Sharded evaluation over torch.distributed: two gloo processes on CPU give the single process's bits;
a rank whose population differs stops every rank; only rank 0 writes."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHILD = str(ROOT / "tests" / "distributed_child.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
needs_gloo = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


# torch's gloo backend can abort a process as it exits, its work done and its files written, when a thread
# of the process group is destroyed unjoined (the C++ runtime's "terminate called without an active
# exception"; see pytorch/pytorch#28126). distributed.shutdown() destroys the group before exit, yet one
# torchrun child aborted so in one of the CI runs here. Such a launch is run once more; no other failure is.
TEARDOWN_ABORT = "terminate called without an active exception"


def run(args, timeout=300):
    for _ in range(2):  # a second launch only after the teardown abort of a torchrun launch
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
        if not (proc.returncode and "torch.distributed.run" in args and TEARDOWN_ABORT in proc.stderr):
            break
    return proc


def torchrun(mode, out):
    return run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", CHILD, mode, str(out)]
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if needs_gloo.args[0]:  # a mark does not apply to a fixture
        pytest.skip(needs_gloo.kwargs["reason"])
    out = tmp_path_factory.mktemp("dist")
    single = run([sys.executable, CHILD, "single", str(out)])
    assert single.returncode == 0, single.stderr[-3000:]
    dist = torchrun("dist", out)
    assert dist.returncode == 0, dist.stderr[-3000:]
    (out / "stdout-single.txt").write_text(single.stdout)
    (out / "stdout-dist.txt").write_text(dist.stdout)
    return out


def test_two_gloo_processes_give_the_single_process_bits(runs):
    from safetensors.torch import load_file

    single, dist = load_file(runs / "single.safetensors"), load_file(runs / "dist.safetensors")
    for k in ("a", "b"):
        assert torch.equal(single[k], dist[k]), k  # same best genome, bit for bit
    s, d = (json.loads((runs / f"{m}.json").read_text()) for m in ("single", "dist"))
    assert s["a"] == d["a"] and s["b"] == d["b"]  # same logbook: every fitness statistic, every generation
    assert s["world"] == 1 and d["world"] == 2 and d["ckpt_exists"]


def test_a_resumed_run_reads_the_checkpoint_on_every_rank(runs, tmp_path):
    import shutil
    from safetensors.torch import load_file

    before = load_file(runs / "dist.safetensors")["a"]
    out = tmp_path / "again"
    shutil.copytree(runs, out)
    again = torchrun("dist", out)  # the checkpoint of the finished run is there: both ranks resume from it
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.equal(load_file(out / "dist.safetensors")["a"], before)
    assert (out / "saves-dist-rank0.txt").read_text().split() == ["0", "1", "2", "3"]  # nothing re-run
    assert "resuming from" in again.stdout


def test_only_rank_0_writes_and_prints(runs):
    assert (runs / "saves-dist-rank0.txt").read_text().split() == ["0", "1", "2", "3"]
    assert not (runs / "saves-dist-rank1.txt").exists()
    # the logbook is printed once (by rank 0), as the single process prints it
    assert (runs / "stdout-dist.txt").read_text() == (runs / "stdout-single.txt").read_text() != ""


@needs_gloo
@needs_gloo
def test_every_rank_takes_rank_0_s_aligned_parents(runs):
    """A matching can come out otherwise on another rank (float sums on unlike hardware); the merge
    broadcasts rank 0's aligned parents and its first population, so the run is the single process's."""
    from safetensors.torch import load_file

    proc = torchrun("permuted", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, permuted = load_file(runs / "single.safetensors"), load_file(runs / "permuted.safetensors")
    for k in ("a", "b"):
        assert torch.equal(single[k], permuted[k]), k
    s, p = (json.loads((runs / f"{m}.json").read_text()) for m in ("single", "permuted"))
    assert s["a"] == p["a"] and s["b"] == p["b"]


@needs_gloo
def test_a_matching_that_fails_on_one_rank_stops_every_rank_with_a_clear_error(tmp_path):
    """align="auto" falls back to no alignment where the matching fails, but only if every rank does: one
    rank alone going unaligned would leave the others waiting in a collective."""
    proc = torchrun("matchfail", tmp_path)
    assert proc.returncode != 0
    # the default aligns and zips: the agreement names both
    agreed = "activation matching and zipping succeeding is true on rank(s) [0] and false on rank(s) [1]"
    assert agreed in proc.stderr
    assert "rank 1 cannot match" in proc.stderr and not (tmp_path / "matchfail.json").exists()


def test_a_diverged_rank_stops_every_rank_with_a_clear_error(tmp_path):
    proc = torchrun("diverge", tmp_path)
    assert proc.returncode != 0
    # each rank that stopped with DivergedError wrote its message (stderr is the launcher's, and torchrun may end
    # it before a rank's traceback is out); the output tail on a failure: a launch that failed otherwise
    said = {f.name: f.read_text() for f in tmp_path.glob("diverged-rank*.txt")}
    assert said, proc.stderr[-6000:]
    assert all("differs from rank 0's" in text for text in said.values()), said
    assert not (tmp_path / "diverge.json").exists()


def test_shares_are_contiguous_and_cover_everything(monkeypatch):
    from mega_deap import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    assert distributed.shares(10) == [(0, 4), (4, 7), (7, 10)]
    assert distributed.shares(10, [1.0, 1.0, 3.0]) == [(0, 2), (2, 4), (4, 10)]
    assert distributed.shares(2) == [(0, 1), (1, 2), (2, 2)]
    with pytest.raises(ValueError, match="shares"):
        distributed.ShardedScores("fastest")


def test_without_a_process_group_nothing_changes():
    from mega_deap import distributed

    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.is_main()


@needs_gloo
def test_the_benchmark_runs_and_checks_the_bits():
    from conftest import load_script

    bench = load_script("bench_distributed", "benchmarks")
    res = bench.main(["--quick", "--repeats", "1"])
    assert res["same_bits"] and set(res["seconds"]) == {1, 2}
    assert res["environment"]["kernels"] == torch.backends.cpu.get_cpu_capability()
    assert "| 2 |" in bench.table(res)


@needs_gloo
def test_the_hpo_study_shards_its_trainings_with_the_same_result(tmp_path):
    single = run([sys.executable, CHILD, "hpo-single", str(tmp_path)])
    assert single.returncode == 0, single.stderr[-3000:]
    dist = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            CHILD,
            "hpo-dist",
            str(tmp_path),
        ]
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    s, d = (json.loads((tmp_path / f"hpo-{m}.json").read_text()) for m in ("single", "dist"))
    assert s.pop("world") == 1 and d.pop("world") == 2
    assert s == d  # the same candidates trained the same way: scores, genes, records, in order
    assert len(s["epochs_run"]) > 6  # more than the first generation was evaluated
    calls = {f.name: int(f.read_text()) for f in tmp_path.glob("hpo-calls-*")}
    assert calls["hpo-calls-single-rank0.txt"] == len(s["epochs_run"])
    shares = calls["hpo-calls-dist-rank0.txt"], calls["hpo-calls-dist-rank1.txt"]
    assert sum(shares) == len(s["epochs_run"]) and min(shares) > 0  # each rank trained its share only


@needs_gloo
def test_merge_cifar_under_torchrun_reports_what_one_process_reports(tmp_path):
    script = str(ROOT / "examples" / "merge_cifar.py")
    quick = ["--epochs", "2", "--popsize", "4", "--ngen", "2", "--quiet"]
    one = run([sys.executable, script, "--out", str(tmp_path / "one"), *quick])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            script,
            "--out",
            str(tmp_path / "two"),
            *quick,
        ]
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert a["rows"] == b["rows"] and a["logbook"] == b["logbook"]  # the same parents, merge and report
    assert two.stdout.count("wrote ") == 1  # rank 0 reports; the other rank only helped evaluate


def test_checksum_is_per_genome_whatever_the_chunk_and_sees_one_flipped_bit():
    """The guard's checksum of a genome is an exact integer function of its bits alone: the same in chunks of
    one and all at once, against a plain int64 computation, and changed by one flipped bit."""
    from mega_deap.distributed import _checksum

    g = torch.Generator().manual_seed(0)
    genomes = list(torch.randn(5, 37, generator=g))
    bits = torch.stack(genomes).view(torch.int32).to(torch.int64)
    ref = torch.stack([bits.sum(1), (bits * torch.arange(1, 38)).sum(1)], 1).reshape(-1)
    assert torch.equal(_checksum(genomes), ref)
    assert torch.equal(_checksum(genomes, numbers=1), ref) and torch.equal(_checksum(genomes, numbers=80), ref)
    flipped = [t.clone() for t in genomes]
    flipped[3].view(torch.int32)[11] ^= 1
    diff = (_checksum(flipped) != ref).reshape(-1, 2).any(1)
    assert diff.tolist() == [False, False, False, True, False]


@needs_gloo
def test_a_checkpoint_only_some_ranks_can_see_is_an_error_on_every_rank_not_a_hang(tmp_path):
    """Rank 0 finds a checkpoint to resume, rank 1 (another folder) does not: each decided alone, and one
    waited at a barrier while the other waited in an all-gather. Now every rank stops with the same error."""
    single = run([sys.executable, CHILD, "single", str(tmp_path)])
    assert single.returncode == 0, single.stderr[-3000:]
    proc = torchrun("unshared", tmp_path)  # run()'s timeout turns a hang into a failure
    assert proc.returncode != 0
    assert proc.stderr.count("exists is true on rank(s) [0] and false on rank(s) [1]") >= 2, proc.stderr[-3000:]


def test_run_launches_again_only_after_gloo_s_abort_at_exit(monkeypatch):
    """A torchrun launch that failed with the teardown abort runs once more; any other failure, and a plain
    process, is returned as it is."""
    calls = []

    def fake(args, **kw):
        calls.append(args)
        stderr = TEARDOWN_ABORT if len(calls) == 1 else ""
        return subprocess.CompletedProcess(args, 1 if len(calls) == 1 else 0, "", stderr)

    monkeypatch.setattr(subprocess, "run", fake)
    launch = [sys.executable, "-m", "torch.distributed.run", CHILD]
    assert run(launch).returncode == 0 and len(calls) == 2
    calls.clear()
    assert run([sys.executable, CHILD]).returncode == 1 and len(calls) == 1  # not a torchrun launch
    calls.clear()
    monkeypatch.setattr(
        subprocess, "run", lambda args, **kw: calls.append(args) or subprocess.CompletedProcess(args, 1, "", "boom")
    )
    assert run(launch).returncode == 1 and len(calls) == 1  # another failure: no second launch
