"""Faults in the parents and in the models: non-finite values, tied weights."""

import pytest
import torch
from torch import nn

import mega_deap
from mega_deap.adapters import TorchAdapter


class Masked(nn.Module):
    """Logits plus a buffer mask: class 9 is forbidden by -inf in every parent (like an attention mask)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        mask = torch.zeros(10)
        mask[9] = float("-inf")
        self.register_buffer("mask", mask)

    def forward(self, x):
        return self.fc(x) + self.mask


def trained(digits, seed):
    torch.manual_seed(seed)
    m = Masked()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    X, y = digits["train"]
    keep = y != 9
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(m.fc(X[keep]), y[keep]).backward()
        opt.step()
    return m.eval()


@pytest.mark.parametrize("breeding", ["batched", "per-individual"])
def test_shared_inf_buffers_are_kept_not_blended(digits, breeding):
    X, y = digits["val"]
    keep = y != 9
    parents = [trained(digits, 1), trained(digits, 2)]
    r = mega_deap.merge(
        parents, (X[keep], y[keep]), popsize=6, ngen=3, seed=0, verbose=False, breeding=breeding, metric="accuracy"
    )
    assert r.fitness > 0.8  # not a blind GA scoring NaN as 0
    assert r.model.mask[9] == float("-inf") and torch.isfinite(r.model.mask[:9]).all()  # kept where it was
    at = r.adapter.tensors(torch.arange(r.adapter.dim, dtype=torch.float32))["mask"][9].long()
    for ind in r.population:  # every genome: one -inf, nothing else
        assert ind.genome[at] == float("-inf") and int(torch.isinf(ind.genome).sum()) == 1


def test_nan_or_unshared_inf_in_a_parent_is_refused_naming_it(digits):
    X, y = digits["val"]
    a, b = trained(digits, 1), trained(digits, 2)
    with torch.no_grad():
        b.fc.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"model 1 has nan in tensor 'fc.weight' \(element 197\)"):
        mega_deap.merge([a, b], (X, y), popsize=4, ngen=1, verbose=False)
    c = trained(digits, 3)
    c.mask[2] = float("-inf")  # an inf the other parent does not have
    with pytest.raises(ValueError, match="model 1 has -inf in tensor 'mask'"):
        mega_deap.merge([a, c], (X, y), popsize=4, ngen=1, verbose=False)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 6, bias=False)
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight  # one tensor, two names

    def forward(self, x):
        return self.dec(torch.relu(self.enc(x)))


def test_state_dict_of_a_genome_with_tied_weights():
    torch.manual_seed(0)
    ad = TorchAdapter(Tied())
    assert [e.name for e in ad.layout] == ["enc.weight", "dec.bias"]
    genome = torch.randn(ad.dim)
    sd = ad.state_dict(genome)
    W = genome[:36].view(6, 6)
    assert torch.equal(sd["enc.weight"], W) and torch.equal(sd["dec.weight"], W)
    fresh = Tied()
    fresh.load_state_dict(sd)
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ad.forward(genome, x), rtol=0, atol=0)
