"""A PyTorch module as a flat genome.

:class:`TorchAdapter` lays a model's floating-point parameters and buffers end to end in one vector of
D numbers (its ``layout``), reads a model into such a vector (``genome``), writes one back (``load``,
``to_model``, ``state_dict``) and runs the model with its weights read as views of a genome row
(``forward``, via ``torch.func.functional_call``: no copy, no ``load_state_dict``).

BatchNorm: float running statistics are part of the genome by default (``buffers=True``); integer
buffers such as ``num_batches_tracked`` never are. ``repair_`` keeps running variances positive, and
``keep_valid()`` is a DEAP decorator that applies it after ``mate`` and ``mutate``.
"""

import contextlib
import copy
import functools
from collections import OrderedDict

from typing import Any, ContextManager, Iterator, Optional

import torch
from torch import nn
from torch.func import functional_call, vmap

from .base import Adapter, KeepValid, LayoutEntry, GenomeLike
from mega_deap.checks import SettingError, SettingTypeError

__all__ = ["TorchAdapter", "LayoutEntry", "KeepValid"]  # the last two re-exported from .base


def _entries(model, buffers):
    """(name, tensor, kind) for every float tensor that belongs in the genome, in state_dict order."""
    params = {id(p) for p in model.parameters()}
    seen, out = set(), []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:  # tied weights: once
            continue
        seen.add(id(t))
        if id(t) in params:
            out.append((name, t, "parameter"))
        elif buffers and t.is_floating_point():
            out.append((name, t, "buffer"))
    return out


######################################
# The adapter                        #
######################################


