"""BatchNorm repair: running statistics recomputed on calibration data.

A blend of two networks' weights inherits a blend of their BatchNorm running statistics, which are not
the statistics of the blended network's own activations (Jordan et al., "REPAIR", 2022, measure how far
off they are). :func:`repair_batchnorm` recomputes them on calibration inputs (a final step for any
model); :class:`BatchNormRepair` does the same to a genome, so that an
:class:`~mega_deap.Evaluator` can repair every candidate before scoring it (``prepare=``).
"""

import copy
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..checks import SettingError, SettingTypeError, integer
from ..files import tensor_digest

__all__ = ["repair_batchnorm", "BatchNormRepair", "batchnorm_layers", "calibration_inputs"]


def batchnorm_layers(model: nn.Module) -> list:
    """The BatchNorm modules of ``model`` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def calibration_inputs(data, *, name: str = "calibration") -> torch.Tensor:
    """The inputs of ``data``: a tensor ``(n, ...)``, ``(X, y)``, or an iterable of ``x`` or ``(x, y)``
    batches (a DataLoader), as one tensor."""
    if isinstance(data, torch.Tensor):
        X = data
    elif (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
        and len(data[0]) == len(data[1])
    ):
        X = data[0]
    elif hasattr(data, "__iter__"):
        parts = [b[0] if isinstance(b, (tuple, list)) else b for b in data]
        if not parts or not all(isinstance(p, torch.Tensor) for p in parts):
            raise SettingTypeError(f"{name} must be inputs (n, ...), (X, y) or batches of them")
        X = torch.cat(parts)
    else:
        raise SettingTypeError(f"{name} must be inputs (n, ...), (X, y) or batches of them, got {type(data).__name__}")
    if X.dim() < 2 or len(X) < 2:
        raise SettingError(f"{name} needs at least 2 inputs of shape (n, ...), got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise SettingError(f"{name} inputs must be floating point, got {X.dtype}")
    return X


@torch.no_grad()
def repair_batchnorm(model: nn.Module, data: Any, *, batches: Optional[int] = None, batch_size: int = 256) -> nn.Module:
    """Recompute the running mean and variance of every BatchNorm layer of ``model`` on ``data``, in place.

    Each layer's statistics become the average over the batches (``momentum=None``, PyTorch's cumulative
    average) of its inputs' batch statistics; every other weight is left as it is, the model's modes and
    momenta are restored.

    :param data: calibration inputs: a tensor ``(n, ...)``, ``(X, y)`` or an iterable of batches; labels
                 are never used.
    :param batches: use only the first ``batches`` batches.
    :param batch_size: inputs per batch.
    :returns: ``model``.
    """
    if not isinstance(model, nn.Module):
        raise SettingTypeError(f"repair_batchnorm repairs a torch.nn.Module, got {type(model).__name__}")
    layers = batchnorm_layers(model)
    if not layers:
        raise SettingError(f"{type(model).__name__} has no BatchNorm layer with running statistics to repair")
    X = calibration_inputs(data)
    integer("batch_size", batch_size, 2)
    if batches is not None:
        integer("batches", batches, 1)
    param = next(model.parameters(), None)
    device = param.device if param is not None else X.device
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for i, s in enumerate(range(0, len(X), batch_size)):
            if batches is not None and i >= batches:
                break
            xb = X[s : s + batch_size]
            if len(xb) < 2:  # a batch of one has no variance
                break
            model(xb.to(device))
    finally:
        for m, was in modes.items():
            m.training = was
        for m, mom in momenta.items():
            m.momentum = mom
    return model


class BatchNormRepair:
    """Repair a genome's BatchNorm statistics in place: ``repair(genome)``.

    The genome (``(D,)``, with the statistics in it: ``TorchAdapter(buffers=True)``) is written into a
    private copy of the adapter's model, :func:`repair_batchnorm` runs there, and the repaired genome is
    copied back. Give it to :class:`~mega_deap.Evaluator` as ``prepare=`` to repair every candidate before
    it is scored; it costs a forward pass over the calibration inputs per candidate.
    """

    def __init__(self, adapter: Any, data: Any, *, batches: Optional[int] = None, batch_size: int = 256) -> None:
        model = getattr(adapter, "model", None)
        if not isinstance(model, nn.Module):
            raise SettingTypeError("BatchNorm repair needs a PyTorch model's adapter (TorchAdapter)")
        if not getattr(adapter, "buffers", False):
            raise SettingError("BatchNorm repair needs the running statistics in the genome (buffers=True)")
        if not batchnorm_layers(model):
            raise SettingError(
                f"calibration data was given, but {type(model).__name__} has no BatchNorm layer "
                "whose statistics it could repair"
            )
        self.adapter = adapter
        self.X = calibration_inputs(data).to(device=adapter.device, dtype=adapter.dtype)
        self.batches, self.batch_size = batches, batch_size
        self.work = copy.deepcopy(model)
        self._fingerprint: Optional[dict] = None

    def fingerprint(self) -> dict:
        """What identifies the repair in a checkpoint: the calibration inputs' digest and the batching."""
        if self._fingerprint is None:
            self._fingerprint = {
                "calibration_sha256": tensor_digest(self.X),
                "batches": self.batches,
                "batch_size": self.batch_size,
            }
        return self._fingerprint

    @torch.no_grad()
    def __call__(self, genome: torch.Tensor) -> torch.Tensor:
        g = getattr(genome, "genome", genome)
        self.adapter.load(g, self.work)
        repair_batchnorm(self.work, self.X, batches=self.batches, batch_size=self.batch_size)
        g.copy_(self.adapter.genome(self.work))
        self.adapter.repair_(g)
        return genome
