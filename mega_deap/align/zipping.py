"""Zipping two networks (Stoica et al., "ZipIt! Merging Models from Different Tasks without Training", 2023).

Permutation matching pairs every unit of one model with one unit of the other. Models trained on different
data (class-biased parents) have units the other lacks, and forcing them into pairs is what makes the
permuted average of such parents worse than either. Zipping lets a unit merge with the unit it correlates
with best, in the other model *or its own*:

- for each permutation group, the ``2d`` units of both models (read on calibration inputs, after their
  nonlinearity where they have one, as activation matching reads them) are paired greedily by correlation,
  highest first, until ``d`` pairs cover them all; a merged unit is the mean of its pair;
- each layer's weights are merged with a *merge* matrix on their output units (the mean of each pair) and
  an *unmerge* matrix on their input units (each original unit reads its pair's merged unit), summed over
  the two models; tensors without hidden units are averaged;
- REPAIR (:func:`~mega_deap.align.repair_interpolation`'s rescaling) then sets each merged unit's
  pre-activation mean and spread to the mean of its pair's, folded into the weights; BatchNorm models get
  their running statistics recomputed (:func:`~mega_deap.align.repair_batchnorm`) instead.

The result has the parents' architecture. This is ZipIt!'s full zip of two models (no partial zipping, no
limit on same-model pairs).
"""

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import SettingError, integer
from .activations import _inputs, repair_units, unit_moments
from .matching import checked_models
from .repair import batchnorm_layers, repair_batchnorm
from .spec import PermutationSpec, permutation_spec

__all__ = ["zip_models", "match_features", "zip_states"]


def _joint_part(rows) -> tuple:
    z = torch.cat(rows, 1)
    return (len(z), z.sum(0), z.T @ z)


def _sorted_greedy(c: np.ndarray, units: np.ndarray) -> list:
    """The greedy pass itself over the pairs of ``units`` (ascending indices into ``c``): every pair sorted by
    correlation, highest first (ties: the lower indices), each taken where both units are free."""
    iu, ju = np.triu_indices(len(units), 1)
    order = np.argsort(-c[np.ix_(units, units)][iu, ju], kind="stable")
    free = np.ones(len(units), dtype=bool)
    pairs = []
    for k in order:
        i, j = iu[k], ju[k]
        if free[i] and free[j]:
            free[i] = free[j] = False
            pairs.append((int(units[i]), int(units[j])))
            if 2 * len(pairs) == len(units):
                break
    return pairs


def _greedy_pairs(corr: np.ndarray) -> list:
    """Disjoint pairs ``(i, j)``, ``i < j``, covering all ``2d`` units, chosen by correlation, highest first
    (ties: the lower indices; ``corr``'s upper triangle is read). Returned in the order chosen.

    These are the pairs of a greedy pass over all ``(2d)^2 / 2`` pairs, sorted, found mostly without sorting
    them: a pair whose units are each other's best free partner is one the pass takes (nothing it takes first
    touches either unit), and the best remaining pair always is one. Each round pairs every such mutual best,
    over the free units' matrix; when a round pairs few of them (many ties, as among dead units), the sorted
    pass itself pairs the rest, whose result is the same (the pairs taken do not touch them)."""
    c = np.triu(np.asarray(corr, dtype=np.float64), 1)
    c = c + c.T  # the upper triangle, mirrored: unit u's candidates, whichever index is lower
    np.fill_diagonal(c, -np.inf)
    free = np.ones(len(c), dtype=bool)
    pairs: list = []
    while free.any():
        units = np.flatnonzero(free)
        best = c[np.ix_(units, units)].argmax(1)  # among ties the lowest index, the pass's order
        mutual = np.flatnonzero(best[best] == np.arange(len(units)))
        if len(mutual) * 8 < len(units):  # a slow round: the sorted pass, at most the cost of one
            pairs += _sorted_greedy(c, units)
            break
        pairs += [(int(units[a]), int(units[best[a]])) for a in mutual if a < best[a]]
        free[units[mutual]] = False
    return sorted(pairs, key=lambda p: (-c[p], p))


def _in_reference_order(pairs: list, d: int) -> list:
    """``pairs`` placed so that merged unit ``k`` holds the first model's unit ``k`` where it can: a pair
    with units of the first model (``< d``) takes its lowest one's place; pairs of the second model's units
    fill the places left, in order."""
    out: list = [None] * d
    rest = []
    for i, j in sorted(pairs):
        if i < d:
            out[i] = (i, j)
        else:
            rest.append((i, j))
    free = (k for k in range(d) if out[k] is None)
    for pair, k in zip(rest, free):
        out[k] = pair
    return out


@torch.no_grad()
def match_features(spec: PermutationSpec, models: list, X: torch.Tensor, *, batch_size: int = 256) -> dict:
    """``{group: pairs}``: for each group of ``d`` units, ``d`` pairs of unit indices into both models' units
    side by side (``0..d-1`` the first model's, ``d..2d-1`` the second's), paired greedily by the
    correlation of their activations on ``X``; pair ``k`` becomes merged unit ``k`` (the first model's unit
    ``k``'s pair where it can). A group read nowhere pairs unit ``k`` of each model."""
    sums = unit_moments(spec, models, X, _joint_part, batch_size=batch_size)
    pairs = {}
    for g, acc in sums.items():
        d = spec.sizes[g]
        if acc is None:
            pairs[g] = [(k, d + k) for k in range(d)]
            continue
        n, s, zz = acc
        mean = s / n
        cov = zz / n - torch.outer(mean, mean)
        sd = cov.diagonal().clamp_min(0).sqrt()
        norm = torch.outer(sd, sd)
        corr = torch.where(norm > 0, cov / norm.clamp_min(1e-300), torch.zeros_like(cov))
        pairs[g] = _in_reference_order(_greedy_pairs(corr.cpu().numpy()), d)
    return pairs


