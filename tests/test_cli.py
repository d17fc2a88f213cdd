"""The command line as a new user meets it: a module in the current folder, mistakes that end in one line
(exit status 2) naming the file or argument, a plain and complete --help, the files written always listed."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

# command lines, packaging, printed output or the docs pipeline, not numbers: CI's second pass (one
# thread) leaves these out (-m 'not plumbing')
pytestmark = pytest.mark.plumbing

ROOT = pathlib.Path(__file__).resolve().parents[1]
NETS = (
    "import torch\nfrom torch import nn\n"
    "def make_net():\n    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))\n"
    "def wide_net():\n    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))\n"
    "def validation():\n    return torch.load('data.pt', weights_only=True)\n"
)


def cli(cwd, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mega_deap.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MPLBACKEND": "Agg", **(env or {})},
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory, digits, digit_mlps):
    d = tmp_path_factory.mktemp("user")
    (d / "mynets.py").write_text(NETS)
    torch.save(digits["val"], d / "data.pt")
    from mega_deap.experiments import save_model

    save_model(digit_mlps[0], d / "a.safetensors")
    torch.save(digit_mlps[1].state_dict(), d / "b.pt")
    torch.save(digit_mlps[1], d / "whole.pt")  # a pickled module, not a state dict
    (d / "afile").write_text("x")
    return d


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_module_in_the_current_folder_and_files_listed_even_quiet(folder):
    proc = cli(
        folder,
        "a.safetensors",
        "b.pt",
        "--model",
        "mynets:make_net",
        "--data",
        "mynets:validation",
        "--popsize",
        "4",
        "--ngen",
        "1",
        "--out",
        "merged",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("wrote ") and "merged.safetensors" in proc.stdout
    assert (folder / "merged" / "results.json").exists()


def test_the_gate_from_the_command_line(folder):
    """--gate 1 always keeps a parent (p <= 1), and the table and results.json say which; --gate none
    returns the merge itself."""
    import json

    common = ["a.safetensors", "b.pt", "--model", "mynets:make_net", "--data", "mynets:validation"]
    for gate, out in (("1", "g1"), ("none", "g0")):
        proc = cli(folder, *common, "--popsize", "4", "--ngen", "1", "--gate", gate, "--out", out)
        assert proc.returncode == 0, proc.stderr
        report = json.loads((folder / out / "results.json").read_text())
        if gate == "1":
            assert report["gate"]["parent"] in (0, 1) and 0 < report["gate"]["p"] <= 1
            assert "the gate kept" in proc.stdout
        else:
            assert report["gate"] == {"p": None, "parent": None} and "the gate kept" not in proc.stdout
    proc = cli(folder, *common, "--gate", "2", "--out", "g2")  # argparse's usage, then the one error line
    assert proc.returncode == 2 and not (folder / "g2").exists()
    assert "argument --gate: expected auto, none or a level in (0, 1], got '2'" in proc.stderr.strip().splitlines()[-1]
    # the gate's test on a held-out part: merge's own, as results.json records it
    proc = cli(folder, *common, "--popsize", "4", "--ngen", "1", "--gate", "1", "--gate-holdout", "0.5", "--out", "gh")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((folder / "gh" / "results.json").read_text())
    assert report["settings"]["gate_holdout"] == 0.5 and report["gate"]["parent"] in (0, 1)
    proc = cli(folder, *common, "--gate-holdout", "1", "--out", "gh1")
    assert proc.returncode == 2 and not (folder / "gh1").exists()
    assert (
        "argument --gate-holdout: expected auto, crossfit or a fraction in [0, 1), got '1'"
        in (proc.stderr.splitlines()[-1])
    )
    small = ("--popsize", "4", "--ngen", "1", "--gate", "1")
    proc = cli(folder, *common, *small, "--gate-holdout", "crossfit", "--out", "c")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((folder / "c" / "results.json").read_text())["settings"]["gate_holdout"] == "crossfit"
    proc = cli(folder, *common, "--gate", "none", "--gate-holdout", "0.3", "--out", "gh2")  # merge's refusal
    assert proc.returncode != 0 and not (folder / "gh2").exists()
    assert proc.stderr.strip().splitlines() == [
        "mega-merge: error: gate_holdout=0.3 is the gate's test data, but no gate runs (gate=None)"
    ]


def test_the_alignment_from_the_command_line(folder):
    """--align defaults to auto (activation matching here), --align none to the paper's unaligned merge,
    bare --align to align=True (activation matching); results.json says which ran; a wrong value is argparse's
    one line."""
    import json

    common = ["a.safetensors", "b.pt", "--model", "mynets:make_net", "--data", "mynets:validation"]
    for extra, out, want in (
        ([], "a0", "activations"),  # N=4: the parents, their average and its REPAIRed copy; no room for the zip
        (["--align", "none"], "a1", None),
        (["--align"], "a2", "activations"),
        (["--align", "zip", "--popsize", "6"], "a4", "zip"),  # room for the average, REPAIR and the zip
    ):
        proc = cli(folder, *common, "--popsize", "4", "--ngen", "1", *extra, "--out", out, "--quiet")
        assert proc.returncode == 0, proc.stderr
        assert json.loads((folder / out / "results.json").read_text())["align"] == want
    proc = cli(folder, *common, "--align", "yes", "--out", "a3")
    assert proc.returncode == 2 and not (folder / "a3").exists()
    assert (
        "argument --align: expected auto, none, weights, activations or zip, got 'yes'" in proc.stderr.splitlines()[-1]
    )


@pytest.mark.parametrize(
    "args,needles",
    [
        (["a.safetensors", "missing.pt"], ["checkpoint 'missing.pt'", "no such file"]),
        (["a.safetensors", "whole.pt"], ["'whole.pt' holds a pickled object, not a state dict", "state_dict()"]),
        (
            ["a.safetensors", "b.pt", "--model", "mynets:wide_net"],
            [
                "'a.safetensors' does not fit the --model",
                "size mismatch for 0.weight",
                "torch.Size([32, 64])",
                "torch.Size([48, 64])",
            ],
        ),
        (["a.safetensors", "b.pt", "--model", "mynets:nope"], ["--model 'mynets:nope'", "no function 'nope'"]),
        (["a.safetensors", "b.pt", "--model", "notthere:make_net"], ["no module named 'notthere'"]),
        (["a.safetensors", "b.pt", "--model", "make_net"], ["expected 'module:function'"]),
        (["a.safetensors", "b.pt", "--out", "afile"], ["--out 'afile' is a file"]),
        (["a.safetensors", "b.pt", "--sigma", "-1"], ["sigma must be a finite number >= 0"]),
        (["a.safetensors", "b.pt", "--gate", "0.05", "--metric", "neg_mse"], ["not a built-in classification"]),
    ],
)
def test_mistakes_end_in_one_line(folder, args, needles):
    base = {"--model": "mynets:make_net", "--data": "mynets:validation", "--out": "o"}
    extra = [x for k, v in base.items() if k not in args for x in (k, v)]
    one_line_error(cli(folder, *args, *extra, "--popsize", "4", "--ngen", "1"), *needles)


def test_help_is_plain_and_complete(folder):
    proc = cli(folder, "--help")
    assert proc.returncode == 0
    text = proc.stdout
    assert "``" not in text and "default: None" not in text and ":param" not in text
    assert "(required)" in text
    for flag in (
        "--popsize",
        "--ngen",
        "--npar",
        "--tournsize",
        "--mutation",
        "--sigma",
        "--indpb",
        "--seed",
        "--device",
        "--out",
        "--quiet",
        "--metric",
        "--model",
        "--data",
        "--gate",
    ):
        block = text.split(f"  {flag}", 1)[1].split("\n  -", 1)[0]  # its entry, up to the next option
        assert len(block.split()) > 2, f"{flag} has no help"


@pytest.mark.parametrize(
    "example", ["merge_cifar", "merge_hierarchical", "merge_keras", "ablation", "hpo_weight_merge", "reproduce"]
)
def test_every_example_help_works_without_extras(tmp_path, example):
    """Keras made unimportable (a stand-in package that fails on import) and --help still works."""
    fake = tmp_path / "fake"
    (fake / "keras").mkdir(parents=True)
    (fake / "keras" / "__init__.py").write_text("raise ImportError('keras is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{example}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "usage:" in proc.stdout


def test_a_data_dir_without_cifar_is_an_error_not_a_fallback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "merge_cifar.py"),
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"merge_cifar.py: error: CIFAR-10 is not available: no CIFAR-10 "
        f"python batches in {str(tmp_path)!r} (add --download)"
    ]
    assert not (tmp_path / "o").exists()


def test_an_example_out_that_is_a_file_is_refused_before_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "merge_cifar.py"), "--out", str(tmp_path / "afile")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"merge_cifar.py: error: --out {str(tmp_path / 'afile')!r} is a file; expected a folder"
    ]


def test_an_internal_error_shows_its_traceback(folder, monkeypatch, capsys):
    """A ValueError from inside the library (here: a merge that fails after the checks passed) is a fault,
    not the user's mistake: its traceback is printed and the exit status is 1, not one line and 2."""
    import mega_deap
    from mega_deap import cli as cli_module

    def broken(*args, **kwargs):
        raise ValueError("an index went wrong deep inside")

    monkeypatch.setattr(mega_deap, "merge", broken)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    code = cli_module.main(
        ["a.safetensors", "b.pt", "--model", "mynets:make_net", "--data", "mynets:validation", "--out", "o", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback (most recent call last)" in err and "an index went wrong" in err
    assert "internal error" in err
