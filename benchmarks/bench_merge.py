"""How fast is a merge, against the approaches users have today and against the floor?

    python benchmarks/bench_merge.py            # the full CPU table (a few minutes on 2 cores)
    python benchmarks/bench_merge.py --quick    # tiny sizes, what CI runs so the script cannot rot

For the same GA (N individuals, G generations, K=4 winners of size-3 tournaments per child, blend
crossover, mutation, elitism: N + G (N - 1) evaluations), model and validation set, it times in one run:

  (a) mega_deap   ``mega_deap.merge``: population in one tensor, weights read as views, batched evaluation
                  (on CPU an MLP's genomes run stacked, one batched product per layer for a chunk of them),
                  the paper's per-element mutation, a generation's breeding as tensor operations
                  (``varMeGABatched``); (a0) the same with one operator call per child
                  (``breeding="per-individual"``, the path any custom operator takes); (a2) batched with the
                  reference code's per-tensor mutation (``mutation="layer"``), like for like with (b);
  (b) reference   the MeGA reference code's approach in PyTorch: each individual a list of per-tensor
                  arrays; per evaluation the weights are set into the model tensor by tensor, then it runs;
  (c) torchga     PyGAD's torchga approach: each individual a float64 NumPy vector; per evaluation it is
                  cut into a state dict, ``load_state_dict``-ed, and the model predicts;
  (d) floor       the same number of forward passes of one fixed model, no GA at all.

The variants run interleaved, ``--repeats`` times (so drift in the machine's speed hits all alike); each
time reported is the median, with the spread (min, max) beside it, and the ratios (a)/(d), (a0)/(d),
(a2)/(d), (b)/(a), (c)/(a) are ratios of medians. The per-child overhead is (merge - floor) / children.
On CUDA it also times (a) with vmap evaluation and with bf16 autocast. Then: where a merge's time goes
beyond its forward passes (breeding, evaluation, DEAP's statistics and hall of fame, the rest of the loop,
setup; per generation), the evaluation time per
batch size (the library's default is the best of these on 2 CPU cores), sparse against dense-mask
mutation at D = 20 M, and the peak memory of a merge-sized population (N = 20, D = 20 M) against
(2N + 4) x D x 4 bytes + 1 GB. Writes everything to --json.
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from deap import tools

import mega_deap
from mega_deap.experiments import environment, write_json
from mega_deap.adapters import TorchAdapter
from mega_deap.presets import ensure_creator_classes
from mega_deap.experiments import MLP, SmallCNN, resnet_cifar


# ----------------------------------------------------------------------------- the workloads
def workload(name, n_val, device):
    g = torch.Generator().manual_seed(0)
    if name.startswith("mlp-digits"):
        from mega_deap.experiments import load_digits_images

        X, y = load_digits_images()
        X, y = X[:n_val], y[:n_val]
        hidden = (256, 256) if name == "mlp-digits-wide" else (64,)
        make = lambda: MLP(64, 10, hidden=hidden)  # noqa: E731
    else:
        X, y = torch.randn(n_val, 3, 32, 32, generator=g), torch.randint(0, 10, (n_val,), generator=g)
        make = {
            "smallcnn-cifar": lambda: SmallCNN(3, 10),
            "resnet20-cifar": lambda: resnet_cifar(20),
            "resnet56-cifar": lambda: resnet_cifar(56),
        }[name]
    models = []
    for s in (1, 2):
        torch.manual_seed(s)
        m = make()
        m.train()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            m(X[:64])
        models.append(m.eval().to(device))
    return models, X.to(device), y.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- (b) and (c): the GA written
# the way those codes write it, the same selection, blend and elitism as (a)
def tournament(fits, k=4, size=3):
    return [
        max(
            random.sample(range(len(fits)), size)
            if size <= len(fits)
            else [random.randrange(len(fits)) for _ in range(size)],
            key=lambda i: fits[i],
        )
        for _ in range(k)
    ]


def run_reference(models, X, y, N, G, sigma=0.1, p=0.02):
    """Individuals as lists of per-tensor tensors; set the weights, evaluate, per individual."""
    model = models[0]
    names = [n for n, t in model.state_dict().items() if t.is_floating_point()]
    parents = [[m.state_dict()[n].clone() for n in names] for m in models]
    sd = model.state_dict()

    def evaluate(ind):
        with torch.no_grad():
            for n, w in zip(names, ind):  # set_weights, tensor by tensor
                sd[n].copy_(w)
            return (model(X).argmax(1) == y).float().mean().item()

    pop = []
    for _ in range(N):
        a = random.random()
        pop.append([a * w1 + (1 - a) * w2 for w1, w2 in zip(*parents)])
    fits = [evaluate(ind) for ind in pop]
    for _ in range(G):
        best = max(range(N), key=lambda i: fits[i])
        elite, elite_fit = [w.clone() for w in pop[best]], fits[best]
        kids = []
        for _ in range(N - 1):
            w = tournament(fits)
            b = random.random()
            child = [b * w1 + (1 - b) * w2 for w1, w2 in zip(pop[w[0]], pop[w[1]])]
            child = [t + torch.randn_like(t) * sigma if random.random() < p else t for t in child]
            kids.append(child)
        pop = kids + [elite]
        fits = [evaluate(ind) for ind in kids] + [elite_fit]
    return max(fits)


def run_torchga(models, X, y, N, G, sigma=0.01, p=0.02):
    """Individuals as float64 NumPy vectors; genome -> state dict -> load_state_dict -> predict."""
    model = models[0]
    sd0 = model.state_dict()
    keys = list(sd0.keys())
    parents = [
        np.concatenate(
            [
                m.state_dict()[k].detach().cpu().numpy().astype(np.float64).ravel()
                for k in keys
                if sd0[k].is_floating_point()
            ]
        )
        for m in models
    ]
    rng = np.random.default_rng(0)
    dev = X.device

    def evaluate(vec):
        state, start = {}, 0
        for k in keys:  # torchga.model_weights_as_dict
            t = sd0[k]
            if t.is_floating_point():
                state[k] = torch.from_numpy(vec[start : start + t.numel()].reshape(t.shape)).to(dev, torch.float32)
                start += t.numel()
            else:
                state[k] = t
        model.load_state_dict(state)
        with torch.no_grad():  # torchga.predict
            pred = model(X)
        return (pred.argmax(1) == y).float().mean().item()

    pop = []
    for _ in range(N):
        a = random.random()
        pop.append(a * parents[0] + (1 - a) * parents[1])
    fits = [evaluate(v) for v in pop]
    for _ in range(G):
        best = max(range(N), key=lambda i: fits[i])
        elite, elite_fit = pop[best].copy(), fits[best]
        kids = []
        for _ in range(N - 1):
            w = tournament(fits)
            b = random.random()
            child = b * pop[w[0]] + (1 - b) * pop[w[1]]
            mask = rng.random(child.shape[0]) < p
            child[mask] += rng.normal(0.0, sigma, int(mask.sum()))
            kids.append(child)
        pop = kids + [elite]
        fits = [evaluate(v) for v in kids] + [elite_fit]
    return max(fits)


def run_floor(models, X, y, n_evals):
    model = models[0]
    with torch.no_grad():
        for _ in range(n_evals):
            (model(X).argmax(1) == y).float().mean().item()


def timed(fn, device, repeats=1):
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def ga_settings(N: int, G: int, device, n_val: int) -> dict:
    """``merge``'s keywords for every timed run: the paper's N and G, one forward pass over the validation
    set per genome, accuracy fitness (what the floor and the reference GA score), and neither the
    significance gate nor alignment (``gate=None, align=False``): the GA's own time (the gate adds one
    forward pass per parent and the merge after it, alignment two per parent before it)."""
    return dict(
        popsize=N,
        ngen=G,
        seed=0,
        device=device,
        verbose=False,
        batch_size=n_val,
        metric="accuracy",
        gate=None,
        align=False,
    )


def bench_model(name, n_val, N, G, device, repeats, strategy, alternatives=True, gpu_variants=False):
    """Every variant of one row, interleaved ``repeats`` times: the medians, their spread (min, max) and the
    ratios of medians; the per-child overhead is (merge - floor) / children, in microseconds."""
    models, X, y = workload(name, n_val, device)
    n_evals = N + G * (N - 1)
    children = G * (N - 1)
    D = TorchAdapter(models[0]).dim
    common = ga_settings(N, G, device, len(X))
    variants = {
        "batched": lambda: mega_deap.merge(models, (X, y), strategy=strategy, **common),
        "per_individual": lambda: mega_deap.merge(
            models, (X, y), strategy=strategy, breeding="per-individual", **common
        ),
    }
    if alternatives:
        variants["layer"] = lambda: mega_deap.merge(
            models, (X, y), strategy=strategy, mutation="layer", sigma=0.1, **common
        )
        variants["reference"] = lambda: run_reference(models, X, y, N, G)
        variants["torchga"] = lambda: run_torchga(models, X, y, N, G)
    if gpu_variants:
        variants["vmap"] = lambda: mega_deap.merge(models, (X, y), strategy="vmap", **common)
        variants["bf16"] = lambda: mega_deap.merge(models, (X, y), strategy=strategy, autocast=torch.bfloat16, **common)
    variants["floor"] = lambda: run_floor(models, X, y, n_evals)
    run_floor(models, X, y, 3)  # warm-up
    variants["batched"]()  # warm-up of the merge path (first calls allocate)
    runs = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved, so drift in the machine's speed hits every variant alike
        for k, fn in variants.items():
            runs[k].append(timed(fn, device))
    med = {k: float(np.median(v)) for k, v in runs.items()}
    row = {
        "model": name,
        "D": D,
        "val": n_val,
        "N": N,
        "G": G,
        "evals": n_evals,
        "repeats": repeats,
        "seconds": med,
        "spread": {k: [min(v), max(v)] for k, v in runs.items()},
        "runs": runs,
        "a/d": med["batched"] / med["floor"],
        "a0/d": med["per_individual"] / med["floor"],
        "child_us": {k: 1e6 * (med[k] - med["floor"]) / children for k in ("batched", "per_individual")},
    }
    if alternatives:
        row.update(
            {
                "a2/d": med["layer"] / med["floor"],
                "b/a": med["reference"] / med["batched"],
                "c/a": med["torchga"] / med["batched"],
            }
        )
    return row


def bench_batch_size(name, n_val, sizes, device, repeats=5):
    """Seconds to score one genome on ``n_val`` inputs at each evaluation batch size (median of repeats)."""
    from mega_deap.adapters import accuracy

    models, X, y = workload(name, n_val, device)
    ad = TorchAdapter(models[0])
    g = ad.genome()
    evs = {b: accuracy(ad, X, y, batch_size=b, strategy="loop") for b in sizes}
    for ev in evs.values():
        ev.scores([g])  # warm-up
    runs = {b: [] for b in sizes}
    for _ in range(repeats):
        for b, ev in evs.items():
            runs[b].append(timed(lambda ev=ev: ev.scores([g] * 10), device) / 10)
    return {"model": name, "val": n_val, "seconds": {b: float(np.median(v)) for b, v in runs.items()}}


def bench_strategies(name, n_val, device, k=40, repeats=9):
    """Microseconds per genome to score ``k`` genomes on ``n_val`` inputs (one batch): the evaluator's loop
    and stacked strategies against the floor's forward pass and accuracy, interleaved, medians."""
    models, X, y = workload(name, n_val, device)
    ad = TorchAdapter(models[0])
    g = torch.Generator().manual_seed(0)
    genomes = list(ad.genome() + 0.01 * torch.randn(k, ad.dim, generator=g).to(device))
    evs = {"loop": mega_deap.Evaluator(ad, X, y, batch_size=len(X), strategy="loop")}
    auto = mega_deap.Evaluator(ad, X, y, batch_size=len(X))
    if ad.stacked_forward()[0] is not None:
        evs["stacked"] = mega_deap.Evaluator(ad, X, y, batch_size=len(X), strategy="stacked")
    fns = {"floor": lambda: run_floor(models, X, y, k), **{s: (lambda e=e: e.scores(genomes)) for s, e in evs.items()}}
    for fn in fns.values():
        fn()
    runs = {s: [] for s in fns}
    for _ in range(repeats):
        for s, fn in fns.items():
            runs[s].append(timed(fn, device) / k)
    return {
        "model": name,
        "val": n_val,
        "k": k,
        "auto": auto.strategy,
        "chunk": auto._stacked_chunk if auto.strategy == "stacked" else None,
        "us": {s: 1e6 * float(np.median(v)) for s, v in runs.items()},
    }


