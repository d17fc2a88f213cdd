"""Choosing apart from reporting: merge defaults chosen on development tasks, reported on held-out ones.

Every task trains its parents until they fit their training data (over-confident, as trained networks
are): on a subset of the training split, or with noisy labels, for many epochs. Each task has two
settings, as the align study: ``same-data`` (two seeds, one training set) and ``different-data`` (each
parent on a class-biased part, :func:`~mega_deap.experiments.align_study.biased_parts`).

Eight rounds of choosing. Round 1: the tasks in :data:`DEVELOPMENT` chose the fitness metric and the
matching (:func:`choose_metric`, :func:`choose_matching`); :data:`HELD_OUT_1` reported. Round 2: those
six tasks, all seen by then, chose the significance gate's level (:func:`choose_gate`); :data:`HELD_OUT_2`
reported. Round 3: those nine tasks chose ``merge``'s default alignment (:func:`choose_alignment`);
:data:`HELD_OUT_3` reported. Round 4: those twelve chose whether the parents' zip is seeded
(:func:`choose_zip`); :data:`HELD_OUT_4` reported. Round 5: those fifteen chose where the gate's test
reads its data (:func:`choose_gate_holdout`); :data:`HELD_OUT_5` reported. Round 6: those eighteen chose
between the gate's test on the whole validation set and its test by cross-fitting
(:func:`choose_gate_crossfit`); :data:`HELD_OUT_6` reported. Round 7: those twenty-one chose the matching
that ``align=True`` names, for the three methods that align with it by default (``merge(align=True)``, the
coefficient GA and ``cma_merge``; :func:`choose_default_matching`); :data:`HELD_OUT_7` reported. Round 8:
those twenty-four chose whether ``align="auto"`` aligns a coefficient genome
(:func:`choose_coefficient_alignment`); the tasks in :data:`HELD_OUT`, new in round 8 and not run before
the choice, only report. Fitness and every choice inside a merge see the validation split alone; the test
split reports.
"""

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from mega_deap import merge
from mega_deap.align import batchnorm_layers, cma_merge, distil
from mega_deap.gate import paired_test_models
from .align_study import SETTINGS, biased_parts, gap_closed
from .data import Splits, digits_splits, split_train_val
from .models import MLP, SmallCNN
from .report import ensemble_accuracy
from .train import model_accuracy, train_model

__all__ = [
    "Task",
    "DEVELOPMENT",
    "HELD_OUT_1",
    "HELD_OUT_2",
    "HELD_OUT_3",
    "HELD_OUT_4",
    "HELD_OUT_5",
    "HELD_OUT_6",
    "HELD_OUT_7",
    "HELD_OUT",
    "ROLES",
    "ROLE_ORDER",
    "ROUNDS",
    "CANDIDATE_GATES",
    "CANDIDATE_ALIGNMENTS",
    "TASKS",
    "CANDIDATE_METRICS",
    "CANDIDATE_MATCHINGS",
    "METHODS",
    "task_splits",
    "train_parents",
    "run_task",
    "summarize",
    "choose",
    "choose_metric",
    "choose_matching",
    "choose_gate",
    "choose_alignment",
    "choose_zip",
    "ZIP",
    "CANDIDATE_ZIPS",
    "GATE_HOLDOUT",
    "HELD_GATED",
    "held_gated",
    "choose_gate_holdout",
    "CROSSFIT_LEVEL",
    "crossfit_gated",
    "choose_gate_crossfit",
    "coefficient_row",
    "cma_row",
    "choose_default_matching",
    "CANDIDATE_COEFFICIENT_ALIGNMENTS",
    "choose_coefficient_alignment",
]

CANDIDATE_METRICS = ("accuracy_ll", "accuracy", "neg_log_loss", "neg_log_loss_tempered")
# the fitnesses whose order is accuracy first: with the parents among the candidates and elitism, the only
# ones under which a merge is never less accurate than its best parent on validation (a default must be)
GUARANTEED_METRICS = ("accuracy_ll", "accuracy")
CANDIDATE_MATCHINGS = ("weights", "activations")
# the significance gate's candidate levels (mega_deap.gate); None: no gate
CANDIDATE_GATES = (None, 0.01, 0.05, 0.2)
# round 3: merge's default alignment (None: none, the paper's), each judged as merge runs it by default
CANDIDATE_ALIGNMENTS = (None, *CANDIDATE_MATCHINGS)
# round 4: round 3's choice, or the same with the parents' zip (ZipIt!) in the first population
ZIP = "merge(align='zip')"
CANDIDATE_ZIPS = ("activations", "zip")
# round 5: where the gate's test reads its data. Round 4's merges gate on the whole validation set, the
# examples the search selected on; the candidate holds GATE_HOLDOUT of it out of the fitness for the test
# alone (merge(gate_holdout=...)), at round 2's level. The fraction was written down with the candidate,
# before round 5's tasks ran, and is not tuned.
GATE_HOLDOUT = 0.3
HELD_GATE_LEVEL = 0.2
# the merges each is judged on: merge's default methods (cma_merge, no merge, keeps its gate as it was)
HELD_GATED = (
    "merge, accuracy",
    *(f"merge(align={m!r})" for m in CANDIDATE_MATCHINGS),
    ZIP,
    "coefficient GA, aligned",
)


def held_gated(method: str) -> str:
    """The row name of ``method`` run with the gate's test on :data:`GATE_HOLDOUT` of the validation set held
    out of its fitness."""
    return f"{method}, gate on {100 * GATE_HOLDOUT:.0f} % held out"


