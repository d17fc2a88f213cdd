"""mega_deap beside its peers, in one process: evolving network weights from scratch.

    pip install -c constraints.txt -e ".[peers]"        # EvoTorch, EvoX (PyTorch), PyGAD: an optional extra
    python benchmarks/bench_peers.py --json benchmarks/results_peers.json
    python benchmarks/bench_peers.py --quick            # tiny sizes, what the test suite runs

Two workloads, each with N = 200 and 2,000 individuals, G generations, N evaluations per generation in every
library (equal evaluations): the digits MLP (64-32-10, 2,410 weights; fitness = accuracy on 397 validation
images) and the CartPole policy of ``examples/neuroevolution.py`` (4-16-2, 114 weights; fitness = mean
return over three episodes of one gymnasium vector environment, new episodes every generation). Each library
runs its own GA, or its nearest algorithm, the way its documentation shows:

  mega_deap  a Deep GA (Such et al.): truncation to the best N/10, children = a drawn parent + N(0, sigma^2)
             on every weight (``varMutantsBatched``: one gather and one Gaussian for the generation), one
             elite; individuals are views into one tensor, the evaluator runs the population's genomes
             stacked (one batched product per layer), started from the network's own initialisation
             (``initModel``);
  EvoTorch   ``GeneticAlgorithm`` with ``GaussianMutation(stdev=sigma)``, elitist (parents and children
             compete), a vectorised problem;
  EvoX       ``DE`` (EvoX has no plain GA; differential evolution, rand/1/bin, is its nearest), a
             ``StdWorkflow`` maximising;
  PyGAD      ``pygad.GA``, steady-state selection of N/10 parents, random mutation of every gene with
             the same variance, one elite, a batched fitness (``fitness_batch_size=N``).

The peers evaluate a batch of genomes with ``torch.func.vmap`` over ``functional_call`` (their documented
way to run a PyTorch model on a population); they start from U(-b, b) with b = 1/8 for the MLP (the scale of
PyTorch's initialisation for 64 inputs) and 1/2 for the policy (4 inputs), and mutate with sigma = 0.05 and
0.1. Reported: seconds per generation (the median over the run's generations, breeding and evaluation
together), its ratio to mega_deap's (above 1: the peer is slower), and the best fitness in the last
generation. Every library is seeded; the environment is printed and saved.
"""

import argparse
import json
import logging
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

import mega_deap
from mega_deap.experiments import environment, write_json
from mega_deap.adapters import TorchAdapter

SIGMA = 0.05
BOUND = 0.125


def data():
    from mega_deap.experiments import load_digits_images

    X, y = load_digits_images()
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    va = perm[1000:1397]
    return X[va].reshape(len(va), -1), y[va]


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class Digits:
    """The digits MLP: fitness = validation accuracy."""

    name, sigma, bound = "digits MLP", SIGMA, BOUND

    def __init__(self):
        self.X, self.y = data()

    def model(self):
        return mlp()

    def evaluator(self, adapter):
        return mega_deap.Evaluator(adapter, self.X, self.y)

    def fitness(self, adapter):
        return batched_fitness(adapter, self.X, self.y)


class CartPole:
    """The CartPole policy of examples/neuroevolution.py: fitness = mean return over three episodes of one
    gymnasium vector environment, new episodes at every call (one call per generation)."""

    name, sigma, bound, episodes = "CartPole policy", 0.1, 0.5, 3

    def __init__(self):
        import importlib.util
        import pathlib

        path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "neuroevolution.py"
        spec = importlib.util.spec_from_file_location("_neuroevolution", path)
        self.ne = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.ne)
        self.ne.gym()

    def model(self):
        return self.ne.policy_net(16)

    def _returns(self, calls):
        def returns(policy):
            calls[0] += 1
            return self.ne.rollout_returns(policy, self.episodes, seed=calls[0])

        return returns

    def evaluator(self, adapter):
        return mega_deap.ModelEvaluator(adapter, mega_deap.on_model(self._returns([0]), batched=True))

    def fitness(self, adapter):
        """The peers' policy: vmap over functional_call, each genome on its own observations."""
        model, returns = adapter.model, self._returns([0])
        run = vmap(lambda g, x: functional_call(model, adapter.tensors(g), (x,)))

        class Policy:
            def __init__(self, G):
                self.G = G

            def __len__(self):
                return self.G.shape[0]

            def __call__(self, x):
                return run(self.G, x)

        @torch.no_grad()
        def fitness(G):
            return torch.as_tensor(returns(Policy(torch.as_tensor(G, dtype=torch.float32))), dtype=torch.float64)

        return fitness


TASKS = {"digits": Digits, "cartpole": CartPole}


