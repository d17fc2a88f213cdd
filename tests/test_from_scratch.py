"""Evolution from scratch: the initialisers, and the CartPole rollout against one environment per episode."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import mega_deap
from mega_deap import TensorPopulation, initModel, initNoise
from mega_deap.adapters import TorchAdapter
from mega_deap.checks import SettingError, SettingTypeError

from conftest import load_script


def mlp():
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))


def test_init_model_is_the_models_own_initialisation(classes):
    torch.manual_seed(0)
    ad = TorchAdapter(mlp())
    before = ad.genome().clone()
    pop = TensorPopulation(5, ad.dim, device="cpu")
    inds = pop.individuals(classes["tensor"])
    initModel(inds, ad, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ad.genome(), before)  # the template is left as it is
    # the reference: a fresh model of each drawn seed, built the plain way
    g = torch.Generator().manual_seed(7)
    for ind in inds:
        torch.manual_seed(int(torch.randint(2**62, (), generator=g)))
        ref = mlp()
        assert torch.equal(ind.genome, ad.genome(ref))
    # PyTorch's default bounds: |w| <= 1/sqrt(fan_in) for Linear weights and biases
    for ind in inds:
        t = ad.tensors(ind.genome)
        assert t["0.weight"].abs().max() <= 1 / math.sqrt(6) and t["2.weight"].abs().max() <= 1 / math.sqrt(32)
    assert len({tuple(ind.genome[:4].tolist()) for ind in inds}) == 5
    # without a generator: torch's global generator, so one seed fixes the population
    again = [
        pop2.individuals(classes["tensor"]) for pop2 in [TensorPopulation(3, ad.dim, device="cpu") for _ in range(2)]
    ]
    for group in again:
        mega_deap.seed(11)
        initModel(group, ad)
    assert all(torch.equal(a.genome, b.genome) for a, b in zip(*again))
    with pytest.raises(SettingTypeError, match="TorchAdapter"):
        initModel(inds, object())


def test_init_noise_against_a_plain_loop(classes):
    center = torch.linspace(-1, 1, 50)
    pop = TensorPopulation(4, 50, device="cpu")
    inds = pop.individuals(classes["tensor"])
    initNoise(inds, center, 0.3, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    for ind in inds:
        assert torch.equal(ind.genome, center + 0.3 * torch.randn(50, generator=g))
    big = TensorPopulation(400, 50, device="cpu").individuals(classes["tensor"])
    initNoise(big, center, 0.3, generator=torch.Generator().manual_seed(3))
    stack = torch.stack([i.genome for i in big]).double() - center.double()
    assert abs(float(stack.mean())) < 0.01 and abs(float(stack.std()) - 0.3) < 0.01
    with pytest.raises(SettingError, match="sigma"):
        initNoise(inds, center, -1.0)


gymnasium = pytest.importorskip("gymnasium")


def single_env_returns(model, episodes, seed, k_index, k):
    """The plain reference: one gymnasium environment per episode, the model on one observation per step;
    sub-environment i of a "sync" vector environment reset with ``seed`` is seeded ``seed + i``."""
    out = []
    for e in range(episodes):
        env = gymnasium.make("CartPole-v1")
        obs, _ = env.reset(seed=seed + k_index * episodes + e)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                a = int(model(torch.as_tensor(obs, dtype=torch.float32)).argmax())
            obs, r, term, trunc, _ = env.step(a)
            total += r
            done = term or trunc
        out.append(total)
    return float(np.mean(out))


def test_vectorised_rollout_matches_one_env_per_episode():
    ne = load_script("neuroevolution")
    torch.manual_seed(0)
    ad = TorchAdapter(ne.policy_net(8))
    genomes = [ad.genome() * s for s in (0.5, 1.0, 3.0, -2.0)]  # different policies, some good, some not
    ev = mega_deap.ModelEvaluator(
        ad, mega_deap.on_model(lambda p: ne.rollout_returns(p, 3, seed=5, vectorization="sync"), batched=True)
    )
    got = ev.scores(genomes)
    assert ev._plan is not False  # one stacked forward per step
    for i, g in enumerate(genomes):
        assert got[i] == single_env_returns(ad.to_model(g), 3, 5, i, len(genomes))
    assert len(set(got)) > 1


def test_neuroevolution_example_solves_cartpole(tmp_path):
    report = load_script("neuroevolution").main(["--out", str(tmp_path), "--quiet", "--seed", "1"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["mean_return"] == report["mean_return"] >= 475 and saved["solved"]
    assert saved["test_episodes"] == 100
    assert (tmp_path / "returns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = load_script("neuroevolution").main(["--out", str(tmp_path / "again"), "--quiet", "--seed", "1"])
    assert again["curve"] == report["curve"]  # one seed fixes the run


def test_neuroevolution_resumes_from_its_checkpoint(tmp_path):
    ne = load_script("neuroevolution")
    whole = ne.main(["--out", str(tmp_path / "whole"), "--quiet", "--seed", "2"])
    assert whole["generations"] >= 2  # so that the interrupted run below stops before the end
    ckpt = str(tmp_path / "run.ckpt")
    part = ["--out", str(tmp_path / "part"), "--quiet", "--seed", "2", "--checkpoint", ckpt]
    ne.main(part + ["--ngen", "1"])  # interrupted: stops after generation 1
    resumed = ne.main(part)
    assert resumed["curve"] == whole["curve"] and resumed["mean_return"] == whole["mean_return"]
    with pytest.raises(SystemExit, match="written with sigma=0.1, this run has sigma=0.2"):
        ne.main(part + ["--sigma", "0.2"])