# round 6: the gate's test by cross-fitting (merge(gate_holdout="crossfit"): the search reads every example,
# and runs again on each half to test each half's merge on the other), at round 2's level, judged on the
# merge methods of HELD_GATED at once. The level was written down with the candidate, before round 6's tasks
# ran, and is not tuned.
CROSSFIT_LEVEL = 0.2


def crossfit_gated(method: str) -> str:
    """The row name of ``method`` run with the gate's test by cross-fitting."""
    return f"{method}, gate cross-fitted"


# round 7: the matching align=True names (DEFAULT_MATCHING, "weights" since round 1, which read the development
# tasks alone and merge(align=...) alone), judged on the three methods that align with it by default at once:
# merge(align=True), the coefficient GA and cma_merge, each behind the gate at its default level. Their rows
# with weight matching are the study's rows of round 1 on ("coefficient GA, aligned", "cma_merge").


def coefficient_row(matching: Optional[str]) -> str:
    """The row name of the coefficient GA (``merge(genome="coefficients")``) aligned by ``matching`` (``None``:
    not aligned)."""
    if matching is None:
        return "coefficient GA, unaligned"
    return "coefficient GA, aligned" if matching == "weights" else f"coefficient GA, {matching}"


def cma_row(matching: str) -> str:
    """The row name of ``cma_merge`` aligned by ``matching``."""
    return "cma_merge" if matching == "weights" else f"cma_merge, {matching}"


# round 8: what merge's align="auto" (the default) does with a coefficient genome. Until round 8 it aligns weight
# genomes only (round 3 measured those), so merge(genome="coefficients") blends the parents unaligned; the
# candidate aligns them by activation matching (DEFAULT_MATCHING since round 7) where the merge can align.
# Judged on the coefficient GA alone, behind the gate at its default level, over every table of rounds 1 to 7.
CANDIDATE_COEFFICIENT_ALIGNMENTS = (None, "activations")


# after round 8: distillation after the merge (mega_deap.align.distil): merge()'s model, as a user gets it with
# the defaults, trained towards the parents' output ensemble on the validation inputs (no labels), with each
# candidate (epochs, temperature); Adam at lr 1e-3. Written down before any of them ran; chosen by the rule on
# every table of rounds 1 to 7 and the development tasks, reported on round 8's held-out tables.
CANDIDATE_DISTILS = ((20, 1.0), (60, 1.0), (150, 1.0), (20, 4.0), (60, 4.0), (150, 4.0))


def distil_row(epochs: int, temperature: float) -> str:
    """The row name of ``merge()`` followed by :func:`~mega_deap.align.distil` with these settings."""
    return f"merge() + distil({epochs} epochs, T={temperature:g})"


DISTILLED = tuple(distil_row(*c) for c in CANDIDATE_DISTILS)
# the model they start from, with the run's accuracies: merge() with the defaults, as a user calls it
DISTIL_START = "merge(), distilled below"


# the methods each gate level is applied to (a gate reads a method's merged model; the GA is not rerun)
# the unaligned merge with BatchNorm repair on calibration inputs (what README tells a user with BatchNorm
# models to pass): a row of the tasks whose models have BatchNorm only. Added after round 3 chose, to check
# that choice against the baseline a user would run; it chose nothing.
CALIBRATED = "merge(align=False), calibration"
GATED = (
    "merge, accuracy",
    CALIBRATED,
    "merge, accuracy_ll",
    *(f"merge(align={m!r})" for m in CANDIDATE_MATCHINGS),
    ZIP,
    "coefficient GA, aligned",
    "cma_merge",
    coefficient_row("activations"),
    cma_row("activations"),
    coefficient_row(None),
)


def gated(method: str, level) -> str:
    """The row name of ``method`` behind the gate at ``level`` (``None``: no gate, the method's own row)."""
    return method if level is None else f"{method}, gate {level}"


METHODS = (
    ("best parent", "best parent by validation")
    + tuple(f"merge, {m}" for m in CANDIDATE_METRICS)
    + ("MeGA (paper)", CALIBRATED)
    + tuple(f"merge(align={m!r})" for m in CANDIDATE_MATCHINGS)
    + (ZIP, "coefficient GA, aligned", "cma_merge", coefficient_row("activations"), cma_row("activations"))
    + (coefficient_row(None),)
    + tuple(gated(m, g) for m in GATED for g in CANDIDATE_GATES if g is not None)
    + tuple(held_gated(m) for m in HELD_GATED)
    + tuple(crossfit_gated(m) for m in HELD_GATED)
    + ("output ensemble",)
)


@dataclass(frozen=True)
class Task:
    """A data set, an architecture and a recipe that over-fits: ``"subset"`` (a ``fraction`` of the
    training split) or ``"noise"`` (that fraction of the training labels replaced by another class)."""

    name: str
    data: str
    model: str
    recipe: str
    fraction: float
    epochs: int


