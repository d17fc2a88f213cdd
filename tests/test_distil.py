"""Distillation after a merge (mega_deap.align.distil): the loss against a float64 KL written out, the student
moving towards the parents' ensemble on real data (class-biased digits parents), reproducibility, and
refusals before any work."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import mega_deap
from mega_deap.align import DEFAULT_DISTIL, distil, distillation_loss
from mega_deap.experiments import heldout_study as study
from mega_deap.experiments.models import MLP
from mega_deap.experiments.report import ensemble_accuracy
from mega_deap.experiments.train import model_accuracy


@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.5])
def test_loss_is_the_kl_to_the_teacher_times_t_squared(temperature):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(7, 5)) * 3, rng.normal(size=(7, 5)) * 3

    def softmax(z):
        z = z / temperature
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = softmax(t), softmax(s)
    want = (p * (np.log(p) - np.log(q))).sum(1).mean() * temperature**2
    got = distillation_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), temperature)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(distillation_loss(torch.tensor(t), torch.tensor(t), temperature)) == pytest.approx(0.0, abs=1e-12)


@pytest.fixture(scope="module")
def biased():
    """The development task ``digits-cnn-noise``'s class-biased parents of seed 0 (CNNs without BatchNorm
    trained on noisy labels of class-biased halves of digits) and its splits."""
    task = study.TASKS["digits-cnn-noise"]
    splits = study.task_splits(task, 0)
    parents, _ = study.train_parents(task, splits, "different-data", 0)
    return parents, splits


def _agreement(model, teachers, X):
    with torch.no_grad():
        return float((model(X).argmax(1) == torch.stack([t(X) for t in teachers]).mean(0).argmax(1)).float().mean())


def test_the_student_moves_towards_the_ensemble_on_inputs_it_never_saw(biased):
    """Distilled on the validation inputs alone (no labels), a parent agrees with the parents' ensemble on the
    test split far more often than before and gains test accuracy; the ensemble is far above either parent."""
    parents, splits = biased
    Xv, (Xt, yt) = splits.val[0], splits.test
    ens = ensemble_accuracy(parents, Xt, yt)
    start = max(parents, key=lambda p: model_accuracy(p, Xt, yt))
    assert ens > model_accuracy(start, Xt, yt) + 0.15  # the gap there is to close
    student = distil(start, parents, Xv, seed=0)
    assert _agreement(student, parents, Xt) > _agreement(start, parents, Xt) + 0.1
    assert model_accuracy(student, Xt, yt) > model_accuracy(start, Xt, yt) + 0.1
    assert not student.training and student is not start


def test_after_a_merge_the_distillation_closes_more_of_the_gap_than_the_merge(biased):
    parents, splits = biased
    merged = mega_deap.merge(parents, splits.val, popsize=8, ngen=3, seed=0, progress=False).model
    student = distil(merged, parents, splits.val, seed=0)  # (X, y): the labels are not read
    X, y = splits.test
    assert model_accuracy(student, X, y) > model_accuracy(merged, X, y) + 0.05


def test_same_seed_same_bits_and_nothing_else_touched(biased):
    parents, splits = biased
    before = [copy.deepcopy(p.state_dict()) for p in parents]
    parents[1].train()  # a teacher in train mode is read in eval mode and left in train mode
    modes = [p.training for p in parents]
    X = splits.val[0].clone()
    rng = torch.get_rng_state()
    a = distil(parents[0], parents, X, epochs=3, seed=4)
    b = distil(parents[0], parents, X, epochs=3, seed=4)
    c = distil(parents[0], parents, X, epochs=3, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is its own
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    for p, s in zip(parents, before):
        assert all(torch.equal(v, s[k]) for k, v in p.state_dict().items())
    assert [p.training for p in parents] == modes
    parents[1].eval()
    assert torch.equal(X, splits.val[0])
    # zero epochs: an equal copy
    z = distil(parents[0], parents, X, epochs=0)
    assert all(torch.equal(v, parents[0].state_dict()[k]) for k, v in z.state_dict().items())


def test_dropout_is_seeded_and_batchnorm_follows_the_new_weights():
    """An MLP with BatchNorm and dropout: its statistics change with the weights (train mode), a last batch
    of one input (which BatchNorm1d cannot train on) is skipped rather than failing, and the seed fixes the
    dropout's draws."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
    teacher = MLP(64, 10).eval()
    X = torch.randn(65, 64)  # 64 + 1: a last batch of one
    bn = net[1]
    mean = bn.running_mean.clone()
    a = distil(net, [teacher], X, epochs=2, seed=1)
    torch.manual_seed(123)  # another global stream: the seed alone decides the dropout's draws
    b = distil(net, [teacher], X, epochs=2, seed=1)
    c = distil(net, [teacher], X, epochs=2, seed=2)
    assert not torch.equal(a[1].running_mean, mean)
    assert torch.equal(bn.running_mean, mean)  # the model given is left as it was
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a[0].weight, c[0].weight)


def test_defaults_are_the_named_settings(biased):
    parents, splits = biased
    a = distil(parents[0], parents, splits.val[0], epochs=2)
    b = distil(parents[0], parents, splits.val[0], **{**DEFAULT_DISTIL, "epochs": 2})
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(teachers="x"), "teachers must be a non-empty list"),
        (dict(teachers=[]), "teachers must be a non-empty list"),
        (dict(teachers=[1]), "teachers[0] must be a torch.nn.Module"),
        (dict(model=3), "model must be a torch.nn.Module"),
        (dict(epochs=-1), "epochs must be >= 0"),
        (dict(epochs=2.0), "epochs must be an integer"),
        (dict(lr=0), "lr must be a finite number > 0"),
        (dict(temperature="hot"), "temperature must be a finite number > 0"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(inputs=torch.zeros(5, 64, dtype=torch.long)), "inputs inputs must be floating point"),
        (dict(inputs=3), "inputs must be inputs"),
        (dict(teachers=[MLP(64, 10), MLP(64, 3)]), "outputs of shape (10,) per input and teachers[1] (3,)"),
    ],
)
def test_bad_input_is_named_before_any_work(kwargs, needle):
    model = MLP(64, 10)
    before = copy.deepcopy(model.state_dict())
    args = dict(model=model, teachers=[MLP(64, 10)], inputs=torch.randn(10, 64))
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as err:
        distil(args.pop("model"), args.pop("teachers"), args.pop("inputs"), **args)
    assert needle in str(err.value)
    assert isinstance(err.value, (mega_deap.checks.SettingError, mega_deap.checks.SettingTypeError))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_ensemble_is_the_parents_logits_averaged_and_their_modes_are_kept(biased):
    """ensemble_logits against a plain loop in float64; a teacher in train mode is read in eval mode and left in
    train mode; ensemble_accuracy scores those logits."""
    from mega_deap.align import ensemble_logits
    from mega_deap.experiments.report import ensemble_accuracy

    parents, splits = biased
    X, y = splits.test
    parents[0].train()
    got = ensemble_logits(parents, X, batch_size=7)
    assert parents[0].training and not parents[1].training
    parents[0].eval()
    with torch.no_grad():
        want = sum(p.double()(X.double()) for p in copy.deepcopy(parents)) / len(parents)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert ensemble_accuracy(parents, X, y) == float((want.argmax(1) == y).double().mean())


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_positive_refuses_what_is_not_a_finite_number_above_zero(value):
    from mega_deap.checks import SettingError, positive

    with pytest.raises(SettingError, match="x must be a finite number > 0"):
        positive("x", value)
    assert positive("x", 0.5) == 0.5 and positive("x", 3) == 3.0
