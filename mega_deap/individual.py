"""Tensor-backed individuals that DEAP's own tools accept.

A :class:`TensorIndividual` is a thin Python object around a 1-D tensor, usually a view of one row of a
:class:`~mega_deap.population.TensorPopulation` buffer. ``torch.Tensor`` cannot be a ``creator`` base
(DEAP's metaclass conflicts with torch's), so the individual wraps the tensor and implements the parts
of the sequence protocol that DEAP's tools touch: ``len``, integer indexing, slicing (slices are
independent copies, so DEAP's slice-swapping crossovers stay correct), iteration, equality, copying and
pickling. Copies and pickles hold one row only, never the storage of the whole population.
"""

import copy

from typing import Any, Union

import torch
from .checks import SettingError

__all__ = ["TensorIndividual", "genome_equal"]


######################################
# The individual                     #
######################################


class TensorIndividual:
    """Base class for ``creator.create("Individual", TensorIndividual, fitness=...)``.

    :param data: the genome, ``(D,)``. A 1-D tensor is wrapped as it is, with no copy (a view of a
                 population row stays a view); any other sequence of numbers is turned into a new
                 float32 tensor.
    """

    __hash__ = None  # type: ignore[assignment]  # equality is by value, as for DEAP's list individuals

    def __init__(self, data: Any = ()):
        if not isinstance(data, torch.Tensor):
            data = torch.as_tensor(list(data), dtype=torch.float32)
        if data.dim() != 1:
            raise SettingError(f"a TensorIndividual wraps a 1-D genome tensor, got shape {tuple(data.shape)}")
        self._data = data
        self._owner = None  # (population, row) when the tensor is a row of a population buffer

    # -- the genome ------------------------------------------------------
    @property
    def genome(self) -> torch.Tensor:
        """The genome tensor, ``(D,)``: a view of the population row, modified in place by operators."""
        return self._data

    @property
    def device(self):
        return self._data.device

    @property
    def dtype(self):
        return self._data.dtype

    # -- the sequence protocol DEAP's tools use ---------------------------
    def __len__(self):
        return self._data.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._data[key].clone()  # a copy: ``a[i:j], b[i:j] = b[i:j], a[i:j]`` must not alias
        return self._data[key].item()

    def __setitem__(self, key, value):
        if isinstance(value, TensorIndividual):
            value = value.genome
        if isinstance(key, slice):
            value = torch.as_tensor(value, dtype=self._data.dtype, device=self._data.device)
        self._data[key] = value

    def __iter__(self):
        return iter(self._data.tolist())

    def __array__(self, dtype=None, copy=None):
        """NumPy's view of the genome (a copy on the host), so NumPy-based DEAP tools such as
        ``deap.cma.Strategy`` read individuals directly."""
        out = self._data.detach().cpu().numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __eq__(self, other):
        if isinstance(other, TensorIndividual):
            other = other.genome
        if not isinstance(other, torch.Tensor):
            return NotImplemented
        return genome_equal(self._data, other)

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __repr__(self):
        fit = getattr(self, "fitness", None)
        fit = f", fitness={fit.values}" if fit is not None and fit.valid else ""
        return f"{type(self).__name__}(D={len(self)}, dtype={self.dtype}, device={self.device}{fit})"

    # -- copies hold one row, never the whole buffer ----------------------
    def _copy_with(self, data, memo=None):
        """A new individual of the same class holding ``data`` and deep copies of the other attributes."""
        new = type(self).__new__(type(self))
        if memo is not None:
            memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key not in ("_data", "_owner"):
                setattr(new, key, copy.deepcopy(value, memo))
        new._data = data
        new._owner = None
        return new

    def __deepcopy__(self, memo):
        return self._copy_with(self._data.clone(), memo)  # one row, not the storage the view points into

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_data"] = self._data.clone()  # torch pickles a view's whole storage otherwise
        state["_owner"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)


def genome_equal(ind1: "GenomeLike", ind2: "GenomeLike") -> bool:
    """True when two individuals (or genome tensors) hold the same genome, element for element.

    Pass it as ``tools.HallOfFame(k, similar=genome_equal)``; DEAP's default ``operator.eq`` also works
    since :class:`TensorIndividual` compares by value.
    """
    a = ind1.genome if isinstance(ind1, TensorIndividual) else ind1
    b = ind2.genome if isinstance(ind2, TensorIndividual) else ind2
    return a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b))


GenomeLike = Union[torch.Tensor, TensorIndividual]  # a (D,) genome, or an individual that holds one