def batched_fitness(adapter, X, y):
    """What the peers evaluate with: accuracy of a ``(k, D)`` batch of genomes, vmap over functional_call."""
    model = adapter.model

    def one(g):
        return functional_call(model, adapter.tensors(g), (X,))

    run = vmap(one)

    @torch.no_grad()
    def fitness(G):
        G = torch.as_tensor(G, dtype=torch.float32)
        out = torch.cat([run(G[i : i + 500]) for i in range(0, G.shape[0], 500)])
        return (out.argmax(-1) == y).double().mean(1)

    return fitness


def run_mega_deap(N, G, seed, task):
    from deap import base, creator, tools

    mega_deap.seed(seed)
    ad = TorchAdapter(task.model())
    ev = task.evaluator(ad)
    if not hasattr(creator, "FitnessPeers"):
        creator.create("FitnessPeers", base.Fitness, weights=(1.0,))
        creator.create("PeersIndividual", mega_deap.TensorIndividual, fitness=creator.FitnessPeers)
    pop = mega_deap.TensorPopulation(N, ad.dim, device="cpu")
    tb = base.Toolbox()
    tb.register("evaluate", ev)
    tb.register("map", ev.map)
    tb.register("clone", pop.clone)
    tb.register("mutate", mega_deap.mutSparseGaussian, mu=0.0, sigma=task.sigma, indpb=1.0)
    population = list(mega_deap.initModel(pop.individuals(creator.PeersIndividual), ad))
    mega_deap.evaluate_invalid(population, tb)
    times = []
    for _ in range(G):
        t = time.perf_counter()
        parents = tools.selBest(population, max(1, N // 10))
        children = [tb.clone(parents[0])] + mega_deap.varMutantsBatched(parents, tb, N - 1)
        population[:] = children
        del children, parents
        mega_deap.evaluate_invalid(population, tb)
        times.append(time.perf_counter() - t)
    return times, max(ind.fitness.values[0] for ind in population)


def run_evotorch(N, G, seed, task):
    from evotorch import Problem
    from evotorch.algorithms import GeneticAlgorithm
    from evotorch.operators import GaussianMutation

    torch.manual_seed(seed)
    ad = TorchAdapter(task.model())
    fit = task.fitness(ad)

    def f(solutions):
        return fit(solutions).float()

    problem = Problem(
        "max", f, solution_length=ad.dim, initial_bounds=(-task.bound, task.bound), vectorized=True, seed=seed
    )
    ga = GeneticAlgorithm(problem, popsize=N, operators=[GaussianMutation(problem, stdev=task.sigma)], elitist=True)
    times = []
    for _ in range(G):
        t = time.perf_counter()
        ga.step()
        times.append(time.perf_counter() - t)
    return times, float(ga.population.evals.max())


def run_evox(N, G, seed, task):
    from evox.algorithms import DE
    from evox.core import Problem
    from evox.workflows import StdWorkflow

    torch.manual_seed(seed)
    ad = TorchAdapter(task.model())
    fit = task.fitness(ad)
    best = [-float("inf")]

    class Digits(Problem):
        def evaluate(self, pop):
            f = fit(pop)
            best[0] = max(best[0], float(f.max()))
            return f.float()

    lb, ub = torch.full((ad.dim,), -task.bound), torch.full((ad.dim,), task.bound)
    wf = StdWorkflow(DE(pop_size=N, lb=lb, ub=ub), Digits(), opt_direction="max")
    wf.init_step()
    times = []
    for _ in range(G):
        t = time.perf_counter()
        wf.step()
        times.append(time.perf_counter() - t)
    return times, best[0]


def run_pygad(N, G, seed, task):
    import pygad

    torch.manual_seed(seed)
    ad = TorchAdapter(task.model())
    fit = task.fitness(ad)
    stamps = []

    def fitness_func(ga, solutions, idx):
        return fit(np.asarray(solutions)).tolist()

    half = task.sigma * 3**0.5  # U(-h, h) has the variance of N(0, sigma^2)
    ga = pygad.GA(
        num_generations=G,
        num_parents_mating=max(2, N // 10),
        fitness_func=fitness_func,
        fitness_batch_size=N,
        sol_per_pop=N,
        num_genes=ad.dim,
        init_range_low=-task.bound,
        init_range_high=task.bound,
        parent_selection_type="sss",
        keep_elitism=1,
        crossover_type=None,
        mutation_type="random",
        mutation_probability=1.0,
        random_mutation_min_val=-half,
        random_mutation_max_val=half,
        random_seed=seed,
        on_generation=lambda ga: stamps.append(time.perf_counter()),
        suppress_warnings=True,
    )
    start = time.perf_counter()
    ga.run()
    times = list(np.diff([start] + stamps))
    return times, float(np.max(ga.last_generation_fitness))


PEERS = {"mega_deap": run_mega_deap, "EvoTorch": run_evotorch, "EvoX": run_evox, "PyGAD": run_pygad}
ALGORITHMS = {
    "mega_deap": "Deep GA (truncation, Gaussian)",
    "EvoTorch": "GeneticAlgorithm (Gaussian, elitist)",
    "EvoX": "DE rand/1/bin (no GA in EvoX)",
    "PyGAD": "GA (steady-state, random mutation)",
}


def measure(task, N, name, args):
    """One row: a probe of two generations says whether the whole run fits in ``--budget``; if it does, the
    run over every seed, else the probe's timing alone."""
    row = {"task": task.name, "N": N, "library": name, "algorithm": ALGORITHMS[name]}
    probe = PEERS[name](N, 2, 0, task)
    estimate = float(np.median(probe[0])) * args.ngen * args.seeds
    if estimate > args.budget:
        return row | {
            "s_per_gen": float(np.median(probe[0])),
            "s_per_gen_seeds": [float(np.median(probe[0]))],
            "best": None,
            "best_seeds": [],
            "note": f"timed on 2 generations only: the run would take about {estimate:.0f} s "
            f"(--budget {args.budget:g} s)",
        }
    runs = [PEERS[name](N, args.ngen, seed, task) for seed in range(args.seeds)]
    per_gen = [float(np.median(t)) for t, _ in runs]
    best = [b for _, b in runs]
    return row | {
        "s_per_gen": float(np.median(per_gen)),
        "s_per_gen_seeds": per_gen,
        "best": float(np.mean(best)),
        "best_seeds": best,
    }


def table(rows):
    """The rows as Markdown lines: time per generation and best fitness, each also as a ratio to mega_deap's
    at the same task and N (time: above 1, the peer is slower; fitness: below 1, the peer ended lower)."""
    ours = {(r["task"], r["N"]): r for r in rows if r["library"] == "mega_deap"}
    lines = [
        "| task | N | library | algorithm | s / generation | time x mega_deap | best fitness after G (mean; seeds) "
        "| best x mega_deap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio_to_mega_deap']:.2f}" if r.get("ratio_to_mega_deap") is not None else "-"
        seeds = ", ".join(f"{b:.3f}" for b in r["best_seeds"])
        best = f"{r['best']:.3f} ({seeds})" if r["best"] is not None else r["note"]
        ref = ours.get((r["task"], r["N"]))
        fit = f"{r['best'] / ref['best']:.2f}" if r["best"] is not None and ref and ref["best"] else "-"
        head = f"| {r['task']} | {r['N']:,} | {r['library']} | {r['algorithm']}"
        lines.append(f"{head} | {r['s_per_gen']:.4f} | {ratio} | {best} | {fit} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["digits", "cartpole"])
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000], help="population sizes N")
    p.add_argument("--ngen", type=int, default=20, help="G, generations")
    p.add_argument("--seeds", type=int, default=3, help="runs per library and N (seeds 0, 1, ...)")
    p.add_argument("--only", nargs="+", choices=sorted(PEERS), default=None)
    p.add_argument("--quick", action="store_true", help="N = 8, G = 2, one seed")
    p.add_argument(
        "--budget", type=float, default=400, help="seconds a library may take at one N (else it is timed only)"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.ngen, args.seeds = [8], 2, 1
    logging.getLogger("evotorch").setLevel(logging.WARNING)  # its INFO lines about every Problem
    env = environment(("mega_deap", "deap", "torch", "evotorch", "evox", "pygad", "numpy"))
    print(f"environment: {json.dumps(env)}")
    rows, skipped = [], {}
    for task_name in args.tasks:
        try:
            task = TASKS[task_name]()
        except SystemExit as err:  # gymnasium missing: the CartPole task needs the gym extra
            skipped[task_name] = str(err)
            continue
        for N in args.sizes:
            for name in args.only or PEERS:
                if name in skipped:
                    continue
                try:
                    rows.append(measure(task, N, name, args))
                except ImportError as err:
                    skipped[name] = f"not installed ({err.name}): pip install -e '.[peers]'"
    for r in rows:
        ours = next((q for q in rows if (q["task"], q["N"], q["library"]) == (r["task"], r["N"], "mega_deap")), None)
        r["ratio_to_mega_deap"] = r["s_per_gen"] / ours["s_per_gen"] if ours else None
    print(f"\nG = {args.ngen} generations, {args.seeds} seed(s), N evaluations per generation\n")
    print("\n".join(table(rows)))
    for name, why in skipped.items():
        print(f"{name}: skipped, {why}")
    command = ["python", "benchmarks/bench_peers.py"] + (argv if argv is not None else sys.argv[1:])
    result = {
        "environment": env,
        "ngen": args.ngen,
        "seeds": args.seeds,
        "rows": rows,
        "skipped": skipped,
        "command": " ".join(command),
    }
    if args.json:
        write_json(result, args.json)  # atomically, the folder made
    return result


if __name__ == "__main__":
    main()
