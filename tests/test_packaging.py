"""The install story: README's test command is what CI runs; the core imports no optional framework."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)


def test_ci_runs_readme_test_command():
    tests = [c.strip() for c in readme_commands() if "pytest" in c]
    assert len(tests) == 1, "README should show exactly one test command"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests[0] in ci


def test_readme_main_command_runs_the_example():
    main = [c for c in readme_commands() if "examples/merge_cifar.py" in c]
    assert main and "pip install" in main[0]
    assert (ROOT / "examples" / "merge_cifar.py").exists()


def test_import_pulls_no_optional_framework():
    code = ("import sys, mega_deap, mega_deap.adapters; "
            "print(sorted(m for m in ('keras', 'torchvision', 'tensorflow', 'jax', 'sklearn', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_readme_api_tour_runs(digits, digit_mlps):
    """The README's first Python block, run as written with two real digits models."""
    text = (ROOT / "README.md").read_text()
    tour = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    X_val, y_val = digits["val"]
    env = {"model_a": digit_mlps[0], "model_b": digit_mlps[1], "X_val": X_val, "y_val": y_val}
    tour = tour.replace("ngen=20", "ngen=3")  # the same calls, fewer generations
    exec(compile(tour, "README.md", "exec"), env)
    log = env["logbook"]
    assert log.select("gen") == [0, 1, 2, 3]
    assert env["merged"] is not digit_mlps[0] and env["hof"][0].fitness.values[0] >= log.select("max")[0]
    assert env["toolbox"].mate.func.__name__ == "cxUniform"  # the ablation line swapped the operator
