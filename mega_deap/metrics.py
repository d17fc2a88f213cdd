"""The built-in metrics: what a genome's outputs on the validation data are worth.

A metric is an object with ``name``, ``worst`` (the value of a genome whose outputs hold a NaN),
``check(out, y)`` (refuses labels or outputs it cannot score, before any work), ``partial(out, y)`` (per-genome
sums over a data batch, from the outputs ``(k, B, ...)`` of ``k`` genomes) and ``finish(total, n)`` (each
genome's value from its sums over all ``n`` examples). Sums make a metric exact over any batch size and any
cut of the genomes between ranks. A metric of several values (``nobj`` > 1) returns ``(k, nobj)`` from
``finish``, with DEAP's ``weights`` telling which to maximise; a function of a genome's whole output (a
non-decomposable metric) is :func:`mega_deap.objectives.on_outputs`.
"""

import copy
import math
from typing import Optional

import torch

from .checks import SettingError

__all__ = [
    "Accuracy",
    "AccuracyLogLik",
    "NegLogLoss",
    "NegLogLossTempered",
    "NegMSE",
    "NegMAE",
    "METRICS",
    "get_metric",
    "GroupAccuracy",
    "correct",
    "log_likelihood",
]


def correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many argmax predictions are right: ``out`` ``(..., B, C)`` logits, ``y`` ``(B,)`` class labels ->
    ``(...)`` float64 counts. The one accuracy computation of the package (fitness, reports, studies)."""
    return (out.argmax(-1) == y).sum(-1).to(torch.float64)  # integer counts, exact


def log_likelihood(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The summed log-probability of the true labels: ``out`` ``(k, B, C)`` logits, ``y`` ``(B,)`` class
    labels -> ``(k,)`` float64 (the log-softmax in float64)."""
    k, b, c = out.shape
    logp = torch.log_softmax(out.to(torch.float64), -1)
    return logp.gather(-1, y.view(1, b, 1).expand(k, b, 1)).sum((1, 2))


