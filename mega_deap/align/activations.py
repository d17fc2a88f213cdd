"""Activation matching and REPAIR: aligning and repairing hidden units by what they compute on inputs.

- **Activation matching** (Ainsworth et al., "Git Re-Basin", 2022, its other matching; used by Jordan et al.,
  "REPAIR", 2022): for each permutation group, the permutation that maximises the summed correlation between
  the reference's units and the other model's units, measured on calibration inputs (labels are never used),
  is one linear assignment. Units are read after their nonlinearity where the group has one (else wherever
  the group's units appear), every spatial position counting as a sample. Unlike weight matching it needs
  no coordinate ascent: a model's activations do not depend on the other groups' permutations.
- **REPAIR** (Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair", 2022),
  for networks without normalisation layers: the units of an interpolated network lose variance (averaging
  two unit's weights that are not perfectly correlated shrinks the output). :func:`repair_interpolation`
  sets each hidden unit's pre-activation mean and standard deviation on calibration inputs to the same
  interpolation of the (aligned) parents' statistics, layer by layer in graph order, folded into the layer's
  weight and bias. On networks with BatchNorm, :func:`~mega_deap.align.repair_batchnorm` does the same job.
"""

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import fx, nn

from ..adapters.torch import TorchAdapter
from ..checks import SettingError, integer
from .matching import checked_models, permuted_copies
from .repair import calibration_inputs
from .spec import PermutationSpec, permutation_spec

__all__ = ["activation_matching", "match_activations", "repair_interpolation"]


def _inputs(data) -> torch.Tensor:
    X = calibration_inputs(data)
    if len(X) < 2:
        raise SettingError(f"calibration data must hold at least two inputs, got {len(X)}")
    return X


class _Taps(fx.Interpreter):
    """Runs a traced model and keeps the outputs of the named nodes."""

    def __init__(self, gm, names):
        super().__init__(gm)
        self.names, self.seen = set(names), {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.names:
            self.seen[n.name] = out
        return out


def _reading_points(spec: PermutationSpec) -> dict:
    """``{group: [(node, start), ...]}``: where each group's units are read (after a nonlinearity where the
    group has one)."""
    after: dict[int, list] = {}
    anywhere: dict[int, list] = {}
    for node, (segs, nonlinear) in spec.taps.items():
        for s in segs:
            (after if nonlinear else anywhere).setdefault(s.group, []).append((node, s.start))
    return {g: after.get(g) or anywhere.get(g, []) for g in spec.sizes}


def _unit_rows(t: torch.Tensor, start: int, units: int) -> torch.Tensor:
    """Units ``start..start+units`` of an activation ``(B, C, ...)`` as ``(samples, units)`` float64."""
    t = t.narrow(1, start, units).movedim(1, -1)
    return t.reshape(-1, units).double()


@torch.no_grad()
def unit_moments(
    spec: PermutationSpec, models: Sequence[nn.Module], X: torch.Tensor, part, *, batch_size: int = 256
) -> dict:
    """``{group: sums}``: ``part(rows)`` summed over the batches of ``X`` and the group's reading points, where
    ``rows`` holds each model's units of the group as ``(samples, units)`` float64 (``None`` for a group read
    nowhere). The models run in eval mode and get their modes back."""
    points = _reading_points(spec)
    names = {node for pts in points.values() for node, _ in pts}
    traced = [fx.symbolic_trace(m) for m in models]
    sums: dict[int, Optional[tuple]] = {g: None for g in points}
    was = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        for i in range(0, len(X), batch_size):
            xb = X[i : i + batch_size]
            seen = []
            for gm in traced:
                taps = _Taps(gm, names)
                taps.run(xb)
                seen.append(taps.seen)
            for g, pts in points.items():
                u = spec.sizes[g]
                for node, start in pts:
                    rows = [_unit_rows(s[node], start, u) for s in seen]
                    new = part(rows)
                    prev = sums[g]
                    sums[g] = new if prev is None else tuple(x + y for x, y in zip(prev, new))
    finally:
        for m, w in zip(models, was):
            m.train(w)
    return sums


def _cross_part(rows) -> tuple:
    a, b = rows
    return (len(a), a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), a.T @ b)


@torch.no_grad()
def match_activations(
    spec: PermutationSpec, reference: nn.Module, other: nn.Module, X: torch.Tensor, *, batch_size: int = 256
) -> dict:
    """``{group: permutation}`` aligning ``other``'s units to ``reference``'s by the correlation of their
    activations on inputs ``X`` (``(n, ...)``). Unit ``i`` of the aligned model is unit ``perm[i]`` of
    ``other`` (as :func:`~mega_deap.align.apply_permutations` reads it)."""
    sums = unit_moments(spec, (reference, other), X, _cross_part, batch_size=batch_size)
    perms = {}
    for g, acc in sums.items():
        if acc is None:  # units read nowhere (a padded channel block): keep their order
            perms[g] = np.arange(spec.sizes[g])
            continue
        n, sa, sb, saa, sbb, sab = acc
        ma, mb = sa / n, sb / n
        cov = sab / n - torch.outer(ma, mb)
        sd = torch.outer((saa / n - ma * ma).clamp_min(0).sqrt(), (sbb / n - mb * mb).clamp_min(0).sqrt())
        corr = torch.where(sd > 0, cov / sd.clamp_min(1e-300), torch.zeros_like(cov))
        _, perms[g] = linear_sum_assignment(corr.cpu().numpy(), maximize=True)
    return perms


