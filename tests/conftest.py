import importlib.util
import pathlib

import pytest
import torch
from torch import nn
from deap import base, creator


def _create(name, *args, **kwargs):
    if not hasattr(creator, name):
        creator.create(name, *args, **kwargs)
    return getattr(creator, name)


@pytest.fixture(scope="session")
def classes():
    """creator classes shared by the tests: tensor and list individuals with the same fitness."""
    from mega_deap import TensorIndividual

    _create("FitMax", base.Fitness, weights=(1.0,))
    return {
        "tensor": _create("TInd", TensorIndividual, fitness=creator.FitMax),
        "list": _create("LInd", list, fitness=creator.FitMax),
    }


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, split 1,000 train / 397 validation / 400 test with a fixed seed."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    tr, va, te = perm[:1000], perm[1000:1397], perm[1397:]
    return {"train": (X[tr], y[tr]), "val": (X[va], y[va]), "test": (X[te], y[te])}


def train_mlp(train, seed, hidden=32, epochs=15):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    X, y = train
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 100):
            idx = perm[i : i + 100]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digit_mlps(digits):
    """Two MLPs trained on digits from different seeds."""
    return [train_mlp(digits["train"], 1), train_mlp(digits["train"], 2)]


class SmallCNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(name, folder="examples"):
    """An example or benchmark script as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def permuted_copy(model, seed):
    """``model`` with every hidden-unit group shuffled by a seeded random permutation: the same function."""
    import copy

    from mega_deap.align import apply_permutations, permutation_spec

    spec = permutation_spec(model)
    g = torch.Generator().manual_seed(seed)
    perms = {k: torch.randperm(n, generator=g).numpy() for k, n in spec.sizes.items()}
    other = copy.deepcopy(model)
    other.load_state_dict(apply_permutations(model.state_dict(), spec, perms))
    return other


def on_a_terminal(argv) -> str:
    """Everything the command ``argv`` writes when its standard streams are a terminal (a pseudo-terminal of
    24 x 100 characters, as a real one has a size), after it ends."""
    import os
    import pty

    out = []
    pid, fd = pty.fork()
    if pid == 0:  # the child: give its terminal a size, then run
        import fcntl
        import struct
        import termios

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.execv(argv[0], argv)
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(out).decode(errors="replace")
