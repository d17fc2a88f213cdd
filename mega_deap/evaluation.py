"""Batched fitness evaluation.

An :class:`Evaluator` scores genomes on a validation set that lives on the device once. It is both the
fitness function (``toolbox.register("evaluate", evaluator)``) and DEAP's parallelism hook
(``toolbox.register("map", evaluator.map)``): ``map`` receives the whole list of individuals to
evaluate and scores them in one call, so DEAP's own ``eaSimple`` batches as well as ``eaMeGA``.

Strategies: ``"loop"`` runs the model once per genome (weights read as views of the population row);
``"stacked"`` runs a chunk of genomes through an MLP as one batched matrix product per layer
(:mod:`mega_deap.adapters.stacked`; models of ``Linear`` layers and element-wise activations only); ``"vmap"`` runs
``torch.func.vmap`` over a chunk of genomes; ``"measure"`` times them on the first genomes (up to four) of
the first call, each warmed up once and then timed in interleaved rounds, and keeps the fastest (the loop's
scores are kept, so it costs a few extra evaluations, once; a strategy that fails is never chosen);
``"auto"`` is the documented rule: on CPU ``"stacked"`` where the model allows it and
at least four genomes fit in a chunk, else ``"loop"`` (measured on 2 cores: the stacked digits MLP ran
about 20 % faster per genome than the loop, a wide MLP no faster; a vmapped small CNN or ResNet about 3x
slower than the loop), and ``"measure"`` on CUDA, where the one-off measurement is cheap next to a run. A
rule, never a timing, on CPU: a seed fixes every bit.

The evaluator needs only a model-agnostic ``adapter`` (:class:`mega_deap.adapters.Adapter` gives the
defaults): ``runner`` and ``decode_many`` (which adapter runs the genomes, and what they decode into),
``forward(genome, x)``, ``forward_batch(genomes, x)``, ``eval_mode()``, ``device`` and ``dtype``, and
``stacked_forward()`` where it has one.
"""

import contextlib
import functools
import math
import time
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

import torch

from . import distributed
from .files import tensor_digest
from .individual import TensorIndividual
from .checks import SettingError, SettingTypeError

__all__ = [
    "Evaluator",
    "registered_as",
    "Accuracy",
    "AccuracyLogLik",
    "NegLogLoss",
    "NegLogLossTempered",
    "NegMSE",
    "NegMAE",
    "METRICS",
    "get_metric",
    "correct",
    "STRATEGIES",
]

STRATEGIES = ("auto", "loop", "stacked", "vmap", "measure")
Strategy = Literal["auto", "loop", "stacked", "vmap", "measure"]


######################################
# Metrics                            #
######################################


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


def default_batch_size(X: torch.Tensor) -> int:
    """The evaluation batch size when none is given: 256 for image batches (``(n, C, H, W)``), 2,048 for
    anything else (see :class:`Evaluator`)."""
    return 256 if X.dim() >= 4 else 2048


def get_metric(name: str):
    """A new metric object by its name in :data:`METRICS` (the one registry that ``merge``, the command
    line and the fitness functions share)."""
    if name not in METRICS:
        raise SettingError(f"metric must be one of {sorted(METRICS)}, got {name!r}")
    return METRICS[name]()


######################################
# The evaluator                      #
######################################


def registered_as(func, obj) -> bool:
    """True when ``func`` is ``obj`` itself, or ``obj`` registered in a DEAP toolbox (a ``functools.partial``
    that binds nothing): how a ``toolbox.map`` recognises its own evaluator."""
    while isinstance(func, functools.partial) and not func.args and not func.keywords:
        func = func.func
    return func is obj


