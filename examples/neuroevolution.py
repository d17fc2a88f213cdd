"""Neuroevolution from scratch: a policy network for CartPole-v1 evolved by a Deep GA (Such et al., 2017).

    pip install "mega_deap[gym]"      # gymnasium, an optional extra
    python examples/neuroevolution.py --out results/neuroevolution

The population starts from the policy's own initialisation (``initModel``); each generation every individual
plays ``--episodes`` episodes, all ``N x episodes`` of them in one vectorised CartPole (gymnasium's own numpy
vector environment) with one stacked forward of the whole population per step (``on_model(batched=True)``);
the ``--truncation`` best are the parents, and each child is a uniformly drawn parent plus Gaussian noise
(``mutSparseGaussian`` with ``indpb=1``, bred for the whole generation at once by ``varMutantsBatched``). As
in the Deep GA, the elite (kept unmutated) is the best of the ``--elite-candidates`` best individuals
re-scored on ``--elite-episodes`` further episodes, since a few episodes flatter a lucky policy. Every
individual is re-scored each generation on new episodes. The run stops when the elite scores the maximum
(500) on all of its further episodes, then the elite is tested on 100 new episodes: CartPole-v1 counts as
solved at a mean return of 475. Writes ``results.json`` (``mean_return``, the curve, the settings) and
``returns.png``.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from deap import base, creator, tools
from torch import nn

import mega_deap
from mega_deap.adapters import TorchAdapter
from mega_deap.checkpoint import save_checkpoint
from mega_deap.checks import SettingError
from mega_deap.resume import resume
from mega_deap.experiments import pyplot, save_figure, write_json

SOLVED = 475.0  # CartPole-v1's reward threshold, over 100 episodes
MAX_STEPS = 500  # CartPole-v1's time limit


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--popsize", type=int, default=100, help="N")
    p.add_argument("--truncation", type=int, default=20, help="T: the best T are the parents")
    p.add_argument("--sigma", type=float, default=0.1, help="the mutation's standard deviation")
    p.add_argument("--episodes", type=int, default=3, help="episodes per individual and generation")
    p.add_argument("--elite-candidates", type=int, default=10, help="the best individuals re-scored for the elite")
    p.add_argument("--elite-episodes", type=int, default=30, help="further episodes that choose the elite")
    p.add_argument("--ngen", type=int, default=50, help="at most this many generations")
    p.add_argument("--hidden", type=int, default=16, help="hidden units of the policy")
    p.add_argument("--test-episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="write the run's state here after every generation; re-running with it resumes",
    )
    p.add_argument("--out", default="results/neuroevolution")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for name in (
        "popsize",
        "truncation",
        "episodes",
        "ngen",
        "hidden",
        "test_episodes",
        "elite_candidates",
        "elite_episodes",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.truncation > args.popsize:
        p.error(f"--truncation {args.truncation} is larger than --popsize {args.popsize}")
    if not args.sigma > 0:
        p.error(f"--sigma {args.sigma}: must be positive")
    return args


def gym():
    try:
        import gymnasium
    except ImportError:
        raise SystemExit('neuroevolution.py needs gymnasium: pip install "mega_deap[gym]"') from None
    return gymnasium


def policy_net(hidden: int) -> nn.Module:
    """CartPole's observation (4 numbers) to the two actions' scores."""
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))


def rollout_returns(policy, episodes: int, seed: int, vectorization: str = "vector_entry_point") -> np.ndarray:
    """Each of the ``len(policy)`` genomes plays ``episodes`` CartPole-v1 episodes, all at once in one vector
    environment (``k x episodes`` sub-environments, reset with ``seed``); ``policy(obs)`` takes
    ``(k, episodes, 4)`` observations and gives ``(k, episodes, 2)`` action scores (greedy action). Returns
    each genome's mean return, ``(k,)`` float64. An episode's return counts its steps until it first ends."""
    gymnasium = gym()
    k = len(policy)
    n = k * episodes
    env = gymnasium.make_vec("CartPole-v1", num_envs=n, vectorization_mode=vectorization)
    try:
        obs, _ = env.reset(seed=seed)
        total = np.zeros(n)
        alive = np.ones(n, dtype=bool)
        for _ in range(MAX_STEPS):
            scores = policy(torch.as_tensor(obs, dtype=torch.float32).view(k, episodes, -1))
            action = scores.argmax(-1).reshape(n).cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total += reward * alive
            alive &= ~(terminated | truncated)
            if not alive.any():
                break
    finally:
        env.close()
    return total.reshape(k, episodes).mean(1)


def plot(curve, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    gens = [r["gen"] for r in curve]
    ax.plot(gens, [r["max"] for r in curve], "o-", label="best individual, on the generation's episodes")
    ax.plot(gens, [r["avg"] for r in curve], "s-", label="population mean")
    ax.plot(gens, [r["elite"] for r in curve], "^-", label="elite, on its further episodes")
    ax.axhline(SOLVED, color="k", ls="--", lw=1, label=f"solved ({SOLVED:g} over 100 episodes)")
    ax.set_xlabel("generation")
    ax.set_ylabel("mean return on the generation's episodes")
    ax.set_title("Deep GA on CartPole-v1")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    gym()  # a clear line before any work when gymnasium is missing
    mega_deap.seed(args.seed)
    adapter = TorchAdapter(policy_net(args.hidden))
    state = {"gen": 0}  # each generation plays new episodes: the seed follows the generation

    def returns(policy):
        return rollout_returns(policy, args.episodes, seed=args.seed * 1_000_003 + 7919 * state["gen"])

    evaluator = mega_deap.ModelEvaluator(adapter, mega_deap.on_model(returns, batched=True, name="cartpole_return"))

    def elite_returns(policy):
        return rollout_returns(policy, args.elite_episodes, seed=args.seed * 1_000_003 + 7919 * state["gen"] + 1)

    judge = mega_deap.ModelEvaluator(adapter, mega_deap.on_model(elite_returns, batched=True))
    if not hasattr(creator, "FitnessReturn"):
        creator.create("FitnessReturn", base.Fitness, weights=(1.0,))
        creator.create("PolicyIndividual", mega_deap.TensorIndividual, fitness=creator.FitnessReturn)
    pop = mega_deap.TensorPopulation(args.popsize, adapter.dim, device="cpu")
    toolbox = base.Toolbox()
    toolbox.register("evaluate", evaluator)
    toolbox.register("map", evaluator.map)
    toolbox.register("clone", pop.clone)
    toolbox.register("mutate", mega_deap.mutSparseGaussian, mu=0.0, sigma=args.sigma, indpb=1.0)
    toolbox.register("select", tools.selBest)  # truncation selection
    population = list(mega_deap.initModel(pop.individuals(creator.PolicyIndividual), adapter))
    stats = tools.Statistics(lambda ind: ind.fitness.values[0])
    for name, fn in (("avg", np.mean), ("max", np.max)):
        stats.register(name, fn)
    logbook = tools.Logbook()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quiet", "checkpoint", "ngen")}
    start = 0
    if args.checkpoint and os.path.exists(args.checkpoint):  # population, logbook, every random source
        try:
            start = resume(args.checkpoint, population, toolbox, None, logbook, settings, args.ngen)
        except SettingError as err:  # another run's checkpoint: one line
            raise SystemExit(f"neuroevolution.py: error: {err}") from None
    t0 = time.perf_counter()
    for gen in range(start, args.ngen + 1):
        state["gen"] = gen
        for ind in population:  # every individual, the elite too, on this generation's episodes
            del ind.fitness.values
        mega_deap.evaluate_invalid(population, toolbox)
        logbook.record(gen=gen, nevals=len(population), **stats.compile(population))
        parents = toolbox.select(population, args.truncation)
        candidates = toolbox.select(population, min(args.elite_candidates, args.popsize))
        further = judge.scores(candidates)
        best_further = max(further)
        elite = candidates[further.index(best_further)]
        logbook[-1]["elite"] = best_further
        say(f"gen {gen:3d}  best {logbook[-1]['max']:6.1f}  mean {logbook[-1]['avg']:6.1f}  elite {best_further:6.1f}")
        if best_further >= MAX_STEPS or gen == args.ngen:
            break
        children = [toolbox.clone(elite)] + mega_deap.varMutantsBatched(parents, toolbox, args.popsize - 1)
        population[:] = children
        del children, parents, candidates
        if args.checkpoint:  # the next generation's population, bred, and every random source
            save_checkpoint(args.checkpoint, gen=gen, population=population, logbook=logbook, extra=settings)
    seconds = time.perf_counter() - t0
    best = elite.genome.clone()
    test = mega_deap.ModelEvaluator(
        adapter,
        mega_deap.on_model(
            lambda policy: rollout_returns(policy, args.test_episodes, seed=10**9 + args.seed), batched=True
        ),
    )
    mean_return = test.scores([best])[0]
    os.makedirs(args.out, exist_ok=True)
    curve = [dict(r) for r in logbook]
    png = plot(curve, os.path.join(args.out, "returns.png"))
    report = {
        "env": "CartPole-v1",
        "mean_return": mean_return,
        "solved": mean_return >= SOLVED,
        "test_episodes": args.test_episodes,
        "generations": curve[-1]["gen"],
        "evaluations": evaluator.evaluations + judge.evaluations,
        "seconds": seconds,
        "settings": vars(args),
        "curve": curve,
        "files": {"plot": png},
    }
    write_json(report, os.path.join(args.out, "results.json"))
    say(
        f"\nbest policy after {report['generations']} generations ({seconds:.1f} s): mean return "
        f"{mean_return:.1f} over {args.test_episodes} new episodes ({'solved' if report['solved'] else 'not solved'}: "
        f">= {SOLVED:g})"
    )
    print(f"wrote {os.path.join(args.out, 'results.json')}, {png}")  # even with --quiet
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
