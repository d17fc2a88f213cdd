"""Sharded evaluation over ``torch.distributed``: the only module that knows about ranks.

When a script initialises the default process group (``torch.distributed.init_process_group``, as any
``torchrun`` script does) and every rank runs the same program with the same seed, every rank holds the
same population, because every rank draws the same random numbers. Then ranks need to exchange only
fitness values: each rank scores its share of the individuals to evaluate and the scores are
all-gathered (N floats a generation, never genomes). Without a process group (or with one rank) nothing
here does anything.

A guard keeps that promise honest: before each sharded evaluation, the ranks compare a checksum of the
genomes they are about to score; a mismatch stops every rank with :class:`DivergedError` instead of
letting them drift apart silently.
"""

import time
from typing import Optional, Sequence

import torch
from .checks import SettingError

__all__ = [
    "init_from_env",
    "local_device",
    "active",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "shutdown",
    "shares",
    "ShardedScores",
    "DivergedError",
    "SHARES",
]

SHARES = ("equal", "throughput")


class DivergedError(RuntimeError):
    """The ranks no longer hold the same population."""


def init_from_env() -> bool:
    """Initialise the default process group when the program was launched by ``torchrun`` (``RANK`` and
    ``WORLD_SIZE`` in the environment, more than one process): NCCL when CUDA is available, else gloo.
    Returns :func:`active`. Launched any other way it does nothing."""
    import os

    dist = torch.distributed
    if (
        dist.is_available()
        and not dist.is_initialized()
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
        and "RANK" in os.environ
    ):
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return active()


def local_device(device: torch.device) -> torch.device:
    """``device`` for this rank: with CUDA, the GPU of this rank's ``LOCAL_RANK`` (one rank per GPU)."""
    import os

    if active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, or without a process group: the process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def broadcast_(*tensors: torch.Tensor) -> None:
    """Overwrite each tensor, in place, with rank 0's: for what every rank computes alone but must hold
    bit for bit the same (aligned parents: a matching that reads floating-point sums can differ across
    unlike hardware). Without a process group: nothing."""
    if not active():
        return
    for t in tensors:
        buf = t.detach().to(_device_for_collectives(t.device)).contiguous()
        torch.distributed.broadcast(buf, src=0)
        with torch.no_grad():
            t.copy_(buf)


def shutdown() -> None:
    """End of a program: wait for every rank, then destroy the process group (a process that exits with
    the group still up can abort in the backend's teardown)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shares(n: int, weights: Optional[Sequence[float]] = None) -> list:
    """``[(start, stop)]`` per rank: ``n`` items cut into contiguous shares, equal (sizes differ by at most
    one) or proportional to ``weights`` (each rank's measured throughput)."""
    p = world_size()
    if weights is None:
        base, extra = divmod(n, p)
        sizes = [base + (1 if r < extra else 0) for r in range(p)]
    else:
        total = float(sum(weights))
        raw = [n * w / total for w in weights]
        sizes = [int(x) for x in raw]
        for r in sorted(range(p), key=lambda r: raw[r] - sizes[r], reverse=True)[: n - sum(sizes)]:
            sizes[r] += 1
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s))
        start += s
    return out


def agree(
    value: bool,
    what: str,
    hint: str = "every rank must see the same files (a folder all ranks share, or the same copy on every node)",
) -> bool:
    """``value``, the same on every rank, or a :class:`~mega_deap.checks.SettingError` on every rank naming
    which ranks differ (a decision one rank takes alone, such as whether a checkpoint exists in a folder the
    ranks do not share, would otherwise send them down different paths: a hang, not an error). Without a
    process group: ``value``."""
    if not active():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    mine = torch.tensor([int(bool(value))], dtype=torch.int64, device=_device_for_collectives(device))
    flags = [torch.zeros_like(mine) for _ in range(world_size())]
    torch.distributed.all_gather(flags, mine)
    seen = [bool(f.item()) for f in flags]
    if len(set(seen)) > 1:
        yes = [r for r, f in enumerate(seen) if f]
        no = [r for r, f in enumerate(seen) if not f]
        raise SettingError(f"{what} is true on rank(s) {yes} and false on rank(s) {no}: {hint}")
    return value


