"""Weight matching (Ainsworth, Hayase and Srinivasa, "Git Re-Basin", 2022): permute every model's hidden
units to match a reference model's, so that blending their weights blends like units.

For each permutation group in turn (in a seeded random order), the permutation that maximises the
summed inner products between the reference's weights and the other model's (permuted) weights on every
axis the group acts on is a linear assignment problem (``scipy.optimize.linear_sum_assignment``); sweeps
repeat until no group's permutation changes, or ``max_iter`` sweeps. The permutation structure comes from
the model's graph (:func:`~mega_deap.align.spec.permutation_spec`).
"""

import copy
from typing import Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..adapters.torch import TorchAdapter
from ..checks import SettingError, SettingTypeError, integer
from .spec import PermutationSpec, permutation_spec

__all__ = ["weight_matching", "match_permutations", "apply_permutations"]


def _axis_index(size: int, segments, perms: dict, device) -> Optional[torch.Tensor]:
    """The gather index for one tensor axis of ``size`` positions under ``perms``, or None (identity)."""
    idx = None
    for s in segments:
        p = perms.get(s.group)
        if p is None:
            continue
        if idx is None:
            idx = torch.arange(size, device=device)
        r = s.repeat
        units = torch.as_tensor(p, device=device)
        src = (s.start + units[:, None] * r + torch.arange(r, device=device)[None, :]).reshape(-1)
        idx[s.start : s.start + len(p) * r] = src
    return idx


def _permuted(t: torch.Tensor, axes: dict, perms: dict, skip: Optional[int] = None) -> torch.Tensor:
    for axis, segs in axes.items():
        if axis == skip:
            continue
        idx = _axis_index(t.shape[axis], segs, perms, t.device)
        if idx is not None:
            t = t.index_select(axis, idx)
    return t


def apply_permutations(state: dict, spec: PermutationSpec, perms: dict) -> dict:
    """A new state dict: ``state``'s tensors with the units of every group ``g`` reordered by
    ``perms[g]`` (unit ``i`` of the result is unit ``perms[g][i]`` of ``state``)."""
    out = {}
    for name, t in state.items():
        axes = spec.axes.get(name)
        out[name] = _permuted(t, axes, perms) if axes else t.clone()
    return out


def match_permutations(
    spec: PermutationSpec, reference: dict, other: dict, *, max_iter: int = 100, seed: int = 0
) -> dict:
    """``{group: permutation}`` that aligns ``other``'s units to ``reference``'s (two state dicts of one
    architecture): coordinate ascent over the groups, one linear assignment per group per sweep.
    Random source: ``numpy.random.default_rng(seed)`` (the order of the groups in each sweep)."""
    order_rng = np.random.default_rng(seed)
    groups = sorted(spec.sizes)
    perms = {g: np.arange(spec.sizes[g]) for g in groups}
    where = {g: spec.groups_of(g) for g in groups}
    ref = {n: t.detach().double() for n, t in reference.items() if n in spec.axes}
    oth = {n: t.detach().double() for n, t in other.items() if n in spec.axes}
    for _ in range(max_iter):
        changed = False
        for g in order_rng.permutation(groups):
            n_units = spec.sizes[g]
            cost = torch.zeros(n_units, n_units, dtype=torch.float64)
            for name, axis, seg in where[g]:
                a = ref[name]
                b = _permuted(oth[name], spec.axes[name], perms, skip=axis)
                # units of this segment on `axis`, everything else flattened: (units, repeat * rest)
                r = seg.repeat
                a = a.movedim(axis, 0).narrow(0, seg.start, n_units * r).reshape(n_units, -1)
                b = b.movedim(axis, 0).narrow(0, seg.start, n_units * r).reshape(n_units, -1)
                cost += (a @ b.T).cpu()
            _, new = linear_sum_assignment(cost.numpy(), maximize=True)
            old_score = cost[torch.arange(n_units), torch.as_tensor(perms[g])].sum()
            new_score = cost[torch.arange(n_units), torch.as_tensor(new)].sum()
            if new_score > old_score + 1e-12 * max(1.0, float(abs(old_score))):
                perms[g] = new
                changed = True
        if not changed:
            break
    return perms


def weight_matching(models: list, *, reference: int = 0, max_iter: int = 100, seed: int = 0) -> list:
    """Copies of ``models`` (``nn.Module``s of one architecture) with hidden units permuted to match
    ``models[reference]``; the reference comes back as an unchanged copy. Every model computes the same
    function as before (up to float rounding).

    :param reference: index of the model the others are aligned to.
    :param max_iter: sweeps over the permutation groups at most (it stops earlier when a sweep changes
                     nothing).
    :param seed: the order of the groups in each sweep.
    :raises ValueError: for a graph whose permutations cannot be derived (the message names the node), or
                        models whose state dicts differ.
    """
    models = checked_models("weight_matching", models, reference)
    integer("max_iter", max_iter, 1)
    integer("seed", seed)
    ref_state = models[reference].state_dict()
    return permuted_copies(
        models,
        reference,
        lambda spec, m: match_permutations(spec, ref_state, m.state_dict(), max_iter=max_iter, seed=seed),
    )


def checked_models(name: str, models: list, reference: int) -> list:
    """``models`` as a list, checked for a matching called ``name``: at least two ``nn.Module``s of one
    architecture (the first difference named), ``reference`` an index into them."""
    models = list(models)
    if len(models) < 2:
        raise SettingError(f"{name} needs at least two models, got {len(models)}")
    integer("reference", reference)
    if not 0 <= reference < len(models):
        raise SettingError(f"reference must index one of the {len(models)} models, got {reference}")
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise SettingTypeError(f"{name} aligns torch.nn.Module models; model {i} is a {type(m).__name__}")
    TorchAdapter(models[reference]).check_all(models)  # one architecture, or the first difference named
    return models


def permuted_copies(models: list, reference: int, perms_of) -> list:
    """Copies of ``models``, each but the reference with its units permuted by ``perms_of(spec, model)``
    (``{group: permutation}``); the reference comes back as an unchanged copy."""
    spec = permutation_spec(models[reference])
    out = []
    for i, m in enumerate(models):
        new = copy.deepcopy(m)
        if i != reference:
            new.load_state_dict(apply_permutations(m.state_dict(), spec, perms_of(spec, m)))
        out.append(new)
    return out
