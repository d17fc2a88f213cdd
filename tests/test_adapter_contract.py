"""The adapter contract: adapter_for finds the registered adapter by type, a new framework is one Adapter
subclass plus one register_adapter call, and an uninstalled clone says how to install."""

import contextlib
import shutil
import subprocess
import sys
import pathlib

import pytest
import torch
from torch import nn

import mega_deap
from mega_deap.adapters import Adapter, LayoutEntry, TorchAdapter, adapter_for, register_adapter, unregister_adapter

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Linear:
    """A 'framework' that is not torch.nn: a linear classifier holding one weight matrix."""

    def __init__(self, W):
        self.W = W


class LinearAdapter(Adapter):
    def __init__(self, model, *, buffers=True):
        self.model = model
        self.layout = (LayoutEntry("W", tuple(model.W.shape), 0, model.W.numel(), "parameter"),)
        self.dim, self.dtype, self.device = model.W.numel(), model.W.dtype, model.W.device

    @classmethod
    def from_parents(cls, models, *, device=None, buffers=True):
        adapter = cls(models[0])
        return adapter, adapter.genomes(models)

    def check(self, model):
        if tuple(model.W.shape) != self.layout[0].shape:
            raise ValueError(f"W has shape {tuple(model.W.shape)}, expected {self.layout[0].shape}")

    def genome(self, model=None):
        return (model or self.model).W.reshape(-1).clone()

    def load(self, genome, model=None):
        model = model or self.model
        model.W = self._check_genome(genome).reshape(self.layout[0].shape).clone()
        return model

    def to_model(self, genome):
        return self.load(genome, Linear(self.model.W.clone()))

    def state_dict(self, genome):
        return {"W": self.tensors(genome)["W"].clone()}

    def forward(self, genome, x):
        return x @ self.tensors(genome)["W"].T

    def forward_batch(self, genomes, x):
        return torch.stack([self.forward(g, x) for g in genomes])

    def eval_mode(self):
        return contextlib.nullcontext(self.model)


@pytest.fixture
def registered():
    register_adapter(Linear, LinearAdapter)
    yield
    unregister_adapter(Linear)
    with pytest.raises(TypeError, match="no adapter is registered"):
        adapter_for(Linear(torch.zeros(2, 2)))


def test_adapter_for_picks_the_registered_type(digit_mlps):
    assert adapter_for(digit_mlps[0]) is TorchAdapter
    with pytest.raises(TypeError, match="no adapter is registered for .*Linear"):
        adapter_for(Linear(torch.zeros(2, 2)))


def test_a_new_framework_is_one_class_and_one_registration(registered, digits):
    """merge runs the whole preset on the toy framework, found through adapter_for."""
    X, y = digits["val"]
    g = torch.Generator().manual_seed(0)
    # two ridge-regression classifiers on different halves of the training split
    Xt, yt = digits["train"]
    onehot = nn.functional.one_hot(yt, 10).double()
    parents = []
    for half in (slice(0, 500), slice(500, 1000)):
        A = Xt[half].double()
        W = torch.linalg.solve(A.T @ A + 0.1 * torch.eye(64, dtype=torch.float64), A.T @ onehot[half]).T
        parents.append(Linear(W.float().contiguous() + 0.01 * torch.randn(10, 64, generator=g)))
    assert adapter_for(parents[0]) is LinearAdapter
    r = mega_deap.merge(parents, (X, y), popsize=6, ngen=2, seed=0, verbose=False, metric="accuracy")
    assert isinstance(r.model, Linear) and isinstance(r.adapter, LinearAdapter)
    acc = float((X @ r.model.W.T).argmax(1).eq(y).double().mean())
    assert acc == pytest.approx(r.fitness, abs=1e-12) and acc > 0.8


def test_every_adapter_implements_the_contract():
    assert issubclass(TorchAdapter, Adapter) and not TorchAdapter.__abstractmethods__
    from mega_deap.adapters.keras import KerasAdapter

    assert issubclass(KerasAdapter, Adapter) and not KerasAdapter.__abstractmethods__

    class Half(Adapter):  # a subclass that forgets a method cannot be built
        def genome(self, model=None):
            return None

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_uninstalled_clone_says_to_install(tmp_path):
    shutil.copytree(ROOT / "mega_deap", tmp_path / "mega_deap")
    proc = subprocess.run(
        [sys.executable, "-S", "-c", "import mega_deap"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "pip install -e ." in proc.stderr
