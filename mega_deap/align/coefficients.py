"""Coefficient genomes: an individual is a few mixing coefficients per tensor (or per layer) and per
parent, decoded into weights from the (aligned) parents.

A genome of D weights is a space no GA of 20 x 20 evaluations can search; ``G x k`` coefficients (``G``
tensors or layers, ``k`` parents) is one it can. :class:`CoefficientAdapter` is an ordinary
:class:`~mega_deap.adapters.Adapter` whose genome is ``(G * k,)``: the population, the operators, the
toolbox, the evaluator and ``eaMeGA`` serve it unchanged, and the population holds ``O(N x G x k)``
numbers. Tensor ``t`` of group ``g`` decodes to ``sum_j c[g, j] * parent_j[t]``; parent ``j`` is the
one-hot genome ``c[:, j] = 1``.

:func:`mega_deap.cma_merge` drives the same genome with DEAP's own CMA-ES (``deap.cma.Strategy`` and
``deap.algorithms.eaGenerateUpdate``).
"""

from typing import Any, ContextManager, Literal

import torch

from ..adapters.base import Adapter, LayoutEntry, GenomeLike
from ..checks import SettingError

__all__ = ["CoefficientAdapter", "GRANULARITIES"]

GRANULARITIES = ("tensor", "layer", "unit")


