import copy

import pytest
import torch
from torch import nn

from mega_deap import TensorPopulation, mutSparseGaussian
from mega_deap.adapters import TorchAdapter

from conftest import SmallCNN


def cnn(seed=0):
    torch.manual_seed(seed)
    m = SmallCNN()
    # give the BatchNorm layers non-trivial statistics
    m.train()
    with torch.no_grad():
        m(torch.randn(16, 1, 8, 8))
    return m.eval()


def test_layout_covers_parameters_and_float_buffers():
    m = cnn()
    ad = TorchAdapter(m)
    names = [e.name for e in ad.layout]
    assert "bn1.running_mean" in names and "bn1.running_var" in names
    assert not any("num_batches_tracked" in n for n in names)
    n_params = sum(p.numel() for p in m.parameters())
    n_float_buffers = sum(b.numel() for n, b in m.named_buffers() if b.is_floating_point())
    assert ad.dim == n_params + n_float_buffers
    offsets = [e.offset for e in ad.layout]
    assert offsets == sorted(offsets) and ad.layout[-1].offset + ad.layout[-1].numel == ad.dim
    kinds = {e.name: e.kind for e in ad.layout}
    assert kinds["conv1.weight"] == "parameter" and kinds["bn2.running_var"] == "buffer"
    assert TorchAdapter(m, buffers=False).dim == n_params


def test_genome_round_trip_and_state_dict():
    a, b = cnn(0), cnn(1)
    ad = TorchAdapter(a)
    g = ad.genome(b)
    assert g.shape == (ad.dim,)
    m = ad.to_model(g)
    assert m is not a
    for (k, v), (k2, v2) in zip(b.state_dict().items(), m.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    sd = ad.state_dict(g)
    fresh = SmallCNN()
    fresh.load_state_dict(sd)
    x = torch.randn(4, 1, 8, 8)
    fresh.eval()
    torch.testing.assert_close(fresh(x), b(x))
    # load into an existing model, in place
    target = cnn(5)
    ad.load(g, target)
    assert torch.equal(target.conv2.weight, b.conv2.weight)
    assert torch.equal(ad.genome(target), g)


def test_functional_forward_reads_views():
    a, b = cnn(0), cnn(1)
    ad = TorchAdapter(a)
    pop = TensorPopulation(2, ad.dim, device="cpu")
    pop.buffer[0].copy_(ad.genome(b))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ad.forward(pop.buffer[0], x), b(x))
        views = ad.tensors(pop.buffer[0])
        assert views["conv1.weight"].data_ptr() == pop.buffer[0].data_ptr()  # no copy
        # the template's own weights were not touched
        assert torch.equal(ad.genome(), TorchAdapter(a).genome())


def test_vmap_forward_equals_loop():
    ad = TorchAdapter(cnn(0))
    G = torch.stack([ad.genome(cnn(s)) for s in range(3)])
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        batched = ad.forward_batch(G, x)
        looped = torch.stack([ad.forward(g, x) for g in G])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


def test_different_architecture_is_named():
    ad = TorchAdapter(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"'2.weight'.*\(2, 8\).*\(3, 8\)"):
        ad.genomes([ad.model, other])
    with pytest.raises(ValueError, match="model 1"):
        ad.genomes([ad.model, other])
    deeper = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="first unmatched: '3.weight'"):
        ad.genome(deeper)
    with pytest.raises(ValueError, match="dtype"):
        ad.genome(copy.deepcopy(ad.model).double())


def test_wrong_genome_length():
    ad = TorchAdapter(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"shape \(7,\).*expects \(8,\)"):
        ad.load(torch.zeros(7))


def test_running_var_stays_positive_after_mutation(classes):
    from deap import base

    m = cnn()
    ad = TorchAdapter(m)
    pop = TensorPopulation(1, ad.dim, device="cpu")
    (ind,) = pop.individuals(classes["tensor"], 1)
    ind.genome.copy_(ad.genome())
    tb = base.Toolbox()
    tb.register("mutate", mutSparseGaussian, mu=0.0, sigma=50.0, indpb=0.5)
    tb.decorate("mutate", ad.keep_valid())
    tb.mutate(ind)
    views = ad.tensors(ind)
    for name in ("bn1.running_var", "bn2.running_var"):
        assert (views[name] >= ad.var_floor).all()
    # undecorated, the same mutation makes negative variances: the decorator is what helps
    raw = ad.genome().clone()
    mutSparseGaussian(raw, mu=0.0, sigma=50.0, indpb=0.5, generator=torch.Generator().manual_seed(0))
    assert (ad.tensors(raw)["bn1.running_var"] < 0).any()
