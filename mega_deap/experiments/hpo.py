"""GA hyper-parameter search whose crossover merges the parents' trained weights (Gonzalez & Varrun, 2021).

An individual (:class:`Candidate`) carries hyper-parameter genes (hidden layers, units per layer,
activation, learning rate, batch size, epochs) and the weights it trained. The fitness function trains
the network its genes describe, starting from the weights it carries (if any), and scores it on a
validation split. Crossover mixes the genes; :func:`cxWeightMerge` also gives each child layer the merge
of the parents' corresponding trained layers, adapted to the child's shape, so children start trained;
:func:`cxScratch` is the same crossover with children that start from scratch. "basic" and "merge"
differ by that one registration, and DEAP's ``eaSimple``, ``varAnd``, ``selTournament`` and
``HallOfFame`` run the search.

Shape rule (:func:`adapt`), for a weight matrix ``(out, in)`` and its bias ``(out,)``:
- rows (units of this layer): truncated when the child is narrower; when wider, the new rows are drawn
  like a fresh layer (uniform in +-1/sqrt(in), PyTorch's ``nn.Linear`` default), biases zero;
- columns (units of the layer below): truncated when narrower; when wider, the new columns are zero, so
  the new units below change nothing until training moves them.
Layer ``i`` of the child merges layer ``i`` of each parent that has one (mean of the adapted matrices);
a layer only one parent has is copied (adapted); the output layer always merges the parents' output
layers. Random numbers: a ``torch.Generator`` passed as ``generator`` (default: torch's) and ``random``
for gene choices.
"""

import copy
import math
import random
import time
from dataclasses import dataclass, field

from typing import Optional

import torch
from torch import nn

from .. import distributed
from ..evaluation import correct, registered_as
from .train import cross_entropy_loss, fit

__all__ = [
    "SPACE",
    "Candidate",
    "random_genes",
    "build_mlp",
    "adapt",
    "merge_layers",
    "cxWeightMerge",
    "cxScratch",
    "mutGenes",
    "TrainEvaluator",
    "eaUntil",
]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "sigmoid": nn.Sigmoid}

SPACE = {
    "layers": (1, 3),
    "units": (8, 16, 32, 64, 128),
    "activation": tuple(ACTIVATIONS),
    "lr": (1e-3, 3e-3, 1e-2, 3e-2),
    "batch_size": (32, 64, 128),
    "epochs": (2, 5, 10),
}


class Candidate:
    """Base class for ``creator.create("Net", Candidate, fitness=...)``.

    ``genes``: a dict (``units`` is a list, one width per hidden layer); ``weights``: ``None`` (train from
    scratch) or a list of ``(W (out, in), b (out,))`` tensors, hidden layers then the output layer;
    ``seconds``: how long its last fitness evaluation (training + scoring) took.
    """

    def __init__(self, genes=None, weights=None):
        self.genes = dict(genes or {})
        self.weights = weights
        self.seconds = None

    def __repr__(self):
        fit = getattr(self, "fitness", None)
        fit = f", fitness={fit.values}" if fit is not None and fit.valid else ""
        return f"{type(self).__name__}({self.genes}{fit})"


def random_genes(space=SPACE, rng=random):
    layers = rng.randint(*space["layers"])
    return {
        "units": [rng.choice(space["units"]) for _ in range(layers)],
        "activation": rng.choice(space["activation"]),
        "lr": rng.choice(space["lr"]),
        "batch_size": rng.choice(space["batch_size"]),
        "epochs": rng.choice(space["epochs"]),
    }


