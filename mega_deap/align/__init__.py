"""Align, then evolve: weight and activation matching (permutation structure from the model's graph),
BatchNorm repair and REPAIR, and coefficient genomes (with DEAP's CMA-ES)."""

from .spec import PermutationSpec, Segment, permutation_spec
from .matching import weight_matching, match_permutations, apply_permutations
from .activations import activation_matching, match_activations, repair_interpolation
from .repair import repair_batchnorm, BatchNormRepair, batchnorm_layers
from .coefficients import CoefficientAdapter, GRANULARITIES
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
    "repair_batchnorm",
    "BatchNormRepair",
    "batchnorm_layers",
    "CoefficientAdapter",
    "GRANULARITIES",
    "cma_merge",
]
