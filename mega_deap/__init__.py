"""mega_deap: DEAP genetic algorithms over neural-network weight spaces, with individuals that are
views into one population tensor."""

import importlib.util as _importlib_util

if _importlib_util.find_spec("mega_deap.adapters") is None:  # adapters/ is installed as mega_deap.adapters
    raise ImportError(
        "mega_deap is not installed: its adapters/ folder becomes mega_deap.adapters only when "
        "the package is installed. From the repository root run: pip install -e ."
    )

from .individual import TensorIndividual, genome_equal
from .population import TensorPopulation, default_device
from .operators import (
    initBlend,
    initModel,
    initNoise,
    cxBlend,
    mutSparseGaussian,
    mutLayerGaussian,
    selElite,
    selNoElite,
)
from .evaluation import Evaluator
from .metrics import Accuracy, AccuracyLogLik, NegLogLoss, NegMSE, NegMAE, GroupAccuracy, METRICS
from .objectives import on_outputs, on_model, ModelEvaluator
from .algorithms import eaMeGA, varMeGA, evaluate_invalid
from .breeding import varMeGABatched, varMutants, varMutantsBatched
from .checkpoint import CheckpointError
from .presets import mega_toolbox, merge, cma_merge, merge_tree, MergeResult, TreeResult, default_stats
from .rng import seed

__version__ = "0.1.0"

__all__ = [
    "TensorIndividual",
    "genome_equal",
    "TensorPopulation",
    "default_device",
    "initBlend",
    "initModel",
    "initNoise",
    "cxBlend",
    "mutSparseGaussian",
    "mutLayerGaussian",
    "selElite",
    "selNoElite",
    "Evaluator",
    "Accuracy",
    "AccuracyLogLik",
    "NegLogLoss",
    "NegMSE",
    "NegMAE",
    "GroupAccuracy",
    "METRICS",
    "on_outputs",
    "on_model",
    "ModelEvaluator",
    "eaMeGA",
    "varMeGA",
    "varMeGABatched",
    "varMutants",
    "varMutantsBatched",
    "evaluate_invalid",
    "CheckpointError",
    "mega_toolbox",
    "merge",
    "cma_merge",
    "merge_tree",
    "MergeResult",
    "TreeResult",
    "default_stats",
    "seed",
]
