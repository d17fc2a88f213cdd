"""Batched fitness functions made from an adapter and a validation set.

Each returns a :class:`mega_deap.Evaluator`: register it as ``toolbox.evaluate`` and its ``map`` as
``toolbox.map``. Keyword arguments (``batch_size``, ``strategy``, ``chunk``, ``autocast``) go to the
evaluator. The metrics come from the one registry, :data:`mega_deap.evaluation.METRICS`.
"""

from typing import Any

from mega_deap.evaluation import Evaluator, get_metric

from .base import Adapter

__all__ = ["fitness", "accuracy", "accuracy_ll", "neg_log_loss", "neg_mse", "neg_mae"]


def fitness(metric: str, adapter: Adapter, X: Any, y: Any, **kwargs: Any) -> Evaluator:
    """An evaluator of ``metric`` (a name in :data:`mega_deap.evaluation.METRICS`) on ``(X, y)``."""
    return Evaluator(adapter, X, y, get_metric(metric), **kwargs)


def accuracy(adapter: Adapter, X: Any, y: Any, **kwargs: Any) -> Evaluator:
    """Validation accuracy (argmax of the outputs against integer labels ``y``)."""
    return fitness("accuracy", adapter, X, y, **kwargs)


def accuracy_ll(adapter: Adapter, X: Any, y: Any, **kwargs: Any) -> Evaluator:
    """Validation accuracy, ties broken by the log-likelihood (:class:`mega_deap.evaluation.AccuracyLogLik`);
    ``merge``'s default fitness."""
    return fitness("accuracy_ll", adapter, X, y, **kwargs)


def neg_log_loss(adapter: Adapter, X: Any, y: Any, **kwargs: Any) -> Evaluator:
    """The validation log-likelihood: minus the mean cross-entropy of the outputs (logits) against integer
    labels ``y``."""
    return fitness("neg_log_loss", adapter, X, y, **kwargs)


def neg_mse(adapter: Adapter, X: Any, y: Any, **kwargs: Any) -> Evaluator:
    """Negative mean squared error on ``(X, y)``: regression, maximised."""
    return fitness("neg_mse", adapter, X, y, **kwargs)


def neg_mae(adapter: Adapter, X: Any, y: Any, **kwargs: Any) -> Evaluator:
    """Negative mean absolute error on ``(X, y)``: regression, maximised."""
    return fitness("neg_mae", adapter, X, y, **kwargs)