class CoefficientAdapter(Adapter):
    """Per-tensor (``granularity="tensor"``), per-layer (``"layer"``: the tensors of one module share
    coefficients) or per-unit (``"unit"``: every row of every tensor along its first axis, i.e. every
    output unit, has its own) x per-parent mixing coefficients over ``parents``. Its ``dim`` is ``G * k``;
    its ``layout`` has one entry of shape ``(k,)`` per group, named after its tensor or layer.

    :param inner: the adapter of the parents' architecture (``TorchAdapter``, ``KerasAdapter``, ...).
    :param parents: the parents' genomes, ``(k, D)``, on the inner adapter's device.
    :param granularity: ``"tensor"``, ``"layer"`` or ``"unit"``.
    """

    def __init__(
        self, inner: Adapter, parents: torch.Tensor, *, granularity: Literal["tensor", "layer", "unit"] = "tensor"
    ):
        if granularity not in GRANULARITIES:
            raise SettingError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if parents.dim() != 2 or parents.shape[1] != inner.dim or parents.shape[0] < 2:
            raise SettingError(f"parents must be (k >= 2, {inner.dim}) genomes, got shape {tuple(parents.shape)}")
        self.inner, self.granularity = inner, granularity
        self.model = inner.model
        self.k = parents.shape[0]
        self.dtype, self.device = inner.dtype, inner.device
        self.parents = parents.to(device=inner.device, dtype=inner.dtype)
        names: list[str] = []
        members: dict[str, list[int]] = {}
        gid = torch.empty(inner.dim, dtype=torch.long)
        if granularity == "unit":
            for i, e in enumerate(inner.layout):
                rows = e.shape[0] if e.shape else 1
                per_row = e.numel // rows
                gid[e.offset : e.offset + e.numel] = len(names) + torch.arange(rows).repeat_interleave(per_row)
                names.extend(f"{e.name}[{r}]" for r in range(rows))
                for r in range(rows):
                    members[names[-rows + r]] = [i]
        else:
            for i, e in enumerate(inner.layout):
                key = e.name if granularity == "tensor" else e.name.rpartition(".")[0]
                if key not in members:
                    names.append(key)
                    members[key] = []
                members[key].append(i)
            for g, key in enumerate(names):
                for i in members[key]:
                    e = inner.layout[i]
                    gid[e.offset : e.offset + e.numel] = g
        self.gid = gid.to(inner.device)
        self.groups = tuple((key, tuple(inner.layout[i].name for i in members[key])) for key in names)
        self.layout = tuple(
            LayoutEntry(key or "(model)", (self.k,), g * self.k, self.k, "parameter") for g, key in enumerate(names)
        )
        self.dim = len(names) * self.k

    @classmethod
    def from_parents(
        cls,
        models: list,
        *,
        device=None,
        buffers: bool = True,
        granularity: Literal["tensor", "layer", "unit"] = "tensor",
    ) -> tuple:
        """``(adapter, genomes)``: the coefficient adapter over ``models`` and the parents as coefficient
        genomes (one-hot), ``(k, G * k)``."""
        from ..adapters import adapter_for

        inner, weights = adapter_for(models[0]).from_parents(models, device=device, buffers=buffers)
        inner.fix_nonfinite(weights)
        adapter = cls(inner, weights, granularity=granularity)
        return adapter, adapter.one_hot()

    def one_hot(self) -> torch.Tensor:
        """The parents as coefficient genomes, ``(k, G * k)``: row ``j`` decodes to parent ``j``."""
        eye = torch.eye(self.k, dtype=self.dtype, device=self.device)
        return eye.repeat(1, len(self.layout))

    def __repr__(self):
        return (
            f"CoefficientAdapter({self.inner!r}, k={self.k}, groups={len(self.layout)}, "
            f"granularity={self.granularity!r})"
        )

    # -- decoding ---------------------------------------------------------------
    @property
    def runner(self) -> Adapter:
        """The parents' adapter: it runs the decoded weights."""
        return self.inner

    def _decode(self, C: torch.Tensor) -> torch.Tensor:
        """``(m, G * k)`` coefficient genomes -> ``(m, D)`` weights, a tensor operation per parent."""
        coef = C.view(C.shape[0], -1, self.k)
        w = coef[:, :, 0].index_select(1, self.gid) * self.parents[0]
        for j in range(1, self.k):
            w += coef[:, :, j].index_select(1, self.gid) * self.parents[j]
        self.inner.repair_rows_(w, torch.arange(len(w), device=w.device))  # running variances stay positive
        return w

    def decode(self, genome: GenomeLike) -> torch.Tensor:
        """The weights a coefficient genome (``(G * k,)``) stands for: a new ``(D,)`` tensor, repaired by
        the inner adapter (running variances kept positive)."""
        return self._decode(self._check_genome(genome).unsqueeze(0))[0]

    def decode_many(self, genomes: list) -> list:
        """:meth:`decode` for a list of genomes, decoded together."""
        return list(self._decode(torch.stack([self._check_genome(g) for g in genomes])))

    # -- the adapter contract ------------------------------------------------------
    def check(self, model: Any) -> None:
        self.inner.check(model)

    def genome(self, model: Any = None) -> torch.Tensor:
        """The coefficients whose decoding is nearest (least squares, per group) to ``model``'s weights
        (default: the template, a copy of parent 0); a parent gets its one-hot genome."""
        # on the CPU in float64 with the SVD-based driver: it solves rank-deficient groups (two equal parents, a
        # one-element group with k > 1: granularity="unit"), which CUDA's least squares refuses
        w = self.inner.genome(model).to(device="cpu", dtype=torch.float64)
        P = self.parents.T.to(device="cpu", dtype=torch.float64)  # (D, k)
        gid = self.gid.cpu()
        out = torch.empty(len(self.layout), self.k, dtype=torch.float64)
        for g in range(len(self.layout)):
            mask = gid == g
            out[g] = torch.linalg.lstsq(P[mask], w[mask].unsqueeze(1), driver="gelsd").solution.squeeze(1)
        return out.reshape(-1).to(device=self.device, dtype=self.dtype)

    def load(self, genome: GenomeLike, model: Any = None) -> Any:
        return self.inner.load(self.decode(genome), model)

    def to_model(self, genome: GenomeLike) -> Any:
        return self.inner.to_model(self.decode(genome))

    def state_dict(self, genome: GenomeLike) -> dict:
        return self.inner.state_dict(self.decode(genome))

    def forward(self, genome: GenomeLike, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward(self.decode(genome), x)

    def forward_batch(self, genomes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_batch(self._decode(genomes), x)

    def eval_mode(self) -> ContextManager:
        return self.inner.eval_mode()
