"""A significance gate: keep a merge only when it beats the best parent on validation beyond noise.

A merge chosen on a validation set is, by construction, at least as accurate there as its best parent (the
parents are among its candidates). On parents that are already close to what their data allows, the
search keeps finding validation gains of a few examples that are noise, fitted to the validation set, and
do not carry over to new data. The gate asks whether the gain is larger than chance: McNemar's exact test
on the paired predictions of the merge and of the parent with the best validation accuracy. Of the
examples on which exactly one of the two is right, the merge is right on ``b`` and the parent on ``c``;
under "equally accurate" ``b`` is Binomial(b + c, 1/2), and the one-sided p-value is
``P(Binomial(b + c, 1/2) >= b)``. Where it is not below the level ``alpha``, the gate returns that parent.

Where the merge was chosen on the same examples as the test reads (:func:`paired_test`), p is smaller than
it would be on fresh data (anti-conservative): ``alpha`` is a threshold chosen by measurement (the held-out
study, README), not a false-positive rate. :func:`held_out_test` reads only examples held out of the search
(``merge(gate_holdout=...)``), so its p is an honest one; the best parent and the accuracy guarantee are
still judged on every example. :func:`crossfit_test` (``merge(gate_holdout="crossfit")``) keeps every
example in the search and still tests on examples a search did not select on: it runs the search again on
each half of the validation set and tests each half's merge on the other half.
"""

from typing import Any, Callable, Optional

import torch
from scipy import stats

from .checks import SettingError
from .metrics import Accuracy

__all__ = [
    "mcnemar_greater",
    "correct_each",
    "paired_test",
    "paired_test_models",
    "held_out_test",
    "crossfit_test",
    "gate_parent",
    "classification_metric",
]


def classification_metric(metric: Any) -> bool:
    """Whether the gate applies to ``metric``: a built-in classification metric of one value (accuracy,
    the log-likelihood and their variants), whose data are class labels the predictions are checked on."""
    return isinstance(metric, Accuracy) and getattr(metric, "nobj", 1) == 1


def mcnemar_greater(a_right: torch.Tensor, b_right: torch.Tensor) -> tuple:
    """McNemar's exact one-sided test that ``a`` is more often right than ``b`` on the same examples.

    :param a_right: ``(n,)`` booleans, whether model ``a`` is right on each example.
    :param b_right: ``(n,)`` booleans for model ``b``, on the same examples.
    :returns: ``(wins, losses, p)``: the examples ``a`` gets right and ``b`` wrong, the reverse, and
              ``P(Binomial(wins + losses, 1/2) >= wins)`` (1 when they never disagree).
    """
    if a_right.shape != b_right.shape or a_right.dim() != 1:
        raise SettingError(
            f"paired predictions must be two (n,) vectors, got {tuple(a_right.shape)} and {tuple(b_right.shape)}"
        )
    wins = int((a_right & ~b_right).sum())
    losses = int((~a_right & b_right).sum())
    if wins + losses == 0:
        return wins, losses, 1.0
    p = float(stats.binom.sf(wins - 1, wins + losses, 0.5))  # P(X >= wins)
    return wins, losses, min(1.0, p)


@torch.no_grad()
def correct_each(runner: Any, weights: list, X: Any, y: Any, batch_size: Optional[int] = None) -> torch.Tensor:
    """``(k, n)`` booleans: whether each of the ``k`` weight vectors (genomes of ``runner``, a weight adapter)
    predicts each example's class (argmax of its outputs), in inference mode, ``batch_size`` examples a
    forward pass (the evaluator's default when ``None``)."""
    from .evaluation import default_batch_size

    X, y = torch.as_tensor(X).to(runner.device), torch.as_tensor(y).to(runner.device)  # moved once
    step = default_batch_size(X) if batch_size is None else batch_size
    rows = []
    with runner.eval_mode():
        for w in weights:
            rows.append(torch.cat([runner.forward(w, X[i : i + step]).argmax(-1) for i in range(0, len(y), step)]) == y)
    return torch.stack(rows).cpu()


def paired_test(
    runner: Any, merged: torch.Tensor, parents: list, X: Any, y: Any, batch_size: Optional[int] = None
) -> tuple:
    """The gate's test on ``(X, y)`` for weight vectors of ``runner`` (a weight adapter): ``(best, p)``, where
    ``best`` is the index of the parent with the best accuracy (the first of equals) and ``p``
    :func:`mcnemar_greater`'s p-value of the merge against it. A merge whose weights equal a parent's is that
    parent, with ``p = 1``. The gate at level ``alpha`` returns parent ``best`` where ``p >= alpha``."""
    for j, w in enumerate(parents):
        if torch.equal(merged, w):
            return j, 1.0
    right = correct_each(runner, [merged, *parents], X, y, batch_size)
    best = int(torch.argmax(right[1:].sum(1)))  # the first of the most accurate
    return best, mcnemar_greater(right[0], right[1 + best])[2]