def _block(units: list, model: int, share: float) -> torch.Tensor:
    """``(d, d)``, merged unit x ``model``'s unit: ``share`` where the unit is a member of the merged unit's
    pair (``units``: :func:`match_features`' pairs of one group)."""
    d = len(units)
    pairs = torch.as_tensor(units, dtype=torch.long)  # (d, 2): indices into both models' units side by side
    rows = torch.arange(d).repeat_interleave(2)
    members = pairs.reshape(-1)
    mine = members // d == model
    block = torch.zeros(d, d, dtype=torch.float64)
    block.index_put_((rows[mine], members[mine] % d), torch.full((int(mine.sum()),), share, dtype=torch.float64), True)
    return block


def _through(t: torch.Tensor, axis: int, segments, blocks: dict, model: int, output: bool) -> torch.Tensor:
    """``t`` (float64) with one axis of ``model``'s tensor mapped to the merged units: on an output axis each
    merged unit takes half of each of its pair's units (positions of no group: half, the plain average); on
    an input axis each original unit adds into its pair's merged unit (positions of no group: kept).
    ``blocks[(group, model, output)]``: the group's :func:`_block`."""
    x = t.movedim(axis, 0)
    out = x * (0.5 if output else 1.0)
    for seg in segments:
        block = blocks[(seg.group, model, output)]
        d, r = len(block), seg.repeat
        a, b = seg.start, seg.start + d * r
        part = x[a:b].reshape(d, r, *x.shape[1:])  # unit, its block of positions, the other axes
        out[a:b] = torch.tensordot(block, part, dims=1).reshape(b - a, *x.shape[1:])
    return out.movedim(0, axis)


def zip_states(spec: PermutationSpec, states: list, pairs: dict) -> dict:
    """The zipped state dict of two models' ``states`` under ``pairs`` (:func:`match_features`): axis 0 of a
    tensor (its output units) through the merge matrix, other axes (input units) through the unmerge matrix,
    summed over the two models; a tensor whose axis 0 holds no hidden units is averaged, and a tensor that is
    not floating point (BatchNorm's batch counter) is the first model's."""
    device = next(iter(states[0].values())).device
    blocks = {  # each group's merge (output) and unmerge (input) block per model, built once
        (g, m, output): _block(units, m, 0.5 if output else 1.0).to(device)
        for g, units in pairs.items()
        for m in (0, 1)
        for output in (True, False)
    }
    out = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        axes = spec.axes.get(name, {})
        total = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
        for m, state in enumerate(states):
            t = state[name].double()
            for axis, segments in axes.items():
                t = _through(t, axis, segments, blocks, m, output=axis == 0)
            total += t if 0 in axes else 0.5 * t
        out[name] = total.to(first.dtype)
    return out


@torch.no_grad()
def zip_models(models: list, data: Any, *, repair: bool = True, batch_size: int = 256) -> nn.Module:
    """One model of the two ``models``' architecture, their units zipped (module docstring) by the
    correlation of their activations on the inputs of ``data`` (a tensor or ``(X, y)``; labels are never
    used). With ``repair`` (the default), REPAIR on the same inputs: each merged unit's pre-activation mean
    and spread set to its pair's mean; for a BatchNorm model, its running statistics recomputed instead.

    :raises ValueError: for other than two models, models of different architectures, a graph whose
                        permutations cannot be derived (the message names the node), or data that is not a
                        batch of inputs.
    """
    models = checked_models("zip_models", models, 0)
    if len(models) != 2:
        raise SettingError(f"zip_models zips two models, got {len(models)}")
    integer("batch_size", batch_size, 1)
    first = next(models[0].parameters())
    X = _inputs(data).to(device=first.device, dtype=first.dtype)
    spec = permutation_spec(models[0])
    pairs = match_features(spec, models, X, batch_size=batch_size)
    zipped = copy.deepcopy(models[0])
    zipped.load_state_dict(zip_states(spec, [m.state_dict() for m in models], pairs))
    if not repair:
        return zipped
    if batchnorm_layers(zipped):
        return repair_batchnorm(zipped, X, batch_size=batch_size)

    def pair_means(name, stats):  # zipped units: their pair's statistics, averaged
        both = [torch.stack([s[name][i] for s in stats]) for i in (0, 1)]  # (model, unit): mean, sd
        mean, sd = (b.mean(0) for b in both)  # units of no group: the plain average's targets
        for seg in spec.axes[f"{name}.weight"][0]:
            d = spec.sizes[seg.group]
            at = torch.as_tensor(pairs[seg.group], device=mean.device)  # (d, 2): each merged unit's pair
            for target, b in zip((mean, sd), both):
                target[seg.start : seg.start + d] = b[at // d, seg.start + at % d].mean(1)
        return mean, sd

    return repair_units(zipped, models, X, pair_means, spec=spec, batch_size=batch_size)
