"""Tensor operators with DEAP's contract.

``init*`` fill individuals in place, ``cx*`` modify two individuals in place and return them as a
2-tuple, ``mut*`` modify one in place and return a 1-tuple, exactly as ``deap.tools`` does, so
``toolbox.register("mate", ...)`` swaps freely between these and DEAP's list operators. Invalidating
fitness is the algorithm's job, not the operator's.

Random numbers: every operator draws from the ``torch.Generator`` passed as ``generator``, or, when it
is ``None``, from torch's default generator of the genome's device (seeded by :func:`mega_deap.seed`).
"""

import math
from typing import Any, Optional, Sequence, Union

import torch
from deap import tools

from .individual import GenomeLike, TensorIndividual
from .checks import SettingError, SettingTypeError

__all__ = [
    "initBlend",
    "initModel",
    "initNoise",
    "cxBlend",
    "mutSparseGaussian",
    "mutLayerGaussian",
    "sparse_indices",
    "layout_spans",
    "selElite",
    "selNoElite",
]


def _genome(ind):
    if isinstance(ind, TensorIndividual):
        return ind.genome
    if isinstance(ind, torch.Tensor) and ind.dim() == 1:
        return ind
    raise SettingTypeError(f"expected a TensorIndividual or a 1-D tensor, got {type(ind).__name__}")


def _uniform(generator):
    """One U(0, 1) number as a Python float, from ``generator`` (CPU default generator when ``None``)."""
    return torch.rand(
        (), generator=generator, dtype=torch.float64, device=generator.device if generator is not None else "cpu"
    ).item()


######################################
# Initialisation                     #
######################################


def initBlend(
    individuals: Sequence, parents: Union[torch.Tensor, Sequence], *, generator: Optional[torch.Generator] = None
) -> Sequence:
    """Fill each individual with a blend of the parents' genomes, in place.

    With two parents each individual is ``a * p1 + (1 - a) * p2`` with its own ``a ~ U(0, 1)`` (MeGA).
    With k > 2 parents the weights are drawn from a flat Dirichlet (uniform on the simplex).

    :param individuals: the individuals to fill (e.g. ``pop.individuals(creator.Individual)``).
    :param parents: k >= 2 genomes, a sequence of ``(D,)`` tensors or a ``(k, D)`` tensor.
    :param generator: the torch.Generator for the blend weights (CPU; default generator if ``None``).
    :returns: ``individuals``.
    """
    if isinstance(parents, torch.Tensor):
        if parents.dim() != 2:
            raise SettingError(f"parents must be a (k, D) tensor, got shape {tuple(parents.shape)}")
        parents = list(parents)
    parents = [_genome(p) for p in parents]
    if len(parents) < 2:
        raise SettingError(f"initBlend needs at least two parents, got {len(parents)}")
    for i, p in enumerate(parents):
        if p.shape != parents[0].shape:
            raise SettingError(f"parent {i} has genome shape {tuple(p.shape)}, parent 0 has {tuple(parents[0].shape)}")
    gdev = generator.device if generator is not None else "cpu"
    cache = {}
    for ind in individuals:
        row = _genome(ind)
        if row.shape != parents[0].shape:
            raise SettingError(
                f"individual has genome shape {tuple(row.shape)}, parents have {tuple(parents[0].shape)}"
            )
        key = (row.device, row.dtype)
        if key not in cache:
            cache[key] = [p.to(device=row.device, dtype=row.dtype) for p in parents]
        ps = cache[key]
        if len(ps) == 2:
            a = _uniform(generator)
            w = [a, 1.0 - a]
        else:
            e = torch.empty(len(ps), dtype=torch.float64, device=gdev).exponential_(generator=generator)
            w = (e / e.sum()).tolist()
        row.copy_(ps[0]).mul_(w[0])
        for wj, pj in zip(w[1:], ps[1:]):
            row.add_(pj, alpha=wj)
    return individuals