class Accuracy:
    """Fraction of correct argmax predictions. Worst value: 0."""

    name, worst = "accuracy", 0.0

    def check(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """``out``: one model's output on a few examples, ``(b, C)``; ``y``: all labels, ``(n,)``."""
        if y.dim() == 2 and y.shape[1] == 1:
            raise SettingError(
                f"validation labels have shape {tuple(y.shape)}: {self.name} needs class indices of "
                f"shape (n,) (y.squeeze(1))"
            )
        if y.dim() == 2:
            raise SettingError(
                f"validation labels have shape {tuple(y.shape)}, one-hot or scores: {self.name} needs "
                f"class indices of shape (n,) (y.argmax(1))"
            )
        if y.dim() != 1:
            raise SettingError(f"validation labels must have shape (n,), got {tuple(y.shape)}")
        if y.dtype == torch.bool or y.dtype.is_floating_point or y.dtype.is_complex:
            raise SettingError(
                f"{self.name} needs integer class labels, got dtype {y.dtype} (for regression "
                "targets use metric='neg_mse' or 'neg_mae')"
            )
        if out.dim() != 2:
            raise SettingError(
                f"{self.name} needs logits of shape (batch, classes) from the model, got {tuple(out.shape)}"
            )
        classes = out.shape[-1]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            raise SettingError(
                f"validation labels span [{lo}, {hi}] but the model outputs {classes} classes "
                f"(labels must lie in [0, {classes - 1}])"
            )

    def partial(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-genome sums over a data batch; ``out`` is ``(k, B, C)``."""
        return correct(out, y)

    def finish(self, total: torch.Tensor, n: int) -> torch.Tensor:
        """The metric of each genome from its sums over all ``n`` examples, ``(k,)``."""
        return total / n


class NegLogLoss(Accuracy):
    """Negative mean cross-entropy of the logits against class labels (maximise it). Worst value: -inf.
    Smoother than accuracy: it tells apart candidates that get the same examples right."""

    name, worst = "neg_log_loss", -math.inf

    def partial(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return log_likelihood(out, y)


class AccuracyLogLik(Accuracy):
    """Accuracy, ties broken by the log-likelihood: DEAP's lexicographic order of ``(accuracy,
    log-likelihood)`` as one number, ``(correct + p) / n``, where ``p = exp(mean log-likelihood)`` (the
    geometric mean of the probabilities given to the true labels) lies in ``[0, 1]``. The tie-break is worth
    at most one example, so a candidate with more examples right is never below one with fewer, however
    confident; among candidates with as many right, the better log-likelihood wins. Worst value: 0.

    Why not the log-likelihood alone: networks trained to fit their data are over-confident, so their
    log-likelihood is poor however accurate they are, and a less confident, less accurate blend beats them.
    """

    name, worst = "accuracy_ll", 0.0

    def partial(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(k, 2)``: per genome, the examples right and the summed log-likelihood of the true labels."""
        return torch.stack([correct(out, y), log_likelihood(out, y)], -1)

    def finish(self, total: torch.Tensor, n: int) -> torch.Tensor:
        """``(right + exp(mean log-likelihood)) / n`` per genome, from ``(k, 2)`` sums."""
        return (total[..., 0] + torch.exp(total[..., 1] / n)) / n


class NegLogLossTempered(Accuracy):
    """The log-likelihood after the best temperature for each candidate: ``max_T`` of the mean
    log-likelihood of ``softmax(out / T)``, over ``T`` in :attr:`TEMPERATURES` (a log-spaced grid from 1/8 to
    16). Invariant, to the grid's resolution, to how confident a candidate is. Worst value: -inf."""

    name, worst = "neg_log_loss_tempered", -math.inf
    TEMPERATURES = tuple(2.0 ** (e / 2) for e in range(-6, 9))

    def partial(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(k, T)``: per genome and temperature, the summed log-likelihood of the true labels."""
        k, b, c = out.shape
        out = out.to(torch.float64)
        idx = y.view(1, b, 1).expand(k, b, 1)
        return torch.stack([torch.log_softmax(out / t, -1).gather(-1, idx).sum((1, 2)) for t in self.TEMPERATURES], -1)

    def finish(self, total: torch.Tensor, n: int) -> torch.Tensor:
        return total.max(-1).values / n


class NegMSE:
    """Negative mean squared error (maximise it). Worst value: -inf."""

    name, worst = "neg_mse", -math.inf

    def check(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """``out``: one model's output on a few examples, ``(b, ...)``; ``y``: all targets."""
        if out[0].numel() != y[0].numel():
            raise SettingError(
                f"the model outputs {tuple(out.shape[1:])} per example but the targets are "
                f"{tuple(y.shape[1:])} per example"
            )

    def _err(self, out, y):
        return out.reshape(out.shape[0], y.shape[0], -1).to(torch.float64) - y.reshape(y.shape[0], -1).to(torch.float64)

    def partial(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-genome sums of the squared errors (averaged over each example's outputs), ``(k,)``."""
        e = self._err(out, y)
        return e.pow(2).mean(-1).sum(-1)

    def finish(self, total: torch.Tensor, n: int) -> torch.Tensor:
        """Minus the mean error per genome, ``(k,)``."""
        return -total / n


class NegMAE(NegMSE):
    """Negative mean absolute error (maximise it). Worst value: -inf."""

    name = "neg_mae"

    def partial(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-genome sums of the absolute errors (averaged over each example's outputs), ``(k,)``."""
        return self._err(out, y).abs().mean(-1).sum(-1)


METRICS = {
    "accuracy_ll": AccuracyLogLik,
    "accuracy": Accuracy,
    "neg_log_loss": NegLogLoss,
    "neg_log_loss_tempered": NegLogLossTempered,
    "neg_mse": NegMSE,
    "neg_mae": NegMAE,
}


def get_metric(name: str):
    """A new metric object by its name in :data:`METRICS` (the one registry that ``merge``, the command
    line and the fitness functions share)."""
    if name not in METRICS:
        raise SettingError(f"metric must be one of {sorted(METRICS)}, got {name!r}")
    return METRICS[name]()


def _span(classes: list) -> str:
    """``[0, 1, 2, 3, 7]`` as ``"0-3, 7"``."""
    out, run = [], [classes[0]]
    for c in classes[1:]:
        if c == run[-1] + 1:
            run.append(c)
        else:
            out.append(run)
            run = [c]
    out.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in out)


class GroupAccuracy(Accuracy):
    """The accuracy on each group of classes, one value per group: the objectives of a Pareto merge of
    parents that each know part of the classes. ``groups``: lists of class labels, disjoint; an example
    counts for the group of its label (examples of classes in no group count for none).

    Worst value per group: 0. ``weights``: DEAP's fitness weights, all 1 (maximise every group)."""

    name, worst = "group_accuracy", 0.0

    def __init__(self, groups: list) -> None:
        groups = [[int(c) for c in g] for g in groups]
        if len(groups) < 1 or any(len(g) == 0 for g in groups):
            raise SettingError(f"groups must be one or more non-empty lists of class labels, got {groups!r}")
        seen: dict = {}
        for i, g in enumerate(groups):
            for c in g:
                if c < 0:
                    raise SettingError(f"group {i} holds class {c}: class labels are non-negative")
                if c in seen:
                    raise SettingError(f"class {c} is in group {seen[c]} and in group {i}: groups must be disjoint")
                seen[c] = i
        self.groups = groups
        self.names = [f"accuracy on classes {_span(g)}" for g in groups]
        self.nobj = len(groups)
        self.weights = (1.0,) * self.nobj
        self.sizes: Optional[torch.Tensor] = None
        self._table = torch.full((max(seen) + 1,), self.nobj, dtype=torch.long)  # class -> group index
        for i, g in enumerate(groups):
            self._table[g] = i

    def _group_ids(self, y: torch.Tensor) -> torch.Tensor:
        """Each label's group index, ``(B,)``; ``nobj`` for a class in no group. One lookup in a table of
        classes, moved to the labels' device once (:meth:`bind` keeps it there)."""
        if self._table.device != y.device:
            self._table = self._table.to(y.device)
        last = self._table.shape[0] - 1
        return torch.where(y <= last, self._table[y.clamp(0, last)], self.nobj)

    def _counts(self, gid: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` ``(k, B)`` summed per group, ``(k, m)`` float64."""
        out = torch.zeros(values.shape[0], self.nobj + 1, dtype=torch.float64, device=values.device)
        return out.index_add_(1, gid, values.to(torch.float64))[:, : self.nobj]

    def check(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """As :meth:`Accuracy.check`, and every group within the model's classes and present in ``y``."""
        super().check(out, y)
        classes = out.shape[-1]
        for i, g in enumerate(self.groups):
            if max(g) >= classes:
                raise SettingError(f"group {i} holds class {max(g)} but the model outputs {classes} classes")
        sizes = torch.bincount(self._group_ids(y), minlength=self.nobj + 1)[: self.nobj]
        for i, size in enumerate(sizes.tolist()):
            if size == 0:
                raise SettingError(f"group {i} ({self.groups[i]}) has no example in the validation labels")

    def bind(self, y: torch.Tensor) -> "GroupAccuracy":
        """A copy that knows each group's number of examples in ``y`` (the evaluator's labels)."""
        bound = copy.copy(self)
        bound.sizes = torch.bincount(bound._group_ids(y), minlength=self.nobj + 1)[: self.nobj].to(torch.float64)
        return bound

    def partial(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(k, m)``: per genome and group, the examples right."""
        return self._counts(self._group_ids(y), out.argmax(-1) == y)

    def finish(self, total: torch.Tensor, n: int) -> torch.Tensor:
        """Each group's accuracy, ``(k, m)``."""
        if self.sizes is None:
            raise SettingError("GroupAccuracy has no group sizes: an Evaluator binds it to its labels")
        return total / self.sizes.to(total.device)