def build_mlp(genes, in_features, out_features, weights=None):
    """The MLP ``genes`` describe; layers with given ``weights`` start from them (shapes must match)."""
    widths = [in_features] + list(genes["units"]) + [out_features]
    act = ACTIVATIONS[genes["activation"]]
    linears = [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
    if weights is not None:
        if len(weights) != len(linears):
            raise ValueError(f"{len(weights)} weight layers for a network of {len(linears)} layers")
        with torch.no_grad():
            for lin, (W, b) in zip(linears, weights):
                if W.shape != lin.weight.shape or b.shape != lin.bias.shape:
                    raise ValueError(
                        f"weights of shape {tuple(W.shape)} for a layer of shape {tuple(lin.weight.shape)}"
                    )
                lin.weight.copy_(W)
                lin.bias.copy_(b)
    layers = []
    for lin in linears[:-1]:
        layers += [lin, act()]
    layers.append(linears[-1])
    return nn.Sequential(*layers)


def weights_of(model):
    return [(m.weight.detach().clone(), m.bias.detach().clone()) for m in model if isinstance(m, nn.Linear)]


######################################
# Shape-adapting merge               #
######################################


def adapt(W, b, out_features, in_features, *, generator=None):
    """``(W, b)`` reshaped to ``(out_features, in_features)`` by the module's rule: truncate; new rows
    drawn like a fresh ``nn.Linear``, new columns zero, new biases zero."""
    out0, in0 = W.shape
    W2 = torch.zeros(out_features, in_features, dtype=W.dtype)
    b2 = torch.zeros(out_features, dtype=b.dtype)
    r, c = min(out0, out_features), min(in0, in_features)
    W2[:r, :c] = W[:r, :c]
    b2[:r] = b[:r]
    if out_features > out0:
        bound = 1.0 / math.sqrt(in_features)
        W2[out0:, :] = (
            torch.rand(out_features - out0, in_features, generator=generator, dtype=W.dtype) * 2 - 1
        ) * bound
    return W2, b2


def merge_layers(parent_weights, widths, *, generator=None):
    """The child's weights for layer widths ``widths = [in, h1, ..., out]`` from the parents' lists.

    Hidden layer ``i`` merges every parent's hidden layer ``i`` (mean after adapting; one parent: a copy);
    a layer no parent has is drawn like a fresh ``nn.Linear`` (biases zero); the output layer merges the
    parents' output layers.
    """
    n_layers = len(widths) - 1
    out = []
    for i in range(n_layers):
        out_f, in_f = widths[i + 1], widths[i]
        if i == n_layers - 1:
            sources = [pw[-1] for pw in parent_weights]
        else:
            sources = [pw[i] for pw in parent_weights if i < len(pw) - 1]
        if not sources:
            bound = 1.0 / math.sqrt(in_f)
            W = (torch.rand(out_f, in_f, generator=generator) * 2 - 1) * bound
            out.append((W, torch.zeros(out_f)))
            continue
        adapted = [adapt(W, b, out_f, in_f, generator=generator) for W, b in sources]
        out.append((torch.stack([a[0] for a in adapted]).mean(0), torch.stack([a[1] for a in adapted]).mean(0)))
    return out


def _mix_genes(g1, g2, rng=random):
    """Uniform crossover of two gene dicts; the layer count comes from one parent, each width from a
    parent that has that layer. Returns the two complementary children's genes."""
    c1, c2 = {}, {}
    for key in ("activation", "lr", "batch_size", "epochs"):
        a, b = (g1[key], g2[key]) if rng.random() < 0.5 else (g2[key], g1[key])
        c1[key], c2[key] = a, b
    n1, n2 = (len(g1["units"]), len(g2["units"])) if rng.random() < 0.5 else (len(g2["units"]), len(g1["units"]))
    for child, n in ((c1, n1), (c2, n2)):
        units = []
        for i in range(n):
            have = [g["units"][i] for g in (g1, g2) if i < len(g["units"])]
            units.append(rng.choice(have))
        child["units"] = units
    return c1, c2


def _crossover(ind1, ind2, merge, in_features, out_features, generator):
    g1, g2 = copy.deepcopy(ind1.genes), copy.deepcopy(ind2.genes)
    w1, w2 = ind1.weights, ind2.weights
    c1, c2 = _mix_genes(g1, g2)
    for ind, genes in ((ind1, c1), (ind2, c2)):
        ind.genes = genes
        if merge and w1 is not None and w2 is not None:
            widths = [in_features] + genes["units"] + [out_features]
            ind.weights = merge_layers([w1, w2], widths, generator=generator)
        else:
            ind.weights = None
    return ind1, ind2


def cxWeightMerge(ind1, ind2, *, in_features, out_features, generator=None):
    """Mix the genes; each child starts from the merge of its parents' trained layers (see :func:`adapt`).
    In place; returns ``(ind1, ind2)``."""
    return _crossover(ind1, ind2, True, in_features, out_features, generator)


def cxScratch(ind1, ind2, *, in_features, out_features, generator=None):
    """Mix the genes; children start from scratch (the study's "basic" GA). In place; returns the pair."""
    return _crossover(ind1, ind2, False, in_features, out_features, generator)


def mutGenes(ind, indpb, *, in_features, out_features, inherit=True, space=SPACE, generator=None):
    """Redraw each gene with probability ``indpb`` (a width per layer; the layer count by one step).

    ``inherit=True`` (weight-merge mode): the weights it carries are adapted to the new shapes by
    :func:`merge_layers` with one parent. ``inherit=False`` (the study's "basic" mode): the mutated child
    drops them and trains from scratch."""
    g = ind.genes
    for key in ("activation", "lr", "batch_size", "epochs"):
        if random.random() < indpb:
            g[key] = random.choice(space[key])
    g["units"] = [random.choice(space["units"]) if random.random() < indpb else u for u in g["units"]]
    if random.random() < indpb:
        lo, hi = space["layers"]
        n = min(hi, max(lo, len(g["units"]) + random.choice((-1, 1))))
        g["units"] = (g["units"] + [random.choice(space["units"])])[:n] if n > len(g["units"]) else g["units"][:n]
    if not inherit:
        ind.weights = None
    elif ind.weights is not None:
        widths = [in_features] + g["units"] + [out_features]
        ind.weights = merge_layers([ind.weights], widths, generator=generator)
    return (ind,)


######################################
# Fitness: train, then score         #
######################################


@dataclass
class TrainEvaluator:
    """Train the candidate's network (from the weights it carries, else from scratch), score it on the
    validation split: accuracy (``task="classification"``) or MAE (``"regression"``, minimise it).

    Early stopping (``patience``, in epochs; ``None`` trains every epoch the ``epochs`` gene asks for): a
    fixed ``holdout`` fraction of the training split is kept out of training; after each epoch its loss is
    measured, training stops once it has not improved for ``patience`` epochs, and the network keeps the
    weights of its best epoch. The ``epochs`` gene is then the most epochs a network may train.

    Per fitness evaluation it records ``times`` (training + validation score, seconds), ``epochs_run``,
    ``initial_losses`` (the training loss the network starts from, measured before the clock starts) and
    ``warm`` (whether it started from carried weights). ``seed`` fixes each training's batch order and
    fresh initialisation (mixed with a counter so two evaluations differ) and the hold-out split.
    """

    train: tuple
    val: tuple
    task: str = "classification"
    seed: int = 0
    patience: Optional[int] = None
    holdout: float = 0.15
    times: list = field(default_factory=list)
    initial_losses: list = field(default_factory=list)
    epochs_run: list = field(default_factory=list)
    warm: list = field(default_factory=list)

    def __post_init__(self):
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.patience is not None and (int(self.patience) != self.patience or self.patience < 1):
            raise ValueError(f"patience must be a positive integer number of epochs or None, got {self.patience!r}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {self.holdout!r}")
        self.in_features = self.train[0].shape[1]
        self.out_features = int(self.train[1].max()) + 1 if self.task == "classification" else 1
        X, y = self.train
        if self.patience is None:
            self.train_part, self.held_out = (X, y), None
        else:
            perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(self.seed * 31 + 7))
            k = max(1, int(round(self.holdout * len(X))))
            self.train_part, self.held_out = (X[perm[k:]], y[perm[k:]]), (X[perm[:k]], y[perm[:k]])
        self._count = 0

    def loss(self, model, X, y):
        if self.task == "classification":
            return cross_entropy_loss(model, X, y)
        return nn.functional.mse_loss(model(X).squeeze(-1), y)

    def __call__(self, ind):
        self._count += 1
        torch.manual_seed(self.seed * 100003 + self._count)
        g = ind.genes
        model = build_mlp(g, self.in_features, self.out_features, ind.weights)
        with torch.no_grad():  # a measurement for the report, outside the timed fitness function
            self.initial_losses.append(float(self.loss(model, *self.train)))
        t0 = time.perf_counter()
        epochs = fit(
            model,
            self.train_part,
            epochs=g["epochs"],
            lr=g["lr"],
            batch_size=g["batch_size"],
            generator=torch.Generator().manual_seed(self.seed * 7919 + self._count),
            loss=self.loss,
            held_out=self.held_out,
            patience=self.patience,
        )
        score = self.score(model, *self.val)
        ind.seconds = time.perf_counter() - t0
        self.warm.append(ind.weights is not None)
        ind.weights = weights_of(model)
        self.times.append(ind.seconds)
        self.epochs_run.append(epochs)
        return (score,)

    def map(self, func, individuals) -> list:
        """DEAP's ``toolbox.map`` (``toolbox.register("map", evaluator.map)``): the builtin ``map``; in a
        ``torch.distributed`` process group, each rank trains its share of the candidates and the ranks
        all-gather the results (fitness, trained weights, the records), so every rank ends where one
        process would: the same candidates, weights, records and torch random state."""
        individuals = list(individuals)
        if not registered_as(func, self) or not distributed.active():
            return list(map(func, individuals))
        n, base, marks = len(individuals), self._count, len(self.times)
        start, stop = distributed.shares(n)[distributed.rank()]
        local = []
        for i in range(start, stop):
            self._count = base + i  # __call__ counts it to base + i + 1, as one process would
            fit = self(individuals[i])
            ind = individuals[i]
            local.append((fit, ind.weights, ind.seconds, self.initial_losses[-1], self.epochs_run[-1], self.warm[-1]))
        last = torch.get_rng_state() if stop == n and stop > start else None  # the state one process ends in
        gathered: list = [None] * distributed.world_size()
        torch.distributed.all_gather_object(gathered, (local, last))
        for records in (self.times, self.initial_losses, self.epochs_run, self.warm):
            del records[marks:]
        out = []
        for ind, (fit, weights, seconds, loss0, epochs, warm) in zip(
            individuals, [r for part, _ in gathered for r in part]
        ):
            ind.weights, ind.seconds = weights, seconds
            self.times.append(seconds)
            self.initial_losses.append(loss0)
            self.epochs_run.append(epochs)
            self.warm.append(warm)
            out.append(fit)
        state = next((st for _, st in gathered if st is not None), None)
        if state is not None:
            torch.set_rng_state(state)
        self._count = base + n
        return out

    @torch.no_grad()
    def score(self, model, X, y):
        out = model(X)
        if self.task == "classification":
            return float(correct(out, y) / len(y))
        value = float((out.squeeze(-1) - y).abs().mean())
        return value if math.isfinite(value) else float("inf")

    def test_score(self, ind, X, y):
        """The score of an evaluated candidate on another split (its trained weights, no training)."""
        return self.score(build_mlp(ind.genes, self.in_features, self.out_features, ind.weights), X, y)


