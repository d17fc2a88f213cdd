"""Any objective: a function of a genome's outputs, or of the model itself, batched as the built-in metrics.

Two forms, each returning one value or a tuple of values per genome (several objectives, with DEAP's
``weights`` saying which to maximise and which to minimise):

- :func:`on_outputs`: a function of one genome's outputs over the whole validation set and the labels,
  ``fn(outputs, y)``, for metrics that are not sums over examples (F1, AUC, a calibration error). The
  :class:`~mega_deap.Evaluator` runs the genomes as it runs the built-in metrics (loop, stacked, vmap,
  in chunks, on the device) and calls ``fn`` once per genome on its ``(n, ...)`` outputs (or once per chunk
  on ``(k, n, ...)`` with ``vectorized=True``).
- :func:`on_model`: a function of the model, ``fn(model)``, where ``model`` is the template module with the
  genome's weights swapped in as views (no copy; :meth:`mega_deap.adapters.TorchAdapter.bound`), for task
  losses and rollouts; or, with ``batched=True``, ``fn(policy)`` once per chunk of ``k`` genomes, where
  ``policy(x)`` runs every genome of the chunk on its own inputs, ``x`` ``(k, B, ...)`` -> ``(k, B, ...)``,
  in one stacked forward per call where the model allows it (an MLP): a population against vectorised
  environments, one forward per step. :class:`ModelEvaluator` scores them.

Both are DEAP fitness functions with ``map`` (:class:`~mega_deap.batched.BatchedFitness`): register them in
a toolbox for ``eaMeGA``, ``eaSimple``, ``eaMuPlusLambda``, or pass them to ``merge(metric=...)``.
"""

import copy
import math
from typing import Any, Callable, Optional, Sequence

import torch

from .batched import BatchedFitness, finite_or_worst
from .checks import SettingError, SettingTypeError
from .files import code_digest
from .individual import TensorIndividual

__all__ = ["on_outputs", "on_model", "OutputObjective", "ModelObjective", "ModelEvaluator", "Policy"]


def _weights(weights: Any) -> tuple:
    if isinstance(weights, (int, float)):
        weights = (weights,)
    try:
        weights = tuple(float(w) for w in weights)
    except TypeError:
        raise SettingTypeError(
            f"weights must be a tuple of numbers (DEAP's fitness weights), got {weights!r}"
        ) from None
    if not weights or any(w == 0 or not math.isfinite(w) for w in weights):
        raise SettingError(
            f"weights must be one or more non-zero finite numbers (1: maximise, -1: minimise), got {weights!r}"
        )
    return weights


class _Objective:
    """What both forms share: the function, DEAP's ``weights``, ``nobj``, ``name`` and ``worst`` (a value
    per objective: -inf where it is maximised, +inf where minimised; what a genome whose outputs hold a NaN
    gets)."""

    def __init__(self, fn: Callable, weights: Any, name: Optional[str]) -> None:
        if not callable(fn):
            raise SettingTypeError(f"an objective is a function, got {type(fn).__name__}")
        self.fn = fn
        self.weights = _weights(weights)
        self.nobj = len(self.weights)
        self.name = name if name is not None else getattr(fn, "__qualname__", type(fn).__name__)
        worst = tuple(-math.inf if w > 0 else math.inf for w in self.weights)
        self.worst = worst[0] if self.nobj == 1 else worst

    def values(self, got: Any, k: int) -> torch.Tensor:
        """What ``fn`` returned for ``k`` genomes (a ``(k,)`` or ``(k, nobj)`` tensor, or a list of floats or
        tuples) as a float64 ``(k,)`` (one objective) or ``(k, nobj)`` tensor; a wrong count is refused."""
        if not isinstance(got, torch.Tensor) and hasattr(got, "shape"):  # a NumPy array
            got = torch.as_tensor(got)
        if isinstance(got, torch.Tensor):
            t = got.detach().to("cpu", torch.float64)
        else:  # Python floats, kept in float64 (a float32 list would round them)
            t = torch.tensor([_row(v, self) for v in got], dtype=torch.float64)
        if t.dim() == 1 and self.nobj > 1 and k == 1 and t.numel() == self.nobj:
            t = t.unsqueeze(0)
        if t.dim() == 1:
            t = t.unsqueeze(1)
        if t.shape != (k, self.nobj):
            raise SettingError(
                f"objective {self.name!r} gave values of shape {tuple(t.shape)} for {k} genomes; expected "
                f"{self.nobj} value{'s' if self.nobj > 1 else ''} per genome (weights={self.weights})"
            )
        return t[:, 0] if self.nobj == 1 else t


def _row(v: Any, obj: _Objective) -> list:
    """One genome's return value as a list of floats."""
    if isinstance(v, torch.Tensor) or hasattr(v, "shape"):  # a tensor, or a NumPy array or scalar
        return [float(x) for x in torch.as_tensor(v).reshape(-1).tolist()]
    if isinstance(v, (tuple, list)):
        return [float(x) for x in v]
    try:
        return [float(v)]
    except (TypeError, ValueError):
        raise SettingTypeError(
            f"objective {obj.name!r} returned a {type(v).__name__}; expected a number or a tuple"
        ) from None


