"""The paper's experiments end to end at tiny sizes: data loading, models, both examples, mega-merge."""

import importlib.util
import json
import os
import pathlib
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import mega_deap
from mega_deap.experiments import (
    build_model,
    cifar10_splits,
    load_cifar10,
    load_model_file,
    model_accuracy,
    read_cifar_batch,
    resolve_splits,
    resnet_cifar,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_cifar(folder, n_train=40, n_test=30, seed=0):
    """Small files in the exact CIFAR-10 python-pickle format."""
    rng = np.random.default_rng(seed)
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    written = {}
    for name, n in [(f"data_batch_{i}", n_train) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 0] = labels * 25  # a learnable signal: the first red pixel encodes the class
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    return d, written


def test_cifar_loader_reads_the_real_format(tmp_path):
    folder, written = write_cifar(tmp_path)
    X, y = read_cifar_batch(folder / "data_batch_3")
    data, labels = written["data_batch_3"]
    assert X.dtype == torch.uint8 and X.shape == (40, 3, 32, 32)
    assert np.array_equal(X.reshape(40, -1).numpy(), data) and y.tolist() == labels.tolist()
    # channel-major rows: the first 1024 bytes are the red plane
    assert np.array_equal(X[:, 0].reshape(40, -1).numpy(), data[:, :1024])
    raw = load_cifar10(tmp_path)
    assert raw["train"][0].shape == (200, 3, 32, 32) and raw["test"][0].shape == (30, 3, 32, 32)
    s = cifar10_splits(tmp_path, val_size=50, seed=0)
    assert len(s.train[1]) == 150 and len(s.val[1]) == 50 and len(s.test[1]) == 30
    # train and validation are disjoint pieces of the training batches, the test batch stays apart
    tr = {tuple(r) for r in s.train[0].reshape(150, -1)[:, :8].tolist()}
    va = {tuple(r) for r in s.val[0].reshape(50, -1)[:, :8].tolist()}
    assert not tr & va
    assert cifar10_splits(tmp_path, val_size=50, seed=1).val[1].tolist() != s.val[1].tolist()


def test_cifar_loader_refuses_code_and_junk(tmp_path):
    folder, _ = write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        read_cifar_batch(folder / "data_batch_1")
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q\x00")  # truncated
    with pytest.raises(ValueError, match="not a readable CIFAR-10 batch"):
        read_cifar_batch(folder / "data_batch_2")


def test_resolve_splits_falls_back_in_one_line_only_without_a_data_dir(tmp_path):
    said = []
    s = resolve_splits("auto", None, say=said.append)
    assert s.name == "digits" and len(said) == 1 and "digits" in said[0] and "no --data-dir given" in said[0]
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-10 python batches in .* \(add --download\)"):
        resolve_splits("auto", str(tmp_path), say=said.append)  # a named folder without CIFAR-10: an error
    with pytest.raises(FileNotFoundError, match="CIFAR-10 is not available"):
        resolve_splits("cifar10", str(tmp_path))
    d = resolve_splits("digits")
    assert len(d.test[1]) == 400 and d.train[0].shape[1:] == (1, 8, 8)


def test_cifar_resnets_follow_he_et_al():
    counts = {d: sum(p.numel() for p in resnet_cifar(d).parameters()) for d in (20, 56, 110)}
    assert 0.26e6 < counts[20] < 0.28e6 and 0.84e6 < counts[56] < 0.87e6 and 1.7e6 < counts[110] < 1.75e6
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in resnet_cifar(56).modules())
    assert convs + 1 == 56  # 6n+1 convolutions and one linear layer
    assert resnet_cifar(20)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet_cifar(21)
    assert build_model("smallcnn", 1, 10, 8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# merge_cifar's rows before MeGA's, with alignment, for a model with BatchNorm
ALIGNED_REPORT = [
    "parent 1 (seed 56)",
    "parent 2 (seed 57)",
    "weight averaging",
    "aligned weight averaging",
    "aligned averaging + BatchNorm repair",
    "output ensemble",
]


def check_png(path):
    import matplotlib.image

    assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_merge_cifar_example_on_digits(tmp_path):
    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--epochs", "3", "--popsize", "6", "--ngen", "3", "--out", str(out), "--quiet"]
    report = load_example("merge_cifar").main(argv)
    saved = json.loads((out / "results.json").read_text())
    names = [r["model"] for r in saved["rows"]]
    # merge aligns by activations and seeds the zip by default; the small CNN has BatchNorm: the repaired
    # average is reported
    assert names[:7] == [*ALIGNED_REPORT[:-1], "the parents zipped (ZipIt!)", ALIGNED_REPORT[-1]]
    assert saved["align"] == "zip"
    kept = saved["gate"]["parent"]  # the significance gate (on by default) may return a parent: the row says
    mega = "MeGA, aligned by activations, zip seeded"
    assert names[7] == mega if kept is None else names[7].startswith(f"{mega} (the gate kept {names[kept]}, p = ")
    assert all(isinstance(r["val_acc"], float) and isinstance(r["test_acc"], float) for r in saved["rows"])
    assert saved["rows"] == report["rows"] and len(saved["logbook"]) == 4
    check_png(out / "fitness.png")
    # the merged model file loads and has the accuracy the table reports
    from mega_deap.experiments import digits_splits

    s = digits_splits(seed=0)
    m = load_model_file(build_model("smallcnn", 1, 10, 8), out / "merged.safetensors")
    assert model_accuracy(m, *s.val) == saved["rows"][-1]["val_acc"]
    assert model_accuracy(m, *s.test) == saved["rows"][-1]["test_acc"]
    assert saved["mega_val_fitness"] == model_accuracy(m, *s.val)  # the default fitness: validation accuracy
    assert saved["metric"] == "accuracy" and "cifar_model" not in saved["settings"]
    better = max(saved["rows"][:2], key=lambda r: r["val_acc"])
    assert saved["mega_minus_better_parent"]["test_acc"] == saved["rows"][-1]["test_acc"] - better["test_acc"]
    assert saved["mega_minus_better_parent"]["val_acc"] >= 0  # the guarantee, in accuracy
    # a re-run takes the parents from the cache
    again = load_example("merge_cifar").main(argv)
    assert all("(cached)" in p for p in again["parents"]) and again["rows"] == report["rows"]
    # another split seed moves validation images into training: the parents are retrained, not reused
    other = load_example("merge_cifar").main(argv + ["--seed", "1"])
    assert not any("(cached)" in p for p in other["parents"])
    assert set(other["parents"]).isdisjoint(report["parents"])


def test_merge_cifar_distil_adds_the_distilled_merge_and_changes_nothing_else(tmp_path):
    from mega_deap.align import distil
    from mega_deap.experiments import digits_splits

    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--epochs", "3", "--popsize", "6", "--ngen", "2", "--out", str(out), "--quiet"]
    plain = load_example("merge_cifar").main(argv)
    report = load_example("merge_cifar").main(argv + ["--distil"])
    assert report["rows"][:-1] == plain["rows"]  # the parents (cached), the merge and its report as before
    assert report["rows"][-1]["model"].startswith("MeGA + distil") and "distil" in report["seconds"]
    # the row is distil's, on the merged model the run saved and the parents it cached
    s = digits_splits(seed=0)
    parents = [load_model_file(build_model("smallcnn", 1, 10, 8), p.split(" ")[0]) for p in report["parents"]]
    merged = load_model_file(build_model("smallcnn", 1, 10, 8), out / "merged.safetensors")
    student = distil(merged, parents, s.val[0], seed=0)
    assert report["rows"][-1]["test_acc"] == model_accuracy(student, *s.test)
    assert report["rows"][-1]["val_acc"] == model_accuracy(student, *s.val)


def test_parent_cache_key_holds_everything_that_decides_the_parent(tmp_path):
    from mega_deap.experiments import digits_splits, train_or_load

    s0, s1 = digits_splits(seed=0), digits_splits(seed=1)
    factory = lambda: build_model("mlp", 1, 10, 8)  # noqa: E731
    kw = dict(cache_dir=str(tmp_path), tag="mlp-digits", epochs=1, batch_size=128, progress=False)
    m, path, cached = train_or_load(factory, s0.train, seed=5, **kw)
    assert not cached
    m2, path2, cached2 = train_or_load(factory, s0.train, seed=5, **kw)
    assert cached2 and path2 == path
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    changed = [
        train_or_load(factory, s1.train, seed=5, **kw),  # another split
        train_or_load(factory, (s0.train[0][:-1], s0.train[1][:-1]), seed=5, **kw),  # another size
        train_or_load(factory, s0.train, seed=6, **kw),  # another parent seed
        train_or_load(factory, s0.train, seed=5, **{**kw, "epochs": 2}),  # another recipe
        train_or_load(lambda: build_model("smallcnn", 1, 10, 8), s0.train, seed=5, **kw),
    ]  # model
    assert not any(c[2] for c in changed)
    assert len({c[1] for c in changed} | {path}) == 6
    # a file renamed into another key's place is not trusted: its recorded key differs, so it retrains
    import shutil

    shutil.copy(changed[0][1], path)
    assert not train_or_load(factory, s0.train, seed=5, **kw)[2]


def test_merge_cifar_example_on_cifar_files(tmp_path):
    write_cifar(tmp_path / "data")
    report = load_example("merge_cifar").main(
        [
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path / "data"),
            "--model",
            "smallcnn",
            "--val-size",
            "50",
            "--epochs",
            "1",
            "--popsize",
            "4",
            "--ngen",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
            "--checkpoint",
            str(tmp_path / "run.ckpt"),
        ]
    )
    assert report["dataset"] == "cifar10" and report["sizes"] == {"train": 150, "val": 50, "test": 30}
    from mega_deap.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run.ckpt")[0]["gen"] == 1


