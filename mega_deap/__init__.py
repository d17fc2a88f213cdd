"""mega_deap: DEAP genetic algorithms over neural-network weight spaces, with individuals that are
views into one population tensor."""
from .individual import TensorIndividual, genome_equal
from .population import TensorPopulation, default_device, stack_genomes
from .operators import initBlend, cxBlend, mutSparseGaussian, mutLayerGaussian, sparse_indices
from .evaluation import Evaluator, Accuracy, NegMSE, NegMAE
from .algorithms import (selElite, selNoElite, eaMeGA, mega_toolbox, merge, merge_tree, MergeResult, TreeResult, seed, default_stats,
                         ensure_creator_classes)

__version__ = "0.1.0"

__all__ = [
    "TensorIndividual", "genome_equal", "TensorPopulation", "default_device", "stack_genomes",
    "initBlend", "cxBlend", "mutSparseGaussian", "mutLayerGaussian", "sparse_indices",
    "Evaluator", "Accuracy", "NegMSE", "NegMAE",
    "selElite", "selNoElite", "eaMeGA", "mega_toolbox", "merge", "merge_tree", "MergeResult", "TreeResult", "seed", "default_stats", "ensure_creator_classes",
]