def eaUntil(population, toolbox, cxpb, mutpb, ngen, accept=None, stats=None, halloffame=None, verbose=False):
    """DEAP's ``eaSimple`` loop with the study's stopping rule: stop after the first generation whose
    best fitness reaches ``accept`` (``>=`` when maximising, ``<=`` when minimising), or after ``ngen``.

    :returns: ``(population, logbook)``; the logbook also records ``seconds`` since the start.
    """
    from deap import algorithms, tools
    from ..algorithms import evaluate_invalid

    t0 = time.perf_counter()
    logbook = tools.Logbook()
    logbook.header = ["gen", "nevals", "seconds"] + (stats.fields if stats else [])

    def accepted():
        if accept is None or halloffame is None or not len(halloffame):
            return False
        best = halloffame[0].fitness
        return best.values[0] >= accept if best.weights[0] > 0 else best.values[0] <= accept

    nevals = evaluate_invalid(population, toolbox)
    if halloffame is not None:
        halloffame.update(population)
    logbook.record(
        gen=0, nevals=nevals, seconds=time.perf_counter() - t0, **(stats.compile(population) if stats else {})
    )
    gen = 0
    while gen < ngen and not accepted():
        gen += 1
        offspring = algorithms.varAnd(toolbox.select(population, len(population)), toolbox, cxpb, mutpb)
        nevals = evaluate_invalid(offspring, toolbox)
        if halloffame is not None:
            halloffame.update(offspring)
        population[:] = offspring
        logbook.record(
            gen=gen, nevals=nevals, seconds=time.perf_counter() - t0, **(stats.compile(population) if stats else {})
        )
        if verbose:
            print(logbook.stream)
    return population, logbook
