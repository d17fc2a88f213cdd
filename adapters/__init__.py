"""Model adapters, installed as ``mega_deap.adapters``: a model as a flat genome plus fitness functions.

``TorchAdapter`` needs only torch. ``KerasAdapter`` is imported on first use, so importing this package
never imports keras.
"""
from ._common import LayoutEntry, KeepValid
from .torch import TorchAdapter
from .fitness import accuracy, neg_mse, neg_mae

__all__ = ["TorchAdapter", "KerasAdapter", "LayoutEntry", "KeepValid", "accuracy", "neg_mse", "neg_mae"]


def __getattr__(name):
    if name == "KerasAdapter":
        from .keras import KerasAdapter
        return KerasAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
