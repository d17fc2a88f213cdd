"""What a user installs: the sdist, a wheel built from it, installed into a fresh virtual environment outside
the checkout, and run there.

The fresh environment gets the wheel alone (``--no-deps``); its dependencies (torch, DEAP, ...) come from
this interpreter's site-packages through a ``.pth`` line, which adds a path but runs none of that folder's
own ``.pth`` files, so an editable install of this checkout stays invisible there. Every command runs from a
folder outside the checkout, and the test checks that ``mega_deap`` was imported from the fresh
environment.
"""

import os
import pathlib
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

# command lines, packaging, printed output or the docs pipeline, not numbers: CI's second pass (one
# thread) leaves these out (-m 'not plumbing')
pytestmark = pytest.mark.plumbing

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))

MERGE = """
import sys, torch, mega_deap
from torch import nn
assert mega_deap.__file__.startswith(sys.prefix), mega_deap.__file__
torch.manual_seed(0)
models = [nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(2)]
X, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
r = mega_deap.merge(models, (X, y), align=True, genome="coefficients", popsize=6, ngen=2, progress=False)
assert r.logbook.select("gen") == [0, 1, 2], r.logbook
assert r.gate_p is not None and mega_deap.gate.__file__.startswith(sys.prefix)  # the gate ran, from the wheel
d = mega_deap.merge(models, (X, y), popsize=6, ngen=1, progress=False)  # the defaults: activations and the zip
assert d.align == "zip" and mega_deap.align.zipping.__file__.startswith(sys.prefix), d.align
print("merged", type(r.model).__name__, len(r.genome), r.fitness)
"""


def run(cmd, cwd, **kwargs):
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MPLBACKEND": "Agg", "PYTHONNOUSERSITE": "1"},
        **kwargs,
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist and a wheel built from it (``python -m build``: sdist first, then the wheel from it)."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], cwd=out)
    (sdist,) = out.glob("mega_deap-*.tar.gz")
    (wheel,) = out.glob("mega_deap-*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory):
    """A fresh virtual environment holding the wheel; ``(python, bin folder, a folder outside the checkout)``."""
    home = tmp_path_factory.mktemp("user")
    env = home / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=home)
    python = env / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(dists[1])], cwd=home)
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=home)
    (pathlib.Path(site.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, env / "bin", home


def test_wheel_holds_every_package(dists):
    sdist, wheel = dists
    names = zipfile.ZipFile(wheel).namelist()
    packages = {os.path.dirname(n) for n in names if n.endswith("__init__.py")}
    want = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "mega_deap").rglob("__init__.py")}
    want |= {"mega_deap/" + str(p.parent.relative_to(ROOT)) for p in (ROOT / "adapters").rglob("__init__.py")}
    assert want <= packages, f"missing from the wheel: {sorted(want - packages)}"
    assert not any(n.startswith(("adapters/", "tests/", "examples/", "benchmarks/")) for n in names)
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {"setup.py", "setup.cfg", "pyproject.toml", "adapters/__init__.py", "mega_deap/align/spec.py"} <= members


def test_wheel_merges_outside_the_checkout(venv):
    python, _, home = venv
    out = run([str(python), "-c", MERGE], cwd=home)
    assert out.startswith("merged Sequential")


def test_wheel_console_script(venv):
    _, bin_, home = venv
    out = run([str(bin_ / "mega-merge"), "--help"], cwd=home)
    assert "usage: mega-merge" in out


@pytest.mark.parametrize("example", EXAMPLES)
def test_wheel_runs_each_example_help(venv, example):
    python, _, home = venv
    out = run([str(python), str(ROOT / "examples" / example), "--help"], cwd=home)
    assert out.startswith("usage:")