def initModel(individuals: Sequence, adapter: Any, *, generator: Optional[torch.Generator] = None) -> Sequence:
    """Fill each individual with a fresh initialisation of the adapter's model: every module's own
    ``reset_parameters()`` (PyTorch's default initialisation, or the model's), run on a copy of the template,
    then read as a genome (evolution from scratch, as in Such et al.'s Deep GA).

    :param individuals: the individuals to fill.
    :param adapter: a :class:`~mega_deap.adapters.TorchAdapter` (its ``model`` is the template, left as it is).
    :param generator: a CPU ``torch.Generator`` drawing one seed per individual, under which its modules are
                      reset (torch's global generator is restored after); ``None``: the global generator
                      itself (seeded by :func:`mega_deap.seed`).
    :returns: ``individuals``.
    """
    import copy

    template = getattr(adapter, "model", None)
    if not isinstance(template, torch.nn.Module):
        raise SettingTypeError(
            f"initModel needs a TorchAdapter (a torch.nn.Module template), got {type(adapter).__name__}"
        )
    model = copy.deepcopy(template)
    resets: list = [m.reset_parameters for m in model.modules() if callable(getattr(m, "reset_parameters", None))]
    if not resets:
        raise SettingError(f"{type(template).__name__} has no module with reset_parameters(): nothing to initialise")
    for ind in individuals:
        row = _genome(ind)
        if row.shape != (adapter.dim,):
            raise SettingError(
                f"individual has genome shape {tuple(row.shape)}, the adapter's genome is ({adapter.dim},)"
            )
        if generator is None:
            for reset in resets:
                reset()
        else:
            seed = int(torch.randint(2**62, (), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for reset in resets:
                    reset()
        row.copy_(adapter.genome(model))
    return individuals


def initNoise(
    individuals: Sequence, center: GenomeLike, sigma: float, *, generator: Optional[torch.Generator] = None
) -> Sequence:
    """Fill each individual with ``center + sigma * N(0, I)``: a population around one model (a trained
    network, or one initialisation).

    :param center: a ``(D,)`` genome (or an individual).
    :param sigma: the noise's standard deviation, >= 0.
    :param generator: the torch.Generator for the noise (on the genome's device; default generator if ``None``).
    :returns: ``individuals``.
    """
    center_: torch.Tensor = _genome(center)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0 or math.isinf(sigma):
        raise SettingError(f"sigma must be a finite number >= 0, got {sigma!r}")
    for ind in individuals:
        row = _genome(ind)
        if row.shape != center_.shape:
            raise SettingError(f"individual has genome shape {tuple(row.shape)}, center has {tuple(center_.shape)}")
        noise = torch.randn(row.shape, generator=generator, device=row.device, dtype=row.dtype)
        row.copy_(noise.mul_(float(sigma)).add_(center_.to(device=row.device, dtype=row.dtype)))
    return individuals


######################################
# Crossover                          #
######################################


def cxBlend(
    ind1: GenomeLike,
    ind2: GenomeLike,
    alpha: float = 0.0,
    per_element: bool = False,
    *,
    generator: Optional[torch.Generator] = None,
) -> tuple:
    """Blend two genomes in place.

    By default one ``beta`` is drawn for the whole genome and
    ``child1 = beta * a + (1 - beta) * b``, ``child2 = (1 - beta) * a + beta * b`` (MeGA).
    ``beta ~ U(-alpha, 1 + alpha)``: ``alpha > 0`` widens the range as BLX-alpha does.
    ``per_element=True`` draws one ``gamma`` per gene and computes
    ``child1 = (1 - gamma) * a + gamma * b``, ``child2 = gamma * a + (1 - gamma) * b``: DEAP's
    ``tools.cxBlend``, vectorised.

    :param ind1, ind2: the individuals, genomes ``(D,)`` of one device and dtype.
    :param alpha: extent of the interval beyond the parents (0 keeps children between them).
    :param per_element: one coefficient per gene instead of one per genome.
    :param generator: torch.Generator (of the genomes' device when ``per_element``; CPU otherwise).
    :returns: ``(ind1, ind2)``.
    """
    if not alpha >= 0:
        raise SettingError(f"alpha must be >= 0, got {alpha!r}")
    a, b = _genome(ind1), _genome(ind2)
    if a.shape != b.shape:
        raise SettingError(f"cxBlend: genome shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
    if per_element:
        u = torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)
        gamma = (1.0 + 2.0 * alpha) * u - alpha
        new_a = (1.0 - gamma) * a + gamma * b
        new_b = gamma * a + (1.0 - gamma) * b
        a.copy_(new_a)
        b.copy_(new_b)
    else:
        beta = (1.0 + 2.0 * alpha) * _uniform(generator) - alpha
        new_b = torch.lerp(a, b, beta)  # (1 - beta) * a + beta * b
        a.lerp_(b, 1.0 - beta)  # beta * a + (1 - beta) * b
        b.copy_(new_b)
    return ind1, ind2


######################################
# Mutation                           #
######################################


def sparse_indices(
    size: int, indpb: float, *, generator: Optional[torch.Generator] = None, device="cpu"
) -> torch.Tensor:
    """The positions of a Bernoulli(indpb) process over ``range(size)``, drawn in O(k) for k hits.

    The gaps between successive hits are Geometric(indpb); their running sum gives the positions, so
    the work and memory grow with the number of hits, never with ``size``. Exactly the distribution of
    an independent coin per position.

    :returns: an int64 tensor of sorted distinct positions, on ``device``.
    """
    if not 0.0 <= indpb <= 1.0:
        raise SettingError(f"indpb must be a probability in [0, 1], got {indpb}")
    if indpb == 0.0 or size == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if indpb == 1.0:
        return torch.arange(size, device=device)
    mean = size * indpb
    chunk = int(mean + 6.0 * math.sqrt(mean * (1.0 - indpb)) + 16)
    parts, offset = [], 0.0
    while True:
        pos = torch.empty(chunk, dtype=torch.float64, device=device).geometric_(indpb, generator=generator)
        pos[:1].add_(offset - 1.0)  # running sum of the gaps, 0-based: the first hit at gap - 1
        pos = pos.cumsum_(0)
        parts.append(pos)
        offset = pos[-1].item() + 1.0
        if offset > size:  # the last hit lies beyond the genome: every hit inside it is drawn
            break
    pos = torch.cat(parts) if len(parts) > 1 else parts[0]
    k = int(torch.searchsorted(pos, float(size), right=False))  # hits at positions < size
    return pos[:k].to(torch.long)


def mutSparseGaussian(
    individual: GenomeLike, mu: float, sigma: float, indpb: float, *, generator: Optional[torch.Generator] = None
) -> tuple:
    """Add N(mu, sigma^2) noise to each gene independently with probability ``indpb``, in place.

    The number of mutated genes follows Binomial(D, indpb); the cost grows with that number, never
    with D (no D-sized random mask). Same meaning as DEAP's ``tools.mutGaussian``.

    :param individual: genome ``(D,)``.
    :param mu: mean of the noise.
    :param sigma: standard deviation of the noise.
    :param indpb: the probability for each gene to mutate.
    :param generator: torch.Generator of the genome's device (default generator if ``None``).
    :returns: ``(individual,)``.
    """
    if not sigma >= 0:
        raise SettingError(f"sigma must be >= 0, got {sigma!r}")
    g = _genome(individual)
    idx = sparse_indices(g.shape[0], indpb, generator=generator, device=g.device)
    if idx.numel():
        noise = torch.normal(float(mu), float(sigma), idx.shape, generator=generator, dtype=g.dtype, device=g.device)
        g.index_add_(0, idx, noise)
    return (individual,)


def layout_spans(layout: Sequence) -> list:
    """``[(offset, numel)]`` of a genome's tensors: from an adapter's layout entries or from pairs."""
    return [(e.offset, e.numel) if hasattr(e, "offset") else (int(e[0]), int(e[1])) for e in layout]


def mutLayerGaussian(
    individual: GenomeLike,
    layout: Sequence,
    mu: float,
    sigma: float,
    layerpb: float,
    *,
    generator: Optional[torch.Generator] = None,
) -> tuple:
    """With probability ``layerpb`` per tensor, add N(mu, sigma^2) noise to the whole tensor, in place.

    The MeGA reference code's mutation (whole tensors, p=0.02, sigma=0.1).

    :param individual: genome ``(D,)``.
    :param layout: the genome's tensors: entries with ``offset`` and ``numel`` (an adapter's
                   ``layout``), or ``(offset, numel)`` pairs.
    :param layerpb: the probability for each tensor to mutate.
    :param generator: torch.Generator of the genome's device (default generator if ``None``).
    :returns: ``(individual,)``.
    """
    if not sigma >= 0:
        raise SettingError(f"sigma must be >= 0, got {sigma!r}")
    if not 0.0 <= layerpb <= 1.0:
        raise SettingError(f"layerpb must be a probability in [0, 1], got {layerpb!r}")
    g = _genome(individual)
    spans = layout_spans(layout)
    if not spans:
        return (individual,)
    hits = torch.rand(len(spans), generator=generator, dtype=torch.float64, device=g.device) < layerpb
    for (off, n), hit in zip(spans, hits.tolist()):
        if hit:
            seg = g[off : off + n]
            seg.add_(torch.randn(seg.shape, generator=generator, dtype=g.dtype, device=g.device).mul_(sigma).add_(mu))
    return (individual,)


######################################
# Elitism                            #
######################################


def selElite(halloffame: Optional[tools.HallOfFame]) -> list:
    """Elitism (the default of :func:`mega_deap.eaMeGA`): the hall of fame's best goes back into the
    population.

    Register another as ``toolbox.register("elite", ...)`` to ablate it; it takes the hall of fame and
    returns the individuals to carry over (their clones fill places in the next population).
    """
    return [halloffame[0]] if halloffame is not None and len(halloffame) else []


def selNoElite(halloffame: Optional[tools.HallOfFame]) -> list:
    """No elitism: nothing is carried over; the hall of fame still records the best ever."""
    return []