class _Clock:
    """Seconds spent inside the callables it wraps, by part."""

    def __init__(self):
        self.seconds = {}

    def wrap(self, part, fn):
        def timed_call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t

        return timed_call


def bench_parts(name, n_val, N, G, device, repeats=7):
    """Where a merge's time goes beyond its forward passes, per generation, in microseconds (medians of
    interleaved repeats): the real ``mega_deap.merge`` with its breeding (``varMeGABatched``), evaluation
    (``Evaluator.map``), DEAP's statistics and hall of fame, and ``eaMeGA`` wrapped in timers; the rest of
    ``eaMeGA``'s loop (elite clones, logbook, replacing the population) and the setup and result outside it
    (adapter, evaluator, population, the merged model) by difference; against the floor's forward passes per
    generation (all N + G (N - 1) of them, / G), so the parts add up to merge/floor - 1."""
    from mega_deap import presets

    models, X, y = workload(name, n_val, device)
    n_evals = N + G * (N - 1)
    clock = _Clock()
    timed_parts = [
        (presets, "varMeGABatched", "breeding"),
        (mega_deap.Evaluator, "map", "evaluation"),
        (tools.Statistics, "compile", "statistics and hall of fame"),
        (tools.HallOfFame, "update", "statistics and hall of fame"),
        (presets, "eaMeGA", "eaMeGA"),
    ]
    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in timed_parts]
    common = {**ga_settings(N, G, device, len(X)), "progress": False}
    runs = {k: [] for k in ("merge", "floor", "breeding", "evaluation", "statistics and hall of fame", "eaMeGA")}
    for (owner, attr, part), (_, _, fn) in zip(timed_parts, originals):
        setattr(owner, attr, clock.wrap(part, fn))  # the same functions, timed, for the runs below only
    try:
        mega_deap.merge(models, (X, y), **common)  # warm-up
        run_floor(models, X, y, 3)
        for _ in range(repeats):
            clock.seconds = {}
            runs["merge"].append(timed(lambda: mega_deap.merge(models, (X, y), **common), device))
            for k, v in clock.seconds.items():
                runs[k].append(v)
            runs["floor"].append(timed(lambda: run_floor(models, X, y, n_evals), device))
    finally:
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)
    med = {k: float(np.median(v)) for k, v in runs.items()}
    per_gen = 1e6 / G
    floor_gen = med["floor"] * per_gen  # all N + G (N - 1) forward passes, per generation
    parts = {
        "breeding": med["breeding"] * per_gen,
        "evaluation beyond the floor": (med["evaluation"] - med["floor"]) * per_gen,
        "statistics and hall of fame": med["statistics and hall of fame"] * per_gen,
        "the rest of eaMeGA's loop": (
            med["eaMeGA"] - med["breeding"] - med["evaluation"] - med["statistics and hall of fame"]
        )
        * per_gen,
        "setup and result (per merge / G)": (med["merge"] - med["eaMeGA"]) * per_gen,
    }
    return {
        "model": name,
        "val": n_val,
        "N": N,
        "G": G,
        "repeats": repeats,
        "floor_per_generation_us": floor_gen,
        "parts_us": parts,
        "a/d": med["merge"] / med["floor"],
        "seconds": med,
        "runs": runs,
    }


