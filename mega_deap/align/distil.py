"""Distillation after a merge: the merged network trained to give, on unlabelled inputs, the logits the
parents give together (their output ensemble), starting from the merged weights.

A merge of one architecture is one network; the parents' output ensemble is two. Where the parents learnt
different things (trained on class-biased data, say), no blend of their weights reaches the ensemble, but a
network that starts from the best blend and is trained towards the ensemble's outputs on inputs at hand
(the validation inputs, or calibration inputs; no labels are read) can close much of the gap."""

import copy
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import SettingError, SettingTypeError, integer, positive
from .repair import calibration_inputs

__all__ = ["distil", "distillation_loss", "ensemble_logits", "DEFAULT_DISTIL"]

# distil's epochs, learning rate (Adam) and temperature: the epochs and temperature chosen by the held-out study's
# rule (examples/heldout_study.py --rows distil) on the development and round-1 to round-7 held-out tables,
# among 20, 60 and 150 epochs at temperature 1 or 4 (docs/studies/alignment.md, "Distillation after the merge")
DEFAULT_DISTIL = {"epochs": 60, "lr": 1e-3, "temperature": 4.0}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), mean over the rows, times T^2 (Hinton et al.'s
    scaling, which keeps the gradient's size independent of T)."""
    log_q = F.log_softmax(student / temperature, dim=-1)
    p = F.softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean") * temperature**2


@torch.no_grad()
def ensemble_logits(teachers: Sequence[nn.Module], X: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The output ensemble: the ``teachers``' logits on ``X`` averaged, in batches, each teacher in eval mode
    (its mode is restored after). What :func:`distil` trains towards and
    ``mega_deap.experiments.ensemble_accuracy`` scores."""
    was = [t.training for t in teachers]
    for t in teachers:
        t.eval()
    try:
        return torch.cat(
            [torch.stack([t(X[i : i + batch_size]) for t in teachers]).mean(0) for i in range(0, len(X), batch_size)]
        )
    finally:
        for t, w in zip(teachers, was):
            t.train(w)


def distil(
    model: nn.Module,
    teachers: Sequence[nn.Module],
    inputs: Any,
    *,
    epochs: Optional[int] = None,
    lr: Optional[float] = None,
    temperature: Optional[float] = None,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` trained (Adam, ``epochs`` passes over ``inputs`` in seeded random batches) to give
    the logits the ``teachers`` give on average: :func:`distillation_loss` at ``temperature``.

    ``model`` and ``teachers`` are left as they were; ``inputs`` are a tensor ``(n, ...)``, ``(X, y)`` (the
    labels are not read) or batches of them, on the model's device. Unset settings take
    :data:`DEFAULT_DISTIL`. The student trains in train mode (BatchNorm statistics follow its new weights) and
    is returned in eval mode. One ``seed`` fixes the batches and any dropout: same seed, same bits on CPU.

    Typical use, after a merge (the merged model is the student, the parents the teachers)::

        result = merge(parents, (X_val, y_val))
        student = distil(result.model, parents, X_val)

    Validation accuracy after distillation on the validation inputs is biased upwards (the student was
    trained towards the ensemble on those very inputs, though never on their labels): judge it on a test
    split, or distil on calibration inputs that are not the validation set."""
    settings = {**DEFAULT_DISTIL}
    for name, value in (("epochs", epochs), ("lr", lr), ("temperature", temperature)):
        if value is not None:
            settings[name] = value
    if not isinstance(model, nn.Module):
        raise SettingTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(teachers, nn.Module) or not isinstance(teachers, (list, tuple)) or not teachers:
        raise SettingTypeError(f"teachers must be a non-empty list of torch.nn.Module, got {type(teachers).__name__}")
    for i, t in enumerate(teachers):
        if not isinstance(t, nn.Module):
            raise SettingTypeError(f"teachers[{i}] must be a torch.nn.Module, got {type(t).__name__}")
    epochs_ = integer("epochs", settings["epochs"], 0)
    lr_ = positive("lr", settings["lr"])
    temperature_ = positive("temperature", settings["temperature"])
    batch_size = integer("batch_size", batch_size, 1)
    seed = integer("seed", seed)
    X = calibration_inputs(inputs, name="inputs")
    student = copy.deepcopy(model)
    with torch.no_grad():  # one input through each, before any work: one architecture's logits
        out = student.eval()(X[:1])
        for i, t in enumerate(teachers):
            theirs = ensemble_logits([t], X[:1], 1)
            if theirs.shape[1:] != out.shape[1:]:
                raise SettingError(
                    f"the model gives outputs of shape {tuple(out.shape[1:])} per input and teachers[{i}] "
                    f"{tuple(theirs.shape[1:])}: distil needs one architecture's logits"
                )
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise SettingError("the model has no trainable parameters to distil into")
    target = ensemble_logits(teachers, X, batch_size)
    optimiser = torch.optim.Adam(params, lr=lr_)
    generator = torch.Generator().manual_seed(seed)
    devices = [X.device] if X.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout's draws: seeded here, the caller's stream untouched
        torch.manual_seed(seed)
        student.train()
        with torch.enable_grad():
            for _ in range(epochs_):
                order = torch.randperm(len(X), generator=generator).to(X.device)
                for i in range(0, len(X), batch_size):
                    batch = order[i : i + batch_size]
                    if len(batch) < 2:  # a last batch of one: BatchNorm cannot train on it
                        continue
                    loss = distillation_loss(student(X[batch]), target[batch], temperature_)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
    return student.eval()
