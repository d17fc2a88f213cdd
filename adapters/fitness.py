"""Batched fitness functions made from an adapter and a validation set.

Each returns a :class:`mega_deap.Evaluator`: register it as ``toolbox.evaluate`` and its ``map`` as
``toolbox.map``. Keyword arguments (``batch_size``, ``strategy``, ``chunk``, ``autocast``) go to the
evaluator.
"""
from mega_deap.evaluation import Accuracy, Evaluator, NegMAE, NegMSE

__all__ = ["accuracy", "neg_mse", "neg_mae"]


def accuracy(adapter, X, y, **kwargs):
    """Validation accuracy (argmax of the outputs against integer labels ``y``)."""
    return Evaluator(adapter, X, y, Accuracy(), **kwargs)


def neg_mse(adapter, X, y, **kwargs):
    """Negative mean squared error on ``(X, y)``: regression, maximised."""
    return Evaluator(adapter, X, y, NegMSE(), **kwargs)


def neg_mae(adapter, X, y, **kwargs):
    """Negative mean absolute error on ``(X, y)``: regression, maximised."""
    return Evaluator(adapter, X, y, NegMAE(), **kwargs)
