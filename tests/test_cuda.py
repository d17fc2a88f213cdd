"""The GPU tier (``pytest -m cuda``; ``bash benchmarks/gpu.sh`` runs it): every CUDA path against a CPU or
float64 reference. Skipped where no CUDA device is present, as on the CI machine."""

import copy

import pytest
import torch

import mega_deap
from mega_deap import Evaluator
from mega_deap.adapters import TorchAdapter
from mega_deap.align import CoefficientAdapter, activation_matching, cma_merge, repair_batchnorm, weight_matching
from mega_deap.align import zip_models
from mega_deap.evaluation import get_metric
from mega_deap.experiments import model_accuracy

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(scope="module")
def gpu_mlps(digit_mlps):
    return [copy.deepcopy(m).to("cuda") for m in digit_mlps]  # copies: the fixture's models stay on the CPU


@pytest.fixture(scope="module")
def gpu_val(digits):
    X, y = digits["val"]
    return X.to("cuda"), y.to("cuda")


@pytest.mark.parametrize("strategy", ["stacked", "vmap", "measure"])
def test_every_strategy_gives_the_loops_scores_in_float64(digit_mlps, digits, strategy):
    model = copy.deepcopy(digit_mlps[0]).to("cuda", torch.float64)
    ad = TorchAdapter(model)
    X, y = digits["val"]
    genomes = [ad.genome() * s for s in (1.0, 0.9, 1.1, 0.8, 1.2)]
    loop = Evaluator(ad, X, y, get_metric("neg_log_loss"), strategy="loop").scores(genomes)
    other = Evaluator(ad, X, y, get_metric("neg_log_loss"), strategy=strategy).scores(genomes)
    assert other == pytest.approx(loop, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("strategy", ["loop", "stacked", "vmap"])
def test_autocast_runs_in_bfloat16(gpu_mlps, gpu_val, strategy):
    ad = TorchAdapter(gpu_mlps[0])
    genomes = [ad.genome(), ad.genome() * 0.9]
    full = Evaluator(ad, *gpu_val, get_metric("neg_log_loss"), strategy=strategy).scores(genomes)
    half = Evaluator(ad, *gpu_val, get_metric("neg_log_loss"), strategy=strategy, autocast=torch.bfloat16)
    got = half.scores(genomes)
    assert got != full and got == pytest.approx(full, rel=0.05, abs=0.05)


@pytest.mark.parametrize("granularity", ["tensor", "layer", "unit"])
def test_coefficient_genomes_on_the_gpu(gpu_mlps, gpu_val, granularity):
    adapter, parents = CoefficientAdapter.from_parents(gpu_mlps, device="cuda", granularity=granularity)
    for j, m in enumerate(gpu_mlps):
        torch.testing.assert_close(adapter.decode(parents[j]), adapter.inner.genome(m))
        torch.testing.assert_close(adapter.decode(adapter.genome(m)), adapter.inner.genome(m), rtol=1e-4, atol=1e-5)
    r = mega_deap.merge(
        gpu_mlps,
        gpu_val,
        popsize=6,
        ngen=2,
        progress=False,
        genome="coefficients",
        granularity=granularity,
        device="cuda",
    )
    assert model_accuracy(r.model, *gpu_val) >= max(model_accuracy(m, *gpu_val) for m in gpu_mlps)


def test_alignment_and_batchnorm_repair_on_the_gpu(gpu_mlps, gpu_val, digits):
    from conftest import SmallCNN

    X, y = gpu_val
    for aligned in (weight_matching(gpu_mlps), activation_matching(gpu_mlps, X)):
        with torch.no_grad():
            torch.testing.assert_close(aligned[1](X), gpu_mlps[1](X), rtol=1e-4, atol=1e-4)
    torch.manual_seed(0)
    cnn = SmallCNN().to("cuda").train()
    images = digits["train"][0][:256].reshape(-1, 1, 8, 8).to("cuda")
    repair_batchnorm(cnn, images)
    reference = SmallCNN().to("cuda")
    reference.load_state_dict(cnn.state_dict())
    repair_batchnorm(reference.cpu(), images.cpu())
    torch.testing.assert_close(cnn.bn1.running_var.cpu(), reference.bn1.running_var, rtol=1e-4, atol=1e-5)
    r = cma_merge(gpu_mlps, gpu_val, ngen=2, lambda_=4, device="cuda")
    assert model_accuracy(r.model, *gpu_val) >= max(model_accuracy(m, *gpu_val) for m in gpu_mlps)


def test_zipping_on_the_gpu(gpu_mlps, gpu_val):
    """The zip on CUDA: a model zipped with a permuted copy of itself computes what it did, on the device;
    merge(align="zip") keeps the guarantee."""
    from conftest import permuted_copy

    X, _ = gpu_val
    a = gpu_mlps[0]
    z = zip_models([a, permuted_copy(a, seed=1)], X)
    assert next(z.parameters()).is_cuda
    with torch.no_grad():
        torch.testing.assert_close(z(X), a(X), rtol=1e-4, atol=1e-4)
    r = mega_deap.merge(gpu_mlps, gpu_val, popsize=6, ngen=2, progress=False, align="zip", device="cuda")
    assert r.align == "zip"
    assert model_accuracy(r.model, *gpu_val) >= max(model_accuracy(m, *gpu_val) for m in gpu_mlps)


def test_checkpoint_and_resume_on_one_gpu_bit_for_bit(gpu_mlps, gpu_val, tmp_path):
    kw = dict(popsize=6, seed=3, progress=False, device="cuda")
    whole = mega_deap.merge(gpu_mlps, gpu_val, ngen=4, **kw)
    path = str(tmp_path / "run.ckpt")
    mega_deap.merge(gpu_mlps, gpu_val, ngen=2, checkpoint=path, **kw)
    resumed = mega_deap.merge(gpu_mlps, gpu_val, ngen=4, checkpoint=path, **kw)
    assert torch.equal(resumed.genome, whole.genome)
    assert [dict(r) for r in resumed.logbook] == [dict(r) for r in whole.logbook]


@pytest.mark.skipif(
    torch.cuda.device_count() < 2 or not torch.distributed.is_nccl_available(), reason="needs two GPUs and NCCL"
)
def test_two_nccl_ranks_resume_bit_for_bit(tmp_path):
    """Each rank restores the CUDA generator of its own device from rank 0's checkpoint: a run interrupted
    after generation 2 and resumed on two GPUs gives the uninterrupted run's result."""
    import os
    import pathlib
    import subprocess
    import sys

    from safetensors.torch import load_file

    child = pathlib.Path(__file__).with_name("distributed_child.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        cmd + [str(child), "nccl", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = load_file(tmp_path / "nccl.safetensors")
    assert torch.equal(got["whole"], got["resumed"])