class OutputObjective(_Objective):
    """A function of one genome's outputs on the whole validation set (:func:`on_outputs`), in the shape of
    a metric of :mod:`mega_deap.metrics`: ``partial`` keeps the outputs, ``combine`` joins the data
    batches' parts once, ``finish`` calls the function."""

    def __init__(self, fn: Callable, weights: Any, name: Optional[str], vectorized: bool) -> None:
        super().__init__(fn, weights, name)
        self.vectorized = bool(vectorized)
        self._y: Optional[torch.Tensor] = None

    def check(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Nothing to refuse before the first call: the function decides what it takes."""

    def bind(self, y: torch.Tensor) -> "OutputObjective":
        """A copy that hands ``y`` (the evaluator's labels, on its device) to the function."""
        bound = copy.copy(self)
        bound._y = y
        return bound

    def partial(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The outputs themselves, ``(k, B, ...)``, copied (the evaluator reuses its buffers) in at least
        float32."""
        return out.to(torch.promote_types(out.dtype, torch.float32), copy=True)

    def combine(self, parts: list) -> torch.Tensor:
        """The outputs of the consecutive data batches, end to end in one copy: ``(k, n, ...)``."""
        return torch.cat(parts, 1)

    def finish(self, total: torch.Tensor, n: int) -> torch.Tensor:
        """The function of each genome's outputs ``(n, ...)`` and the labels: ``(k,)`` or ``(k, nobj)``."""
        if self._y is None:
            raise SettingError(f"objective {self.name!r} has no labels: an Evaluator binds them")
        k = total.shape[0]
        if self.vectorized:
            return self.values(self.fn(total, self._y), k)
        return self.values([self.fn(total[i], self._y) for i in range(k)], k)


class ModelObjective(_Objective):
    """A function of the model (:func:`on_model`); scored by :class:`ModelEvaluator`."""

    needs_data = False

    def __init__(self, fn: Callable, weights: Any, name: Optional[str], batched: bool) -> None:
        super().__init__(fn, weights, name)
        self.batched = bool(batched)


def on_outputs(
    fn: Callable, *, weights: Any = (1.0,), name: Optional[str] = None, vectorized: bool = False
) -> OutputObjective:
    """An objective of a genome's outputs on the whole validation set: ``fn(outputs, y)`` with ``outputs``
    ``(n, ...)`` (the model's outputs on all ``n`` validation inputs, in order) and ``y`` the labels, both on
    the evaluator's device; it returns a number or a tuple of ``len(weights)`` numbers. Pass it as an
    :class:`~mega_deap.Evaluator`'s ``metric`` or as ``merge(metric=...)``.

    :param weights: DEAP's fitness weights, one per value: 1 to maximise, -1 to minimise.
    :param name: what checkpoints and reports call it (the function's name by default); a checkpoint also
                 holds a digest of the function's code, so another function under the same name is another
                 job.
    :param vectorized: ``fn`` takes a chunk of ``k`` genomes' outputs, ``(k, n, ...)``, and returns ``(k,)`` or
                       ``(k, nobj)`` values: one call per chunk instead of one per genome.
    """
    return OutputObjective(fn, weights, name, vectorized)


def on_model(
    fn: Callable, *, weights: Any = (1.0,), name: Optional[str] = None, batched: bool = False
) -> ModelObjective:
    """An objective of the model itself: ``fn(model)``, the template module with one genome's weights
    swapped in as views (no copy), returning a number or a tuple of ``len(weights)`` numbers; or with
    ``batched=True``, ``fn(policy)`` once per chunk of genomes, where ``policy`` is a :class:`Policy`
    (``policy(x)``, ``x`` ``(k, B, ...)``, runs each genome on its own inputs) and ``fn`` returns ``(k,)`` or
    ``(k, nobj)`` values. Score it with :class:`ModelEvaluator` (``merge(metric=...)`` builds one).

    :param weights: DEAP's fitness weights, one per value: 1 to maximise, -1 to minimise.
    :param name: what checkpoints and reports call it (the function's name by default); a checkpoint also
                 holds a digest of the function's code, so another function under the same name is another
                 job.
    """
    return ModelObjective(fn, weights, name, batched)


class Policy:
    """A chunk of ``k`` genomes as one callable: ``policy(x)`` with ``x`` ``(k, B, ...)``, each genome's own
    inputs, gives ``(k, B, ...)`` outputs; through the model's stacked forward (one batched product per layer
    for all ``k``: an MLP whose input goes straight into its layers), else one forward per genome.
    ``len(policy)`` is ``k``; ``policy.genomes`` the ``(k, D)`` weights."""

    def __init__(self, evaluator: "ModelEvaluator", genomes: torch.Tensor) -> None:
        self._ev = evaluator
        self.genomes = genomes

    def __len__(self) -> int:
        return self.genomes.shape[0]

    def __call__(self, x: Any) -> torch.Tensor:
        ev = self._ev
        x = torch.as_tensor(x, device=ev.device)
        if x.is_floating_point():
            x = x.to(ev.adapter.dtype)
        if x.dim() < 2 or x.shape[0] != len(self):
            raise SettingError(
                f"a policy of {len(self)} genomes takes inputs of shape ({len(self)}, batch, ...), got {tuple(x.shape)}"
            )
        plan = ev._plan_for(self.genomes, x)
        if plan is not None:
            return plan(self.genomes, x, per_genome=True)
        return torch.stack([ev._runner.forward(g, x[i]) for i, g in enumerate(self.genomes)])


class ModelEvaluator(BatchedFitness):
    """Fitness of genomes by a function of the model (:func:`on_model`): no validation data.

    :param adapter: a model adapter (``TorchAdapter``; a ``CoefficientAdapter`` decodes its genomes first).
    :param objective: a :class:`ModelObjective`.
    :param strategy: for ``batched`` objectives, how a :class:`Policy` runs its genomes: ``"auto"`` (the
                     stacked forward where the model allows it and it gives the loop's outputs on the first
                     call, else the loop), ``"stacked"`` (refused where the model does not allow it) or
                     ``"loop"``.
    :param chunk: genomes per ``fn(policy)`` call (``None``: all of a call's genomes at once).
    :param shares: in a ``torch.distributed`` process group, how the genomes are cut between the ranks.
    """

    STRATEGIES = ("auto", "stacked", "loop")

    def __init__(
        self,
        adapter: Any,
        objective: ModelObjective,
        *,
        strategy: str = "auto",
        chunk: Optional[int] = None,
        shares: str = "equal",
    ) -> None:
        if not isinstance(objective, ModelObjective):
            raise SettingTypeError(f"ModelEvaluator scores an on_model objective, got {type(objective).__name__}")
        if strategy not in self.STRATEGIES:
            raise SettingError(f"strategy must be one of {self.STRATEGIES}, got {strategy!r}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise SettingError(f"chunk must be a positive number of genomes, got {chunk!r}")
        super().__init__(shares)
        self.adapter = adapter
        self.metric = objective
        self.nobj, self.weights = objective.nobj, objective.weights
        self.device = torch.device(adapter.device)
        self.strategy = strategy
        self.chunk = chunk
        self.prepare = None
        self._runner = adapter.runner
        self._plan: Any = None  # the stacked forward; False: not used
        self._checked = False  # whether the stacked forward gave the loop's outputs on a first call
        if strategy == "loop":
            self._plan = False
        elif objective.batched:
            plan, why = self._runner.stacked_forward()
            if plan is None and strategy == "stacked":
                raise SettingError(
                    f"strategy='stacked' needs a model of Linear layers and element-wise activations: {why}"
                )
            self._plan = plan if plan is not None else False

    def _plan_for(self, genomes: torch.Tensor, x: torch.Tensor) -> Any:
        """The stacked forward, checked against the loop on the first call's first genome."""
        if self._plan is False:
            return None
        if not self._checked:
            try:
                got = self._plan(genomes[:1], x[:1], per_genome=True)[0]
                want = self._runner.forward(genomes[0], x[0])
                ok = got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)
                why = "its output differed from forward()'s"
            except SettingError as err:
                ok, why = False, str(err)
            if not ok:
                if self.strategy == "stacked":
                    raise SettingError(f"strategy='stacked' cannot run this model on per-genome inputs: {why}")
                self._plan = False
                return None
            self._checked = True
        return self._plan

    def fingerprint(self) -> dict:
        """What identifies this evaluation in a checkpoint: the objective's name, weights and form, and a
        digest of its function's code (:func:`mega_deap.files.code_digest`)."""
        return {
            "metric": self.metric.name,
            "weights": list(self.metric.weights),
            "batched": self.metric.batched,
            "code_sha256": code_digest(self.metric.fn),
        }

    @torch.no_grad()
    def scores(self, individuals: Sequence) -> list:
        """One value per individual (or ``(D,)`` genome): a float, or a tuple of ``nobj`` floats."""
        raw = [ind.genome if isinstance(ind, TensorIndividual) else ind for ind in individuals]
        if not raw:
            return []
        genomes = self.adapter.decode_many(raw)
        obj = self.metric
        with self.adapter.eval_mode():
            if obj.batched:
                step = self.chunk or len(genomes)
                parts = [
                    obj.values(obj.fn(Policy(self, torch.stack(genomes[i : i + step]))), len(genomes[i : i + step]))
                    for i in range(0, len(genomes), step)
                ]
                values = torch.cat(parts)
            else:
                rows = []
                for g in genomes:
                    with self._runner.bound(g) as model:
                        rows.append(obj.fn(model))
                values = obj.values(rows, len(rows))
        self.evaluations += len(raw)
        return finite_or_worst(values, torch.ones(len(raw), dtype=torch.bool), obj.worst)
