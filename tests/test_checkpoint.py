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
    with pytest.raises(ValueError, match="holds a population of 4"):
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
    with pytest.raises(ValueError, match=r"toolbox\.mutate = \['mutSparseGaussian'.*this run registers \['mutLayerGaussian'"):
        mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, verbose=False, checkpoint=ckpt,
                        mutation="layer")
    with pytest.raises(ValueError, match="npar=4, this run has npar=3"):
        mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, npar=3, verbose=False,
                        checkpoint=ckpt)
    # the same settings resume
    r = mega_deap.merge(digit_mlps, digits["val"], popsize=4, ngen=2, verbose=False, checkpoint=ckpt)
    assert [x["gen"] for x in r.logbook] == [0, 1, 2]
