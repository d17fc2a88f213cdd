"""The paper's preset (MeGA, arXiv 2406.04607): its toolbox, and the one-call ``merge`` and ``merge_tree``.

``mega_toolbox`` is registrations only, so any operator can be swapped for an ablation. ``merge`` finds
the adapter for the parents (:func:`mega_deap.adapters.adapter_for`), builds the evaluator from the metric
registry, the population, the toolbox and a hall of fame, and runs :func:`mega_deap.eaMeGA`.
"""

import functools
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Optional, Sequence, Union

import numpy as np
import torch
from deap import base, creator, tools

from . import distributed, rng
from .algorithms import eaMeGA, varMeGA
from .breeding import varMeGABatched
from .checks import SettingError, SettingTypeError, choice, integer, nonnegative, probability, run_sizes, writable_file
from .evaluation import Evaluator, Strategy
from .metrics import GroupAccuracy, get_metric
from .objectives import ModelEvaluator, ModelObjective
from .files import tensor_digest
from .gate import classification_metric, crossfit_test, held_out_test, paired_test
from .individual import TensorIndividual, genome_equal
from .operators import cxBlend, initBlend, mutLayerGaussian, mutSparseGaussian, selElite
from .population import TensorPopulation

MUTATIONS = ("sparse", "layer")
BREEDINGS = ("batched", "per-individual")

__all__ = [
    "ensure_creator_classes",
    "default_stats",
    "mega_toolbox",
    "merge",
    "cma_merge",
    "merge_tree",
    "MergeResult",
    "TreeResult",
]


def ensure_creator_classes() -> type:
    """``creator.FitnessMeGA`` (maximise one value) and ``creator.MeGAIndividual`` (a TensorIndividual),
    created on first use and reused after."""
    if not hasattr(creator, "FitnessMeGA"):
        creator.create("FitnessMeGA", base.Fitness, weights=(1.0,))
    if not hasattr(creator, "MeGAIndividual"):
        creator.create("MeGAIndividual", TensorIndividual, fitness=creator.FitnessMeGA)
    return creator.MeGAIndividual


def _first_fitness(ind):
    return ind.fitness.values[0]


def default_stats() -> tools.Statistics:
    """``tools.Statistics`` over the first fitness value: avg, std, min, max."""
    stats = tools.Statistics(_first_fitness)
    stats.register("avg", np.mean)
    stats.register("std", np.std)
    stats.register("min", np.min)
    stats.register("max", np.max)
    return stats


def mega_toolbox(
    pop: TensorPopulation,
    evaluator: Evaluator,
    *,
    tournsize: int = 3,
    mutation: str = "sparse",
    mu: float = 0.0,
    sigma: float = 0.01,
    indpb: float = 0.02,
    layerpb: float = 0.02,
    alpha: float = 0.0,
    layout: Optional[Sequence] = None,
    repair: Any = None,
    breeding: Literal["batched", "per-individual"] = "batched",
) -> base.Toolbox:
    """The paper's toolbox: registrations only.

    ``clone``: :meth:`TensorPopulation.clone`; ``select``: ``tools.selTournament(tournsize)``;
    ``vary``: :func:`~mega_deap.breeding.varMeGABatched` (the generation's breeding as tensor operations; it
    falls back to the per-individual :func:`~mega_deap.varMeGA` as soon as another operator is registered);
    ``elite``: :func:`selElite`; ``mate``: :func:`cxBlend`; ``mutate``: :func:`mutSparseGaussian`
    (``mutation="sparse"``, each element with ``indpb`` gets N(mu, sigma^2)) or :func:`mutLayerGaussian`
    (``mutation="layer"``, each tensor of ``layout`` with ``layerpb``); ``evaluate`` and ``map``: the
    evaluator. ``repair``: an adapter whose ``keep_valid()`` decorates mate and mutate (BatchNorm
    variances stay positive). ``breeding="per-individual"`` registers :func:`~mega_deap.varMeGA` as ``vary``
    instead (the same distributions, one operator call per child).
    """
    choice("mutation", mutation, MUTATIONS)
    choice("breeding", breeding, BREEDINGS)
    tb = base.Toolbox()
    tb.register("clone", pop.clone)
    tb.register("select", tools.selTournament, tournsize=tournsize)
    tb.register("mate", cxBlend, alpha=alpha)
    if mutation == "sparse":
        tb.register("mutate", mutSparseGaussian, mu=mu, sigma=sigma, indpb=indpb)
    else:
        if layout is None:
            raise SettingError("mutation='layer' needs the genome's layout (adapter.layout)")
        tb.register("mutate", mutLayerGaussian, layout=layout, mu=mu, sigma=sigma, layerpb=layerpb)
    tb.register("elite", selElite)
    tb.register("vary", varMeGABatched if breeding == "batched" else varMeGA)  # batched: while the
    # operators above are the built-in ones
    tb.register("evaluate", evaluator)
    tb.register("map", evaluator.map)
    if repair is not None:
        tb.decorate("mate", repair.keep_valid())
        tb.decorate("mutate", repair.keep_valid())
    return tb


@dataclass
class MergeResult:
    """What :func:`merge` returns."""

    model: Any  # the merged model (a new module)
    genome: torch.Tensor  # its genome, (D,)
    fitness: float  # its validation fitness
    logbook: tools.Logbook
    halloffame: tools.HallOfFame
    adapter: Any  # the adapter the genome belongs to (a CoefficientAdapter for coefficient genomes)
    population: Optional[list] = field(repr=False, default=None)
    toolbox: Optional[base.Toolbox] = field(repr=False, default=None)
    # the significance gate (:mod:`mega_deap.gate`): its p-value (None: no gate ran), and the index of the
    # parent returned instead of the merge (None: the merge is returned)
    gate_p: Optional[float] = None
    parent: Optional[int] = None
    # the matching the parents were aligned by ("weights", "activations"), or None (not aligned)
    align: Optional[str] = None


def _as_xy(val_data):
    if isinstance(val_data, (tuple, list)) and len(val_data) == 2:
        return val_data
    if hasattr(val_data, "__iter__"):  # a DataLoader or any iterable of (x, y) batches
        xs, ys = zip(*[(x, y) for x, y in val_data])
        return torch.cat([torch.as_tensor(x) for x in xs]), torch.cat([torch.as_tensor(y) for y in ys])
    raise SettingTypeError(f"val_data must be (X, y) or an iterable of (x, y) batches, got {type(val_data).__name__}")


# validation data: (X, y) tensors or arrays, or an iterable of (x, y) batches (a DataLoader)
ValData = Union[tuple, list, Iterable]
GENOMES = ("weights", "coefficients")
# merge's and cma_merge's fitness: chosen by the held-out study's rule on its development tasks (README),
# among the metrics that keep the accuracy guarantee
DEFAULT_METRIC = "accuracy"
DEFAULT_MUTATION = {"weights": (0.01, 0.02), "coefficients": (0.05, 0.2)}  # (sigma, indpb)
# the significance gate's level (gate="auto" with a classification metric): chosen by the held-out study's
# rule on its development tasks (README)
DEFAULT_GATE = 0.2
# the share of the validation set the gate tests on, held out of the fitness (gate_holdout="auto" where a
# gate runs): 0, the gate reads the examples the search selected on; round 5 of the held-out study kept it
# over 0.3, and round 6 over "crossfit", on its development and earlier held-out tasks (README)
DEFAULT_GATE_HOLDOUT: Union[float, str] = 0.0
# merge's gate_holdout="crossfit": the search runs again on each half of the validation set, and the gate tests
# each half's merge on the other half (mega_deap.gate.crossfit_test)
CROSSFIT = "crossfit"


