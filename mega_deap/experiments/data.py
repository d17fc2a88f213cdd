"""Data with the paper's protocol.

CIFAR-10 is read from the standard ``cifar-10-batches-py`` python-pickle batches with a restricted
unpickler that can build only plain containers and NumPy arrays (a batch from a stranger can never run
code). The paper's split: 45,000 train / 5,000 validation drawn from the training batches with a seed,
the official 10,000-image test batch for test. The test split never feeds fitness.
"""

import io
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "read_cifar_batch",
    "write_cifar_batches",
    "load_cifar10",
    "find_cifar10",
    "download_cifar10",
    "split_train_val",
    "Splits",
    "cifar10_splits",
    "digits_splits",
    "load_digits_images",
    "resolve_splits",
]

CIFAR_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"


class _CifarUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, bytes and NumPy arrays; refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a CIFAR batch: only plain data and NumPy arrays are allowed"
        )


def read_cifar_batch(path):
    """One CIFAR-10 batch file -> ``(X uint8 (n, 3, 32, 32), y int64 (n,))``."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        d = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"{path} is not a readable CIFAR-10 batch: {err}") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data = np.asarray(d[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def write_cifar_batches(folder, train, test):
    """Write ``train`` and ``test`` (``(X uint8 (n, 3, 32, 32), y (n,))``) as CIFAR-10 python batches
    (``data_batch_1..5``, ``test_batch``) in ``folder/cifar-10-batches-py``: any image set can then go
    through the CIFAR-10 pipeline. Returns that folder."""
    d = os.path.join(folder, CIFAR_DIR)
    os.makedirs(d, exist_ok=True)
    for X, _ in (train, test):
        if X.dtype != torch.uint8 or tuple(X.shape[1:]) != (3, 32, 32):
            raise ValueError(
                f"CIFAR-10 batches hold uint8 images of shape (n, 3, 32, 32), got {X.dtype} {tuple(X.shape)}"
            )
    parts = [(TRAIN_BATCHES[i], idx) for i, idx in enumerate(torch.arange(len(train[1])).chunk(5))]
    for name, (X, y) in [(n, (train[0][i], train[1][i])) for n, i in parts] + [(TEST_BATCH, test)]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in y],
            b"data": X.reshape(len(X), -1).numpy(),
            b"filenames": [f"{i}.png".encode() for i in range(len(X))],
        }
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return d


def find_cifar10(data_dir):
    """The folder holding the batches (``data_dir`` itself or its ``cifar-10-batches-py``), or None."""
    if not data_dir:
        return None
    for cand in (data_dir, os.path.join(data_dir, CIFAR_DIR)):
        if all(os.path.isfile(os.path.join(cand, b)) for b in TRAIN_BATCHES + [TEST_BATCH]):
            return cand
    return None


def load_cifar10(data_dir):
    """``{"train": (X, y), "test": (X, y)}``: uint8 images ``(n, 3, 32, 32)`` and int64 labels."""
    folder = find_cifar10(data_dir)
    if folder is None:
        raise FileNotFoundError(
            f"no CIFAR-10 python batches ({', '.join(TRAIN_BATCHES)}, {TEST_BATCH}) in "
            f"{data_dir!r} or {os.path.join(str(data_dir), CIFAR_DIR)!r}"
        )
    parts = [read_cifar_batch(os.path.join(folder, b)) for b in TRAIN_BATCHES]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return {"train": train, "test": read_cifar_batch(os.path.join(folder, TEST_BATCH))}


def download_cifar10(root):
    """Download CIFAR-10 with torchvision when it imports and the network is up; returns the folder or
    ``None`` with the reason."""
    try:
        from torchvision.datasets import CIFAR10
    except Exception as err:  # not installed, or a build that does not match torch
        return None, f"torchvision is not usable ({type(err).__name__})"
    try:
        CIFAR10(root, train=True, download=True)
    except Exception as err:
        return None, f"the download failed ({type(err).__name__}: {err})"
    return find_cifar10(root), None


@dataclass
class Splits:
    """Float tensors ready for a model; ``name`` says where they came from."""

    name: str
    train: tuple
    val: tuple
    test: tuple
    in_channels: int
    num_classes: int
    image_size: int


def split_train_val(n, val_size, seed):
    """A seeded permutation of ``range(n)`` cut into ``(train_idx, val_idx)``."""
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1}, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def cifar10_splits(data_dir, val_size=5000, seed=0):
    """CIFAR-10, normalised with the training split's per-channel mean and std: 45,000 / 5,000 / 10,000."""
    raw = load_cifar10(data_dir)
    X, y = raw["train"]
    tr, va = split_train_val(len(X), val_size, seed)
    Xf = X.float().div_(255.0)
    mean = Xf[tr].mean((0, 2, 3), keepdim=True)
    std = Xf[tr].std((0, 2, 3), keepdim=True)
    norm = lambda t: (t.float().div(255.0) - mean) / std  # noqa: E731
    return Splits(
        "cifar10", (norm(X[tr]), y[tr]), (norm(X[va]), y[va]), (norm(raw["test"][0]), raw["test"][1]), 3, 10, 32
    )


def load_digits_images():
    """scikit-learn's bundled digits as ``(X float (1797, 1, 8, 8) in [0, 1], y int64)``."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (torch.tensor(X / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(y, dtype=torch.long))


def digits_splits(val_size=300, test_size=400, seed=0):
    """Digits: a fixed test split of ``test_size`` images, the rest cut into train and validation."""
    X, y = load_digits_images()
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(12345))  # the test split never moves
    te, rest = perm[:test_size], perm[test_size:]
    tr, va = split_train_val(len(rest), val_size, seed)
    tr, va = rest[tr], rest[va]
    return Splits("digits", (X[tr], y[tr]), (X[va], y[va]), (X[te], y[te]), 1, 10, 8)


def resolve_splits(dataset="auto", data_dir=None, download=False, seed=0, say=print, val_size=None):
    """The data set a run uses: CIFAR-10 from ``data_dir`` (downloaded with torchvision when asked and
    possible) or, with ``dataset="auto"`` and no CIFAR-10 at hand, the bundled digits, said in one line."""
    if dataset not in ("auto", "cifar10", "digits"):
        raise ValueError(f"dataset must be 'auto', 'cifar10' or 'digits', got {dataset!r}")
    if dataset == "digits":
        return digits_splits(seed=seed, **({"val_size": val_size} if val_size else {}))
    reason = None
    if find_cifar10(data_dir) is None and download and data_dir:
        _, reason = download_cifar10(data_dir)
    if find_cifar10(data_dir) is not None:
        return cifar10_splits(data_dir, seed=seed, **({"val_size": val_size} if val_size else {}))
    if reason is None:
        reason = (
            "no --data-dir given"
            if not data_dir
            else f"no CIFAR-10 python batches in {data_dir!r}" + ("" if download else " (add --download)")
        )
    if dataset == "cifar10" or data_dir:  # a folder was named: falling back would hide a typo
        raise FileNotFoundError(f"CIFAR-10 is not available: {reason}")
    say(f"CIFAR-10 is not available ({reason}); running the same pipeline on scikit-learn's bundled digits.")
    return digits_splits(seed=seed, **({"val_size": val_size} if val_size else {}))