class Evaluator:
    """Fitness of genomes on one validation set, batched.

    :param adapter: a model adapter (``TorchAdapter``, ``KerasAdapter``).
    :param X: validation inputs, ``(n, ...)``; moved to the adapter's device once.
    :param y: validation targets, ``(n,)`` class labels or ``(n, ...)`` regression targets.
    :param metric: an ``Accuracy``, ``NegMSE`` or ``NegMAE`` instance (or any with the same methods).
    :param batch_size: validation examples per forward pass; ``None`` (the default) picks by the inputs'
                       shape: 256 for image batches (4-D inputs), 2,048 otherwise, the fastest of those
                       measured on 2 CPU cores (BENCHMARKS.md: a small CNN was fastest at 250 of 250 to
                       2,000, the digits MLP at 2,048 of 256 to 2,048). A fixed rule, never a timing, so a
                       seed still fixes every bit of a run.
    :param strategy: ``"auto"``, ``"loop"``, ``"stacked"``, ``"vmap"`` or ``"measure"``.
    :param chunk: genomes per vmapped or stacked call (``None``: all at once for vmap; for stacked, as many
                  as keep a layer's activations within 2^20 numbers, 4 MiB of float32: on 2 CPU cores the
                  digits MLP ran as fast in chunks of 8 as of 4, and slower in chunks of 2 or 16).
    :param autocast: ``None``, ``torch.bfloat16`` or ``torch.float16``: autocast the forward passes
                     (for GPUs; off by default).
    :param channels_last: store 4-D inputs in ``torch.channels_last`` memory format (for convolutional
                          models on GPUs; off by default). The weights stay views of the genome.
    :param prepare: called on every genome (``(D,)``, in place) before it is scored, e.g.
                    :class:`mega_deap.align.BatchNormRepair` (the individual keeps what it wrote).
    :param shares: in a ``torch.distributed`` process group, how the individuals to evaluate are cut
                   between the ranks (:mod:`mega_deap.distributed`): ``"equal"`` or ``"throughput"`` (in
                   proportion to each rank's genomes per second in the previous call). Without one: unused.

    ``evaluations`` counts the genomes scored so far.
    """

    STACK_NUMBERS = 2**18  # the loop's stacked outputs per chunk of genomes (see __init__)
    STACKED_NUMBERS = 2**20  # the widest layer's activations per chunk of the stacked forward (see chunk)
    DECODED_NUMBERS = 2**25  # coefficient genomes decoded at once: at most this many weights (128 MiB float32)

    def __init__(
        self,
        adapter: Any,
        X: Any,
        y: Any,
        metric: Any = None,
        *,
        batch_size: Optional[int] = None,
        strategy: Strategy = "auto",
        chunk: Optional[int] = None,
        autocast: Optional[torch.dtype] = None,
        channels_last: bool = False,
        prepare: Optional[Callable] = None,
        shares: str = "equal",
    ) -> None:
        if strategy not in STRATEGIES:
            raise SettingError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.adapter = adapter
        self.metric = metric if metric is not None else Accuracy()
        self.device = torch.device(adapter.device)
        X = torch.as_tensor(X)
        y = torch.as_tensor(y)
        if X.shape[0] != y.shape[0]:
            raise SettingError(f"X has {X.shape[0]} examples but y has {y.shape[0]}")
        if X.shape[0] == 0:
            raise SettingError("the validation set is empty")
        if X.is_floating_point():
            X = X.to(adapter.dtype)
        self.X = X.to(self.device)
        if channels_last:
            if self.X.dim() != 4:
                raise SettingError(f"channels_last needs 4-D inputs (N, C, H, W), got shape {tuple(self.X.shape)}")
            self.X = self.X.contiguous(memory_format=torch.channels_last)
        self.y = y.to(self.device)
        self.batch_size = int(batch_size) if batch_size is not None else default_batch_size(self.X)
        if self.batch_size < 1:
            raise SettingError(f"batch_size must be a positive number of examples, got {batch_size!r}")
        self.strategy = strategy  # "auto" settles after the template check below
        self.chunk = chunk
        self.autocast = autocast
        self.prepare = prepare
        self._sharded = distributed.ShardedScores(shares)
        self._runner = adapter.runner  # what runs the forward passes (the parents' adapter for coefficients)
        self._chosen = None  # what "measure" settled on
        self.measured_timings = None
        self.evaluations = 0
        self._fingerprint: Optional[dict] = None
        with torch.no_grad(), adapter.eval_mode():
            template = self._runner.genome()
            out = self._runner.forward(template, self.X[: min(2, len(self.X))])
        if not isinstance(out, torch.Tensor):
            raise SettingTypeError(
                f"the model returns a {type(out).__name__}, not a tensor of outputs: the evaluator "
                f"needs forward() to return the logits (or predictions) as one tensor"
            )
        self.metric.check(out, self.y)
        self._stacked, self.stacked_reason = self._stacked_forward(template, out)
        if strategy == "stacked" and self._stacked is None:
            raise SettingError(
                f"strategy='stacked' needs a model of Linear layers and element-wise activations: {self.stacked_reason}"
            )
        self._stacked_chunk = self.chunk or (
            max(1, self.STACKED_NUMBERS // (self._stacked.widest * min(self.batch_size, len(self.X))))
            if self._stacked is not None
            else 1
        )
        if self.strategy == "auto":  # stacked where four genomes' activations fit in a chunk (else no gain)
            self.strategy = (
                "measure"
                if self.device.type == "cuda"
                else ("stacked" if self._stacked is not None and self._stacked_chunk >= 4 else "loop")
            )
        # genomes whose stacked outputs on one data batch stay within 2^18 numbers (1 MiB of float32): the
        # stack and its scoring stay in cache; measured on 2 CPU cores, 2^24 made them memory-bound
        per_genome = max(1, out[0].numel() * min(self.batch_size, len(self.X)))
        self._loop_chunk = max(1, self.STACK_NUMBERS // per_genome)
        self._stack_buf = None

    def _stacked_forward(self, template, out):
        """The runner's stacked forward and ``None``, or ``None`` and why not; it must give ``forward``'s output
        on the template (to float tolerance) or it is not used."""
        get = getattr(self._runner, "stacked_forward", None)
        if get is None:
            return None, f"{type(self._runner).__name__} has no stacked forward"
        plan, why = get()
        if plan is None:
            return None, why
        try:
            with torch.no_grad(), self.adapter.eval_mode():
                got = plan(template.unsqueeze(0), self.X[: min(2, len(self.X))])[0]
        except Exception as err:  # a shape the stacked forward does not take
            return None, f"{type(err).__name__}: {err}"
        if got.shape != out.shape or not torch.allclose(got, out, rtol=1e-4, atol=1e-5, equal_nan=True):
            return None, "its output differed from forward()'s on the template"
        return plan, None

    @property
    def chosen(self) -> Optional[str]:
        """The strategy ``"measure"`` settled on (``None`` before it measured)."""
        return self._chosen

    def fingerprint(self) -> dict:
        """What identifies this evaluation in a checkpoint: the metric and a SHA-256 of the validation
        inputs and targets."""
        if self._fingerprint is None:
            self._fingerprint = {
                "metric": getattr(self.metric, "name", type(self.metric).__name__),
                "validation_sha256": tensor_digest(self.X, self.y),
            }
            if self.prepare is not None:
                fp = getattr(self.prepare, "fingerprint", None)
                self._fingerprint["prepare"] = fp() if callable(fp) else type(self.prepare).__name__
        return self._fingerprint

    # -- DEAP hooks -------------------------------------------------------------
    def __call__(self, individual) -> tuple:
        """The fitness tuple of one individual (DEAP's ``evaluate`` contract)."""
        return self.evaluate([individual])[0]

    def map(self, func: Callable, iterable: Iterable) -> list:
        """DEAP's ``toolbox.map``: batched when ``func`` is this evaluator, the builtin ``map`` otherwise."""
        if registered_as(func, self):
            return self.evaluate(list(iterable))
        return list(map(func, iterable))

    # -- the work -----------------------------------------------------------------
    def evaluate(self, individuals: Iterable) -> list:
        """Fitness tuples for ``individuals``; those whose fitness is already valid are not re-run."""
        individuals = list(individuals)
        todo = [i for i, ind in enumerate(individuals) if not (hasattr(ind, "fitness") and ind.fitness.valid)]
        pending = set(todo)
        results = [None if i in pending else tuple(ind.fitness.values) for i, ind in enumerate(individuals)]
        if todo:
            batch = [individuals[i] for i in todo]
            if distributed.active():  # every rank holds these individuals; each scores its share
                genomes = [ind.genome if isinstance(ind, TensorIndividual) else ind for ind in batch]
                if self.prepare is not None and self._runner is self.adapter:
                    for g in genomes:  # weight genomes: it writes into the individuals, so every rank repairs all
                        self.prepare(g)
                    scores = self._sharded(genomes, functools.partial(self.scores, prepared=True))
                else:
                    scores = self._sharded(genomes, self.scores)
            else:
                scores = self.scores(batch)
            for i, s in zip(todo, scores):
                results[i] = (s,)
        return results

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _batches(self):
        n = self.X.shape[0]
        for s in range(0, n, self.batch_size):
            yield self.X[s : s + self.batch_size], self.y[s : s + self.batch_size]

    @staticmethod
    def _nan_count(out):
        """Whether each genome's outputs hold a NaN, ``(k,)`` float64 (0 or 1). An inf output is no fault by
        itself (a -inf logit of a masked class); where it makes the metric itself non-finite, the metric's
        check catches it. One sum per genome finds the candidates (a NaN makes it NaN, and so do +inf and -inf
        together); only those are searched element by element."""
        flat = out.reshape(out.shape[0], -1)
        suspect = flat.sum(-1).isnan()
        if not bool(suspect.any()):
            return torch.zeros(out.shape[0], dtype=torch.float64, device=out.device)
        return flat.isnan().any(-1).to(torch.float64)

    def _stack_outputs(self, outs):
        """``outs`` stacked into a ``(k, B, ...)`` buffer kept between calls: a new tensor of a megabyte per
        chunk costs more than the copy on CPU (fresh pages); the buffer is only read before the next call."""
        shape = (len(outs),) + tuple(outs[0].shape)
        buf = self._stack_buf
        if (
            buf is None
            or buf.shape[1:] != shape[1:]
            or buf.shape[0] < shape[0]
            or buf.dtype != outs[0].dtype
            or buf.device != outs[0].device
        ):
            buf = self._stack_buf = torch.empty(
                (max(shape[0], self._loop_chunk),) + shape[1:], dtype=outs[0].dtype, device=outs[0].device
            )
        return torch.stack(outs, out=buf[: shape[0]])

    def _score(self, chunks, run):
        """Totals and validity for the genomes of ``chunks`` (in order): ``run(chunk, xb)`` gives a chunk's
        outputs ``(k, B, ...)`` on a data batch; the metric and the validity check run once per chunk and
        data batch, not once per genome."""
        totals, checks = [], []
        batches = list(self._batches())
        for chunk in chunks:
            t = f = None
            for xb, yb in batches:
                out = run(chunk, xb)
                pt, pf = self.metric.partial(out, yb), self._nan_count(out)
                t, f = (pt, pf) if t is None else (t + pt, f + pf)
            totals.append(t)
            checks.append(f)
        return torch.cat(totals), torch.cat(checks) == 0

    def _run_loop(self, genomes):
        """One forward pass per genome and data batch, the outputs of a chunk stacked for scoring."""
        c = self._loop_chunk
        return self._score(
            (genomes[i : i + c] for i in range(0, len(genomes), c)),
            lambda chunk, xb: self._stack_outputs([self._runner.forward(g, xb) for g in chunk]),
        )

    def _run_vmap(self, genomes):
        stacked = torch.stack(genomes)
        c = self.chunk or stacked.shape[0]
        return self._score((stacked[i : i + c] for i in range(0, stacked.shape[0], c)), self._runner.forward_batch)

    def _run_stacked(self, genomes):
        """A chunk of genomes at a time through the stacked forward: one batched product per layer, in as few
        chunks as the chunk size allows, of near-equal sizes (no stray chunk of one)."""
        n = len(genomes)
        parts = -(-n // self._stacked_chunk)
        bounds = [i * n // parts for i in range(parts + 1)]
        return self._score(
            (torch.stack(genomes[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])),
            # kept out= buffers, except under autocast: an op writing into out= is not autocast (it would run
            # in float32 while the loop runs in bfloat16)
            lambda G, xb: self._stacked(G, xb, reuse=self.autocast is None),
        )  # overwritten by the next call

    def _run(self, strategy, genomes):
        return {"loop": self._run_loop, "stacked": self._run_stacked, "vmap": self._run_vmap}[strategy](genomes)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _measure(self, genomes, k=4, repeats=3):
        """``measure``: time the strategies on the first ``k`` genomes (as many as the call has, at least one):
        each strategy runs once untimed (a cold first call would count its allocations and kernel choice
        against it), then ``repeats`` interleaved timed rounds; the median decides. A strategy that fails
        (a model vmap cannot batch) is never chosen. The loop's scores of the untimed run are kept, so the
        measurement costs ``(1 + repeats) x 3`` evaluations of at most ``k`` genomes, once per evaluator."""
        sub_g = genomes[:k]
        runs = {"loop": self._run_loop, "vmap": self._run_vmap}
        if self._stacked is not None:
            runs["stacked"] = self._run_stacked
        result = None
        times: dict = {name: [] for name in runs}
        for name, run in runs.items():  # warm-up, untimed
            try:
                out = run(sub_g)
                result = out if name == "loop" else result
            except Exception as err:  # a model vmap cannot batch (data-dependent control flow, ...)
                times[name] = None
                self.measure_error = f"{type(err).__name__}: {err}"
        for _ in range(repeats):
            for name, run in runs.items():
                if times[name] is None:
                    continue
                self._sync()
                t = time.perf_counter()
                run(sub_g)
                self._sync()
                times[name].append(time.perf_counter() - t)
        timings = {name: (sorted(ts)[len(ts) // 2] if ts else float("inf")) for name, ts in times.items()}
        self._chosen = min(timings, key=lambda name: timings[name])
        self.measured_timings = timings
        return result

    @torch.no_grad()
    def scores(self, individuals: Sequence, *, prepared: bool = False) -> list:
        """One float per individual (or ``(D,)`` genome tensor), ignoring any fitness they hold.
        ``prepared``: ``prepare`` has already run on them."""
        raw = [ind.genome if isinstance(ind, TensorIndividual) else ind for ind in individuals]
        if not raw:
            return []
        # weight genomes are scored as they are; coefficient genomes are decoded into weights a few at a time
        # (at most DECODED_NUMBERS numbers), so memory stays O(N x G x k) plus one bounded chunk of weights
        step = len(raw) if self._runner is self.adapter else max(1, self.DECODED_NUMBERS // self._runner.dim)
        parts = [self._scores_of(raw[i : i + step], prepared) for i in range(0, len(raw), step)]
        totals, finite = torch.cat([t for t, _ in parts]), torch.cat([f for _, f in parts])
        self.evaluations += totals.shape[0]
        values = self.metric.finish(totals, self.X.shape[0])
        values = torch.where(finite & torch.isfinite(values), values, torch.full_like(values, self.metric.worst))
        return [float(v) for v in values.tolist()]

    def _scores_of(self, raw: list, prepared: bool) -> tuple:
        """Totals and validity of a chunk of genomes (decoded here), as :meth:`_score` gives them."""
        genomes = self.adapter.decode_many(raw)
        if self.prepare is not None and not prepared:
            for g in genomes:
                self.prepare(g)
        with self.adapter.eval_mode(), self._autocast():
            head: Optional[tuple] = None
            if self.strategy == "measure" and self._chosen is None:  # measured on this call's first genomes
                head = self._measure(genomes)
                genomes = genomes[len(head[0]) :]
            strategy = self.strategy if self.strategy != "measure" else self._chosen
            if not genomes:
                assert head is not None  # every genome went into the measurement
                totals, finite = head
            else:
                run = self._run(strategy, genomes)
                totals, finite = run if head is None else (torch.cat([head[0], run[0]]), torch.cat([head[1], run[1]]))
        return totals, finite