DEVELOPMENT = (
    Task("digits-mlp-subset", "digits", "mlp", "subset", 0.3, 150),
    Task("digits-cnn-bn-noise", "digits", "smallcnn", "noise", 0.2, 60),
    Task("digits-cnn-noise", "digits", "plaincnn", "noise", 0.2, 60),
)
HELD_OUT_1 = (
    Task("digits-widecnn-subset", "digits", "widecnn", "subset", 0.3, 150),
    Task("cancer-mlp-bn-subset", "breast_cancer", "mlp-bn", "subset", 0.3, 150),
    Task("synthetic-deepmlp-noise", "synthetic", "deepmlp", "noise", 0.2, 80),
)
HELD_OUT_2 = (
    Task("digits-deepcnn-bn-subset", "digits", "deepcnn-bn", "subset", 0.2, 150),
    Task("digits-mlp-bn-noise", "digits", "mlp-bn", "noise", 0.3, 80),
    Task("synthetic6-mlp-subset", "synthetic6", "mlp", "subset", 0.25, 200),
)
# written down after round 3's choice and before any of them ran: architectures no earlier round had (a
# residual MLP, a CNN with a hidden fully connected layer after a flatten) and a new synthetic data set
HELD_OUT_3 = (
    Task("digits-resmlp-noise", "digits", "resmlp", "noise", 0.25, 80),
    Task("digits-lenet-subset", "digits", "lenet", "subset", 0.25, 150),
    Task("synthetic8-mlp-bn-noise", "synthetic8", "mlp-bn", "noise", 0.25, 100),
)
# written down with round 4's candidate and before any of them ran: architectures no earlier round had (a
# VGG-style CNN of four convolutions without BatchNorm, a residual CNN with BatchNorm, a GELU MLP) and a
# new synthetic data set
HELD_OUT_4 = (
    Task("digits-vgg-noise", "digits", "vgg", "noise", 0.2, 60),
    Task("digits-rescnn-bn-subset", "digits", "rescnn-bn", "subset", 0.25, 150),
    Task("synthetic12-gelumlp-noise", "synthetic12", "gelumlp", "noise", 0.2, 100),
)
# written down with round 5's candidate and before any of them ran: architectures no earlier round had (a
# tanh CNN with average pooling and no BatchNorm, a residual MLP with BatchNorm in its blocks, a SiLU MLP
# of three hidden layers) and a new synthetic data set
HELD_OUT_5 = (
    Task("digits-tanhcnn-noise", "digits", "tanhcnn", "noise", 0.25, 60),
    Task("synthetic16-resmlp-bn-subset", "synthetic16", "resmlp-bn", "subset", 0.3, 120),
    Task("digits-silumlp-subset", "digits", "silumlp", "subset", 0.2, 150),
)
# written down with round 6's candidate and before any of them ran: architectures no earlier round had (a
# LeNet-style CNN with BatchNorm and leaky ReLU, a wide one-hidden-layer ELU MLP, a CNN without pooling
# whose second convolution is strided) and a new synthetic data set of 20 classes
HELD_OUT_6 = (
    Task("digits-lenet-bn-noise", "digits", "lenet-bn", "noise", 0.2, 60),
    Task("synthetic20-elumlp-subset", "synthetic20", "elumlp", "subset", 0.25, 150),
    Task("digits-stridecnn-subset", "digits", "stridecnn", "subset", 0.25, 150),
)
# written down with round 7's candidate and before any of them ran: architectures no earlier round had (a
# CNN with BatchNorm, SiLU and average pooling; a tanh MLP of three hidden layers; a CNN without BatchNorm
# whose first convolution is 5x5 and whose last is 1x1) and a new synthetic data set of 24 classes
HELD_OUT_7 = (
    Task("digits-silucnn-bn-subset", "digits", "silucnn-bn", "subset", 0.25, 150),
    Task("synthetic24-tanhmlp-noise", "synthetic24", "tanhmlp", "noise", 0.2, 100),
    Task("digits-kernelcnn-noise", "digits", "kernelcnn", "noise", 0.25, 60),
)
# written down with round 8's candidate and before any of them ran: architectures no earlier round had (a Mish
# MLP; an MLP of two Linear-BatchNorm-hardswish layers; a CNN without BatchNorm of three 3x3 convolutions with
# ELU and global max pooling) and a new synthetic data set of 28 classes
HELD_OUT = (
    Task("digits-mishmlp-noise", "digits", "mishmlp", "noise", 0.25, 100),
    Task("synthetic28-hardswishmlp-bn-subset", "synthetic28", "hardswishmlp-bn", "subset", 0.3, 150),
    Task("digits-gmpcnn-noise", "digits", "gmpcnn", "noise", 0.2, 60),
)
TASKS = {
    t.name: t
    for t in DEVELOPMENT
    + HELD_OUT_1
    + HELD_OUT_2
    + HELD_OUT_3
    + HELD_OUT_4
    + HELD_OUT_5
    + HELD_OUT_6
    + HELD_OUT_7
    + HELD_OUT
}
# what each task's tables do: choose in every round; report in round 1, then choose; report in round 2,
# then choose; report only
ROLES = {
    **{t.name: "development" for t in DEVELOPMENT},
    **{t.name: "round-1 held out" for t in HELD_OUT_1},
    **{t.name: "round-2 held out" for t in HELD_OUT_2},
    **{t.name: "round-3 held out" for t in HELD_OUT_3},
    **{t.name: "round-4 held out" for t in HELD_OUT_4},
    **{t.name: "round-5 held out" for t in HELD_OUT_5},
    **{t.name: "round-6 held out" for t in HELD_OUT_6},
    **{t.name: "round-7 held out" for t in HELD_OUT_7},
    **{t.name: "held out" for t in HELD_OUT},
}
# the roles, in the order the rounds met them
ROLE_ORDER = (
    "development",
    "round-1 held out",
    "round-2 held out",
    "round-3 held out",
    "round-4 held out",
    "round-5 held out",
    "round-6 held out",
    "round-7 held out",
    "held out",
)
# the roles whose tables each round's rule reads: every role met before the round's own held-out tasks
ROUNDS = {n: ROLE_ORDER[:n] for n in range(1, len(ROLE_ORDER))}


