"""Sharded evaluation: the same merge in 1 process and in P processes (torchrun, gloo, one thread each).

    python benchmarks/bench_distributed.py                 # 1 against 2 processes, 3 interleaved repeats
    python benchmarks/bench_distributed.py --procs 4 --repeats 5

The merge is one whose forward passes dominate: two small CNNs on 32x32x3 inputs (the CIFAR format),
1,000 validation images, N=20, G=5. Each repeat runs the single process and then the P processes, so slow
phases of a shared machine hit both. Reported: the merge's wall time (median and [min, max] over the
repeats) and the speed-up, and whether the P-process run gave the single process's best genome bit for bit.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from mega_deap.experiments import environment, write_json


def worker(out, quick=False):
    """One merge, timed; rank 0 writes ``{"seconds", "genome_sha256"}`` to ``out``."""
    torch.set_num_threads(1)
    import mega_deap
    from mega_deap import distributed
    from mega_deap.experiments import SmallCNN
    from mega_deap.files import tensor_digest

    distributed.init_from_env()
    g = torch.Generator().manual_seed(0)
    n = 100 if quick else 1000
    X = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(0)
    models = [SmallCNN(3, 10).eval() for _ in range(2)]
    distributed.barrier()
    t0 = time.perf_counter()
    r = mega_deap.merge(  # gate=None, align=False: the GA's time, which the ranks share
        models,
        (X, y),
        popsize=20,
        ngen=1 if quick else 5,
        seed=0,
        progress=False,
        device="cpu",
        gate=None,
        align=False,
    )
    seconds = time.perf_counter() - t0
    if distributed.is_main():
        with open(out, "w") as f:
            json.dump(
                {"seconds": seconds, "genome_sha256": tensor_digest(r.genome), "world": distributed.world_size()}, f
            )
    distributed.shutdown()


def run_once(procs, out, quick=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    me = os.path.abspath(__file__)
    if procs == 1:
        cmd = [sys.executable, me, "--worker", out] + (["--quick"] if quick else [])
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
            me,
            "--worker",
            out,
        ] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"bench_distributed: the {procs}-process run failed:\n{proc.stderr[-2000:]}")
    with open(out) as f:
        return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="100 images, one generation: checks the pipeline only")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.quick)
    if args.procs < 2 or args.repeats < 1:
        p.error("--procs must be at least 2 and --repeats at least 1")
    times = {1: [], args.procs: []}
    digests = {1: set(), args.procs: set()}
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeats):
            for n in times:
                r = run_once(n, os.path.join(d, f"{n}-{i}.json"), args.quick)
                times[n].append(r["seconds"])
                digests[n].add(r["genome_sha256"])
    med = {n: statistics.median(v) for n, v in times.items()}
    res = {
        "procs": args.procs,
        "repeats": args.repeats,
        "seconds": times,
        "median": med,
        "speedup": med[1] / med[args.procs],
        "same_bits": digests[1] == digests[args.procs] and len(digests[1]) == 1,
        "cpus": os.cpu_count(),
        "environment": environment(("mega_deap", "torch")),
    }
    print(table(res))
    if args.json:
        write_json(res, args.json)  # atomically, the folder made
    return res


def table(res) -> str:
    p = res["procs"]
    lines = [
        "| processes (1 thread each) | merge seconds, median [min, max] | speed-up | best genome |",
        "|---|---|---|---|",
    ]
    for n in (1, p):
        v = res["seconds"][n] if n in res["seconds"] else res["seconds"][str(n)]
        lines.append(
            f"| {n} | {statistics.median(v):.2f} [{min(v):.2f}, {max(v):.2f}] | "
            f"{(res['median'][1] if 1 in res['median'] else res['median']['1']) / statistics.median(v):.2f}x | "
            f"{'the same bits' if res['same_bits'] else 'differs'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
