"""The zip's unit pairing: the greedy pass over every sorted pair against the mutual-best rounds that find the
same pairs (``mega_deap.align.zipping``).

    python benchmarks/bench_pairing.py                  # 2d = 512 .. 4096 units, 3 interleaved repeats
    python benchmarks/bench_pairing.py --quick          # small sizes, one repeat: checks the script only

For each group of ``d`` units per model (``2d`` units of both), a correlation matrix of ``2d`` Gaussian
features over ``4 * 2d`` samples, and the same matrix with half the units dead (correlation 0 with every
unit: ties everywhere, the rounds' worst case). Each repeat times both ways on the same matrix, one after the
other. Reported: the median seconds of each, the speed-up, and whether the pairs are the same, in the same
order (they must be).
"""

import argparse
import statistics
import time

import numpy as np


def correlations(units: int, dead: float, seed: int = 0) -> np.ndarray:
    """``(units, units)``: the correlation of ``units`` Gaussian features over ``4 * units`` samples, with a
    ``dead`` share of the units set to correlation 0."""
    rng = np.random.default_rng(seed)
    c = np.corrcoef(rng.standard_normal((4 * units, units)).T)
    off = rng.random(units) < dead
    c[off] = 0.0
    c[:, off] = 0.0
    return c


def main(argv=None) -> dict:
    from mega_deap.align.zipping import _greedy_pairs, _sorted_greedy
    from mega_deap.experiments import environment, environment_line, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="2d: both models' units")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="2d = 64 and 128, one repeat")
    args = p.parse_args(argv)
    sizes, repeats = ([64, 128], 1) if args.quick else (args.sizes, args.repeats)
    if repeats < 1 or any(n < 2 or n % 2 for n in sizes):
        p.error("--repeats must be at least 1 and every size an even number of at least 2")
    rows = []
    for units in sizes:
        for dead in (0.0, 0.5):
            c = correlations(units, dead)
            every = np.arange(units)
            seconds: dict = {"sorted pass": [], "mutual-best rounds": []}
            same = True
            for _ in range(repeats):
                t0 = time.perf_counter()
                reference = _sorted_greedy(c, every)
                t1 = time.perf_counter()
                fast = _greedy_pairs(c)
                t2 = time.perf_counter()
                seconds["sorted pass"].append(t1 - t0)
                seconds["mutual-best rounds"].append(t2 - t1)
                same = same and fast == reference
            rows.append({"units": units, "dead": dead, "seconds": seconds, "same_pairs": same})
    res = {"repeats": repeats, "rows": rows, "environment": environment(("mega_deap", "numpy"))}
    if args.json:
        write_json(res, args.json)  # atomically, the folder made
    print(f"{repeats} repeats, median seconds; {environment_line(res['environment'])}\n")
    print(table(res))
    return res


def table(res) -> str:
    lines = [
        "| units of both models (2d) | dead units | sorted pass | mutual-best rounds | speed-up | pairs |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        slow, fast = (statistics.median(r["seconds"][k]) for k in ("sorted pass", "mutual-best rounds"))
        lines.append(
            f"| {r['units']} | {100 * r['dead']:.0f} % | {slow:.3f} | {fast:.3f} | {slow / fast:.1f}x | "
            f"{'the same, in order' if r['same_pairs'] else 'DIFFER'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