def _device_for_collectives(device: torch.device) -> torch.device:
    backend = torch.distributed.get_backend()
    return device if backend == "nccl" else torch.device("cpu")


_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _checksum(genomes: list, numbers: int = 2**22) -> torch.Tensor:
    """Two int64 numbers per genome: the sum of its values' bit patterns, and that sum weighted by position.
    Integer sums are exact and independent of the order of addition, so ranks on different hardware agree
    exactly when their genomes are the same bits (and almost surely not otherwise). A chunk of genomes of at
    most ``numbers`` values at a time: no copy of the whole population."""
    D = genomes[0].numel()
    pos = torch.arange(1, D + 1, dtype=torch.int64, device=genomes[0].device)
    step = max(1, numbers // D)
    out = []
    for c in range(0, len(genomes), step):
        G = torch.stack([g.detach().reshape(-1) for g in genomes[c : c + step]])
        bits = G.view(_BITS[G.element_size()]).to(torch.int64)
        out.append(torch.stack([bits.sum(1), (bits * pos).sum(1)], 1))  # int64 wraps around: still exact
    return torch.cat(out).reshape(-1)


class ShardedScores:
    """Score a list of genomes across the ranks: ``sharded(genomes, score)`` where ``score(list)`` scores
    this rank's share. ``shares="equal"`` cuts the list evenly; ``"throughput"`` in proportion to each
    rank's measured genomes per second in the previous call (equal the first time). The assignment never
    changes a score, so the run's bits are the same either way."""

    def __init__(self, shares: str = "equal"):
        if shares not in SHARES:
            raise SettingError(f"shares must be one of {SHARES}, got {shares!r}")
        self.mode = shares
        self.rate = None  # this rank's genomes per second, last call
        self.weights: Optional[list] = None

    def __call__(self, genomes: list, score, nobj: int = 1) -> list:
        """Everyone's scores, in order: floats, or ``nobj``-tuples when ``nobj`` > 1."""
        dist = torch.distributed
        n, p, me = len(genomes), world_size(), rank()
        if n == 0:
            return []
        device = _device_for_collectives(genomes[0].device)
        # 1. the guard: every rank must be about to score the same genomes
        mine = _checksum(genomes).to(device)
        sizes = torch.tensor([mine.numel()], device=device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(p)]
        dist.all_gather(all_sizes, sizes)
        if len({int(s) for s in all_sizes}) != 1:
            raise DivergedError(
                f"rank {me}: the ranks are evaluating different numbers of individuals "
                f"({[int(s) // 2 for s in all_sizes]}): they no longer run the same program "
                "with the same seed"
            )
        theirs = [torch.empty_like(mine) for _ in range(p)]
        dist.all_gather(theirs, mine)
        for r, t in enumerate(theirs):
            if not torch.equal(t, theirs[0]):
                bad = int((t != theirs[0]).reshape(-1, 2).any(1).nonzero()[0])
                raise DivergedError(
                    f"rank {me}: rank {r}'s population differs from rank 0's (first at "
                    f"individual {bad} of {n}): every rank must run the same program with the "
                    "same seed, data and settings"
                )
        # 2. this rank's share
        cuts = shares(n, self.weights if self.mode == "throughput" else None)
        start, stop = cuts[me]
        t0 = time.perf_counter()
        local = score(genomes[start:stop]) if stop > start else []
        took = time.perf_counter() - t0
        # 3. everyone's scores, in order
        width = max(b - a for a, b in cuts) * nobj
        buf = torch.full((width + 1,), float("nan"), dtype=torch.float64, device=device)
        buf[: len(local) * nobj] = torch.tensor(local, dtype=torch.float64, device=device).reshape(-1)
        buf[width] = (stop - start) / took if took > 0 and stop > start else 0.0
        gathered = [torch.empty_like(buf) for _ in range(p)]
        dist.all_gather(gathered, buf)
        out: list = []
        for (a, b), t in zip(cuts, gathered):
            values = t[: (b - a) * nobj].tolist()
            if nobj == 1:
                out.extend(float(v) for v in values)
            else:
                out.extend(tuple(values[i : i + nobj]) for i in range(0, len(values), nobj))
        rates = [float(t[width]) for t in gathered]
        if all(r > 0 for r in rates):
            self.weights = rates
        return out