def held_out_test(
    runner: Any,
    merged: torch.Tensor,
    parents: list,
    X: Any,
    y: Any,
    held: torch.Tensor,
    batch_size: Optional[int] = None,
) -> tuple:
    """The gate's test on examples the search did not select on, for weight vectors of ``runner``:
    ``(best, p, holds)``. ``best``: the index of the parent with the best accuracy on all of ``(X, y)`` (the
    first of equals); ``p``: :func:`mcnemar_greater`'s p-value of the merge against it on the examples
    ``held`` (indices into ``(X, y)``) only; ``holds``: whether the merge is right on at least as many of all
    the examples as that parent (the accuracy guarantee on the whole set). The gate at level ``alpha`` keeps
    the merge where ``p < alpha`` and ``holds``, else returns parent ``best``. A merge whose weights equal
    that parent's is that parent: ``(best, 1.0, True)``; one equal to another parent is tested as any merge
    (the parent best on the fitness part need not be best on every example)."""
    held = _indices("held", held, len(y))
    right, best, holds = _against_the_best(runner, merged, parents, X, y, batch_size)
    if torch.equal(merged, parents[best]):
        return best, 1.0, True
    # a merge equal to another parent (the best on the fitness part, not on every example) is judged as any
    p = mcnemar_greater(right[0, held], right[1 + best, held])[2]
    return best, p, holds


def _indices(name: str, h: Any, n: int) -> torch.Tensor:
    """``h`` as a vector of indices into ``n`` examples; a clear error, naming ``name``, where it is not one
    or is empty."""
    h = torch.as_tensor(h, dtype=torch.long)
    if h.dim() != 1 or not len(h) or int(h.min()) < 0 or int(h.max()) >= n:
        raise SettingError(
            f"{name} must be a non-empty vector of indices into the {n} examples, got shape {tuple(h.shape)}"
            + (f" in [{int(h.min())}, {int(h.max())}]" if h.numel() else "")
        )
    return h


def _against_the_best(runner: Any, merged: torch.Tensor, parents: list, X: Any, y: Any, batch_size) -> tuple:
    """``(right, best, holds)`` on all of ``(X, y)``: :func:`correct_each` of the merge and the parents (in
    that order), the index of the most accurate parent (the first of equals), and whether the merge is right
    on at least as many examples as it (the accuracy guarantee)."""
    right = correct_each(runner, [merged, *parents], X, y, batch_size)
    counts = right.sum(1)
    best = int(torch.argmax(counts[1:]))
    return right, best, bool(counts[0] >= counts[1 + best])


def crossfit_test(
    runner: Any,
    merged: torch.Tensor,
    parents: list,
    X: Any,
    y: Any,
    halves: tuple,
    fit: Callable[[torch.Tensor, int], torch.Tensor],
    batch_size: Optional[int] = None,
) -> tuple:
    """The gate's test by cross-fitting, for weight vectors of ``runner``: ``(best, p, holds)`` as
    :func:`held_out_test`, where ``merged`` was searched on all of ``(X, y)``.

    ``halves`` ``(a, b)``: two index vectors that split ``(X, y)``. ``fit(search, k)`` returns the weights of
    the same search run on the examples ``search`` alone (``k``: 0 for ``a``, 1 for ``b``). The merge searched
    on ``a`` is paired with the parent most accurate on ``a`` on the examples of ``b``, and the reverse:
    both are what the two procedures (merge, or keep the parent best on the data) give without seeing the
    examples they are judged on. Their wins and losses, summed over both halves, give McNemar's exact
    one-sided p (:func:`mcnemar_greater`) on every example. ``best`` and ``holds`` are judged on all of
    ``(X, y)``, as :func:`held_out_test`. ``fit`` runs only where it can change the answer: a merge equal to
    parent ``best``, or less accurate than it, is refused at once with ``p = 1``."""
    a, b = (_indices(f"the {name} half", h, len(y)) for name, h in zip(("first", "second"), halves))
    X, y = torch.as_tensor(X).to(runner.device), torch.as_tensor(y).to(runner.device)  # moved once
    right, best, holds = _against_the_best(runner, merged, parents, X, y, batch_size)
    if torch.equal(merged, parents[best]) or not holds:
        return best, 1.0, holds
    mine, theirs = [], []  # each half's merge and the parent chosen on its half, on the other half
    for k, (search, test) in enumerate(((a, b), (b, a))):
        chosen = int(torch.argmax(right[1:, search].sum(1)))  # the parent a user would keep, seeing `search`
        mine.append(correct_each(runner, [fit(search, k)], X[test], y[test], batch_size)[0])
        theirs.append(right[1 + chosen, test])
    return best, mcnemar_greater(torch.cat(mine), torch.cat(theirs))[2], holds


def paired_test_models(
    merged: Any,
    parents: list,
    X: Any,
    y: Any,
    *,
    batch_size: Optional[int] = None,
    device: Any = None,
    buffers: bool = True,
) -> tuple:
    """:func:`paired_test` for models of one architecture: a merged model and its parents as given."""
    from mega_deap.adapters import adapter_for

    parents = list(parents)
    cls = adapter_for(parents[0])
    runner, genomes = cls.from_parents(parents, device=device, buffers=buffers)
    mine = cls(merged, buffers=buffers).genome(merged).to(runner.device)
    return paired_test(runner, mine, list(genomes), X, y, batch_size)


def gate_parent(merged: Any, parents: list, X: Any, y: Any, alpha: float, **kwargs: Any) -> tuple:
    """The gate on ``(X, y)`` for a merged model and its parents as given (keywords as
    :func:`paired_test_models`): ``(j, p)``, ``j`` the index of the parent with the best accuracy where the
    merge does not beat it at level ``alpha`` (``p >= alpha``), else ``None``."""
    best, p = paired_test_models(merged, parents, X, y, **kwargs)
    return (best if p >= alpha else None), p
