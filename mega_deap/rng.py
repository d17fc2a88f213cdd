"""One seed for every random source a run draws from, and their state as data (for checkpoints).

A run draws from ``random`` (DEAP's selection), NumPy, and torch's CPU and CUDA generators (the tensor
operators). :func:`seed` seeds them all from one integer; :func:`rng_state` and :func:`set_rng_state`
capture and restore them as JSON-able data plus uint8 tensors, so a resumed run continues the same draws.
"""

import random

import numpy as np
import torch

__all__ = ["seed", "rng_state", "set_rng_state"]


def seed(value: int) -> None:
    """Seed every random source a run draws from: ``random`` (DEAP's selection), NumPy and torch
    (CPU and every CUDA device)."""
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def rng_state() -> tuple:
    """Every random source a run draws from: ``(json-able dict, {name: uint8 tensor})``."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "random": [version, list(internal), gauss],
        "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return meta, tensors


def set_rng_state(meta: dict, tensors: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = meta["random"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
