"""The install story: README's test command is what CI runs; the core imports no optional framework."""

import os
import pathlib
import re
import subprocess
import sys
import warnings

import pytest
import torch

# command lines, packaging, printed output or the docs pipeline, not numbers: CI's second pass (one
# thread) leaves these out (-m 'not plumbing')
pytestmark = pytest.mark.plumbing

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)


def test_ci_runs_readme_test_command():
    tests = [c.strip() for c in readme_commands() if "pytest" in c]
    assert len(tests) == 1, "README should show exactly one test command"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests[0] in ci


def test_readme_main_command_runs_the_example(tmp_path):
    """README's main command installs, then runs ``python examples/merge_cifar.py``: that last step is run
    here as written, in a fresh process, with flags that make it quick (the install steps are CI's)."""
    main = [c.strip() for c in readme_commands() if "examples/merge_cifar.py" in c]
    assert len(main) == 1 and "pip install" in main[0]
    run = main[0].split("&&")[-1].split()
    assert run == ["python", "examples/merge_cifar.py"]
    quick = ["--epochs", "2", "--popsize", "4", "--ngen", "1", "--out", str(tmp_path / "out")]
    proc = subprocess.run(
        [sys.executable, *run[1:], *quick],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(
        r"^\| MeGA, aligned by activations, zip seeded( \(the gate kept parent \d .*\))? +\|", proc.stdout, re.M
    ), proc.stdout
    assert (tmp_path / "out" / "results.json").exists()
    assert "| MeGA − the better parent on validation (parent" in proc.stdout


def test_import_pulls_no_optional_framework():
    code = (
        "import sys, mega_deap, mega_deap.adapters; "
        "print(sorted(m for m in ('keras', 'torchvision', 'tensorflow', 'jax', 'sklearn', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), re.S)


def test_readme_python_runs_as_written(digits, digit_mlps, tmp_path, monkeypatch):
    """README's quick start, run as written in a folder with two saved state dicts and a ``mynets.py``, and
    its toolbox block after it; the merge is at least as accurate as the better parent on validation."""
    from mega_deap.experiments import model_accuracy

    quick, compose = python_blocks("README.md")
    hidden = digit_mlps[0][0].out_features
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        f"def make_net():\n    return nn.Sequential(nn.Linear(64, {hidden}), nn.ReLU(), nn.Linear({hidden}, 10))\n"
    )
    for name, model in zip(("a.pt", "b.pt"), digit_mlps):
        torch.save(model.state_dict(), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    X_val, y_val = digits["val"]
    env = {"X_val": X_val, "y_val": y_val}
    exec(compile(quick, "README.md", "exec"), env)
    merged = env["result"].model
    assert (tmp_path / "merged.pt").exists()
    assert model_accuracy(merged, X_val, y_val) >= max(model_accuracy(m, X_val, y_val) for m in digit_mlps)
    env = {"model_a": digit_mlps[0], "X_val": X_val, "y_val": y_val}
    with warnings.catch_warnings():  # the block creates creator classes other tests have created too
        warnings.simplefilter("ignore", RuntimeWarning)
        exec(compile(compose, "README.md", "exec"), env)
    ind = env["pop"].individuals(env["creator"].Individual)[0]
    ind.genome.copy_(env["adapter"].genome())  # model_a itself: scored as the fitness says
    (score,) = env["toolbox"].evaluate(ind)
    assert score >= model_accuracy(digit_mlps[0], X_val, y_val)


def test_guide_api_tour_runs(digits, digit_mlps):
    """The user guide's first Python block, run as written with two real digits models."""
    tour = python_blocks("docs/guide/toolbox.md")[0]
    X_val, y_val = digits["val"]
    env = {"model_a": digit_mlps[0], "model_b": digit_mlps[1], "X_val": X_val, "y_val": y_val}
    tour = tour.replace("ngen=20", "ngen=3")  # the same calls, fewer generations
    with warnings.catch_warnings():  # the block creates creator classes other tests have created too
        warnings.simplefilter("ignore", RuntimeWarning)
        exec(compile(tour, "docs/guide/toolbox.md", "exec"), env)
    log = env["logbook"]
    assert log.select("gen") == [0, 1, 2, 3]
    assert env["merged"] is not digit_mlps[0] and env["hof"][0].fitness.values[0] >= log.select("max")[0]
    assert env["toolbox"].mate.func.__name__ == "cxUniform"  # the ablation line swapped the operator


def test_commands_install_the_pinned_versions():
    """Both README commands install with constraints.txt, which pins every requirement and test extra."""
    import configparser

    cmds = [c for c in readme_commands() if "pip install" in c]
    assert len(cmds) == 2 and all(c.count("-c constraints.txt") == 2 for c in cmds)
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    reqs = cfg["options"]["install_requires"].split() + [r for k in ("test", "docs", "dev") for r in extras[k].split()]
    names = {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[]", r)[0].lower()) for r in reqs if r.strip()}
    assert names <= set(pins), f"not pinned: {sorted(names - set(pins))}"


def test_alignment_guide_runs(digits, digit_mlps):
    """The alignment guide's Python block, as written, with two real digits MLPs."""
    import mega_deap

    block = python_blocks("docs/guide/alignment.md")[0]
    (X_val, y_val), (X_train, _) = digits["val"], digits["train"]
    env = {
        "mega_deap": mega_deap,
        "model_a": digit_mlps[0],
        "model_b": digit_mlps[1],
        "X_train": X_train,
        "X_val": X_val,
        "y_val": y_val,
    }
    with pytest.raises(ValueError, match="no BatchNorm"):  # the line for BatchNorm models, on MLPs
        exec(compile(block, "docs/guide/alignment.md", "exec"), env)
    block = block.replace("repair_batchnorm(average, X_train[:512])", "pass")
    block = block.replace(", calibration=X_train[:512])", ")")
    exec(compile(block, "docs/guide/alignment.md", "exec"), env)
    assert env["result"].adapter.dim == 4 * 2  # the last line: CMA-ES over per-tensor coefficients
