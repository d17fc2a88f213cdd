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
import time
from typing import Any, Callable, Literal, Optional, Sequence

import torch

from .batched import BatchedFitness, finite_or_worst, registered_as
from .files import code_digest, tensor_digest
from .individual import TensorIndividual
from .checks import SettingError, SettingTypeError
from .metrics import (  # noqa: F401  (where they were before the metrics had a module of their own)
    METRICS,
    Accuracy,
    AccuracyLogLik,
    NegLogLoss,
    NegLogLossTempered,
    NegMAE,
    NegMSE,
    correct,
    get_metric,
)

__all__ = ["Evaluator", "registered_as", "default_batch_size", "STRATEGIES"]

STRATEGIES = ("auto", "loop", "stacked", "vmap", "measure")
Strategy = Literal["auto", "loop", "stacked", "vmap", "measure"]


def default_batch_size(X: torch.Tensor) -> int:
    """The evaluation batch size when none is given: 256 for image batches (``(n, C, H, W)``), 2,048 for
    anything else (see :class:`Evaluator`)."""
    return 256 if X.dim() >= 4 else 2048


class Evaluator(BatchedFitness):
    """Fitness of genomes on one validation set, batched.

    :param adapter: a model adapter (``TorchAdapter``, ``KerasAdapter``).
    :param X: validation inputs, ``(n, ...)``; moved to the adapter's device once.
    :param y: validation targets, ``(n,)`` class labels or ``(n, ...)`` regression targets.
    :param metric: a metric of :mod:`mega_deap.metrics` (``Accuracy()`` by default; ``GroupAccuracy`` gives
                   one value per group of classes), or a function of a genome's whole output made with
                   :func:`mega_deap.objectives.on_outputs`; one value or several (``nobj``, DEAP's
                   ``weights``).
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
        super().__init__(shares)
        self.adapter = adapter
        self.metric = metric if metric is not None else Accuracy()
        if getattr(self.metric, "needs_data", True) is False:
            raise SettingError(
                f"{getattr(self.metric, 'name', self.metric)!r} is a function of the model (on_model): "
                "score it with mega_deap.objectives.ModelEvaluator, not on validation data"
            )
        self.nobj = int(getattr(self.metric, "nobj", 1))
        self.weights = tuple(getattr(self.metric, "weights", (1.0,) * self.nobj))
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
        self._runner = adapter.runner  # what runs the forward passes (the parents' adapter for coefficients)
        self._chosen = None  # what "measure" settled on
        self.measured_timings = None
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
        if hasattr(self.metric, "bind"):  # a function of the whole output: it gets these labels
            self.metric = self.metric.bind(self.y)
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
            fn = getattr(self.metric, "fn", None)
            if fn is not None:  # an objective of the outputs (on_outputs): which function, not only its name
                self._fingerprint["code_sha256"] = code_digest(fn)
            if self.prepare is not None:
                fp = getattr(self.prepare, "fingerprint", None)
                self._fingerprint["prepare"] = fp() if callable(fp) else type(self.prepare).__name__
        return self._fingerprint

    def _scorer(self, genomes: list) -> Callable:
        """Weight genomes are repaired (``prepare``) by every rank, all of them, since it writes into the
        individuals; each rank then scores its share."""
        if self.prepare is not None and self._runner is self.adapter:
            for g in genomes:
                self.prepare(g)
            return functools.partial(self.scores, prepared=True)
        return self.scores

    # -- the work -----------------------------------------------------------------
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
        combine = getattr(self.metric, "combine", None)  # the data batches' parts joined once; else summed
        for chunk in chunks:
            parts, f = [], None
            for xb, yb in batches:
                out = run(chunk, xb)
                parts.append(self.metric.partial(out, yb))
                pf = self._nan_count(out)
                f = pf if f is None else f + pf
                if combine is None and len(parts) == 2:
                    parts = [parts[0] + parts[1]]  # a running sum, in the batches' order
            totals.append(combine(parts) if combine is not None else parts[0])
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
        """One value per individual (or ``(D,)`` genome tensor), ignoring any fitness they hold: a float, or
        a tuple of ``nobj`` floats. ``prepared``: ``prepare`` has already run on them."""
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
        return finite_or_worst(values, finite, self.metric.worst)

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