def _gate_level(gate, metric) -> Optional[float]:
    """``gate`` as a level, or ``None`` (no gate): ``"auto"`` is :data:`DEFAULT_GATE` for a classification
    metric (:func:`mega_deap.gate.classification_metric`) and no gate otherwise."""
    if gate is None:
        return None
    if isinstance(gate, str):
        if gate != "auto":
            raise SettingError(f"gate must be 'auto', None or a level in (0, 1], got {gate!r}")
        return DEFAULT_GATE if classification_metric(metric) else None
    if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not 0 < gate <= 1:
        raise SettingError(f"gate must be 'auto', None or a level in (0, 1], got {gate!r}")
    if not classification_metric(metric):
        raise SettingError(
            f"gate={gate!r} tests paired class predictions on the validation labels; metric "
            f"{getattr(metric, 'name', metric)!r} is not a built-in classification metric (use gate=None)"
        )
    return float(gate)


def _gate_holdout(gate_holdout, level, holdout) -> Union[float, str]:
    """``merge``'s ``gate_holdout`` as a fraction or :data:`CROSSFIT`: ``"auto"`` is
    :data:`DEFAULT_GATE_HOLDOUT` where a gate runs (``level`` not ``None``) and ``holdout`` holds nothing out,
    else 0."""
    wanted = f"'auto', {CROSSFIT!r} or a fraction in [0, 1)"
    if isinstance(gate_holdout, str):
        if gate_holdout not in ("auto", CROSSFIT):
            raise SettingError(f"gate_holdout must be {wanted}, got {gate_holdout!r}")
        if gate_holdout == "auto":
            return DEFAULT_GATE_HOLDOUT if level is not None and not holdout else 0.0
    elif isinstance(gate_holdout, bool) or not isinstance(gate_holdout, (int, float)) or not 0 <= gate_holdout < 1:
        raise SettingError(f"gate_holdout must be {wanted}, got {gate_holdout!r}")
    if gate_holdout and level is None:
        raise SettingError(f"gate_holdout={gate_holdout!r} is the gate's test data, but no gate runs (gate=None)")
    if gate_holdout and holdout:
        raise SettingError(
            f"gate_holdout={gate_holdout!r} and holdout={holdout!r} both hold validation examples out of the "
            "fitness; use one"
        )
    return gate_holdout if gate_holdout == CROSSFIT else float(gate_holdout)


def _gate_line(p, level, parent, held=None) -> str:
    """What ``verbose=True`` prints of the gate: one line (``held``: the examples it tested on, where they
    were held out of the fitness; a :class:`_CrossFit`: cross-fitted)."""
    if isinstance(held, _CrossFit):
        on = f" cross-fitted on {len(held.halves[0]) + len(held.halves[1])} examples"
    else:
        on = "" if held is None else f" on {len(held)} held-out examples"
    if parent is None:
        return f"gate: p = {p:.3g}{on} < {level}: the merge is returned"
    return f"gate: p = {p:.3g}{on} >= {level}: parent {parent} is returned"


@dataclass(frozen=True)
class _CrossFit:
    """The gate's test data under ``gate_holdout="crossfit"``: two halves of the validation set, and the
    search run again on the examples given (:func:`mega_deap.gate.crossfit_test`'s ``fit``)."""

    halves: tuple
    fit: Any


def _gated(adapter, result: tuple, parents, X, y, fit_data, metric, level, batch_size, held=None) -> tuple:
    """The gate (:func:`mega_deap.gate.paired_test`, on ``(X, y)``; :func:`mega_deap.gate.held_out_test`
    on the examples ``held`` where they were held out of the fitness; :func:`mega_deap.gate.crossfit_test`
    where ``held`` is a :class:`_CrossFit`) on a merge's ``result`` ``(weights, genome, fitness)``:
    ``(weights, genome, fitness, p, parent)``, with the parent with the best accuracy in place of the merge
    where the merge does not beat it at ``level`` (with ``held``: or where it is less accurate on all of
    ``(X, y)``). The parents are the genomes the merge started from, decoded (with
    alignment, their units permuted: the same functions as given); a returned parent's fitness is computed
    on ``fit_data``."""
    weights, genome_, fitness = result
    runner = adapter.runner
    parent_weights = adapter.decode_many(list(parents))
    if held is None:
        best, p = paired_test(runner, weights, parent_weights, X, y, batch_size)
        keep = p < level
    elif isinstance(held, _CrossFit):
        best, p, holds = crossfit_test(runner, weights, parent_weights, X, y, held.halves, held.fit, batch_size)
        keep = p < level and holds
    else:
        best, p, holds = held_out_test(runner, weights, parent_weights, X, y, held, batch_size)
        keep = p < level and holds
    if keep:
        return weights, genome_, fitness, p, None
    fit_x, fit_y = fit_data
    score = _evaluator(runner, fit_x, fit_y, metric, batch_size=batch_size).scores([parent_weights[best]])[0]
    return parent_weights[best].clone(), parents[best].clone(), score, p, best


def _merge_result(
    adapter, result, gating, batch_size, verbose, logbook, hof, population, toolbox, align=None
) -> MergeResult:
    """The :class:`MergeResult` of ``merge`` and ``cma_merge`` from ``result`` ``(weights, genome, fitness)``
    (:func:`_result`), behind the significance gate when ``gating`` is ``(parents, (X, y) it tests on, fitness
    data, metric, level, held)``, ``held`` the indices of the examples of ``(X, y)`` held out of the fitness,
    which alone the test reads (``None``: it reads them all); ``verbose`` prints what the gate did (rank 0 only)."""
    weights, genome_, fitness = result
    gate_p = parent = None
    if gating is not None:
        parents, (X, y), fit_data, metric, level, held = gating
        weights, genome_, fitness, gate_p, parent = _gated(
            adapter, result, parents, X, y, fit_data, metric, level, batch_size, held
        )
        if verbose and distributed.is_main():  # in a process group, only rank 0 prints
            print(_gate_line(gate_p, level, parent, held))
    return MergeResult(
        model=adapter.runner.to_model(weights),
        genome=genome_,
        fitness=fitness,
        logbook=logbook,
        halloffame=hof,
        adapter=adapter,
        population=population,
        toolbox=toolbox,
        gate_p=gate_p,
        parent=parent,
        align=align,
    )


def _belongs(name, value, mode, setting, wanted) -> None:
    """Refuse ``name`` given (not ``None``) where ``mode`` is not ``wanted``: a setting that would be ignored."""
    if value is not None and setting != wanted:
        raise SettingError(f"{name}={value!r} belongs to {mode}={wanted!r}, but {mode}={setting!r}")


