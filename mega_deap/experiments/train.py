"""The parents' training recipe (the paper's: Adam, lr 0.01, batch 256, no augmentation) with a cache of
trained parents as safetensors files, and safe model files."""
import hashlib
import json
import os

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["train_model", "train_or_load", "parent_key", "save_model", "load_model_file", "model_accuracy"]


@torch.no_grad()
def model_accuracy(model, X, y, batch_size=1000, device=None):
    """Accuracy of ``model`` on ``(X, y)`` in eval mode (the mode is restored after)."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(X), batch_size):
        correct += (model(X[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    model.train(was)
    return correct / len(X)


def train_model(model, train, *, epochs=50, lr=0.01, batch_size=256, seed=0, device="cpu", desc="train",
                progress=True):
    """Train ``model`` in place with Adam on ``train = (X, y)`` (cross-entropy); returns it in eval mode.

    One seed fixes the initialisation (when the caller seeds before building) and the batch order.
    """
    X, y = train
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(X) + batch_size - 1) // batch_size)
    with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            perm = torch.randperm(len(X), generator=gen)
            for i in range(0, len(X), batch_size):
                idx = perm[i:i + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(X[idx].to(device)), y[idx].to(device))
                loss.backward()
                opt.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


def save_model(model, path, metadata=None):
    """Write ``model``'s state dict as safetensors (no pickle), with string metadata."""
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = f"{path}.tmp"
    save_file(state, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)
    return path


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


def _digest(*tensors):
    """SHA-256 of tensors' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def parent_key(model, train, recipe):
    """What decides a trained parent, as a JSON-able dict: the training data (a digest of the training
    split's images and labels, so the data set, the split seed and the sizes all count), the untrained
    model's architecture (every tensor's name, shape and dtype) and the recipe (seed, epochs, lr, batch)."""
    arch = [[name, list(t.shape), str(t.dtype)] for name, t in model.state_dict().items()]
    return {"data": _digest(*train), "architecture": hashlib.sha256(json.dumps(arch).encode()).hexdigest(),
            "recipe": dict(recipe)}


def train_or_load(factory, train, *, cache_dir, tag, seed, epochs=50, lr=0.01, batch_size=256, device="cpu",
                  progress=True):
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
    train_model(model, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                desc=f"parent seed {seed}", progress=progress)
    save_model(model, path, metadata={"key": json.dumps(key), "tag": tag})
    return model, path, False