class TorchAdapter(Adapter):
    """Expose ``model`` (an ``nn.Module``) as a flat genome.

    :param model: the template: its architecture defines the layout; it is used (in eval mode) for
                  every functional forward pass, and copied by :meth:`to_model`.
    :param buffers: put float buffers (BatchNorm running mean and variance) in the genome.
    :param var_floor: the smallest running variance :meth:`repair_` lets through.
    """

    model: nn.Module

    def __init__(self, model: nn.Module, *, buffers: bool = True, var_floor: float = 1e-5):
        if not isinstance(model, nn.Module):
            raise SettingTypeError(f"TorchAdapter wraps a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.buffers = buffers
        self.var_floor = float(var_floor)
        entries = _entries(model, buffers)
        if not entries:
            raise SettingError(f"{type(model).__name__} has no floating-point parameters to put in a genome")
        dtypes = {t.dtype for _, t, _ in entries}
        if len(dtypes) > 1:
            first = {t.dtype: n for n, t, _ in reversed(entries)}
            raise SettingError(
                "all tensors of the genome must share one dtype, found "
                + ", ".join(f"{d} (e.g. {first[d]!r})" for d in dtypes)
            )
        self.dtype = dtypes.pop()
        self.device = entries[0][1].device
        layout, offset = [], 0
        for name, t, kind in entries:
            layout.append(LayoutEntry(name, tuple(t.shape), offset, t.numel(), kind))
            offset += t.numel()
        self.layout = tuple(layout)
        self.dim = offset
        self._slots = self._build_slots()
        self._stacked: Optional[tuple] = None  # (StackedForward or None, reason), traced on first use
        self.variance_spans = tuple(
            (e.offset, e.numel) for e in self.layout if e.kind == "buffer" and self._is_running_var(e.name)
        )

    def _build_slots(self):
        """For the in-place forward: (owner dict getter, leaf name, layout index) for every state-dict name
        whose tensor is in the genome, tied aliases included; ``None`` when the model needs
        ``functional_call`` (parametrizations)."""
        if any(hasattr(m, "parametrizations") for m in self.model.modules()):
            return None
        index = {}
        entries = _entries(self.model, self.buffers)
        for i, (_, t, _) in enumerate(entries):
            index[id(t)] = i
        slots = []
        for name, t in self.model.state_dict(keep_vars=True).items():
            if id(t) not in index:
                continue
            prefix, _, leaf = name.rpartition(".")
            module = self.model.get_submodule(prefix) if prefix else self.model
            table = module._parameters if leaf in module._parameters else module._buffers
            slots.append((table, leaf, index[id(t)]))
        return tuple(slots)

    def _is_running_var(self, name):
        prefix, _, leaf = name.rpartition(".")
        if leaf != "running_var":
            return False
        module = self.model.get_submodule(prefix) if prefix else self.model
        return isinstance(module, nn.modules.batchnorm._NormBase)

    @classmethod
    def from_parents(cls, models: list, *, device=None, buffers: bool = True) -> tuple:
        """An adapter over a copy of ``models[0]`` on ``device`` (``cuda`` when available by default), in
        eval mode, so the merge's forward passes never touch the user's modules; and the parents' genomes."""
        from mega_deap.population import default_device

        device = torch.device(device) if device is not None else default_device()
        genomes = cls(models[0], buffers=buffers).genomes(models)  # read where the parents live
        adapter = cls(copy.deepcopy(models[0]).to(device).eval(), buffers=buffers)
        return adapter, genomes.to(device)

    def __repr__(self):
        return (
            f"TorchAdapter({type(self.model).__name__}, D={self.dim}, tensors={len(self.layout)}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # -- checks -----------------------------------------------------------
    def check(self, model: Any) -> None:
        """Raise ValueError unless ``model`` has this adapter's layout (names, shapes, dtype, device)."""
        if not isinstance(model, nn.Module):
            raise SettingTypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
        theirs = _entries(model, self.buffers)
        for i, (e, (name, t, _kind)) in enumerate(zip(self.layout, theirs)):
            if e.name != name or e.shape != tuple(t.shape):
                raise SettingError(
                    f"{type(model).__name__} differs from the template at tensor {i}: expected "
                    f"{e.name!r} of shape {e.shape}, got {name!r} of shape {tuple(t.shape)}"
                )
            if t.dtype != self.dtype:
                raise SettingError(f"tensor {name!r} has dtype {t.dtype}, the template has {self.dtype}")
            if t.device != self.device:
                raise SettingError(f"tensor {name!r} is on {t.device}, the template is on {self.device}")
        if len(theirs) != len(self.layout):
            extra = self.layout[len(theirs) :] or [n for n, _, _ in theirs[len(self.layout) :]]
            first = extra[0].name if isinstance(extra[0], LayoutEntry) else extra[0]
            raise SettingError(
                f"{type(model).__name__} has {len(theirs)} genome tensors, the template has "
                f"{len(self.layout)}; first unmatched: {first!r}"
            )

    # -- genome <-> model ---------------------------------------------------
    def genome(self, model: Any = None) -> torch.Tensor:
        """The genome of ``model`` (default: the template), ``(D,)``, a new tensor on its device."""
        model = self.model if model is None else model
        if model is not self.model:
            self.check(model)
        with torch.no_grad():
            return torch.cat([t.detach().reshape(-1) for _, t, _ in _entries(model, self.buffers)])

    @torch.no_grad()
    def load(self, genome: GenomeLike, model: Optional[nn.Module] = None) -> nn.Module:
        """Copy ``genome`` into ``model``'s tensors (default: the template), in place; returns the model."""
        model = self.model if model is None else model
        views = self.tensors(genome)
        if model is not self.model:
            self.check(model)
        for (_, t, _), e in zip(_entries(model, self.buffers), self.layout):
            t.copy_(views[e.name])
        return model

    def to_model(self, genome: GenomeLike) -> nn.Module:
        """A new module: a copy of the template holding ``genome``'s weights."""
        self._check_genome(genome)
        return self.load(genome, copy.deepcopy(self.model))

    def state_dict(self, genome: GenomeLike) -> OrderedDict:
        """The template's state dict with ``genome``'s tensors (independent copies); a tied weight's every
        name gets the genome's tensor."""
        views = self.tensors(genome)
        first: dict[int, str] = {}
        out = OrderedDict()
        for name, t in self.model.state_dict(keep_vars=True).items():
            owner = first.setdefault(id(t), name)  # tied: the name the genome knows it by
            source = views.get(owner)
            out[name] = (source if source is not None else t).detach().clone()
        return out

    # -- functional forward ----------------------------------------------------
    def forward(self, genome: GenomeLike, x: torch.Tensor) -> torch.Tensor:
        """The template's output on ``x`` with ``genome``'s weights read as views (no copy).

        The template's tensors are swapped for views of ``genome`` for the duration of the call and put
        back after (what ``torch.func.functional_call`` does, without its per-call bookkeeping; models with
        parametrizations go through ``functional_call`` itself). Not thread-safe on one adapter.
        """
        genome = self._check_genome(genome)
        if self._slots is None:
            return functional_call(self.model, self.tensors(genome), (x,))
        saved = self._swap(genome)
        try:
            return self.model(x)
        finally:
            for table, leaf, original in saved:
                table[leaf] = original

    def _swap(self, genome):
        """Put views of ``genome`` in the template's tensor slots; returns what to put back."""
        views = [genome[e.offset : e.offset + e.numel].view(e.shape) for e in self.layout]
        saved = [(table, leaf, table[leaf]) for table, leaf, _ in self._slots]
        for table, leaf, i in self._slots:
            table[leaf] = views[i]
        return saved

    @contextlib.contextmanager
    def bound(self, genome: GenomeLike) -> Iterator[Any]:
        """The template module itself with its tensors swapped for views of ``genome`` (no copy) while the
        context lasts, put back after: call it, or any of its methods, as the model with ``genome``'s
        weights. Models with parametrizations get a callable running :meth:`forward` instead. Not
        thread-safe on one adapter."""
        genome = self._check_genome(genome)
        if self._slots is None:
            yield functools.partial(self.forward, genome)
            return
        saved = self._swap(genome)
        try:
            yield self.model
        finally:
            for table, leaf, original in saved:
                table[leaf] = original

    def _forward_rows(self, genome, x):
        return functional_call(self.model, self.tensors(genome), (x,))

    def stacked_forward(self) -> tuple:
        """For an MLP (``Linear`` layers, element-wise activations): ``(forward, None)``, a callable running
        a ``(k, D)`` stack of genomes as one batched matrix product per layer (:mod:`mega_deap.adapters.stacked`);
        else ``(None, reason)``. Traced once, on the first call."""
        if self._stacked is None:
            from .stacked import stacked_forward

            with self.eval_mode():
                self._stacked = stacked_forward(self)
        return self._stacked

    def forward_batch(self, genomes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs for k genomes at once, ``(k, batch, ...)``, with ``torch.func.vmap``."""
        if genomes.dim() != 2 or genomes.shape[1] != self.dim:
            raise SettingError(f"genomes has shape {tuple(genomes.shape)}, expected (k, {self.dim})")
        return vmap(self._forward_rows, in_dims=(0, None))(genomes, x)

    def eval_mode(self) -> ContextManager:
        """A context manager: the template in eval mode, its previous mode restored on exit."""
        return _EvalMode(self.model)


class _EvalMode:
    """``model.eval()`` inside, ``model.train(mode before)`` on exit; a model with no module training (the
    evaluator's template, every call) is left untouched, without the walk that sets every module."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.switched = any(m.training for m in self.model.modules())
        if self.switched:
            self.model.eval()
        return self.model

    def __exit__(self, *exc):
        if self.switched:
            self.model.train(self.was_training)
        return False
