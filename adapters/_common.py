"""What every adapter shares: the layout entry, the genome checks, BatchNorm repair as a DEAP decorator."""
from collections import namedtuple

import torch

__all__ = ["LayoutEntry", "KeepValid", "FlatGenome"]

LayoutEntry = namedtuple("LayoutEntry", "name shape offset numel kind")
LayoutEntry.__doc__ = """One tensor of the genome: ``genome[offset:offset + numel].view(shape)``.
``kind`` is ``"parameter"`` or ``"buffer"``."""


class KeepValid:
    """A DEAP decorator: after the decorated operator runs, repair every individual it returns.

    ``toolbox.decorate("mutate", adapter.keep_valid())`` keeps BatchNorm running variances positive.
    """

    def __init__(self, adapter):
        self.adapter = adapter

    def __call__(self, func):
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


class FlatGenome:
    """Genome bookkeeping shared by the adapters; a subclass sets ``layout``, ``dim``, ``var_floor``,
    ``_variance_spans`` and implements ``check(model)`` and ``genome(model)``."""

    def _check_genome(self, genome):
        genome = getattr(genome, "genome", genome)
        if not isinstance(genome, torch.Tensor):
            raise TypeError(f"a genome is a 1-D tensor or a TensorIndividual, got {type(genome).__name__}")
        if genome.dim() != 1 or genome.shape[0] != self.dim:
            raise ValueError(f"genome has shape {tuple(genome.shape)}, this adapter expects ({self.dim},)")
        return genome

    def genomes(self, models):
        """The genomes of several models, ``(k, D)``; a clear error for the first one that does not fit."""
        for i, m in enumerate(models):
            try:
                self.check(m)
            except ValueError as err:
                raise ValueError(f"model {i}: {err}") from None
        return torch.stack([self.genome(m) for m in models])

    def tensors(self, genome):
        """``{name: view}`` for every genome tensor: views of ``genome``, no copy."""
        genome = self._check_genome(genome)
        return {e.name: genome[e.offset:e.offset + e.numel].view(e.shape) for e in self.layout}

    def repair_(self, genome):
        """Clamp BatchNorm running (moving) variances to at least ``var_floor``, in place; returns the genome."""
        g = self._check_genome(genome)
        for off, n in self._variance_spans:
            g[off:off + n].clamp_(min=self.var_floor)
        return genome

    def keep_valid(self):
        """A DEAP decorator for ``toolbox.decorate("mate", ...)`` / ``("mutate", ...)``: see :meth:`repair_`."""
        return KeepValid(self)
