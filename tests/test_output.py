"""What a library call prints: nothing unasked; a progress bar only on a terminal; the logbook, one plain
line per generation, only with verbose=True."""

import pathlib
import subprocess
import sys

import pytest

# command lines, packaging, printed output or the docs pipeline, not numbers: CI's second pass (one
# thread) leaves these out (-m 'not plumbing')
pytestmark = pytest.mark.plumbing

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import train_mlp
import mega_deap
from sklearn.datasets import load_digits
X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32); y = torch.tensor(y)
models = [train_mlp((X[:600], y[:600]), s, epochs=2) for s in (1, 2)]
mega_deap.merge(models, (X[600:900], y[600:900]), popsize=4, ngen=3, device="cpu", {kwargs})
"""


def run(kwargs="", tty=False):
    code = SCRIPT.format(tests=str(ROOT / "tests"), kwargs=kwargs)
    if not tty:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout + p.stderr
    from conftest import on_a_terminal

    return on_a_terminal([sys.executable, "-c", code])


def test_a_merge_prints_nothing_unasked_outside_a_terminal():
    assert run() == ""


def test_verbose_prints_one_plain_line_per_generation():
    text = run("verbose=True")
    lines = [l for l in text.splitlines() if l.strip()]
    assert "\r" not in text and "eaMeGA" not in text  # no progress bar in a pipe
    # what align="auto" chose: no room for the zip beside the parents, their average and its REPAIRed copy
    assert lines[0] == "align: activations matching"
    assert lines[1].split()[:2] == ["gen", "nevals"] and len(lines) == 1 + 1 + 4 + 1  # header + generations 0..3
    assert lines[-1].startswith("gate: p = ")  # and what the significance gate did


def test_a_progress_bar_on_a_terminal():
    text = run(tty=True)
    assert "eaMeGA" in text and "\r" in text
