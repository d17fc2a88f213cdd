"""The parents' training recipe (the paper's: Adam, lr 0.01, batch 256, no augmentation) with a cache of
trained parents as safetensors files, and safe model files."""

import hashlib
import json
import math
import os
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from mega_deap.evaluation import correct
from mega_deap.files import atomic_write, tensor_digest

__all__ = [
    "fit",
    "cross_entropy_loss",
    "train_model",
    "train_or_load",
    "parent_key",
    "save_model",
    "load_model_file",
    "model_accuracy",
]


@torch.no_grad()
def model_accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, device=None) -> float:
    """Accuracy of ``model`` on ``(X, y)`` (``(n, ...)`` inputs, ``(n,)`` labels) in eval mode (the mode is
    restored after)."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    right = 0.0
    for i in range(0, len(X), batch_size):
        right += float(correct(model(X[i : i + batch_size].to(device)).cpu(), y[i : i + batch_size]))
    model.train(was)
    return right / len(X)


def cross_entropy_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The classification loss of the recipes: cross-entropy of ``model(X)`` against labels ``y``."""
    return nn.functional.cross_entropy(model(X), y)


def fit(
    model: nn.Module,
    train: tuple,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    loss: Callable = cross_entropy_loss,
    device="cpu",
    held_out: Optional[tuple] = None,
    patience: Optional[int] = None,
    bar=None,
) -> int:
    """The one training loop: Adam on ``train = (X, y)``, shuffled by ``generator`` each epoch, in place (a
    last batch of one example is skipped for a model with BatchNorm, which cannot normalise it).

    Early stopping: with ``held_out = (X, y)`` and ``patience``, the held-out loss is measured after each
    epoch; training stops once it has not improved for ``patience`` epochs, and the model gets back the
    weights of its best epoch. ``bar``: a tqdm bar advanced once per step.

    :returns: the number of epochs trained.
    """
    X, y = train
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, since, done = math.inf, None, 0, 0
    # BatchNorm in training mode cannot normalise a batch of one example: such a last batch is skipped
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=generator)
        for i in range(0, len(X), batch_size):
            idx = perm[i : i + batch_size]
            if batchnorm and len(idx) == 1 and model.training:
                continue
            opt.zero_grad(set_to_none=True)
            value = loss(model, X[idx].to(device), y[idx].to(device))
            value.backward()
            opt.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value.item():.3f}", refresh=False)
        done += 1
        if held_out is not None and patience is not None:
            with torch.no_grad():
                held = float(loss(model, *held_out))
            if held < best:
                best, since = held, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since += 1
                if since >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return done


def train_model(
    model: nn.Module,
    train: tuple,
    *,
    epochs: int = 50,
    lr: float = 0.01,
    batch_size: int = 256,
    seed: int = 0,
    device="cpu",
    desc: str = "train",
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place with the recipe (Adam, cross-entropy) on ``train = (X, y)``; returns it in
    eval mode. One seed fixes the batch order (and the initialisation, when the caller seeds before
    building the model)."""
    X, _ = train
    model.to(device).train()
    steps = epochs * ((len(X) + batch_size - 1) // batch_size)
    with tqdm(total=steps, desc=desc, disable=None if progress else True, leave=False) as bar:
        fit(
            model,
            train,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            generator=torch.Generator().manual_seed(seed),
            device=device,
            bar=bar,
        )
    return model.eval()


def save_model(model, path, metadata=None):
    """Write ``model``'s state dict as safetensors (no pickle), with string metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def load_model_file(model, path, map_location="cpu"):
    """Load a checkpoint into ``model``: safetensors, or a torch file read with ``weights_only=True``
    (never an unrestricted unpickler). A ``{"state_dict": ...}`` wrapper is unwrapped."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device=str(map_location))
    else:
        state = torch.load(path, map_location=map_location, weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    model.load_state_dict(state)
    return model.eval()


def parent_key(model, train, recipe):
    """What decides a trained parent, as a JSON-able dict: the training data (a digest of the training
    split's images and labels, so the data set, the split seed and the sizes all count), the untrained
    model's architecture (every tensor's name, shape and dtype) and the recipe (seed, epochs, lr, batch)."""
    arch = [[name, list(t.shape), str(t.dtype)] for name, t in model.state_dict().items()]
    return {
        "data": tensor_digest(*train),
        "architecture": hashlib.sha256(json.dumps(arch).encode()).hexdigest(),
        "recipe": dict(recipe),
    }


def train_or_load(
    factory, train, *, cache_dir, tag, seed, epochs=50, lr=0.01, batch_size=256, device="cpu", progress=True
):
    """A parent: loaded from ``cache_dir`` when this exact parent was trained before, else trained and cached.

    The cache key (:func:`parent_key`) holds everything that decides the parent: the training split's
    contents, the architecture and the recipe. A cached file whose recorded key differs is retrained.

    :param factory: a callable building the untrained model (called after seeding with ``seed``).
    :param train: ``(X, y)``, the training split.
    :param tag: names the model and data set in the cache file's name (for people; the key decides).
    :returns: ``(model, path, cached)``.
    """
    torch.manual_seed(seed)
    model = factory()
    key = parent_key(model, train, {"seed": seed, "epochs": epochs, "lr": lr, "batch_size": batch_size})
    short = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"{tag}-seed{seed}-{short}.safetensors")
    if os.path.exists(path):
        try:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                recorded = json.loads((f.metadata() or {}).get("key", "null"))
            if recorded == key:
                return load_model_file(model, path).to(device), path, True
        except Exception as err:  # a broken cache entry is retrained, not trusted
            tqdm.write(f"ignoring unreadable cached parent {path}: {err}")
    train_model(
        model,
        train,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        desc=f"parent seed {seed}",
        progress=progress,
    )
    save_model(model, path, metadata={"key": json.dumps(key), "tag": tag})
    return model, path, False
