"""The report of a merge: baselines, a table like the paper's, a JSON of every number, the fitness plot."""

import math
import json
import os
import platform

import torch

from mega_deap.evaluation import correct
from mega_deap.files import atomic_write

__all__ = [
    "ensemble_accuracy",
    "weight_average",
    "format_table",
    "plot_fitness",
    "write_json",
    "pyplot",
    "save_figure",
    "environment",
    "environment_line",
]

# the packages whose versions an environment names by default
PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "deap", "keras")


def ensemble_accuracy(models: list, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Accuracy of the output ensemble: logits averaged over ``models``
    (:func:`~mega_deap.align.ensemble_logits`)."""
    from mega_deap.align import ensemble_logits

    device = next(models[0].parameters()).device
    return float(correct(ensemble_logits(models, X.to(device), batch_size).cpu(), y)) / len(X)


def weight_average(models):
    """A new model whose every float tensor (weights and BatchNorm statistics) is the parents' mean."""
    from mega_deap.adapters import TorchAdapter

    ad = TorchAdapter(models[0])
    return ad.to_model(ad.genomes(models).mean(0))


def format_table(rows, columns=("model", "val_acc", "test_acc")):
    """A Markdown table of ``rows`` (dicts); accuracies as percentages with two decimals, other floats
    with four significant digits."""

    def cell(col, v):
        if isinstance(v, float):
            return f"{100 * v:.2f}" if "acc" in col else f"{v:.4g}"
        return str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(cell(c, r.get(c, "")) for c in columns) + " |" for r in rows])


def plot_fitness(logbook, path, title="MeGA: validation fitness per generation", extra=None):
    """The paper's Figure 2: best and mean fitness per generation (PNG). ``extra``: {label: value} lines."""
    import matplotlib.ticker

    plt = pyplot()
    gens = logbook.select("gen")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    best, mean = logbook.select("max"), logbook.select("avg")
    # the axis follows the best curve and the reference lines: one collapsed blend drags the mean far down,
    # and an axis that showed it would flatten the curve the plot is for (the mean is clipped, and says so)
    shown = [v for v in list(best) + list((extra or {}).values()) if math.isfinite(v)]
    lo, hi = min(shown), max(shown)
    span = (hi - lo) or max(abs(hi), 1.0) * 1e-3
    bottom = lo - 0.5 * span
    clipped = any(v < bottom for v in mean)
    ax.plot(gens, best, marker="o", label="best")
    ax.plot(gens, mean, marker=".", label="mean (below the axis where it leaves it)" if clipped else "mean")
    for i, (label, value) in enumerate((extra or {}).items()):
        ax.axhline(value, linestyle="--", linewidth=1, label=label, color=f"C{i + 2}")
    ax.set_ylim(bottom, hi + 0.25 * span)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("validation fitness")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_json(obj, path) -> str:
    """``obj`` as indented JSON at ``path``, written atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=float)

    return atomic_write(path, write)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend: the one plot setup of the experiments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> str:
    """Write ``fig`` to ``path`` (PNG), creating the folder, and close it; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def environment(packages=PACKAGES) -> dict:
    """What a result depends on besides the code and the seed, as JSON-able data: the Python version, the
    installed version of each of ``packages`` (``None`` where absent; read from the package metadata, nothing
    is imported), torch's thread count, the CPUs, the vector instructions torch's CPU kernels use (machines
    that differ there run other kernels, whose sums round differently, so their numbers differ as another
    thread count's do), and the platform."""
    import importlib.metadata as md

    versions: dict = {}
    for name in packages:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "versions": versions,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "kernels": torch.backends.cpu.get_cpu_capability(),  # since torch 2.1; the floor is 2.3
        "system": platform.system(),
        "machine": platform.platform(),
    }


def environment_line(env=None) -> str:
    """:func:`environment` (or ``env``, one it returned) as the line printed beside every regenerated table,
    so that a rerun can tell whether it ran on the same kind of machine."""
    env = env or environment()
    versions = {"python": env["python"], **{k: v or "absent" for k, v in env["versions"].items()}}
    return (
        ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; torch threads {env['threads']}, {env['cpu_count']} CPUs ({env['cpu']}, {env['kernels']} kernels), "
        + env["system"]
    )
