"""One seed for every random source a run draws from, and their state as data (for checkpoints).

A run draws from ``random`` (DEAP's selection), NumPy, and torch's CPU and CUDA generators (the tensor
operators). :func:`seed` seeds them all from one integer; :func:`rng_state` and :func:`set_rng_state`
capture and restore them as JSON-able data plus uint8 tensors, so a resumed run continues the same draws.
"""

import random
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["seed", "rng_state", "set_rng_state"]


def seed(value: int) -> None:
    """Seed every random source a run draws from: ``random`` (DEAP's selection), NumPy and torch
    (CPU and every CUDA device)."""
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def rng_state(device: Optional[Union[str, torch.device]] = None) -> tuple:
    """Every random source a run draws from: ``(json-able dict, {name: uint8 tensor})``. ``device``: where the
    run's tensors live; for a CUDA device, that device's generator is saved as ``rng.cuda`` (the one the
    operators draw from; in a process group every rank's own device holds the same state, since every rank
    breeds the same population from the same seed)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "random": [version, list(internal), gauss],
        "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(dev)
    return meta, tensors


def set_rng_state(meta: dict, tensors: dict, device: Optional[Union[str, torch.device]] = None) -> None:
    """Restore what :func:`rng_state` captured. ``device``: where this process's run lives; a CUDA device
    gets the saved CUDA state (each rank its own device: ``cuda:r`` for rank r, not the writer's ``cuda:0``).
    Checkpoints of earlier versions held every device of the writer (``rng.cuda.<i>``); the writer's first
    device's state is the one its run drew from."""
    version, internal, gauss = meta["random"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    dev = torch.device(device) if device is not None else None
    state = tensors.get("rng.cuda", tensors.get("rng.cuda.0"))
    if state is not None and dev is not None and dev.type == "cuda":
        torch.cuda.set_rng_state(state, dev)
