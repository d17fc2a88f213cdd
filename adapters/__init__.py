"""Model adapters, installed as ``mega_deap.adapters``: a model as a flat genome plus fitness functions.

:class:`Adapter` is the contract; :func:`adapter_for` finds the adapter registered for a model's type.
``TorchAdapter`` needs only torch. ``KerasAdapter`` is imported on first use, so importing this package
never imports keras.
"""

from .base import Adapter, KeepValid, LayoutEntry, adapter_for, register_adapter, unregister_adapter
from .torch import TorchAdapter
from .fitness import accuracy, accuracy_ll, neg_log_loss, neg_mse, neg_mae, fitness

__all__ = [
    "Adapter",
    "adapter_for",
    "register_adapter",
    "unregister_adapter",
    "TorchAdapter",
    "KerasAdapter",
    "LayoutEntry",
    "KeepValid",
    "accuracy",
    "accuracy_ll",
    "neg_log_loss",
    "neg_mse",
    "neg_mae",
    "fitness",
]

register_adapter("torch.nn:Module", TorchAdapter)
register_adapter("keras:Model", "mega_deap.adapters.keras:KerasAdapter")  # a Keras model on the torch
# backend is an nn.Module too: keras.Model is nearer in its class hierarchy, so Keras wins


def __getattr__(name):
    if name == "KerasAdapter":
        from .keras import KerasAdapter

        return KerasAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
