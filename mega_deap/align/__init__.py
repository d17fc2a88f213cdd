"""Align, then evolve: weight and activation matching (permutation structure from the model's graph),
zipping (ZipIt!), BatchNorm repair and REPAIR, and coefficient genomes (with DEAP's CMA-ES)."""

from typing import Any

from .spec import PermutationSpec, Segment, permutation_spec
from .matching import weight_matching, match_permutations, apply_permutations
from .activations import activation_matching, match_activations, repair_interpolation
from .zipping import zip_models, match_features, zip_states
from .repair import repair_batchnorm, BatchNormRepair, batchnorm_layers
from .distil import distil, distillation_loss, ensemble_logits, DEFAULT_DISTIL
from .coefficients import CoefficientAdapter, GRANULARITIES
from ..checks import SettingError
from ..presets import cma_merge  # a preset: the coefficient genome driven by DEAP's CMA-ES

__all__ = [
    "PermutationSpec",
    "Segment",
    "permutation_spec",
    "weight_matching",
    "match_permutations",
    "apply_permutations",
    "activation_matching",
    "match_activations",
    "repair_interpolation",
    "zip_models",
    "match_features",
    "zip_states",
    "repair_batchnorm",
    "BatchNormRepair",
    "batchnorm_layers",
    "CoefficientAdapter",
    "GRANULARITIES",
    "cma_merge",
    "distil",
    "distillation_loss",
    "ensemble_logits",
    "DEFAULT_DISTIL",
    "align_parents",
]


def align_parents(models: list, matching: str, inputs: Any = None) -> list:
    """Copies of ``models`` with their hidden units aligned to the first's by ``matching``, as ``merge(align=
    matching)`` aligns them: ``"weights"`` (:func:`weight_matching`), ``"activations"``
    (:func:`activation_matching` on ``inputs``, a tensor or ``(X, y)``; labels are never read), or ``"zip"``
    (``merge`` aligns the parents by activations, and seeds their zip besides)."""
    if matching == "weights":
        return weight_matching(models)
    if matching not in ("activations", "zip"):
        raise SettingError(f"matching must be 'weights', 'activations' or 'zip', got {matching!r}")
    if inputs is None:
        raise SettingError("align='activations' matches units on inputs: give calibration inputs")
    return activation_matching(models, inputs)