def _metric(metric) -> Any:
    """``merge``'s ``metric`` as an object: a name from the registry (``None``: the default), or a metric
    or objective of one value as given."""
    if metric is None or isinstance(metric, str):
        return get_metric(DEFAULT_METRIC if metric is None else metric)
    if not (hasattr(metric, "finish") or isinstance(metric, ModelObjective)):
        raise SettingTypeError(
            f"metric must be a name in METRICS, a metric object or an objective (on_outputs, on_model), "
            f"got {type(metric).__name__}"
        )
    if getattr(metric, "nobj", 1) != 1:
        raise SettingError(
            f"metric {getattr(metric, 'name', metric)!r} gives {metric.nobj} values: several objectives "
            "are a Pareto merge, merge(..., objectives=...)"
        )
    return metric


def _objectives(objectives) -> Any:
    """``merge``'s ``objectives``: class groups (lists of labels) as :class:`GroupAccuracy`, or a metric or
    objective of two or more values as given."""
    if isinstance(objectives, (list, tuple)) and all(isinstance(g, (list, tuple, range)) for g in objectives):
        if len(objectives) < 2:
            raise SettingError(f"objectives needs two or more class groups, got {len(objectives)}")
        return GroupAccuracy([list(g) for g in objectives])
    if not (hasattr(objectives, "finish") or isinstance(objectives, ModelObjective)):
        raise SettingTypeError(
            "objectives must be class groups ([[0, 1, ...], [5, 6, ...]]) or a metric or objective of several "
            f"values, got {type(objectives).__name__}"
        )
    if getattr(objectives, "nobj", 1) < 2:
        raise SettingError(
            f"objectives {getattr(objectives, 'name', objectives)!r} gives one value per genome: pass it as metric="
        )
    return objectives


def _evaluator(adapter, X, y, metric, **kwargs) -> Any:
    """The evaluator of ``metric``: a :class:`ModelEvaluator` for a function of the model, else an
    :class:`Evaluator` on ``(X, y)``."""
    if isinstance(metric, ModelObjective):
        return ModelEvaluator(adapter, metric, shares=kwargs.get("shares", "equal"))
    return Evaluator(adapter, X, y, metric, **kwargs)