class PlainCNN(nn.Module):
    """:class:`SmallCNN` without BatchNorm (convolutions with biases): conv-ReLU x 2 (max pooling between),
    global average pooling, linear. Subclasses override ``act`` and ``pool``."""

    def __init__(self, in_channels=1, num_classes=10, width=16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width, num_classes)

    def act(self, x):
        return F.relu(x)

    def pool(self, x):
        return F.max_pool2d(x, 2)

    def forward(self, x):
        x = self.pool(self.act(self.conv1(x)))
        return self.fc(self.act(self.conv2(x)).mean((2, 3)))


class DeepBNCNN(nn.Module):
    """Three conv-BatchNorm-ReLU blocks (pooling after the first two), global average pooling, linear."""

    def __init__(self, in_channels=1, num_classes=10, width=16):
        super().__init__()
        chans = (in_channels, width, 2 * width, 2 * width)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(chans, chans[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for b in chans[1:])
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x):
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if i < 2:
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean((2, 3)))


class BNMLP(nn.Module):
    """Linear-BatchNorm-ReLU, then a linear classifier."""

    def __init__(self, in_features, num_classes, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(F.relu(self.bn1(self.fc1(x.flatten(1)))))


class ResMLP(nn.Module):
    """A linear stem, residual blocks ``h + relu(linear(h))`` (one residual stream, one permutation), and a
    linear classifier."""

    def __init__(self, in_features, num_classes, width=96, blocks=2):
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        h = F.relu(self.stem(x.flatten(1)))
        for block in self.blocks:
            h = h + F.relu(block(h))
        return self.head(h)


class VGG(nn.Module):
    """Two blocks of two conv-ReLU layers without BatchNorm, max pooling after each, global average pooling,
    linear."""

    def __init__(self, in_channels=1, num_classes=10, width=16):
        super().__init__()
        chans = (in_channels, width, width, 2 * width, 2 * width)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i % 2:
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean((2, 3)))


class ResBNCNN(nn.Module):
    """A conv-BatchNorm-ReLU stem, residual blocks ``x + relu(bn(conv(x)))`` (one residual stream), max
    pooling, global average pooling, linear."""

    def __init__(self, in_channels=1, num_classes=10, width=24, blocks=2):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(blocks))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(blocks))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        for conv, bn in zip(self.convs, self.bns):
            x = x + F.relu(bn(conv(x)))
        return self.fc(F.max_pool2d(x, 2).mean((2, 3)))


class GELUMLP(nn.Module):
    """Hidden layers (two by default) with GELU, or the activation function ``act``, then a linear
    classifier. ``norm``: BatchNorm between each hidden layer and its activation."""

    def __init__(self, in_features, num_classes, hidden=(192, 96), act=F.gelu, norm=False):
        super().__init__()
        sizes = (in_features, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        if norm:
            self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in hidden)
        self.out = nn.Linear(sizes[-1], num_classes)
        self.act, self.norm = act, norm

    def forward(self, x):
        x = x.flatten(1)
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            x = self.act(self.norms[i](x) if self.norm else x)
        return self.out(x)


class TanhCNN(PlainCNN):
    """:class:`PlainCNN` with tanh and average pooling, 12 channels wide by default."""

    def __init__(self, in_channels=1, num_classes=10, width=12):
        super().__init__(in_channels, num_classes, width)

    def act(self, x):
        return torch.tanh(x)

    def pool(self, x):
        return F.avg_pool2d(x, 2)


class ResBNMLP(nn.Module):
    """A linear-BatchNorm-ReLU stem, residual blocks ``h + relu(bn(linear(h)))`` (one residual stream), and a
    linear classifier."""

    def __init__(self, in_features, num_classes, width=64, blocks=2):
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        self.bn = nn.BatchNorm1d(width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.bns = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(blocks))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x.flatten(1))))
        for block, bn in zip(self.blocks, self.bns):
            h = h + F.relu(bn(block(h)))
        return self.head(h)


