"""The report of a merge: baselines, a table like the paper's, a JSON of every number, the fitness plot."""
import json
import os

import torch

__all__ = ["ensemble_accuracy", "weight_average", "format_table", "plot_fitness", "write_json"]


@torch.no_grad()
def ensemble_accuracy(models, X, y, batch_size=1000):
    """Accuracy of the output ensemble: logits averaged over ``models``."""
    for m in models:
        m.eval()
    device = next(models[0].parameters()).device
    correct = 0
    for i in range(0, len(X), batch_size):
        xb = X[i:i + batch_size].to(device)
        logits = torch.stack([m(xb) for m in models]).mean(0)
        correct += (logits.argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    return correct / len(X)


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
    return "\n".join([head, sep] + ["| " + " | ".join(cell(c, r.get(c, "")) for c in columns) + " |"
                                    for r in rows])


def plot_fitness(logbook, path, title="MeGA: validation fitness per generation", extra=None):
    """The paper's Figure 2: best and mean fitness per generation (PNG). ``extra``: {label: value} lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    gens = logbook.select("gen")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(gens, logbook.select("max"), marker="o", label="best")
    ax.plot(gens, logbook.select("avg"), marker=".", label="mean")
    for i, (label, value) in enumerate((extra or {}).items()):
        ax.axhline(value, linestyle="--", linewidth=1, label=label, color=f"C{i + 2}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("validation fitness")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)
    return path