def _split(n, fraction, seed, name="holdout"):
    """``(kept, held)`` indices of ``n`` validation examples: a seeded split, ``fraction`` held out (setting
    ``name`` in the error where a side would be empty)."""
    m = int(round(fraction * n))
    if not 0 < m < n:
        raise SettingError(
            f"{name}={fraction} holds out {m} of {n} validation examples; it must leave at least one on each side"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[m:], perm[:m]


def _gate_split(X, y, share, seed) -> tuple:
    """Where the gate's test reads (``share``: :func:`_gate_holdout`'s): ``(X, y, held, halves)``, the fitness's
    examples, the indices into the validation set of the examples held out for the test alone (``None``: none),
    and :data:`CROSSFIT`'s two halves of it (``None``: no cross-fitting)."""
    if share == CROSSFIT:  # the fitness reads every example; the test, two more searches on halves
        if len(y) < 2:
            raise SettingError(f"gate_holdout={CROSSFIT!r} splits the validation set in two; it has {len(y)} example")
        return X, y, None, _split(len(y), 0.5, seed, "gate_holdout")
    if share:  # the fitness reads the rest; the gate's test, these alone
        kept, held = _split(len(y), share, seed, "gate_holdout")
        return X[kept], y[kept], held, None
    return X, y, None, None


def _holdout(X, y, fraction, seed):
    """``(fitness part, held-out part)`` of the validation set: a seeded split, ``fraction`` held out."""
    kept, held = _split(len(y), fraction, seed)
    return (X[kept], y[kept]), (X[held], y[held])


def merge(
    models: list,
    val_data: ValData,
    *,
    popsize: int = 20,
    ngen: int = 20,
    npar: Optional[int] = None,
    tournsize: Optional[int] = None,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    mutation: str = "sparse",
    sigma: Optional[float] = None,
    indpb: Optional[float] = None,
    layerpb: Optional[float] = None,
    alpha: float = 0.0,
    metric: Any = None,
    batch_size: Optional[int] = None,
    strategy: Strategy = "auto",
    buffers: bool = True,
    verbose: bool = False,
    progress: bool = True,
    checkpoint: Optional[str] = None,
    breeding: Optional[Literal["batched", "per-individual"]] = None,
    autocast: Optional[torch.dtype] = None,
    align: Union[bool, str] = "auto",
    calibration: Any = None,
    genome: Literal["weights", "coefficients"] = "weights",
    granularity: Optional[str] = None,
    include_parents: bool = True,
    holdout: float = 0.0,
    hof_size: Optional[int] = None,
    shares: str = "equal",
    objectives: Any = None,
    cxpb: Optional[float] = None,
    mutpb: Optional[float] = None,
    gate: Union[float, str, None] = "auto",
    gate_holdout: Union[float, str] = "auto",
) -> Any:
    """Merge models of one architecture with MeGA (the paper's preset) and return a :class:`MergeResult`;
    with ``objectives``, the front of merges over several objectives (NSGA-II) as a
    :class:`~mega_deap.pareto.ParetoResult`.

    :param models: two or more models of one architecture (parents): ``nn.Module``, Keras 3 models, or any
                   type with a registered adapter (:func:`mega_deap.adapters.register_adapter`).
    :param val_data: the validation set: ``(X, y)`` or an iterable of ``(x, y)`` batches. Fitness is
                     computed on it alone; keep the test split out.
    :param popsize: N, individuals per generation.
    :param ngen: G, generations.
    :param npar: K, tournament winners per child (the first two mate); 4 by default.
    :param tournsize: tournament size of ``tools.selTournament``; 3 by default.
    :param seed: fixes every random draw of the run.
    :param device: where the population and the evaluation live (``cuda`` when available by default).
    :param mutation: ``"sparse"`` (each gene with ``indpb`` gets N(0, sigma^2)) or ``"layer"``
                     (each tensor with ``layerpb``, default 0.02, as the reference code). ``sigma`` and
                     ``indpb`` default to 0.01 and 0.02 for weight genomes (the paper), 0.05 and 0.2 for
                     coefficient genomes. ``indpb`` with ``mutation="layer"``, or ``layerpb`` without it, is
                     refused.
    :param metric: the fitness: a metric object, an objective of one value
                   (:func:`mega_deap.objectives.on_outputs`, or :func:`~mega_deap.objectives.on_model`, for
                   which ``val_data`` may be ``None``), or a name in :data:`mega_deap.metrics.METRICS`:
                   ``"accuracy"`` (the default,
                   the paper's: with the parents in the first population the result is never less accurate
                   on the validation data than the best of them; chosen on the development tasks of the
                   held-out study, see README), ``"accuracy_ll"`` (accuracy, ties broken by the
                   log-likelihood; the same guarantee), ``"neg_log_loss"`` (the log-likelihood alone: it
                   rewards blends that are less confident, and over-confident parents lose to less accurate
                   blends), ``"neg_log_loss_tempered"``, ``"neg_mse"`` or ``"neg_mae"`` (regression).
    :param checkpoint: a file to write after every generation and to resume from when it exists.
    :param verbose: print the logbook, a line per generation.
    :param progress: a progress bar (on a terminal only; never in a log file).
    :param breeding: ``"batched"`` (a generation's variation as tensor operations; the default) or
                     ``"per-individual"``.
    :param batch_size: validation examples per forward pass (:class:`~mega_deap.Evaluator`).
    :param strategy: how the evaluator runs the genomes (:class:`~mega_deap.Evaluator`).
    :param autocast: a dtype to autocast evaluation to, for GPUs (:class:`~mega_deap.Evaluator`).
    :param align: align every parent's hidden units to the first parent's before merging (PyTorch models):
                  ``"activations"`` (:func:`mega_deap.align.activation_matching`: units matched by the correlation of
                  their activations on the calibration inputs, or on the validation inputs when none are given; labels
                  are never read), ``"zip"`` (two parents: ``"activations"``, and the parents zipped,
                  :func:`mega_deap.align.zip_models`, in the first population beside them: ``include_parents=True``),
                  ``"weights"`` (:func:`mega_deap.align.weight_matching`), ``True`` (:data:`DEFAULT_MATCHING`,
                  ``"activations"``, chosen in round 7 of the held-out study over ``"weights"``), ``False`` (the paper:
                  no alignment) or ``"auto"`` (the default: :data:`DEFAULT_ALIGN`, ``"zip"``: activation matching,
                  chosen in round 3 of the held-out study, and the zip, chosen in round 4, see README, wherever the
                  merge can align: PyTorch modules whose hidden-unit permutations derive, with inputs to match on, and
                  one objective; with more than two parents, ``include_parents=False``, no room in ``popsize`` for the
                  zip, or a coefficient genome (:data:`DEFAULT_COEFFICIENT_ALIGN`, chosen in round 8),
                  ``"activations"``; else no alignment, as where the matching or the zip itself fails).
                  ``MergeResult.align`` says which ran; ``verbose=True`` prints what ``"auto"`` chose and why. With
                  alignment the first population also holds the aligned parents' average, and for networks without
                  BatchNorm (weight genomes) that average with REPAIR (:func:`mega_deap.align.repair_interpolation`, on
                  the same inputs), then the zip; with ``"auto"`` these join only where ``popsize`` has room beside the
                  parents.
    :param calibration: inputs (or ``(X, y)``; labels are never used). For models with BatchNorm, every
                        candidate's statistics are recomputed on them before it is scored
                        (:class:`mega_deap.align.BatchNormRepair`), and the returned model carries repaired
                        statistics; with ``align``, activation matching and REPAIR read them. Refused where
                        neither applies.
    :param genome: ``"weights"`` (an individual is all D weights, the paper) or ``"coefficients"`` (per-tensor
                   x per-parent mixing coefficients: :class:`mega_deap.align.CoefficientAdapter`).
    :param granularity: with ``genome="coefficients"`` only: ``"tensor"`` (the default), ``"layer"`` or
                        ``"unit"``.
    :param include_parents: the parents (with ``align``, the aligned parents and their average) are
                            individuals of the initial population, so with elitism the result is never worse
                            than the best parent on the fitness data, in the fitness's own order (with the
                            default metric: in accuracy). ``False``: the paper's initialisation (blends only).
    :param shares: in a ``torch.distributed`` process group, how each generation's evaluations are cut
                   between the ranks: ``"equal"`` or ``"throughput"`` (:mod:`mega_deap.distributed`).
    :param holdout: a fraction of ``val_data`` held out of the fitness (a seeded split); the merge returns
                    the member of the hall of fame (the ``hof_size`` best, default 10) that scores best on
                    it. 0 (the default): the fitness's best, as in the paper; ``hof_size`` is then refused.
                    With a hold-out the accuracy guarantee holds on the fitness part only.
    :param objectives: several objectives, for a Pareto merge (:func:`mega_deap.pareto.pareto_merge`): a
                       list of class groups (``[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]``: the accuracy on each,
                       :class:`mega_deap.metrics.GroupAccuracy`), or any metric or objective of two or more
                       values (DEAP's ``weights``). The run is NSGA-II (``tools.selNSGA2``, mates by
                       ``tools.selTournamentDCD``; ``popsize`` a multiple of 4) with ``cxpb`` (default 1) and
                       ``mutpb`` (default 1); ``metric``, ``npar``, ``tournsize``, ``breeding``, ``holdout`` and
                       ``hof_size`` belong to the single-objective run and are refused with it.
    :param cxpb: with ``objectives`` only: the probability that a pair of mates is crossed.
    :param mutpb: with ``objectives`` only: the probability that each child is mutated.
    :param gate: the significance gate (:mod:`mega_deap.gate`): the merge is returned only when McNemar's
                 exact one-sided test on the validation predictions says it is more accurate than the
                 parent with the best validation accuracy at this level; else that parent is returned
                 (``MergeResult.parent`` says which, ``gate_p`` the p-value). ``"auto"`` (the default):
                 :data:`DEFAULT_GATE` (chosen on the development tasks of the held-out study, see README)
                 with a classification metric, no gate with any other; ``None``: no gate (the paper).
    :param gate_holdout: a fraction of ``val_data`` held out of the fitness (a seeded split) for the gate's
                         test alone: the search selects on the rest, McNemar's test reads only examples it
                         never selected on, and the merge is returned where it passes and is at least as
                         accurate as the best parent on the whole validation set (the guarantee holds there).
                         0: the gate tests on the whole validation set, the examples the search selected on
                         (anti-conservative). ``"crossfit"``: the search selects on every example, and the
                         test is :func:`mega_deap.gate.crossfit_test`: the same search runs again on each half
                         of the validation set (a seeded split; seeds ``seed + 1`` and ``seed + 2``, no
                         gate; with ``checkpoint``, each writes its own, ``<checkpoint>.fold0`` and
                         ``.fold1``), each half's merge is paired on the other half with the parent
                         best on its own half, and McNemar's test reads the wins and losses of both halves: an
                         honest p on every example, for more run time where the merge differs from the best
                         parent (about 2.5 times in the held-out study; no rerun where it equals it). The merge
                         is returned where it passes and is at least as accurate as the best parent on the
                         whole validation set. ``"auto"`` (the default): :data:`DEFAULT_GATE_HOLDOUT` (0, kept
                         by round 5 of the held-out study over 0.3 and by round 6 over ``"crossfit"``, see
                         README) where a gate runs and ``holdout`` is 0, else 0. Refused with ``gate=None`` or
                         with ``holdout``.
    """
    settings = {k: v for k, v in locals().items() if k not in ("models", "val_data")}  # for crossfit's reruns
    models = list(models)
    if len(models) < 2:
        raise SettingError(f"merge needs at least two models, got {len(models)}")
    # 1. every setting, before any work
    if objectives is not None:
        for name, value in (("metric", metric), ("npar", npar), ("tournsize", tournsize), ("breeding", breeding)):
            if value is not None:
                raise SettingError(
                    f"{name}={value!r} belongs to the single-objective merge; with objectives the run is NSGA-II"
                )
        if holdout or hof_size is not None:
            raise SettingError(
                "holdout and hof_size choose one merge; with objectives the merge returns the whole front"
            )
        if gate != "auto" and gate is not None:
            raise SettingError(
                f"gate={gate!r} keeps one merge or its best parent; with objectives the merge returns the whole front"
            )
        if gate_holdout != "auto":
            raise SettingError(f"gate_holdout={gate_holdout!r} is the gate's test data; with objectives no gate runs")
        evaluator_metric, gate_level = _objectives(objectives), None
    else:
        for name, value in (("cxpb", cxpb), ("mutpb", mutpb)):
            if value is not None:
                raise SettingError(f"{name}={value!r} is NSGA-II's; it belongs to a merge with objectives")
        evaluator_metric = _metric(metric)
        gate_level = _gate_level(gate, evaluator_metric)
    npar = 4 if npar is None else npar
    tournsize = 3 if tournsize is None else tournsize
    breeding = "batched" if breeding is None else breeding
    model_objective = isinstance(evaluator_metric, ModelObjective)
    integer("popsize", popsize)
    run_sizes(ngen, npar)
    integer("tournsize", tournsize, 1)
    integer("seed", seed)
    if objectives is not None and popsize % 4:
        raise SettingError(f"popsize={popsize}: NSGA-II's dominance tournament needs a multiple of 4")
    if popsize < max(npar, tournsize, 2):
        raise SettingError(f"popsize={popsize} is smaller than npar={npar} or tournsize={tournsize}")
    choice("genome", genome, GENOMES)
    choice("mutation", mutation, MUTATIONS)
    _belongs("granularity", granularity, "genome", genome, "coefficients")
    _belongs("layerpb", layerpb, "mutation", mutation, "layer")
    if indpb is not None and mutation == "layer":
        raise SettingError(
            f"indpb={indpb!r} is the per-gene rate of mutation='sparse'; mutation='layer' mutates "
            "whole tensors at rate layerpb"
        )
    granularity = "tensor" if granularity is None else granularity
    choice("granularity", granularity, ("tensor", "layer", "unit"))
    layerpb = 0.02 if layerpb is None else layerpb
    sigma = DEFAULT_MUTATION[genome][0] if sigma is None else sigma
    indpb = DEFAULT_MUTATION[genome][1] if indpb is None else indpb
    nonnegative("sigma", sigma)
    nonnegative("alpha", alpha)
    probability("indpb", indpb)
    probability("layerpb", layerpb)
    choice("breeding", breeding, BREEDINGS)
    choice("shares", shares, ("equal", "throughput"))
    matching, align_note = _matching(align, auto=True), None
    auto = matching == "auto"
    if matching == ZIP:
        _check_zip(models, genome, objectives, val_data is not None or calibration is not None, include_parents)
    if auto and objectives is not None:
        matching, align_note = None, "a Pareto merge (auto aligns merges of one objective)"
    elif auto:
        matching, align_note = _auto_align(models, genome, val_data is not None or calibration is not None)
    elif matching == "activations" and val_data is None and calibration is None:
        named = "align=True names activation matching, which" if align is True else f"align={align!r}"
        raise SettingError(f"{named} matches units on inputs and this merge has none: give calibration inputs")
    if not isinstance(include_parents, bool):
        raise SettingTypeError(f"include_parents must be True or False, got {include_parents!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise SettingError(f"holdout must be a fraction of the validation set in [0, 1), got {holdout!r}")
    if hof_size is not None and not holdout:
        raise SettingError(
            f"hof_size={hof_size!r} is the hall of fame that holdout chooses from; without a "
            "holdout fraction the merge keeps the one best"
        )
    hof_size = 10 if hof_size is None else hof_size
    integer("hof_size", hof_size, 1)
    gate_share = _gate_holdout(gate_holdout, gate_level, holdout)
    rescale = _check_calibration(models, matching, calibration) and genome == "weights"
    rescale = rescale and (calibration is not None or not model_objective)  # REPAIR reads inputs
    if auto and matching:  # a default: the average and its REPAIRed copy join where the population has room
        rescale = rescale and popsize >= len(models) + 2
        if matching == ZIP and not (include_parents and popsize >= len(models) + 2 + rescale):
            matching = "activations"  # the zip joins after them, in a first population that holds the parents
    zipping = matching == ZIP
    seeds = len(models) + (0 if auto else (1 if matching else 0) + (1 if rescale else 0) + (1 if zipping else 0))
    if include_parents and popsize < seeds:
        raise SettingError(
            f"popsize={popsize} cannot hold the {len(models)} parents"
            + (" and their average" if matching else "")
            + (" and its REPAIRed copy" if rescale else "")
            + (" and their zip" if zipping else "")
            + " (include_parents=True)"
        )
    if batch_size is not None:
        integer("batch_size", batch_size, 1)
    if checkpoint is not None:
        writable_file("checkpoint", checkpoint)
    if model_objective and holdout:
        raise SettingError(f"holdout splits validation data; objective {evaluator_metric.name!r} reads none")
    X, y = (None, None) if model_objective and val_data is None else _as_xy(val_data)
    select_data, val_xy = None, (X, y)
    if holdout:
        (X, y), select_data = _holdout(X, y, holdout, seed)
    X, y, gate_held, halves = _gate_split(X, y, gate_share, seed)
    aligned = zipped = None
    if auto and matching:  # a default must not fail where align=False works: a failed matching, no alignment
        try:
            aligned = _aligned(models, matching, calibration, X)
            zipped = _zipped(models, calibration, X) if zipping else None
        except (ValueError, TypeError, RuntimeError) as err:
            what = "zipping" if aligned is not None else f"{_MATCHED_BY[matching]} matching"
            align_note = f"{what} failed ({type(err).__name__}: {err})"  # activation, weight
        # every rank goes the same way (a clear error, naming the ranks, where they would not)
        ok = distributed.agree(
            aligned is not None and (zipped is not None or not zipping),
            f"the parents' {_MATCHED_BY[matching]} matching" + (" and zipping" if zipping else "") + " succeeding",
            "the ranks must hold the same parents and inputs" + (f"; here: {align_note}" if align_note else ""),
        )
        if not ok:
            matching, rescale, zipping = None, False, False
    elif zipping:
        zipped = _zipped(models, calibration, X)
    build_kwargs = dict(
        align=matching,
        aligned=aligned,
        genome=genome,
        granularity=granularity,
        calibration=calibration,
        device=device,
        buffers=buffers,
        batch_size=batch_size,
        strategy=strategy,
        autocast=autocast,
        shares=shares,
    )
    if objectives is not None:
        from .pareto import pareto_merge

        return pareto_merge(
            models,
            X,
            y,
            evaluator_metric,
            popsize=popsize,
            ngen=ngen,
            seed=seed,
            cxpb=1.0 if cxpb is None else cxpb,
            mutpb=1.0 if mutpb is None else mutpb,
            toolbox_kwargs=dict(mutation=mutation, sigma=sigma, indpb=indpb, layerpb=layerpb, alpha=alpha),
            build_kwargs=build_kwargs,
            include_parents=include_parents,
            verbose=verbose,
            progress=progress,
            checkpoint=checkpoint,
        )
    adapter, genomes, evaluator, prepare = _build(models, X, y, evaluator_metric, **build_kwargs)
    pop = TensorPopulation(popsize, adapter.dim, device=adapter.device, dtype=adapter.dtype)

    # 2. the initial population: blends (the paper), and the parents themselves (include_parents)
    rng.seed(seed)
    icls = ensure_creator_classes()
    toolbox = mega_toolbox(
        pop,
        evaluator,
        tournsize=tournsize,
        mutation=mutation,
        sigma=sigma,
        indpb=indpb,
        layerpb=layerpb,
        alpha=alpha,
        layout=adapter.layout,
        repair=adapter,
        breeding=breeding,
    )
    individuals = list(initBlend(pop.individuals(icls), genomes))
    if include_parents:
        starts = list(genomes) + ([genomes.mean(0)] if matching else [])
        if rescale:  # REPAIR: the average's units get the parents' mean statistics back
            starts.append(_repaired_average(adapter, genomes, _inputs_of(calibration, X)))
        if zipping:  # ZipIt!: units merged with their best-correlated partner, in either parent
            starts.append(adapter.genome(zipped))
        for ind, g in zip(individuals, starts):
            ind.genome.copy_(g)
    for ind in individuals:
        adapter.repair_(ind)
    if matching and distributed.active():  # the REPAIRed average, too, was computed on every rank alone
        rows = torch.tensor([pop.row_of(ind) for ind in individuals], device=pop.rows.device)
        first = pop.rows.index_select(0, rows)
        distributed.broadcast_(first)  # rank 0's first population, in one collective
        pop.rows.index_copy_(0, rows, first)

    # 3. the run
    if verbose and auto and distributed.is_main():  # what align="auto" did, in one line (rank 0 only)
        if not matching:
            print(f"align: none: {align_note}")
        else:
            print("align: " + ("activations matching, the zip seeded" if matching == ZIP else f"{matching} matching"))
    hof = tools.HallOfFame(hof_size if holdout else 1, similar=genome_equal)
    individuals, logbook = eaMeGA(
        individuals,
        toolbox,
        ngen,
        npar=npar,
        stats=default_stats(),
        halloffame=hof,
        verbose=verbose,
        checkpoint=checkpoint,
        progress=progress,
        job={"seed": seed},
    )

    # 4. the result: the fitness's best, or the hall of fame's best on the held-out data
    best = hof[0]
    if select_data is not None:
        judge = Evaluator(
            adapter,
            select_data[0],
            select_data[1],
            evaluator_metric,
            batch_size=batch_size,
            strategy=strategy,
            autocast=autocast,
            prepare=prepare,
        )
        held = judge.scores(list(hof))
        best = hof[max(range(len(hof)), key=lambda i: (held[i], -i))]
    result = _result(
        adapter, best, prepare, genomes if include_parents and not holdout else None, X, y, evaluator.metric, batch_size
    )
    # 5. the significance gate, on the whole validation set (its test on the held-out part with a gate_holdout
    # fraction; on reruns of the search on each half with "crossfit")
    if halves is not None:
        gate_held = _CrossFit(halves, functools.partial(_fold, merge, models, X, y, settings, adapter.runner))
    gating = (genomes, val_xy, (X, y), evaluator.metric, gate_level, gate_held) if gate_level is not None else None
    return _merge_result(
        adapter, result, gating, batch_size, verbose, logbook, hof, individuals, toolbox, align=matching
    )


def _fold(method, models, X, y, settings, runner, search, k) -> torch.Tensor:
    """``gate_holdout="crossfit"``'s rerun: the weights (``runner``'s) of ``method`` (``merge``, ``cma_merge``)
    with ``settings`` run on the examples ``search`` of ``(X, y)`` alone, with seed ``seed + 1 + k``, without
    gate or output. With a checkpoint, the rerun writes its own beside it (``<checkpoint>.fold<k>``), so a run
    interrupted during a rerun resumes there."""
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    fold = dict(settings, seed=settings["seed"] + 1 + k, gate=None, gate_holdout=0.0)
    ckpt = settings["checkpoint"]
    fold.update(checkpoint=None if ckpt is None else f"{ckpt}.fold{k}", verbose=False, progress=False)
    return runner.genome(method(models, (X[search], y[search]), **fold).model).to(runner.device)


MATCHINGS = ("weights", "activations")
# merge's align="zip": the parents aligned by activations, and their zip (mega_deap.align.zip_models) in
# the first population
ZIP = "zip"
# align=True (merge's, and the coefficient GA's and cma_merge's default): activation matching, chosen by round 7
# of the held-out study over weight matching (round 1's choice, on the development tasks alone), see README
DEFAULT_MATCHING = "activations"
# merge's align="auto" where the models allow it: activation matching, chosen by round 3 of the held-out
# study, with the two parents' zip in the first population, chosen by round 4 (README)
DEFAULT_ALIGN = ZIP
# merge's align="auto" with a coefficient genome, where the models allow it: activation matching, chosen by round 8
# of the held-out study over no alignment (README); a coefficient genome takes no zip
DEFAULT_COEFFICIENT_ALIGN = "activations"


def _auto_align(models, genome, has_inputs: bool) -> tuple:
    """``merge``'s ``align="auto"``: ``(matching, why)`` with ``why=None`` where the merge can align
    (:data:`DEFAULT_ALIGN` for a weight genome, :data:`DEFAULT_COEFFICIENT_ALIGN` for a coefficient genome); else
    ``(None, the reason)``. Alignment needs PyTorch modules, inputs to match on (calibration or validation inputs)
    and a network whose hidden-unit permutations derive (:func:`mega_deap.align.permutation_spec`) with at least
    one hidden layer."""
    from mega_deap.adapters import TorchAdapter, adapter_for

    from .align import permutation_spec

    adapter = adapter_for(models[0])
    if not (all(isinstance(m, torch.nn.Module) for m in models) and issubclass(adapter, TorchAdapter)):
        return None, f"the models are {type(models[0]).__name__}s with {adapter.__name__}, not PyTorch modules"
    if not has_inputs:
        return None, "no inputs to match activations on (no validation inputs, no calibration)"
    try:
        spec = permutation_spec(models[0])
    except (ValueError, TypeError) as e:  # torch.fx cannot trace it, or a node the derivation does not follow
        return None, f"its hidden-unit permutations do not derive ({type(e).__name__}: {e})"
    if not spec.sizes:
        return None, "the network has no hidden units to permute"
    if genome != "weights":
        return DEFAULT_COEFFICIENT_ALIGN, None
    if DEFAULT_ALIGN == ZIP and len(models) != 2:  # zipping takes two models; more are aligned only
        return "activations", None
    return DEFAULT_ALIGN, None


def _matching(align, auto=False) -> Optional[str]:
    """``align`` as a matching method's name, or ``None`` (no alignment); ``auto``: ``merge``'s own values are
    accepted, ``"auto"`` (resolved by :func:`_auto_align`) and ``"zip"``."""
    if auto and align in ("auto", ZIP):
        return align
    if align is False:
        return None
    if align is True:
        return DEFAULT_MATCHING
    if align in MATCHINGS:
        return align
    allowed = ("auto", *MATCHINGS, ZIP) if auto else MATCHINGS
    raise SettingError(f"align must be True, False or one of {allowed}, got {align!r}")


def _check_zip(models, genome, objectives, has_inputs: bool, include_parents) -> None:
    """Refuses ``align="zip"`` where ``merge`` cannot zip, before any work: zipping merges two PyTorch
    models' weights, for one objective, on inputs (calibration or validation), into a first population that
    holds the parents."""
    if len(models) != 2:
        raise SettingError(f"align='zip' zips two models, got {len(models)}")
    if genome != "weights":
        raise SettingError(f"align='zip' seeds a weight genome, got genome={genome!r}")
    if objectives is not None:
        raise SettingError("align='zip' seeds merges of one objective; a Pareto merge takes align='activations'")
    if not all(isinstance(m, torch.nn.Module) for m in models):
        raise SettingTypeError(f"align='zip' zips torch.nn.Module models; got a {type(models[0]).__name__}")
    if not has_inputs:
        raise SettingError("align='zip' pairs units by their activations: give calibration or validation inputs")
    if include_parents is False:
        raise SettingError(
            "align='zip' seeds the zip into the first population beside the parents; include_parents=False holds "
            "blends only (align='activations' aligns them)"
        )


def _check_calibration(models, matching, calibration) -> bool:
    """Whether the merge REPAIRs the aligned average (aligned PyTorch models without BatchNorm); refuses
    calibration inputs that nothing would read."""
    from .align import batchnorm_layers

    torch_models = isinstance(models[0], torch.nn.Module)
    has_bn = torch_models and bool(batchnorm_layers(models[0]))
    if calibration is not None and not has_bn and not matching:
        raise SettingError(
            "calibration inputs were given, but they serve BatchNorm repair (the model has no "
            "BatchNorm layer) or, with align, activation matching and REPAIR (align=False)"
        )
    return bool(matching) and torch_models and not has_bn


def _repaired_average(adapter, genomes, data) -> torch.Tensor:
    """The (aligned) parents' average with REPAIR (:func:`mega_deap.align.repair_interpolation`) on ``data``'s
    inputs, as a genome."""
    from .align import repair_interpolation

    parents = [adapter.to_model(g) for g in genomes]
    average = repair_interpolation(adapter.to_model(genomes.mean(0)), parents, data)
    return adapter.genome(average)


# the words for the matching that aligns the parents under each align value (a message's "... matching")
_MATCHED_BY = {"weights": "weight", "activations": "activation", ZIP: "activation"}


def _inputs_of(calibration, X):
    """What a merge matches, zips and REPAIRs on: the calibration inputs, else the validation inputs ``X``
    (``None``: neither)."""
    return calibration if calibration is not None else (None if X is None else torch.as_tensor(X))


def _zipped(models, calibration, X):
    """The two parents zipped (:func:`mega_deap.align.zip_models`) on :func:`_inputs_of`."""
    from .align import zip_models

    return zip_models(models, _inputs_of(calibration, X))


def _aligned(models, matching, calibration, X) -> list:
    """Copies of ``models`` with their hidden units aligned to the first's as ``align=matching`` aligns them
    (:func:`mega_deap.align.align_parents`), on :func:`_inputs_of`."""
    from .align import align_parents

    return align_parents(models, matching, _inputs_of(calibration, X))


def _build(
    models,
    X,
    y,
    metric,
    *,
    align,
    genome,
    granularity,
    calibration,
    device,
    buffers,
    batch_size=None,
    strategy="auto",
    autocast=None,
    shares="equal",
    aligned=None,
) -> tuple:
    """What a merge evaluates with: ``(adapter, parents' genomes, evaluator, prepare)``. The parents are
    aligned first with matching ``align`` (:func:`_aligned`; ``aligned``: the models it already returned);
    ``genome="coefficients"`` wraps their adapter in a :class:`~mega_deap.align.CoefficientAdapter`;
    ``calibration`` makes ``prepare`` a BatchNorm repair of every candidate (``None`` otherwise)."""
    from mega_deap.adapters import adapter_for
    from . import align as alignment

    if align:
        models = aligned if aligned is not None else _aligned(models, align, calibration, X)
    if genome == "weights":
        adapter, genomes = adapter_for(models[0]).from_parents(models, device=device, buffers=buffers)
        adapter.fix_nonfinite(genomes)  # refuses NaN/inf parents; keeps shared inf buffer entries as they are
    else:
        adapter, genomes = alignment.CoefficientAdapter.from_parents(
            models, device=device, buffers=buffers, granularity=granularity
        )
    if align:  # in a process group every rank aligned alone: all take rank 0's aligned parents
        distributed.broadcast_(genomes if genome == "weights" else adapter.parents)
    has_bn = isinstance(models[0], torch.nn.Module) and bool(alignment.batchnorm_layers(models[0]))
    prepare = alignment.BatchNormRepair(adapter.runner, calibration) if calibration is not None and has_bn else None
    evaluator = _evaluator(
        adapter,
        X,
        y,
        metric,
        batch_size=batch_size,
        strategy=strategy,
        autocast=autocast,
        prepare=prepare,
        shares=shares,
    )
    return adapter, genomes, evaluator, prepare


def _result(adapter, best, prepare, parents, X, y, metric, batch_size) -> tuple:
    """``(weights, genome, fitness)`` of a merge: ``best`` decoded (:func:`_weights_of`), or, where ``prepare``
    changed the parents before they were scored (BatchNorm repair) and a parent as it was given scores
    higher on the fitness data, that parent: the merge is never worse than its parents as given.
    ``parents``: their genomes (``None``: no such guarantee asked for). ``weights`` are the runner's."""
    if parents is None or prepare is None:
        return _weights_of(adapter, best, prepare), best.genome.clone(), best.fitness.values[0]
    weights = adapter.decode_many(list(parents))  # the parents' own weights (coefficients: one-hot rows)
    scores = _evaluator(adapter.runner, X, y, metric, batch_size=batch_size).scores(weights)
    j = max(range(len(scores)), key=lambda i: (scores[i], -i))
    if scores[j] <= best.fitness.values[0]:
        return _weights_of(adapter, best, prepare), best.genome.clone(), best.fitness.values[0]
    return weights[j].clone(), parents[j].clone(), scores[j]


def _weights_of(adapter, best, prepare):
    """The merged weights: ``best`` decoded, BatchNorm-repaired when ``prepare`` is (again, for weight
    genomes: the repair recomputes the same statistics from the same weights)."""
    weights = adapter.decode_many([best])[0].clone()
    if prepare is not None:
        prepare(weights)
    return weights


def _cma_individual(icls, device, dtype, values):
    return icls(torch.as_tensor(np.asarray(values), dtype=dtype, device=device))


def cma_merge(
    models: list,
    val_data: ValData,
    *,
    ngen: int = 20,
    lambda_: Optional[int] = None,
    sigma: float = 0.3,
    seed: int = 0,
    align: Union[bool, str] = True,
    calibration: Any = None,
    granularity: str = "tensor",
    metric: str = DEFAULT_METRIC,
    batch_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    include_parents: bool = True,
    verbose: bool = False,
    progress: bool = True,
    checkpoint: Optional[str] = None,
    gate: Union[float, str, None] = "auto",
    gate_holdout: Union[float, str] = "auto",
) -> MergeResult:
    """Merge ``models`` by DEAP's CMA-ES (``deap.cma.Strategy``, DEAP's ``eaGenerateUpdate`` loop) over
    per-tensor (or per-layer, per-unit) x per-parent coefficients, starting from the parents' average.

    :param ngen: generations.
    :param lambda_: offspring per generation (CMA-ES's default ``4 + 3 ln(G k)`` when ``None``).
    :param sigma: the initial step size.
    :param align: align the parents' hidden units to the first parent's first, as :func:`merge`'s: ``True``
                  (the default) is :data:`DEFAULT_MATCHING`, activation matching on the calibration inputs, else
                  the validation inputs (round 7 of the held-out study, see README); ``"weights"``; ``False``.
    :param calibration: inputs to recompute BatchNorm statistics on for every candidate (and the result).
    :param metric: the fitness, as :func:`merge`'s.
    :param include_parents: the parents (one-hot coefficient genomes) and their average, CMA-ES's first
                            centroid, are scored first and enter the hall of fame, so the result is never
                            worse than the best parent on the validation data, in the fitness's order.
    :param verbose: print the logbook, a line per generation.
    :param progress: a progress bar (on a terminal only), as :func:`merge`'s.
    :param checkpoint: a file to write after every generation and to resume from when it exists, as
                       :func:`merge`'s (:func:`mega_deap.cmaes.eaGenerateUpdate`); a checkpoint of another job
                       is refused.
    :param gate: the significance gate, as :func:`merge`'s.
    :param gate_holdout: where the gate's test reads, as :func:`merge`'s: a fraction of the validation set held
                         out of the fitness for the test alone, or ``"crossfit"`` (CMA-ES runs again on each half,
                         seeds ``seed + 1`` and ``seed + 2``, checkpoints ``<checkpoint>.fold0`` and ``.fold1``,
                         and each half's merge is tested on the other half);
                         ``"auto"`` (the default) is :data:`DEFAULT_GATE_HOLDOUT` where a gate runs, else 0.
    :returns: a :class:`MergeResult`; its ``genome`` is the coefficient genome.
    Random source: NumPy's global generator (CMA-ES's samples), seeded from ``seed``.
    """
    settings = {k: v for k, v in locals().items() if k not in ("models", "val_data")}  # for crossfit's reruns
    from deap import cma

    from .cmaes import eaGenerateUpdate

    models = list(models)
    if len(models) < 2:
        raise SettingError(f"cma_merge needs at least two models, got {len(models)}")
    integer("ngen", ngen, 1)
    integer("seed", seed)
    nonnegative("sigma", sigma)
    if not isinstance(include_parents, bool):
        raise SettingTypeError(f"include_parents must be True or False, got {include_parents!r}")
    if lambda_ is not None:
        integer("lambda_", lambda_, 2)
    choice("granularity", granularity, ("tensor", "layer", "unit"))
    scorer = get_metric(metric)
    gate_level = _gate_level(gate, scorer)
    gate_share = _gate_holdout(gate_holdout, gate_level, 0)
    if checkpoint is not None:
        writable_file("checkpoint", checkpoint)
    X, y = _as_xy(val_data)
    val_xy = (X, y)
    X, y, gate_held, halves = _gate_split(X, y, gate_share, seed)
    matching = _matching(align)
    _check_calibration(models, matching, calibration)
    adapter, genomes, evaluator, prepare = _build(
        models,
        X,
        y,
        scorer,
        align=matching,
        genome="coefficients",
        granularity=granularity,
        calibration=calibration,
        device=device,
        buffers=True,
        batch_size=batch_size,
    )
    rng.seed(seed)
    icls = ensure_creator_classes()
    strategy = cma.Strategy(
        centroid=genomes.mean(0).double().cpu().numpy(),
        sigma=sigma,
        **({} if lambda_ is None else {"lambda_": lambda_}),
    )
    toolbox = base.Toolbox()
    toolbox.register(
        "generate", strategy.generate, functools.partial(_cma_individual, icls, adapter.device, adapter.dtype)
    )
    toolbox.register("update", strategy.update)
    toolbox.register("evaluate", evaluator)
    toolbox.register("map", evaluator.map)
    hof = tools.HallOfFame(1, similar=genome_equal)
    if include_parents:  # candidates from the start: the hall of fame keeps the best of them
        starts = [icls(g.clone()) for g in torch.cat([genomes, genomes.mean(0, keepdim=True)])]
        for ind, fit in zip(starts, toolbox.map(toolbox.evaluate, starts)):
            ind.fitness.values = fit
        hof.update(starts)
    job = {  # what identifies the job in its checkpoint
        "algorithm": "cma_merge",
        "parents": tensor_digest(adapter.parents),  # the (aligned) parents' weights
        "granularity": granularity,
        "lambda_": strategy.lambda_,
        "sigma": sigma,
        "seed": seed,
        "include_parents": include_parents,
        "evaluation": evaluator.fingerprint(),
    }
    population, logbook = eaGenerateUpdate(
        toolbox,
        ngen,
        strategy=strategy,
        stats=default_stats(),
        halloffame=hof,
        verbose=verbose,
        progress=progress,
        checkpoint=checkpoint,
        settings=job,
        make=functools.partial(_cma_individual, icls, adapter.device, adapter.dtype),
    )
    result = _result(adapter, hof[0], prepare, genomes if include_parents else None, X, y, scorer, batch_size)
    if halves is not None:
        gate_held = _CrossFit(halves, functools.partial(_fold, cma_merge, models, X, y, settings, adapter.runner))
    gating = (genomes, val_xy, (X, y), scorer, gate_level, gate_held) if gate_level is not None else None
    return _merge_result(
        adapter, result, gating, batch_size, verbose, logbook, hof, population, toolbox, align=matching
    )


@dataclass
class TreeResult:
    """What :func:`merge_tree` returns: ``levels[0]`` the inputs, ``levels[-1]`` the one merged model."""

    model: object
    levels: list
    merges: list


def merge_tree(models: list, val_data: ValData, *, seed: int = 0, **kwargs: Any) -> TreeResult:
    """Merge 2^k models pairwise, level by level (8 -> 4 -> 2 -> 1), each pair with :func:`merge`.

    The pair ``j`` of the run gets seed ``seed + j``; other keyword arguments go to :func:`merge`.
    """
    models = list(models)
    n = len(models)
    if n < 2 or n & (n - 1):
        raise SettingError(f"merge_tree merges a power of two of models (2, 4, 8, ...), got {n}")
    levels: list = [models]
    merges: list = []
    while len(levels[-1]) > 1:
        level = levels[-1]
        nxt = []
        for i in range(0, len(level), 2):
            r = merge(level[i : i + 2], val_data, seed=seed + len(merges), **kwargs)
            merges.append(r)
            nxt.append(r.model)
        levels.append(nxt)
    return TreeResult(model=levels[-1][0], levels=levels, merges=merges)