# ----------------------------------------------------------------------------- mutation and memory
def bench_mutation(D, indpb, device, repeats=5):
    g = torch.zeros(D, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def sparse():
        mega_deap.mutSparseGaussian(g, 0.0, 0.01, indpb, generator=gen)

    def dense():
        mask = torch.rand(D, generator=gen, device=device) < indpb
        g.add_(torch.randn(D, generator=gen, device=device).mul_(0.01) * mask)

    t_s, t_d = timed(sparse, device, repeats), timed(dense, device, repeats)
    return {"D": D, "indpb": indpb, "sparse_s": t_s, "dense_s": t_d, "speedup": t_d / t_s}


def memory_probe(N, D, G):
    """Runs in a child process: eaMeGA over N x D genomes with a cheap fitness; prints the peak RSS."""

    class Cheap:  # fitness = the first gene: no model, so only the GA's own memory shows
        def __call__(self, ind):
            return (float(ind.genome[0]),)

        def map(self, func, items):
            return [self(i) for i in items]

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pop = mega_deap.TensorPopulation(N, D, device="cpu")
    ev = Cheap()
    tb = mega_deap.mega_toolbox(pop, ev)
    icls = ensure_creator_classes()
    parents = torch.randn(2, D)
    inds = mega_deap.initBlend(pop.individuals(icls), parents)
    del parents
    mega_deap.eaMeGA(inds, tb, G, halloffame=tools.HallOfFame(1, similar=mega_deap.genome_equal), verbose=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": peak, "baseline_bytes": base_rss}))


def bench_memory(N, D, G):
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", str(N), str(D), str(G)], capture_output=True, text=True, check=True
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    budget = (2 * N + 4) * D * 4 + 2**30
    used = r["peak_bytes"] - r["baseline_bytes"]
    return {
        "N": N,
        "D": D,
        "G": G,
        "peak_above_baseline_bytes": used,
        "budget_bytes": budget,
        "within_budget": used <= budget,
    }


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--device", default=None)
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--popsize", type=int, default=None)
    p.add_argument("--ngen", type=int, default=None)
    p.add_argument("--val", type=int, default=None, help="validation images (default per model)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--json", default="benchmarks/results.json")
    p.add_argument("--memory-probe", nargs=3, type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_probe:
        return memory_probe(*args.memory_probe)

    device = torch.device(args.device) if args.device else mega_deap.default_device()
    torch.manual_seed(0)
    random.seed(0)
    gpu = device.type == "cuda"
    if args.quick:
        plan = [
            (m, args.val or 64, args.popsize or 4, args.ngen or 2, True)
            for m in (args.models or ["mlp-digits", "smallcnn-cifar"])
        ]
        mut_D, mem = (200_000, (4, 100_000, 2))
        repeats = args.repeats or 1
        sweep = [("mlp-digits", 64, (32, 64))]
        strat = [("mlp-digits", 64)]
        where = [("mlp-digits", 64, 4, 2)]
    elif gpu:  # the paper's protocol for the CNNs; the MLP at N = 20 and 2,000
        names = args.models or ["resnet56-cifar", "mlp-digits"]
        plan = []
        for m in names:
            if m.startswith("mlp"):
                plan += [(m, 1797, 20, 20, True), (m, 1797, 2000, 5, False)]
            else:
                plan.append((m, args.val or 5000, args.popsize or 20, args.ngen or 20, False))
        mut_D, mem = 20_000_000, None
        repeats = args.repeats or 3
        sweep = []
        strat = []
        where = [("mlp-digits", 1797, 20, 20)]
    else:
        # CPU: validation sets and generations cut so the table takes minutes (a GPU gets the paper's protocol)
        cpu = [
            ("mlp-digits", 1797, 20, 20, True),
            ("mlp-digits", 1797, 200, 5, False),
            ("mlp-digits", 1797, 2000, 2, False),
            ("mlp-digits-wide", 1797, 20, 20, True),
            ("smallcnn-cifar", 500, 20, 5, True),
            ("resnet20-cifar", 200, 20, 3, False),
        ]
        plan = [p for p in cpu if args.models is None or p[0] in args.models]
        plan = [(m, args.val or v, args.popsize or n, args.ngen or g, alt) for m, v, n, g, alt in plan]
        mut_D, mem = 20_000_000, (20, 20_000_000, 2)
        repeats = args.repeats or 5
        sweep = [("smallcnn-cifar", 2000, (250, 500, 1000, 2000)), ("mlp-digits", 1797, (256, 512, 1024, 2048))]
        strat = [("mlp-digits", 1797), ("mlp-digits-wide", 1797)]
        where = [("mlp-digits", 1797, 20, 20), ("mlp-digits", 1797, 200, 5)]

    rows = []
    for name, n_val, N, G, alternatives in plan:
        reps = repeats if "resnet" not in name or gpu else min(repeats, 3)
        r = bench_model(name, n_val, N, G, device, reps, args.strategy, alternatives=alternatives, gpu_variants=gpu)
        rows.append(r)
        s = r["seconds"]
        print(
            f"{name:16s} D={r['D']:>9,d} val={n_val:>5d} N={N} G={G} evals={r['evals']:>5d} | "
            + " ".join(f"{k} {v:.3f}s" for k, v in s.items())
            + f" | a/d {r['a/d']:.3f} a0/d {r['a0/d']:.3f} | us/child batched {r['child_us']['batched']:.0f} "
            f"per-individual {r['child_us']['per_individual']:.0f}",
            flush=True,
        )
    strategies = [bench_strategies(m, n, device) for m, n in strat]
    for st in strategies:
        print(
            f"strategies, {st['model']} on {st['val']} inputs (us per genome): "
            + ", ".join(f"{s} {v:.0f}" for s, v in st["us"].items())
            + f"; auto picks {st['auto']}",
            flush=True,
        )
    parts = [bench_parts(m, n, N, G, device, repeats=1 if args.quick else 7) for m, n, N, G in where]
    for pt in parts:
        print(
            f"where the time goes, {pt['model']} N={pt['N']} G={pt['G']} (us per generation; floor "
            f"{pt['floor_per_generation_us']:.0f}): "
            + ", ".join(f"{k} {v:.0f}" for k, v in pt["parts_us"].items())
            + f"; merge/floor {pt['a/d']:.3f}",
            flush=True,
        )
    sizes = [bench_batch_size(m, n, bs, device) for m, n, bs in sweep]
    for sz in sizes:
        print(
            f"batch size, {sz['model']} on {sz['val']} inputs: "
            + ", ".join(f"{b}: {t * 1e3:.2f} ms" for b, t in sz["seconds"].items()),
            flush=True,
        )
    mut = bench_mutation(mut_D, 0.02, device)
    print(
        f"mutation D={mut['D']:,} indpb=0.02: sparse {mut['sparse_s'] * 1e3:.2f} ms, dense mask "
        f"{mut['dense_s'] * 1e3:.2f} ms, sparse is {mut['speedup']:.1f}x faster",
        flush=True,
    )
    memr = bench_memory(*mem) if mem and device.type == "cpu" else None
    if memr:
        print(
            f"memory N={memr['N']} D={memr['D']:,}: peak {memr['peak_above_baseline_bytes'] / 2**30:.2f} GiB above "
            f"baseline, budget (2N+4)xDx4 + 1 GiB = {memr['budget_bytes'] / 2**30:.2f} GiB: "
            f"{'within' if memr['within_budget'] else 'OVER'}"
        )
    result = {
        "device": str(device),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "quick": args.quick,
        "rows": rows,
        "strategies": strategies,
        "parts": parts,
        "batch_sizes": sizes,
        "mutation": mut,
        "memory": memr,
        "command": " ".join(sys.argv),
        **environment(("mega_deap", "torch")),  # machine, cpu_count, threads, cpu, kernels, ...
    }
    if args.json:
        write_json(result, args.json)  # atomically, the folder made
    return result


if __name__ == "__main__":
    main()
