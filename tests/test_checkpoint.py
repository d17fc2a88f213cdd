"""Checkpoint and resume: SIGKILL in the middle of a generation, resume, same bits as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
import pathlib

import pytest
import torch

import mega_deap
from mega_deap.checkpoint import CheckpointError, load_checkpoint

HERE = pathlib.Path(__file__).resolve().parent


def child(*args):
    return [sys.executable, str(HERE / "resume_child.py"), *map(str, args)]


def test_sigkill_mid_generation_then_resume_is_bit_identical(tmp_path, digits, digit_mlps):
    data = tmp_path / "data.pt"
    torch.save({"models": [m.state_dict() for m in digit_mlps], "val": digits["val"]}, data)
    # the reference: uninterrupted
    subprocess.run(child("--ckpt", tmp_path / "ref.ckpt", "--out", tmp_path / "ref.json", "--data", data), check=True)
    # killed while generation 2 of 6 is being evaluated: the population goes on changing after the kill
    ckpt = tmp_path / "run.ckpt"
    proc = subprocess.Popen(child("--ckpt", ckpt, "--out", tmp_path / "x.json", "--data", data, "--hang-at", 2))
    deadline = time.time() + 120
    while not (tmp_path / "run.ckpt.hanging").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta, _ = load_checkpoint(ckpt)
    assert meta["gen"] == 1 and len(meta["logbook"]) == 2  # generations 0..1 were saved, 2 was not
    saved = meta["fitness"]
    (tmp_path / "run.ckpt.resumed").touch()
    subprocess.run(child("--ckpt", ckpt, "--out", tmp_path / "res.json", "--data", data), check=True)
    ref = json.loads((tmp_path / "ref.json").read_text())
    res = json.loads((tmp_path / "res.json").read_text())
    # bit for bit (floats survive JSON exactly): the whole final population, its fitness, the hall of fame
    assert res["population"] == ref["population"]
    assert res["fitness"] == ref["fitness"]
    assert res["halloffame"] == ref["halloffame"]
    assert res["genome"] == ref["genome"]
    assert res["logbook"] == ref["logbook"]
    # the run after the kill was not idle: the population and its fitness moved on from the checkpoint
    assert sorted(f[0] for f in res["fitness"]) != sorted(f[0] for f in saved)
    assert [r["gen"] for r in res["logbook"]] == list(range(7))


def test_corrupted_checkpoint_is_named_and_prev_survives(tmp_path, digits, digit_mlps):
    ckpt = tmp_path / "c.ckpt"
    mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, verbose=False, checkpoint=str(ckpt))
    prev = pathlib.Path(f"{ckpt}.prev")
    assert prev.exists() and load_checkpoint(prev)[0]["gen"] == 1 and load_checkpoint(ckpt)[0]["gen"] == 2
    blob = ckpt.read_bytes()
    ckpt.write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint.*c\.ckpt\.prev' is intact"):
        load_checkpoint(ckpt)
    flipped = bytearray(blob)
    flipped[-100] ^= 0xFF  # a bit flip in the tensor data
    ckpt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(ckpt)
    # the previous good checkpoint resumes a run
    os.replace(prev, ckpt)
    r = mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=3, verbose=False, checkpoint=str(ckpt))
    assert [x["gen"] for x in r.logbook] == [0, 1, 2, 3]


def test_checkpoint_of_another_run_is_refused(tmp_path, digits, digit_mlps):
    ckpt = str(tmp_path / "c.ckpt")
    mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=1, verbose=False, checkpoint=ckpt)
    with pytest.raises(ValueError, match="belongs to another job: its initial population"):
        mega_deap.merge(digit_mlps, digits["val"], popsize=6, ngen=1, verbose=False, checkpoint=ckpt)


def test_checkpoint_reading_never_unpickles(tmp_path):
    evil = tmp_path / "evil.ckpt"
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_resume_with_other_operators_is_refused(tmp_path, digits, digit_mlps):
    ckpt = str(tmp_path / "c.ckpt")
    mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=1, verbose=False, checkpoint=ckpt)
    # written with sparse mutation: resuming with layer mutation is refused
    with pytest.raises(
        ValueError, match=r"toolbox\.mutate = \['mutSparseGaussian'.*this run registers \['mutLayerGaussian'"
    ):
        mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, verbose=False, checkpoint=ckpt, mutation="layer")
    with pytest.raises(ValueError, match="npar=4, this run has npar=3"):
        mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, npar=3, verbose=False, checkpoint=ckpt)
    # the same settings resume
    r = mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, verbose=False, checkpoint=ckpt)
    assert [x["gen"] for x in r.logbook] == [0, 1, 2]


# -- a checkpoint knows its job ----------------------------------------------------------------------


def test_resuming_another_job_is_refused_naming_the_difference(tmp_path, digits, digit_mlps):
    import copy

    ckpt = str(tmp_path / "c.ckpt")
    kw = dict(popsize=4, ngen=2, verbose=False, checkpoint=ckpt)
    mega_deap.merge(digit_mlps, digits["val"], ngen=1, **{k: v for k, v in kw.items() if k != "ngen"})
    other = copy.deepcopy(digit_mlps[1])
    with torch.no_grad():
        other[0].weight.mul_(1.01)
    X, y = digits["val"]
    cases = [
        (dict(models=[digit_mlps[0], other]), "initial population"),  # other parents, same architecture
        (dict(seed=1), "settings \\(another seed\\)"),  # another seed (the first population is seeded alone)
        (dict(val=(X[:-1], y[:-1])), "evaluation"),  # other validation data
    ]
    for change, what in cases:
        models = change.pop("models", digit_mlps)
        val = change.pop("val", digits["val"])
        with pytest.raises(ValueError, match=f"belongs to another job: its {what}"):
            mega_deap.merge(models, val, **kw, **change)
    # the same job resumes
    r = mega_deap.merge(digit_mlps, digits["val"], **kw)
    assert [x["gen"] for x in r.logbook] == [0, 1, 2]


def test_another_metric_is_another_job(tmp_path, digits, digit_mlps):
    from mega_deap import TensorPopulation, eaMeGA, initBlend, mega_toolbox
    from mega_deap.adapters import TorchAdapter, fitness
    from mega_deap.presets import ensure_creator_classes

    ad = TorchAdapter(digit_mlps[0])
    X, y = digits["val"]
    onehot = torch.nn.functional.one_hot(y, 10).float()
    ckpt = str(tmp_path / "m.ckpt")
    for metric, run_ngen, err in (("neg_mse", 1, None), ("neg_mae", 2, "its evaluation")):
        mega_deap.seed(0)
        pop = TensorPopulation(4, ad.dim, device="cpu")
        inds = initBlend(pop.individuals(ensure_creator_classes()), ad.genomes(digit_mlps))
        tb = mega_toolbox(pop, fitness(metric, ad, X, onehot), repair=ad)
        if err is None:
            eaMeGA(inds, tb, run_ngen, verbose=False, checkpoint=ckpt)
        else:
            with pytest.raises(ValueError, match=err):
                eaMeGA(inds, tb, run_ngen, verbose=False, checkpoint=ckpt)


def _mean_weight(model):
    return float(model[0].weight.mean())


def _max_weight(model):
    return float(model[0].weight.max())


def _first_bias(model):
    return float(model[0].bias[0])


def _mean_output(out, y):
    return float(out.mean())


def _max_output(out, y):
    return float(out.max())


@pytest.mark.parametrize("make", ["on_model", "on_outputs"])
def test_an_objective_of_the_same_name_but_another_function_is_another_job(make, tmp_path, digits, digit_mlps):
    """A checkpoint knows an objective by its function's code, not only by the name given to it: another
    function under the same name is refused; the same function (a new objective object) resumes."""
    from mega_deap import on_model, on_outputs

    if make == "on_model":
        first, other, val = _mean_weight, _max_weight, None
        objective = lambda fn: on_model(fn, name="score")  # noqa: E731
    else:
        first, other, val = _mean_output, _max_output, digits["val"]
        objective = lambda fn: on_outputs(fn, name="score")  # noqa: E731
    ckpt = str(tmp_path / "o.ckpt")
    kw = dict(popsize=4, verbose=False, checkpoint=ckpt, progress=False, device="cpu")
    mega_deap.merge(digit_mlps, val, metric=objective(first), ngen=1, **kw)
    with pytest.raises(ValueError, match="belongs to another job: its evaluation"):
        mega_deap.merge(digit_mlps, val, metric=objective(other), ngen=2, **kw)
    r = mega_deap.merge(digit_mlps, val, metric=objective(first), ngen=2, **kw)
    assert [x["gen"] for x in r.logbook] == [0, 1, 2]


def test_code_digest_tells_functions_apart_and_is_stable():
    from mega_deap.files import code_digest

    assert code_digest(_mean_weight) != code_digest(_max_weight)
    assert code_digest(_mean_weight) == code_digest(_mean_weight)
    import functools

    assert code_digest(functools.partial(_mean_weight)) != code_digest(functools.partial(_first_bias))
    # string hashing varies by process; a set constant must not make the digest vary with it
    code = (
        "from mega_deap.files import code_digest\n"
        "def f(x):\n    return x in {'a', 'b', 'c', 'd'}\n"
        "print(code_digest(f))"
    )
    import os
    import subprocess
    import sys

    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": str(s)}
        ).stdout
        for s in (1, 2, 3)
    }
    assert len(outs) == 1 and len(outs.pop().strip()) == 64


def _rewrite(path, edit, checksum=True):
    """Re-save a checkpoint with its header edited by ``edit(meta) -> meta`` (the header checksum fixed up
    when ``checksum``, so only the field checks stand between the file and a resume)."""
    import hashlib
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = edit(json.loads(header["mega_deap"]))
    text = json.dumps(meta)
    header = {
        "mega_deap": text,
        "mega_deap.sha256": hashlib.sha256(text.encode()).hexdigest() if checksum else header["mega_deap.sha256"],
    }
    save_file(tensors, path, metadata=header)


def test_header_is_covered_by_a_checksum_and_checked_field_by_field(tmp_path, digits, digit_mlps):
    import shutil

    ckpt = tmp_path / "c.ckpt"
    mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, verbose=False, checkpoint=str(ckpt))
    good = tmp_path / "good.ckpt"
    shutil.copy(ckpt, good)

    def bad(edit, match, checksum=True):
        shutil.copy(good, ckpt)
        _rewrite(str(ckpt), edit, checksum)
        with pytest.raises(CheckpointError, match=match) as info:
            load_checkpoint(ckpt)
        assert "c.ckpt" in str(info.value) and "c.ckpt.prev' is intact" in str(info.value)

    bad(lambda m: {**m, "gen": 1}, "header does not match its checksum", checksum=False)  # one edited field
    bad(lambda m: {k: v for k, v in m.items() if k != "sha256"}, "field 'sha256' is missing")
    bad(lambda m: {}, "format None")
    bad(lambda m: {**m, "gen": -5}, "generation is -5")
    bad(lambda m: {**m, "gen": 1000}, "logbook has 3 records for generations 0..1000")
    bad(lambda m: {**m, "fitness": m["fitness"][:-1]}, "3 fitness entries for 4 individuals")
    bad(lambda m: {**m, "halloffame_fitness": []}, "hall of fame's fitness entries")
    # a generation past the run's ngen, with a consistent header: refused by the resume
    shutil.copy(good, ckpt)
    _rewrite(str(ckpt), lambda m: {**m, "gen": 3, "logbook": m["logbook"] + [m["logbook"][-1]]})
    with pytest.raises(ValueError, match="at generation 3, past this run's ngen=2"):
        mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, verbose=False, checkpoint=str(ckpt))


@pytest.mark.parametrize("fail_at", range(6))
def test_a_kill_at_any_file_operation_leaves_a_complete_checkpoint(tmp_path, digits, digit_mlps, fail_at):
    """Every file operation of a save (link, renames, fsyncs) made to fail in turn, as a kill there would:
    the checkpoint path always holds a complete checkpoint, of the old generation or the new one."""
    from unittest import mock

    ckpt = tmp_path / "c.ckpt"
    mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=1, verbose=False, checkpoint=str(ckpt))
    calls = {"n": 0}
    real = {"replace": os.replace, "link": os.link, "fsync": os.fsync}

    def dying(name):
        def op(*a, **k):
            calls["n"] += 1
            if calls["n"] == fail_at + 1:
                raise KeyboardInterrupt(f"killed at {name}")
            return real[name](*a, **k)

        return op

    with (
        mock.patch("os.replace", dying("replace")),
        mock.patch("os.link", dying("link")),
        mock.patch("os.fsync", dying("fsync")),
    ):
        try:
            mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, verbose=False, checkpoint=str(ckpt))
        except KeyboardInterrupt:
            pass
    meta, _ = load_checkpoint(ckpt)
    assert meta["gen"] in (1, 2)
    r = mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, verbose=False, checkpoint=str(ckpt))
    assert [x["gen"] for x in r.logbook] == [0, 1, 2]


def _generator_run(digits, digit_mlps, ngen, ckpt):
    """eaMeGA whose blend and mutation draw from their own torch.Generator (a new object every run, as a
    script that is started again makes it), checkpointed."""
    from deap import tools

    from mega_deap import TensorPopulation, cxBlend, eaMeGA, initBlend, mutSparseGaussian
    from mega_deap.adapters import TorchAdapter, accuracy
    from mega_deap.presets import default_stats, ensure_creator_classes, mega_toolbox

    mega_deap.seed(0)
    ad = TorchAdapter(digit_mlps[0])
    pop = TensorPopulation(6, ad.dim, device="cpu")
    ev = accuracy(ad, *digits["val"])
    tb = mega_toolbox(pop, ev)
    gen = torch.Generator().manual_seed(5)
    tb.register("mate", cxBlend, generator=gen)
    tb.register("mutate", mutSparseGaussian, mu=0.0, sigma=0.05, indpb=0.1, generator=gen)
    inds = initBlend(pop.individuals(ensure_creator_classes()), ad.genomes(digit_mlps))
    hof = tools.HallOfFame(1, similar=mega_deap.genome_equal)
    final, log = eaMeGA(inds, tb, ngen, stats=default_stats(), halloffame=hof, verbose=False, checkpoint=str(ckpt))
    return [ind.genome.clone() for ind in final], [dict(r) for r in log]


def test_resume_with_a_generator_keyword_continues_with_the_same_bits(tmp_path, digits, digit_mlps):
    """A registration with generator=torch.Generator() (documented) could never resume: the fingerprint
    compared keywords by repr, which holds a memory address. Now the generator is compared by its device and
    its state travels in the checkpoint, so a run stopped after generation 2 resumes to the same bits."""
    whole, log = _generator_run(digits, digit_mlps, 4, tmp_path / "whole.ckpt")
    _generator_run(digits, digit_mlps, 2, tmp_path / "run.ckpt")
    resumed, log2 = _generator_run(digits, digit_mlps, 4, tmp_path / "run.ckpt")
    assert log2 == log and all(torch.equal(a, b) for a, b in zip(resumed, whole))


def test_cuda_rng_state_is_the_runs_device_restored_on_each_ranks_own(monkeypatch):
    """Rank 0 saves the state of the device its run draws from; rank r restores it into cuda:r (every rank
    breeds the same population, so every rank's own device holds that state), never rank 0's unused cuda:r
    state. CUDA is mocked: what is checked is which state goes where."""
    from mega_deap.rng import rng_state, set_rng_state

    states = {0: torch.tensor([1, 1], dtype=torch.uint8), 1: torch.tensor([2, 2], dtype=torch.uint8)}
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[torch.device(device).index])
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: calls.append((state.tolist(), torch.device(device)))
    )
    meta, tensors = rng_state("cuda:0")  # rank 0 writes
    assert tensors["rng.cuda"].tolist() == [1, 1] and not [k for k in tensors if k.startswith("rng.cuda.")]
    set_rng_state(meta, tensors, "cuda:1")  # rank 1 resumes on its own device
    assert calls == [([1, 1], torch.device("cuda:1"))]
    calls.clear()  # a checkpoint of an earlier version held every device of the writer
    legacy = {"rng.torch": tensors["rng.torch"], "rng.cuda.0": states[0], "rng.cuda.1": states[1]}
    set_rng_state(meta, legacy, "cuda:1")
    assert calls == [([1, 1], torch.device("cuda:1"))]
    calls.clear()  # a CPU run has no CUDA state to restore
    set_rng_state(meta, tensors, "cpu")
    assert calls == [] and "rng.cuda" not in rng_state("cpu")[1]


def test_the_source_digest_changes_with_any_source_and_only_with_one(tmp_path):
    import pathlib

    from mega_deap.files import source_digest

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not a source")
    first = source_digest(tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("still not a source")
    assert source_digest(tmp_path / "pkg") == first
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 3\n")
    assert source_digest(tmp_path / "pkg") != first
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    assert source_digest(tmp_path / "pkg") == first
    (tmp_path / "pkg" / "sub" / "b.py").rename(tmp_path / "pkg" / "sub" / "c.py")  # same text, another file
    assert source_digest(tmp_path / "pkg") != first
    assert source_digest() == source_digest(pathlib.Path(__import__("mega_deap").__file__).parent)