class LeNet(nn.Module):
    """Two conv-ReLU-max-pool blocks without BatchNorm, a flatten, a hidden linear layer and a classifier.
    ``norm``: BatchNorm after each convolution (which then has no bias). Subclasses override ``act``."""

    def __init__(self, in_channels=1, num_classes=10, image_size=8, width=8, hidden=64, norm=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=not norm)
        self.norm1 = nn.BatchNorm2d(width) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=not norm)
        self.norm2 = nn.BatchNorm2d(2 * width) if norm else nn.Identity()
        self.fc1 = nn.Linear(2 * width * (image_size // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def act(self, x):
        return F.relu(x)

    def forward(self, x):
        x = F.max_pool2d(self.act(self.norm1(self.conv1(x))), 2)
        x = F.max_pool2d(self.act(self.norm2(self.conv2(x))), 2)
        return self.fc2(self.act(self.fc1(x.flatten(1))))


class LeakyBNLeNet(LeNet):
    """:class:`LeNet` with BatchNorm after each convolution and leaky ReLU (slope 0.1)."""

    def __init__(self, in_channels=1, num_classes=10, image_size=8):
        super().__init__(in_channels, num_classes, image_size, norm=True)

    def act(self, x):
        return F.leaky_relu(x, 0.1)


class StrideCNN(nn.Module):
    """Three conv-ReLU layers without BatchNorm or pooling, the second with stride 2, global average pooling,
    linear."""

    def __init__(self, in_channels=1, num_classes=10, width=16):
        super().__init__()
        self.convs = nn.ModuleList(
            (
                nn.Conv2d(in_channels, width, 3, padding=1),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            )
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.fc(x.mean((2, 3)))


class SiLUBNCNN(SmallCNN):
    """:class:`SmallCNN` (two conv-BatchNorm layers, global average pooling, linear) with SiLU and average
    pooling."""

    def forward(self, x):
        x = F.avg_pool2d(F.silu(self.bn1(self.conv1(x))), 2)
        return self.fc(F.silu(self.bn2(self.conv2(x))).mean((2, 3)))


class KernelCNN(nn.Module):
    """Without BatchNorm: three convolutions of ``kernels`` (by default a 5x5, a 3x3 and a 1x1), each followed
    by ``act`` (ReLU), max pooling after the first, global average pooling (``global_max``: max pooling),
    linear."""

    def __init__(self, in_channels=1, num_classes=10, width=12, kernels=(5, 3, 1), act=F.relu, global_max=False):
        super().__init__()
        k1, k2, k3 = kernels
        self.conv1 = nn.Conv2d(in_channels, width, k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(width, 2 * width, k2, padding=k2 // 2)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, k3, padding=k3 // 2)
        self.fc = nn.Linear(2 * width, num_classes)
        self.act, self.global_max = act, global_max

    def forward(self, x):
        x = F.max_pool2d(self.act(self.conv1(x)), 2)
        x = self.act(self.conv3(self.act(self.conv2(x))))
        return self.fc(x.amax((2, 3)) if self.global_max else x.mean((2, 3)))


# scikit-learn's make_classification settings of the synthetic tasks
SYNTHETIC = {
    "synthetic": dict(
        n_samples=3000, n_features=40, n_informative=20, n_redundant=5, n_classes=10, class_sep=1.5, random_state=7
    ),
    "synthetic6": dict(
        n_samples=2400, n_features=30, n_informative=12, n_redundant=4, n_classes=6, class_sep=1.2, random_state=21
    ),
    "synthetic8": dict(
        n_samples=2800, n_features=32, n_informative=14, n_redundant=6, n_classes=8, class_sep=1.3, random_state=33
    ),
    "synthetic12": dict(
        n_samples=3600, n_features=36, n_informative=16, n_redundant=6, n_classes=12, class_sep=1.4, random_state=47
    ),
    "synthetic16": dict(
        n_samples=4000, n_features=40, n_informative=18, n_redundant=6, n_classes=16, class_sep=1.5, random_state=59
    ),
    "synthetic20": dict(
        n_samples=5000, n_features=48, n_informative=20, n_redundant=8, n_classes=20, class_sep=1.6, random_state=71
    ),
    "synthetic24": dict(
        n_samples=6000, n_features=56, n_informative=24, n_redundant=8, n_classes=24, class_sep=1.7, random_state=83
    ),
    "synthetic28": dict(
        n_samples=6400, n_features=60, n_informative=26, n_redundant=10, n_classes=28, class_sep=1.8, random_state=97
    ),
}


def _tabular(name):
    from sklearn import datasets

    if name == "breast_cancer":
        X, y = datasets.load_breast_cancer(return_X_y=True)
    elif name in SYNTHETIC:
        X, y = datasets.make_classification(n_clusters_per_class=2, **SYNTHETIC[name])
    else:
        raise ValueError(f"unknown data set {name!r}")
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def task_splits(task: Task, seed: int) -> Splits:
    """The task's splits for ``seed``: digits as :func:`~mega_deap.experiments.digits_splits`; a tabular set
    with a fixed test fifth and a seeded validation fifth, standardised with the training split's mean and
    sd."""
    if task.data == "digits":
        return digits_splits(seed=seed)
    X, y = _tabular(task.data)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(12345))  # the test split never moves
    te, rest = perm[: len(X) // 5], perm[len(X) // 5 :]
    tr, va = split_train_val(len(rest), len(X) // 5, seed)
    tr, va = rest[tr], rest[va]
    mean, sd = X[tr].mean(0), X[tr].std(0).clamp_min(1e-6)
    norm = lambda t: (t - mean) / sd  # noqa: E731
    return Splits(
        task.data, (norm(X[tr]), y[tr]), (norm(X[va]), y[va]), (norm(X[te]), y[te]), X.shape[1], int(y.max()) + 1, 1
    )


def build(task: Task, splits: Splits) -> nn.Module:
    features = splits.in_channels * splits.image_size**2
    if task.model == "mlp":
        return MLP(features, splits.num_classes, hidden=(128,))
    if task.model == "mlp-bn":
        return BNMLP(features, splits.num_classes)
    if task.model == "smallcnn":
        return SmallCNN(splits.in_channels, splits.num_classes)
    if task.model == "plaincnn":
        return PlainCNN(splits.in_channels, splits.num_classes)
    if task.model == "widecnn":
        return PlainCNN(splits.in_channels, splits.num_classes, width=32)
    if task.model == "deepcnn-bn":
        return DeepBNCNN(splits.in_channels, splits.num_classes)
    if task.model == "resmlp":
        return ResMLP(features, splits.num_classes)
    if task.model == "lenet":
        return LeNet(splits.in_channels, splits.num_classes, splits.image_size)
    if task.model == "vgg":
        return VGG(splits.in_channels, splits.num_classes)
    if task.model == "rescnn-bn":
        return ResBNCNN(splits.in_channels, splits.num_classes)
    if task.model == "gelumlp":
        return GELUMLP(features, splits.num_classes)
    if task.model == "tanhcnn":
        return TanhCNN(splits.in_channels, splits.num_classes)
    if task.model == "resmlp-bn":
        return ResBNMLP(features, splits.num_classes)
    if task.model == "silumlp":
        return GELUMLP(features, splits.num_classes, hidden=(128, 96, 64), act=F.silu)
    if task.model == "lenet-bn":
        return LeakyBNLeNet(splits.in_channels, splits.num_classes, splits.image_size)
    if task.model == "elumlp":
        return GELUMLP(features, splits.num_classes, hidden=(256,), act=F.elu)
    if task.model == "stridecnn":
        return StrideCNN(splits.in_channels, splits.num_classes)
    if task.model == "silucnn-bn":
        return SiLUBNCNN(splits.in_channels, splits.num_classes)
    if task.model == "tanhmlp":
        return GELUMLP(features, splits.num_classes, hidden=(160, 96, 64), act=torch.tanh)
    if task.model == "kernelcnn":
        return KernelCNN(splits.in_channels, splits.num_classes)
    if task.model == "mishmlp":
        return GELUMLP(features, splits.num_classes, hidden=(144, 72), act=F.mish)
    if task.model == "hardswishmlp-bn":
        return GELUMLP(features, splits.num_classes, hidden=(160, 80), act=F.hardswish, norm=True)
    if task.model == "gmpcnn":
        return KernelCNN(splits.in_channels, splits.num_classes, kernels=(3, 3, 3), act=F.elu, global_max=True)
    if task.model == "deepmlp":
        return MLP(features, splits.num_classes, hidden=(128, 64))
    raise ValueError(f"unknown model {task.model!r}")


def _overfit_data(task: Task, X, y, seed):
    """The part of ``(X, y)`` a parent trains on under the task's recipe (seeded)."""
    g = torch.Generator().manual_seed(seed)
    if task.recipe == "subset":
        keep = torch.randperm(len(X), generator=g)[: max(2, int(task.fraction * len(X)))]
        return X[keep], y[keep]
    noisy = torch.rand(len(y), generator=g) < task.fraction
    classes = int(y.max()) + 1
    shift = torch.randint(1, classes, (len(y),), generator=g)
    return X, torch.where(noisy, (y + shift) % classes, y)


def train_parents(task: Task, splits: Splits, setting: str, seed: int) -> tuple:
    """The two parents of ``seed``, trained until they fit their (sub-sampled or noisy) training data, and
    that data: ``(parents, [(X, y), (X, y)])``."""
    X, y = splits.train
    if setting == "same-data":
        parts = [(X, y), (X, y)]
    else:
        ia, ib = biased_parts(y, favoured=splits.num_classes // 2, seed=seed)
        parts = [(X[ia], y[ia]), (X[ib], y[ib])]
    parents, seen = [], []
    for j, (Xp, yp) in enumerate(parts):
        torch.manual_seed(1000 * seed + j)
        model = build(task, splits)
        data = _overfit_data(task, Xp, yp, 1000 * seed + j + 7)
        parents.append(
            train_model(model, data, epochs=task.epochs, lr=0.01, batch_size=64, seed=1000 * seed + j, progress=False)
        )
        seen.append(data)
    return parents, seen


def run_task(
    task: Task, setting: str, seed: int, *, popsize=20, ngen=20, calibration_size=512, methods=METHODS, say=None
) -> dict:
    """``{method: (val_acc, test_acc, seconds)}`` for one seed of one setting of ``task``, and the
    parents' training accuracy and confidence under ``"parents"``."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    splits = task_splits(task, seed)
    parents, seen = train_parents(task, splits, setting, seed)
    calib = None
    if batchnorm_layers(parents[0]):  # what README tells a user with BatchNorm models to pass
        order = torch.randperm(len(splits.train[0]), generator=torch.Generator().manual_seed(seed))
        calib = splits.train[0][order[:calibration_size]]
    out = {}

    def accs(model):
        return model_accuracy(model, *splits.val), model_accuracy(model, *splits.test)

    def timed(name, fn):
        if name not in methods:
            return
        t = time.perf_counter()
        model = fn()
        out[name] = (*accs(model), time.perf_counter() - t)
        if say:
            say(f"  {task.name} {setting} seed {seed} {name}: val {out[name][0]:.4f} test {out[name][1]:.4f}")
        if name not in GATED:
            return
        t = time.perf_counter()
        best, p = paired_test_models(model, parents, *splits.val)  # the gate's test, as merge(gate=...) runs it
        seconds = out[name][2] + time.perf_counter() - t  # the merge's and the gate's
        out.setdefault("gate_p", {})[name] = p
        for level in CANDIDATE_GATES:  # each level's decision on the one test
            if level is not None and gated(name, level) in methods:
                out[gated(name, level)] = (*(out[name][:2] if p < level else parent_accs[best]), seconds)

    parent_accs = [accs(p) for p in parents]
    best = max(range(2), key=lambda i: parent_accs[i][1])  # the harder baseline: the better one on test
    out["best parent"] = (*parent_accs[best], 0.0)
    out["best parent by validation"] = max(parent_accs)
    with torch.no_grad():
        conf = [float(torch.softmax(p(splits.val[0]), -1).max(-1).values.mean()) for p in parents]
    out["parents"] = {
        "train_acc": [model_accuracy(p, *data) for p, data in zip(parents, seen)],
        "val_acc": [a[0] for a in parent_accs],
        "mean_confidence": conf,
    }
    # gate=None: each method's own merge; the gated rows apply the gate to it (the GA runs once)
    common = dict(popsize=popsize, ngen=ngen, seed=seed, progress=False, device="cpu", gate=None)
    for metric in CANDIDATE_METRICS:  # the rows "merge, <metric>" are merges without alignment
        timed(
            f"merge, {metric}",
            lambda metric=metric: merge(parents, splits.val, metric=metric, align=False, **common).model,
        )
    timed(
        "MeGA (paper)",
        lambda: merge(parents, splits.val, include_parents=False, metric="accuracy", align=False, **common).model,
    )
    if calib is not None:  # BatchNorm models: the unaligned merge as README tells their users to run it
        timed(CALIBRATED, lambda: merge(parents, splits.val, align=False, calibration=calib, **common).model)
    # merge's five default methods (HELD_GATED): their arguments beside the gate's
    gated_merges: dict[str, dict] = {
        "merge, accuracy": dict(align=False),
        **{f"merge(align={how!r})": dict(align=how, calibration=calib) for how in CANDIDATE_MATCHINGS},
        ZIP: dict(align="zip", calibration=calib),
        coefficient_row("weights"): dict(align="weights", calibration=calib, genome="coefficients"),
    }
    assert tuple(gated_merges) == HELD_GATED
    for method, kwargs in list(gated_merges.items())[1:]:  # "merge, accuracy": the fitness loop's row above
        timed(method, lambda kw=dict(common, **kwargs): merge(parents, splits.val, **kw).model)
    # round 7: the coefficient GA and cma_merge with each candidate matching (named, not align=True, so that
    # the rows stay what they were whatever align=True names)
    for matching in CANDIDATE_MATCHINGS:
        if matching != "weights":  # the coefficient GA with weight matching: a row of gated_merges above
            kw = dict(common, align=matching, calibration=calib, genome="coefficients")
            timed(coefficient_row(matching), lambda kw=kw: merge(parents, splits.val, **kw).model)
        kw = dict(ngen=ngen, lambda_=popsize, seed=seed, align=matching, calibration=calib, device="cpu", gate=None)
        timed(cma_row(matching), lambda kw=kw: cma_merge(parents, splits.val, **kw).model)
    # round 8: the coefficient GA unaligned, as merge(genome="coefficients") runs it before round 8 (with the
    # calibration inputs README tells users of BatchNorm models to pass)
    kw = dict(common, align=False, calibration=calib, genome="coefficients")
    timed(coefficient_row(None), lambda: merge(parents, splits.val, **kw).model)
    # the same five, each run again by merge with the gate's test as a candidate has it: round 5's (30 % held
    # out), round 6's (cross-fitted)
    tests: tuple[tuple[Callable[[str], str], dict], ...] = (
        (held_gated, dict(gate=HELD_GATE_LEVEL, gate_holdout=GATE_HOLDOUT)),
        (crossfit_gated, dict(gate=CROSSFIT_LEVEL, gate_holdout="crossfit")),
    )
    for row, test in tests:
        for method, kwargs in gated_merges.items():
            timed(row(method), lambda kw=dict(common, **test, **kwargs): merge(parents, splits.val, **kw).model)
    if any(row in methods for row in DISTILLED):  # merge() as a user runs it, then each distillation of it
        t = time.perf_counter()
        kw = dict(seed=seed, popsize=popsize, ngen=ngen, calibration=calib, progress=False, device="cpu")
        merged = merge(parents, splits.val, **kw).model  # README's call: calibration inputs for BatchNorm
        out[DISTIL_START] = (*accs(merged), time.perf_counter() - t)
        for epochs, temperature in CANDIDATE_DISTILS:
            how = dict(epochs=epochs, temperature=temperature, seed=seed)
            timed(distil_row(epochs, temperature), lambda how=how: distil(merged, parents, splits.val[0], **how))
    if "output ensemble" in methods:
        out["output ensemble"] = (
            ensemble_accuracy(parents, *splits.val),
            ensemble_accuracy(parents, *splits.test),
            0.0,
        )
    return out


def summarize(runs: list) -> list:
    """Rows ``{method, val, val_sd, test, test_sd, delta, delta_sd, delta_min, gap, below_val}`` over seeds:
    means and sds of the accuracies; ``delta``: test accuracy minus the best parent's (mean, sd, and the
    worst seed); ``gap``: the fraction of the test gap from the best parent to the output ensemble closed
    (from the means); ``below_val``: the seeds whose validation accuracy is below the parent with the better
    validation accuracy (what the guarantee rules out)."""
    rows = []
    for name in METHODS + (DISTIL_START, *DISTILLED):
        used = [r for r in runs if name in r]
        if not used:
            continue
        v = np.array([r[name][0] for r in used])
        t = np.array([r[name][1] for r in used])
        d = t - np.array([r["best parent"][1] for r in used])
        below = int(sum(r[name][0] < r["best parent by validation"][0] for r in used))
        gap = gap_closed(
            float(t.mean()),
            float(np.mean([r["best parent"][1] for r in used])),
            float(np.mean([r["output ensemble"][1] for r in used])),
        )
        sd = lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0
        rows.append(
            {
                "method": name,
                "val": float(v.mean()),
                "val_sd": sd(v),
                "test": float(t.mean()),
                "test_sd": sd(t),
                "delta": float(d.mean()),
                "delta_sd": sd(d),
                "delta_min": float(d.min()),
                "gap": gap,
                "below_val": below,
                "seconds": float(np.mean([r[name][2] if len(r[name]) > 2 else 0.0 for r in used])),
            }
        )
    return rows


def choose(tables: dict, methods: dict) -> tuple:
    """The rule that chose ``merge``'s defaults, applied to development tables only (``{table name:
    summarize(...) rows}``): of ``methods`` (``{candidate: the method row it names}``, or a tuple of rows),
    the one whose worst table (the lowest mean test accuracy minus the best parent's, over its rows) is
    highest; ties by the mean over tables. Returns ``(candidate, scores)`` with ``scores[candidate] = (worst,
    mean)``."""
    scores = {}
    for candidate, method in methods.items():
        names = (method,) if isinstance(method, str) else tuple(method)
        deltas = [row["delta"] for rows in tables.values() for row in rows if row["method"] in names]
        if deltas:
            scores[candidate] = (min(deltas), float(np.mean(deltas)))
    return max(scores, key=lambda c: scores[c]), scores


def choose_metric(tables: dict) -> tuple:
    """:func:`choose` over the fitness metrics that keep the accuracy guarantee (:data:`GUARANTEED_METRICS`;
    merge without alignment). The others are measured and reported beside them, not chosen from."""
    return choose(tables, {m: f"merge, {m}" for m in GUARANTEED_METRICS})


def choose_matching(tables: dict) -> tuple:
    """:func:`choose` over the candidate matchings of ``merge(align=...)`` (with the default fitness)."""
    return choose(tables, {m: f"merge(align={m!r})" for m in CANDIDATE_MATCHINGS})


def choose_gate(tables: dict, metric: str, matching: str) -> tuple:
    """:func:`choose` over the gate's candidate levels (:data:`CANDIDATE_GATES`, ``None``: no gate), each
    judged on the four default methods at once (``merge`` with fitness ``metric``, ``merge(align=matching)``,
    the coefficient GA and ``cma_merge``): the worst table of any of them."""
    bases = (f"merge, {metric}", f"merge(align={matching!r})", "coefficient GA, aligned", "cma_merge")
    return choose(
        tables,
        {("none" if g is None else str(g)): tuple(gated(b, g) for b in bases) for g in CANDIDATE_GATES},
    )


def choose_alignment(tables: dict, metric: str, level) -> tuple:
    """Round 3: :func:`choose` over ``merge``'s candidate default alignments (:data:`CANDIDATE_ALIGNMENTS`,
    ``None``: none), each as ``merge`` would run it by default: fitness ``metric`` behind the gate at
    ``level`` (``None``: no gate)."""
    return choose(
        tables,
        {
            ("none" if a is None else a): gated(f"merge, {metric}" if a is None else f"merge(align={a!r})", level)
            for a in CANDIDATE_ALIGNMENTS
        },
    )


def choose_zip(tables: dict, metric: str, level) -> tuple:
    """Round 4: :func:`choose` between round 3's default alignment (``"activations"``) and the same with the
    parents' zip in the first population (``"zip"``, :data:`CANDIDATE_ZIPS`), each as ``merge`` would run it
    by default: fitness ``metric`` behind the gate at ``level`` (``None``: no gate). Where a table has no zip
    row (more than two parents), it has none to choose on."""
    return choose(tables, {a: gated(f"merge(align={a!r})", level) for a in CANDIDATE_ZIPS})


def choose_gate_holdout(tables: dict, level) -> tuple:
    """Round 5: :func:`choose` between the gate at ``level`` testing on the whole validation set (``"0"``,
    round 4's merges) and testing on :data:`GATE_HOLDOUT` of it held out of the fitness, each judged on the
    merge methods of :data:`HELD_GATED` at once (the worst table of any of them)."""
    return _against_the_whole_set(tables, level, str(GATE_HOLDOUT), held_gated)


def _against_the_whole_set(tables: dict, level, name: str, row: Callable[[str], str]) -> tuple:
    """:func:`choose` between the gate at ``level`` on the whole validation set (``"0"``) and candidate
    ``name``, whose row of each method is ``row(method)``, each judged on :data:`HELD_GATED` at once."""
    return choose(tables, {"0": tuple(gated(b, level) for b in HELD_GATED), name: tuple(map(row, HELD_GATED))})


def choose_gate_crossfit(tables: dict, level) -> tuple:
    """Round 6: :func:`choose` between the gate at ``level`` testing on the whole validation set (``"0"``,
    round 4's merges, kept by round 5) and testing by cross-fitting (``"crossfit"``, at
    :data:`CROSSFIT_LEVEL`), each judged on the merge methods of :data:`HELD_GATED` at once (the worst table
    of any of them)."""
    return _against_the_whole_set(tables, level, "crossfit", crossfit_gated)


def choose_coefficient_alignment(tables: dict, level) -> tuple:
    """Round 8: :func:`choose` over what ``merge``'s ``align="auto"`` does with a coefficient genome
    (:data:`CANDIDATE_COEFFICIENT_ALIGNMENTS`; ``"none"``: no alignment), judged on the coefficient GA behind
    the gate at ``level``."""
    return choose(
        tables,
        {m or "none": gated(coefficient_row(m), level) for m in CANDIDATE_COEFFICIENT_ALIGNMENTS},
    )


def choose_default_matching(tables: dict, level) -> tuple:
    """Round 7: :func:`choose` over the matchings ``align=True`` may name (:data:`CANDIDATE_MATCHINGS`), each
    judged on the three methods that align with it by default at once (``merge(align=...)``, the coefficient GA
    and ``cma_merge``, behind the gate at ``level``; ``None``: no gate): the worst table of any of them."""
    return choose(
        tables,
        {
            m: tuple(gated(row, level) for row in (f"merge(align={m!r})", coefficient_row(m), cma_row(m)))
            for m in CANDIDATE_MATCHINGS
        },
    )


def unaligned_baseline(run: dict, level) -> str:
    """The row of ``run`` that is ``merge(align=False)`` as README tells its users to run it, behind the gate
    at ``level`` (``None``: no gate): with calibration inputs where the models have BatchNorm
    (:data:`CALIBRATED`), else ``merge, accuracy``."""
    calibrated = gated(CALIBRATED, level)
    return calibrated if calibrated in run else gated("merge, accuracy", level)