def activation_matching(models: list, data: Any, *, reference: int = 0, batch_size: int = 256) -> list:
    """Copies of ``models`` (``nn.Module``s of one architecture) with hidden units permuted so that each
    unit correlates best with the reference model's unit of the same index, on the inputs of ``data``
    (a tensor or ``(X, y)``; labels are never used). The reference comes back as an unchanged copy, and every
    model computes the same function as before (up to float rounding).

    :raises ValueError: for a graph whose permutations cannot be derived (the message names the node),
                        models whose state dicts differ, or data that is not a batch of inputs.
    """
    models = checked_models("activation_matching", models, reference)
    integer("batch_size", batch_size, 1)
    first = next(models[reference].parameters())
    X = _inputs(data).to(device=first.device, dtype=first.dtype)
    return permuted_copies(
        models, reference, lambda spec, m: match_activations(spec, models[reference], m, X, batch_size=batch_size)
    )


def _hidden_layers(model: nn.Module, spec: PermutationSpec) -> list:
    """The ``Linear``/``Conv`` modules whose output units form a free group, in graph order."""
    modules = dict(model.named_modules())
    layers = []
    for node in fx.symbolic_trace(model).graph.nodes:
        if node.op != "call_module" or node.target in layers:
            continue
        mod = modules[node.target]
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and 0 in spec.axes.get(
            f"{node.target}.weight", {}
        ):
            layers.append(node.target)
    return layers


def _unit_stats(model: nn.Module, names: Sequence[str], X: torch.Tensor, batch_size: int) -> dict:
    """``{layer: (mean, sd)}`` of each output unit of the named layers on ``X`` (float64, over the batch and
    every spatial position)."""
    modules = dict(model.named_modules())
    acc: dict[str, tuple] = {}
    hooks = []

    def hook(name):
        def save(_, __, out):
            rows = out.detach().movedim(1, -1).reshape(-1, out.shape[1]).double()
            part = (len(rows), rows.sum(0), (rows * rows).sum(0))
            acc[name] = part if name not in acc else tuple(x + y for x, y in zip(acc[name], part))

        return save

    for name in names:
        hooks.append(modules[name].register_forward_hook(hook(name)))
    try:
        for i in range(0, len(X), batch_size):
            model(X[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, (n, s, ss) in acc.items():
        mean = s / n
        out[name] = (mean, (ss / n - mean * mean).clamp_min(0).sqrt())
    return out


@torch.no_grad()
def repair_units(
    model: nn.Module,
    parents: Sequence[nn.Module],
    X: torch.Tensor,
    targets_of: Callable[[str, list], tuple],
    *,
    spec: Optional[PermutationSpec] = None,
    batch_size: int = 256,
    eps: float = 1e-8,
) -> nn.Module:
    """REPAIR's step, in place: each hidden ``Linear``/``Conv`` layer of ``model`` (in graph order) gets, on
    inputs ``X``, the pre-activation statistics ``targets_of(layer, stats) = (mean, sd)`` per output unit,
    where ``stats`` holds each parent's ``{layer: (mean, sd)}`` on ``X`` (float64). Each layer is measured
    after the layers before it are set, and the change folded into its weight and bias (a layer without a
    bias only has its spread set; a unit without spread keeps its scale). Every model runs in eval mode and
    gets its mode back. Returns ``model``."""
    spec = permutation_spec(model) if spec is None else spec
    layers = _hidden_layers(model, spec)
    models = (model, *parents)
    was = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        first = next(model.parameters())
        X = X.to(device=first.device, dtype=first.dtype)
        stats = [_unit_stats(p, layers, X, batch_size) for p in parents]
        targets = {name: targets_of(name, stats) for name in layers}
        modules = dict(model.named_modules())
        for name, (target_mean, target_sd) in targets.items():
            mean, sd = _unit_stats(model, [name], X, batch_size)[name]
            scale = torch.where(sd > eps, target_sd / sd.clamp_min(eps), torch.ones_like(sd))
            layer = modules[name]
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            layer.weight.mul_(scale.to(layer.weight.dtype).view(shape))
            if layer.bias is not None:
                layer.bias.copy_(((layer.bias.double() - mean) * scale + target_mean).to(layer.bias.dtype))
    finally:
        for m, w in zip(models, was):
            m.train(w)
    return model


@torch.no_grad()
def repair_interpolation(
    model: nn.Module,
    parents: list,
    data: Any,
    *,
    weights: Optional[Sequence[float]] = None,
    batch_size: int = 256,
    eps: float = 1e-8,
) -> nn.Module:
    """REPAIR, in place: every hidden unit of ``model`` (an interpolation of ``parents``, aligned to each
    other) gets, on the inputs of ``data``, the pre-activation mean and standard deviation that the same
    interpolation of the parents' statistics gives: ``sum_j w_j mean_j`` and ``sum_j w_j sd_j``. Layer by
    layer in graph order (each measured after the layers before it are repaired), folded into the layer's
    weight and bias (a layer without a bias only has its spread set). Returns ``model``.

    :param weights: the interpolation weights of the parents (default: equal).
    """
    X = _inputs(data)
    parents = list(parents)
    if weights is None:
        weights = [1.0 / len(parents)] * len(parents)
    if len(weights) != len(parents):
        raise SettingError(f"weights has {len(weights)} entries for {len(parents)} parents")
    TorchAdapter(model).check_all([model, *parents])

    def interpolated(name, stats):
        return (
            sum(w * s[name][0] for w, s in zip(weights, stats)),
            sum(w * s[name][1] for w, s in zip(weights, stats)),
        )

    return repair_units(model, parents, X, interpolated, batch_size=batch_size, eps=eps)
