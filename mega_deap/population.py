"""One population buffer, rows handed out as individuals.

:class:`TensorPopulation` owns a ``(N, D)`` buffer for the population and a second ``(N, D)`` buffer
for the offspring, both halves of one ``(2N, D)`` allocation. Individuals are views of its rows: making
one copies nothing. :meth:`TensorPopulation.clone` (register it as ``toolbox.clone``) copies one row
into a free row, so a generation's offspring land in the rows that the previous generation released.
A row is free again as soon as the individual holding it is garbage-collected (a weak reference tells
the population), so DEAP's ``eaSimple`` and our ``eaMeGA`` both cycle between the two halves without
ever copying more than one row per clone. If every row is taken (someone keeps old individuals alive),
``clone`` falls back to a stand-alone copy of the row and warns once.
"""

import os
import warnings
import weakref
from typing import Optional, Union

import torch

from .individual import TensorIndividual
from .checks import SettingError, SettingTypeError

__all__ = ["TensorPopulation", "default_device"]


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _available_bytes(device):
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


######################################
# The population buffer              #
######################################


class TensorPopulation:
    """A population of ``size`` genomes of ``dim`` numbers in one tensor.

    :param size: N, the number of individuals in a generation.
    :param dim: D, the genome length.
    :param device: where the buffer lives; ``None`` picks ``cuda`` when available, else ``cpu``.
    :param dtype: the genome's dtype (float32 by default).

    ``buffer``: ``(N, D)``, the rows handed out first; ``offspring_buffer``: ``(N, D)``, the rows the
    first generation of clones lands in. Both are views of one ``(2N + 2, D)`` allocation, ``rows``;
    its last two rows are scratch space for the second child of a mating that the algorithm discards.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        device: Optional[Union[str, torch.device]] = None,
        dtype: torch.dtype = torch.float32,
    ):
        size, dim = int(size), int(dim)
        if size < 1:
            raise SettingError(f"population size must be at least 1, got {size}")
        if dim < 1:
            raise SettingError(f"genome length (dim) must be at least 1, got {dim}")
        if not dtype.is_floating_point:
            raise SettingError(f"dtype must be a floating-point dtype, got {dtype}")
        self.size, self.dim, self.dtype = size, dim, dtype
        self.device = torch.device(device) if device is not None else default_device()
        need = (2 * size + 2) * dim * torch.empty((), dtype=dtype).element_size()
        have = _available_bytes(self.device)
        if have is not None and need > have:
            raise MemoryError(
                f"TensorPopulation(size={size}, dim={dim}, dtype={dtype}) needs {need / 2**30:.2f} GiB on "
                f"{self.device} (population, offspring and 2 scratch rows of {dim}), but only "
                f"{have / 2**30:.2f} GiB is free; use fewer individuals, a smaller genome or another device"
            )
        self.rows = torch.zeros(2 * size + 2, dim, device=self.device, dtype=dtype)
        self._refs: dict = {}  # row -> weakref to the individual holding it
        self._free = list(range(2 * size + 1, -1, -1))  # a stack: row 0 is handed out first
        self._warned = False

    @property
    def buffer(self):
        """The population half, ``(N, D)``."""
        return self.rows[: self.size]

    @property
    def offspring_buffer(self):
        """The offspring half, ``(N, D)``."""
        return self.rows[self.size : 2 * self.size]

    @property
    def free_rows(self):
        """How many of the 2N + 2 rows no live individual holds."""
        return len(self._free)

    # -- handing out rows -------------------------------------------------
    def _release(self, row, ref):
        if self._refs.get(row) is ref:
            del self._refs[row]
            self._free.append(row)

    def _adopt(self, ind, row):
        ind._owner = (self, row)
        owner = weakref.ref(self)
        self._refs[row] = weakref.ref(
            ind, lambda ref, row=row, pop=owner: pop() is not None and pop()._release(row, ref)
        )
        return ind

    def individuals(self, icls: type, n: Optional[int] = None) -> list:
        """``n`` (default N) new individuals of class ``icls``, each a view of a free row (zeros).

        :param icls: a ``TensorIndividual`` subclass, typically ``creator.Individual``.
        :returns: a list of individuals; no genome is copied.
        """
        n = self.size if n is None else int(n)
        if not (isinstance(icls, type) and issubclass(icls, TensorIndividual)):
            raise SettingTypeError(f"icls must be a TensorIndividual subclass, got {icls!r}")
        if n > len(self._free):
            raise SettingError(
                f"asked for {n} individuals but only {len(self._free)} of the population's "
                f"{self.rows.shape[0]} rows are free"
            )
        out = []
        for _ in range(n):
            row = self._free.pop()
            self.rows[row].zero_()
            out.append(self._adopt(icls(self.rows[row]), row))
        return out

    def take_rows(self, icls: type, n: int) -> Optional[tuple]:
        """``n`` new individuals of class ``icls`` on free rows whose contents are left as they are (the
        caller fills them), and their row indices as a ``(n,)`` int64 tensor on the buffer's device; ``None``
        when fewer than ``n`` rows are free. The batched breeding step writes children into these rows."""
        if n > len(self._free):
            return None
        rows = [self._free.pop() for _ in range(n)]
        individuals = [self._adopt(icls(self.rows[r]), r) for r in rows]
        return individuals, torch.tensor(rows, dtype=torch.long, device=self.device)

    def clone(self, individual: TensorIndividual) -> TensorIndividual:
        """A copy of ``individual`` in a free row: one row of D numbers copied, fitness deep-copied.

        Register it as ``toolbox.register("clone", pop.clone)``.
        """
        if not isinstance(individual, TensorIndividual):
            raise SettingTypeError(f"TensorPopulation.clone takes a TensorIndividual, got {type(individual).__name__}")
        if individual.genome.shape != (self.dim,):
            raise SettingError(
                f"individual has genome shape {tuple(individual.genome.shape)}, the population holds ({self.dim},)"
            )
        if not self._free:
            if not self._warned:
                warnings.warn(
                    "all 2N + 2 rows of the TensorPopulation are held by live individuals; clone() "
                    "falls back to stand-alone copies (are old generations kept alive?)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned = True
            return individual._copy_with(individual.genome.clone())
        row = self._free.pop()
        target = self.rows[row]
        target.copy_(individual.genome)
        return self._adopt(individual._copy_with(target), row)

    def row_of(self, individual: TensorIndividual) -> Optional[int]:
        """The row index of ``individual`` in ``rows``, or ``None`` if it is not one of this buffer's."""
        owner = getattr(individual, "_owner", None)
        if owner is not None and owner[0] is self:
            return owner[1]
        return None

    def __repr__(self):
        return (
            f"TensorPopulation(size={self.size}, dim={self.dim}, dtype={self.dtype}, device={self.device}, "
            f"free_rows={self.free_rows})"
        )
