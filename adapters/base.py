"""The adapter contract: a model as a flat genome of D numbers, and the registry that finds the adapter
for a model.

An adapter lays a model's float tensors end to end in one genome (its ``layout``), reads a model into a
genome and writes one back, and runs the model with a genome's weights. :class:`Adapter` names what every
adapter has; a subclass implements the abstract methods. :func:`adapter_for` picks the adapter class
registered for a model's type (the most specific one in the model's class hierarchy); adding a framework
is one :class:`Adapter` subclass and one :func:`register_adapter` call.
"""

import abc
import contextlib
import functools
import importlib
import sys
from collections import namedtuple
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Optional, Union

import torch
from mega_deap.checks import SettingError, SettingTypeError

__all__ = ["Adapter", "GenomeLike", "LayoutEntry", "KeepValid", "register_adapter", "unregister_adapter", "adapter_for"]

if TYPE_CHECKING:
    from mega_deap.individual import TensorIndividual

GenomeLike = Union[torch.Tensor, "TensorIndividual"]  # a (D,) genome, or an individual that holds one
LayoutEntry = namedtuple("LayoutEntry", "name shape offset numel kind")
LayoutEntry.__doc__ = """One tensor of the genome: ``genome[offset:offset + numel].view(shape)``.
``kind`` is ``"parameter"`` or ``"buffer"``."""


class KeepValid:
    """A DEAP decorator: after the decorated operator runs, repair every individual it returns.

    ``toolbox.decorate("mutate", adapter.keep_valid())`` keeps BatchNorm running variances positive.
    """

    def __init__(self, adapter: "Adapter"):
        self.adapter = adapter

    def __call__(self, func: Callable) -> Callable:
        return _Repaired(func, self.adapter)


class _Repaired:
    def __init__(self, func, adapter):
        self.func, self.adapter = func, adapter
        self.__wrapped__ = func

    def __call__(self, *args, **kwargs):
        out = self.func(*args, **kwargs)
        for ind in out:
            self.adapter.repair_(ind)
        return out


######################################
# The contract                       #
######################################