def test_merge_hierarchical_example(tmp_path):
    report = load_example("merge_hierarchical").main(
        [
            "--dataset",
            "digits",
            "--leaves",
            "4",
            "--epochs",
            "2",
            "--popsize",
            "4",
            "--ngen",
            "1",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert [r["level"] for r in report["rows"]] == [0, 0, 0, 0, 1, 1, 2]
    check_png(tmp_path / "tree.png")


def test_merge_tree_counts(digits, digit_mlps):
    tree = mega_deap.merge_tree(digit_mlps * 2, digits["val"], popsize=4, ngen=1, verbose=False)
    assert [len(level) for level in tree.levels] == [4, 2, 1] and len(tree.merges) == 3
    with pytest.raises(ValueError, match="power of two"):
        mega_deap.merge_tree(digit_mlps + digit_mlps[:1], digits["val"])


def cli_files(folder, digits, digit_mlps):
    """Two checkpoints of the digits MLPs and a ``defs.py`` with ``model`` and ``data`` functions for
    ``mega-merge``; returns the checkpoints' paths."""
    from mega_deap.experiments import save_model

    paths = [str(save_model(m, folder / f"p{i}.safetensors")) for i, m in enumerate(digit_mlps)]
    torch.save({"val": digits["val"], "test": digits["test"]}, folder / "data.pt")
    (folder / "defs.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def model():\n    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))\n"
        f"def data():\n    return torch.load({str(folder / 'data.pt')!r}, weights_only=True)\n"
    )
    return paths


def test_mega_merge_cli(tmp_path, digits, digit_mlps):
    from mega_deap.cli import main

    paths = cli_files(tmp_path, digits, digit_mlps)
    torch.save(digit_mlps[1].state_dict(), tmp_path / "p1.pt")
    out = tmp_path / "out"
    rc = main(
        [
            paths[0],
            str(tmp_path / "p1.pt"),
            "--model",
            f"{tmp_path / 'defs.py'}:model",
            "--data",
            f"{tmp_path / 'defs.py'}:data",
            "--popsize",
            "6",
            "--ngen",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    names = [r["model"] for r in res["rows"]]
    kept = res["gate"]["parent"]  # the significance gate may return a parent: the row says which
    assert names[:2] == ["p0.safetensors", "p1.pt"]
    assert names[2] == "MeGA" if kept is None else names[2].startswith(f"MeGA (the gate kept {names[kept]}, p = ")
    assert res["rows"][0]["val_accuracy"] == pytest.approx(model_accuracy(digit_mlps[0], *digits["val"]))
    assert "test_accuracy" in res["rows"][2]
    check_png(out / "fitness.png")
    assert main([paths[0], str(tmp_path / "missing.pt"), "--model", "x:y", "--data", "x:y"]) == 2


def test_download_says_why_it_cannot(tmp_path, monkeypatch):
    """Without a usable torchvision the download offer returns the reason; auto mode falls back to digits."""
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("no torchvision here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    from mega_deap.experiments import download_cifar10

    folder, reason = download_cifar10(str(tmp_path))
    assert folder is None and "torchvision is not usable" in reason
    with pytest.raises(FileNotFoundError, match="torchvision is not usable"):
        resolve_splits("auto", str(tmp_path), download=True)


def _digits_merge_cifar(out, *extra):
    """merge_cifar.py on digits, small (3 epochs, N=6), quiet, writing to ``out``, with ``extra`` arguments."""
    argv = ["--dataset", "digits", "--epochs", "3", "--popsize", "6", "--out", str(out), "--quiet", *extra]
    return load_example("merge_cifar").main(argv)


def test_merge_cifar_align_reports_the_aligned_rows_and_repairs_batchnorm(tmp_path):
    report = _digits_merge_cifar(tmp_path / "run", "--ngen", "2", "--align", "--calibration", "200")
    names = [r["model"] for r in report["rows"]]
    assert names == [*ALIGNED_REPORT, "MeGA, aligned by activations"]
    rows = {r["model"]: r for r in report["rows"]}
    # BatchNorm statistics recomputed on training images bring the aligned average back near the parents
    assert rows["aligned averaging + BatchNorm repair"]["val_acc"] > rows["aligned weight averaging"]["val_acc"]
    # the parents are in the first population: the merge is at least the better parent on validation
    assert rows["MeGA, aligned by activations"]["val_acc"] >= max(rows[n]["val_acc"] for n in names[:2])
    assert report["settings"]["align"] is True


def test_mega_merge_cli_align_and_coefficients(tmp_path, digits, digit_mlps):
    from mega_deap.cli import main

    paths = cli_files(tmp_path, digits, digit_mlps)
    out = tmp_path / "out"
    rc = main(
        paths
        + [
            "--model",
            f"{tmp_path / 'defs.py'}:model",
            "--data",
            f"{tmp_path / 'defs.py'}:data",
            "--popsize",
            "6",
            "--ngen",
            "2",
            "--out",
            str(out),
            "--quiet",
            "--align",
            "--genome",
            "coefficients",
        ]
    )
    assert rc == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["align"] and saved["settings"]["genome"] == "coefficients"
    parents, merged = saved["rows"][:2], saved["rows"][2]
    assert merged["val_accuracy"] >= max(p["val_accuracy"] for p in parents)
    m = load_model_file(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), out / "merged.safetensors")
    assert model_accuracy(m, *digits["test"]) == merged["test_accuracy"]


def test_fit_skips_a_last_batch_of_one_for_batchnorm_models():
    """65 examples in batches of 64 leave one: BatchNorm cannot normalise it in training mode."""
    from mega_deap.experiments.heldout_study import BNMLP
    from mega_deap.experiments.train import fit

    torch.manual_seed(0)
    X, y = torch.randn(65, 5), torch.randint(0, 3, (65,))
    model = BNMLP(5, 3, hidden=8)
    assert fit(model, (X, y), epochs=2, lr=0.01, batch_size=64, generator=torch.Generator().manual_seed(0)) == 2


def test_fitness_plot_follows_the_best_curve_not_an_outlying_mean(monkeypatch, tmp_path):
    from deap import tools
    from mega_deap.experiments import report

    seen = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: seen.setdefault("fig", fig) and path)
    log = tools.Logbook()
    for g, (best, mean) in enumerate([(0.95, 0.90), (0.96, 0.05), (0.97, 0.93)]):  # one collapsed blend
        log.record(gen=g, max=best, avg=mean)
    report.plot_fitness(log, tmp_path / "f.png", extra={"parent 1": 0.94})
    ax = seen["fig"].axes[0]
    low, high = ax.get_ylim()
    assert 0.5 < low < 0.94 and high > 0.97
    assert "below the axis" in ax.get_legend().get_texts()[1].get_text()


def test_merge_cifar_zip_reports_the_zip_it_started_from(tmp_path):
    """--align zip: the report adds the parents' zip (REPAIRed: BatchNorm statistics recomputed) to the
    aligned rows, and names the merge's alignment."""
    report = _digits_merge_cifar(tmp_path / "run", "--ngen", "1", "--align", "zip", "--calibration", "200")
    names = [r["model"] for r in report["rows"]]
    mega = "MeGA, aligned by activations, zip seeded"
    assert names == [*ALIGNED_REPORT[:-1], "the parents zipped (ZipIt!)", ALIGNED_REPORT[-1], mega]
    rows = {r["model"]: r for r in report["rows"]}
    # the zip is in the first population: the merge is at least as accurate on validation
    assert rows[mega]["val_acc"] >= rows["the parents zipped (ZipIt!)"]["val_acc"]
    assert report["settings"]["align"] == "zip"