class Adapter(abc.ABC):
    """A model as a flat genome.

    Set by the subclass's constructor: ``model`` (the template), ``layout`` (a tuple of
    :class:`LayoutEntry`, the genome's tensors in order), ``dim`` (D), ``dtype`` and ``device`` (of the
    genomes it reads and writes), ``var_floor`` and ``variance_spans`` (``(offset, numel)`` of every
    running variance, kept at least ``var_floor`` by :meth:`repair_`).

    A subclass implements :meth:`check`, :meth:`genome`, :meth:`load`, :meth:`to_model`,
    :meth:`state_dict`, :meth:`forward`, :meth:`forward_batch`, :meth:`eval_mode` and
    :meth:`from_parents`; :meth:`genomes`, :meth:`tensors`, :meth:`repair_` and :meth:`keep_valid` come
    with the base class.
    """

    model: object
    layout: tuple
    dim: int
    dtype: torch.dtype
    device: torch.device
    var_floor: float = 1e-5
    variance_spans: tuple = ()
    _fixed: Optional[tuple] = None  # (positions, values): non-finite entries every parent shares

    # -- what a subclass implements ---------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_parents(cls, models: list, *, device=None, buffers: bool = True) -> tuple:
        """``(adapter, genomes)`` for a merge of ``models``: the adapter whose template runs every forward
        pass (a copy on ``device`` where the framework lets us choose) and the parents' genomes,
        ``(k, D)`` on the adapter's device (a clear error for the first parent that does not fit)."""

    @abc.abstractmethod
    def check(self, model: Any) -> None:
        """Raise ``ValueError`` (naming the first difference) unless ``model`` has this layout."""

    @abc.abstractmethod
    def genome(self, model: Any = None) -> torch.Tensor:
        """The genome of ``model`` (default: the template), ``(D,)``, a new tensor."""

    @abc.abstractmethod
    def load(self, genome: GenomeLike, model: Any = None) -> Any:
        """Write ``genome`` (``(D,)``) into ``model``'s weights (default: the template); returns the model."""

    @abc.abstractmethod
    def to_model(self, genome: GenomeLike) -> Any:
        """A new model of the template's architecture holding ``genome``'s weights."""

    @abc.abstractmethod
    def state_dict(self, genome: GenomeLike) -> dict:
        """Every tensor of the model by name, ``genome``'s in place of the template's (independent copies)."""

    @abc.abstractmethod
    def forward(self, genome: GenomeLike, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` (``(B, ...)``) with ``genome``'s weights, as a torch tensor."""

    @abc.abstractmethod
    def forward_batch(self, genomes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs for ``genomes`` (``(k, D)``) on ``x``: ``(k, B, ...)``."""

    @abc.abstractmethod
    def eval_mode(self) -> ContextManager:
        """A context manager: the template in inference mode, its previous mode restored on exit."""

    # -- shared ---------------------------------------------------------------------
    @property
    def runner(self) -> "Adapter":
        """The adapter whose forward passes run this adapter's genomes once decoded: itself, since a weight
        genome runs as it is (a genome of coefficients decodes into another adapter's weights)."""
        return self

    def stacked_forward(self) -> tuple:
        """``(forward, None)``: a callable that runs a ``(k, D)`` stack of genomes on shared inputs at once
        (``(k, B, ...)`` out, as ``k`` calls of :meth:`forward`), or ``(None, reason)`` where the model does
        not allow it. Here: none."""
        return None, f"{type(self).__name__} has no stacked forward"

    @contextlib.contextmanager
    def bound(self, genome: GenomeLike) -> Any:
        """A context manager giving the model to call with ``genome``'s weights, for a function of the model
        (:func:`mega_deap.objectives.on_model`): here a callable running :meth:`forward` on ``genome``;
        :class:`~mega_deap.adapters.TorchAdapter` gives the module itself, its tensors swapped for views of
        ``genome`` while the context lasts."""
        yield functools.partial(self.forward, self._check_genome(genome))

    def decode_many(self, genomes: list) -> list:
        """The weight genomes (``(D,)`` each, for :attr:`runner`) that ``genomes`` stand for: here the
        genomes themselves (views, no copy)."""
        return [getattr(g, "genome", g) for g in genomes]

    def _check_genome(self, genome) -> torch.Tensor:
        genome = getattr(genome, "genome", genome)
        if not isinstance(genome, torch.Tensor):
            raise SettingTypeError(f"a genome is a 1-D tensor or a TensorIndividual, got {type(genome).__name__}")
        if genome.dim() != 1 or genome.shape[0] != self.dim:
            raise SettingError(f"genome has shape {tuple(genome.shape)}, this adapter expects ({self.dim},)")
        return genome

    def check_all(self, models: list) -> None:
        """:meth:`check` every model; the error names the first one that does not fit (``model i: ...``)."""
        for i, m in enumerate(models):
            try:
                self.check(m)
            except ValueError as err:
                raise SettingError(f"model {i}: {err}") from None

    def genomes(self, models: list) -> torch.Tensor:
        """The genomes of several models, ``(k, D)``; a clear error for the first one that does not fit."""
        self.check_all(models)
        return torch.stack([self.genome(m) for m in models])

    def tensors(self, genome: GenomeLike) -> dict:
        """``{name: view}`` for every genome tensor: views of ``genome`` (``(D,)``), no copy."""
        genome = self._check_genome(genome)
        return {e.name: genome[e.offset : e.offset + e.numel].view(e.shape) for e in self.layout}

    def fix_nonfinite(self, genomes: torch.Tensor, names: Optional[list] = None) -> int:
        """Check the parents' genomes (``(k, D)``) for inf and NaN before a merge. An inf in a buffer that
        every parent holds at the same place with the same sign (an attention mask, say) is kept as it is
        by :meth:`repair_` (blending it would give NaN); any other non-finite value is refused with a
        ``ValueError`` naming the model and the tensor. Returns how many entries are kept fixed."""
        bad = ~torch.isfinite(genomes)
        if not bool(bad.any()):
            self._fixed = None
            return 0
        shared = bad.all(0) & (genomes == genomes[:1]).all(0)  # NaN != NaN: never shared
        kind = torch.zeros(self.dim, dtype=torch.bool, device=genomes.device)
        for e in self.layout:
            if e.kind == "buffer":
                kind[e.offset : e.offset + e.numel] = True
        refused = bad & ~(shared & kind)
        if bool(refused.any()):
            model, pos = (int(v) for v in refused.nonzero()[0])
            entry = next(e for e in self.layout if e.offset <= pos < e.offset + e.numel)
            value = float(genomes[model, pos])
            who = names[model] if names else f"model {model}"
            raise SettingError(
                f"{who} has {value} in tensor {entry.name!r} (element {pos - entry.offset}): "
                f"parents must be finite, except buffer entries that are the same inf in every parent"
            )
        positions = shared.nonzero().flatten()
        self._fixed = (positions, genomes[0, positions].clone())
        return int(positions.numel())

    def repair_(self, genome: GenomeLike) -> GenomeLike:
        """Keep the genome valid, in place: BatchNorm running (moving) variances at least ``var_floor``,
        and the non-finite entries every parent shares (:meth:`fix_nonfinite`) as the parents have them.
        Returns the genome."""
        g = self._check_genome(genome)
        for off, n in self.variance_spans:
            g[off : off + n].clamp_(min=self.var_floor)
        if self._fixed is not None:
            pos, val = self._fixed
            g[pos.to(g.device)] = val.to(device=g.device, dtype=g.dtype)
        return genome

    def repair_rows_(self, rows: torch.Tensor, index: torch.Tensor) -> None:
        """:meth:`repair_` for the rows ``index`` of a ``(R, D)`` buffer at once (the batched breeding step)."""
        for off, n in self.variance_spans:
            rows[index, off : off + n] = rows[index, off : off + n].clamp_(min=self.var_floor)
        if self._fixed is not None:
            pos, val = self._fixed
            pos = pos.to(rows.device)
            rows[index.unsqueeze(1), pos.unsqueeze(0)] = val.to(device=rows.device, dtype=rows.dtype).expand(
                len(index), -1
            )

    def keep_valid(self) -> KeepValid:
        """A DEAP decorator for ``toolbox.decorate("mate", ...)`` / ``("mutate", ...)``: see :meth:`repair_`."""
        return KeepValid(self)


######################################
# The registry                       #
######################################

_REGISTRY: list = []  # [(model type or "module:Name", adapter class or "module:Name")], in registration order


def _resolve(spec, *, imported_only):
    if not isinstance(spec, str):
        return spec
    module, name = spec.split(":")
    if imported_only and module.split(".")[0] not in sys.modules:
        return None  # the framework is not in use: a model of it cannot exist
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def register_adapter(model_type: Union[type, str], adapter: Union[type, str]) -> None:
    """Use ``adapter`` (an :class:`Adapter` subclass) for models of ``model_type`` and its subclasses.

    Either may be given as ``"module:Name"``: a model type named that way is looked up only once its
    framework is imported (so registering Keras never imports Keras), an adapter only when first used.
    """
    _REGISTRY.append((model_type, adapter))


def unregister_adapter(model_type: Union[type, str]) -> None:
    """Forget the registrations for ``model_type`` (as it was given to :func:`register_adapter`)."""
    _REGISTRY[:] = [(t, a) for t, a in _REGISTRY if t != model_type]


def adapter_for(model: Any) -> type:
    """The :class:`Adapter` subclass registered for ``model``'s type: of the registered types that
    ``model`` is an instance of, the one nearest to ``type(model)`` in its class hierarchy."""
    mro = type(model).__mro__
    best = None
    for model_type, adapter in _REGISTRY:
        t = _resolve(model_type, imported_only=True)
        if t is None or not isinstance(model, t):
            continue
        rank = mro.index(t) if t in mro else len(mro)
        if best is None or rank < best[0]:
            best = (rank, adapter)
    if best is None:
        known = ", ".join(t if isinstance(t, str) else f"{t.__module__}:{t.__qualname__}" for t, _ in _REGISTRY)
        raise SettingTypeError(
            f"no adapter is registered for {type(model).__module__}.{type(model).__qualname__} "
            f"(registered: {known}); register one with mega_deap.adapters.register_adapter"
        )
    return _resolve(best[1], imported_only=False)
