"""Run by tests/test_distributed.py, once without a process group and once under torchrun: a merge whose
result rank 0 writes to OUT (safetensors + JSON). MODE: "single", "dist", "diverge" (rank 1 uses
another seed, which the guard must catch), "unshared" (rank 1 cannot see the checkpoint rank 0 resumes) or
"permuted" (rank 1's matchings return other, equally valid permutations, as unlike hardware can: every
rank must take rank 0's aligned parents)."""

import json
import os
import sys

import torch

torch.set_num_threads(1)
CHILD_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, CHILD_DIR)


def main(mode, out):
    import mega_deap
    from mega_deap import distributed
    from conftest import SmallCNN, permuted_copy, train_mlp
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    if mode != "single":
        torch.distributed.init_process_group("gloo")
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    train, val = (X[:1000], y[:1000]), (X[1000:1300], y[1000:1300])
    mlps = [train_mlp(train, 1, epochs=3), train_mlp(train, 2, epochs=3)]
    seed = 1 if mode == "diverge" and distributed.rank() == 1 else 0
    if mode == "matchfail" and distributed.rank() == 1:  # the matching fails on one rank only
        import mega_deap.align as align

        def failing(*a, **k):
            raise RuntimeError("rank 1 cannot match")

        align.activation_matching = failing
    if mode == "permuted" and distributed.rank() == 1:
        import mega_deap.align as align

        for name in ("activation_matching", "weight_matching"):
            matching = getattr(align, name)

            def other(models, *a, _matching=matching, **k):  # the same functions, other unit orders
                ref, *rest = _matching(models, *a, **k)
                return [ref, *(permuted_copy(m, 7) for m in rest)]

            setattr(align, name, other)
    import mega_deap.algorithms as algorithms

    save = algorithms.save_checkpoint

    def recorded_save(path, **state):  # which rank writes checkpoints
        with open(os.path.join(out, f"saves-{mode}-rank{distributed.rank()}.txt"), "a") as f:
            f.write(f"{state['gen']}\n")
        return save(path, **state)

    algorithms.save_checkpoint = recorded_save
    ckpt = os.path.join(out, f"run-{mode}.ckpt")
    if mode == "unshared":  # rank 0 sees the single run's checkpoint, rank 1 a folder without it
        ckpt = os.path.join(out, "run-single.ckpt") if distributed.rank() == 0 else os.path.join(out, "r1", "run.ckpt")
        os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    a = mega_deap.merge(
        mlps, val, popsize=10, ngen=3, seed=seed, progress=False, device="cpu", checkpoint=ckpt, verbose=True
    )
    # a CNN with BatchNorm repaired inside the fitness: the repair writes into the individuals on every rank
    torch.manual_seed(0)
    cnns = [SmallCNN().eval() for _ in range(2)]
    img = (val[0].reshape(-1, 1, 8, 8), val[1])
    b = mega_deap.merge(
        cnns,
        img,
        popsize=6,
        ngen=2,
        seed=seed,
        progress=False,
        device="cpu",
        align=True,
        calibration=train[0][:128].reshape(-1, 1, 8, 8),
        shares="throughput",
    )
    if distributed.is_main():
        save_file({"a": a.genome, "b": b.genome}, os.path.join(out, f"{mode}.safetensors"))
        with open(os.path.join(out, f"{mode}.json"), "w") as f:
            json.dump(
                {
                    "a": [dict(r) for r in a.logbook],
                    "b": [dict(r) for r in b.logbook],
                    "world": distributed.world_size(),
                    "ckpt_exists": os.path.exists(ckpt),
                },
                f,
            )
    distributed.shutdown()


def nccl(out):
    """Two ranks on two GPUs (NCCL): a merge run whole, and the same merge interrupted after generation 2
    and resumed, each rank drawing from its own cuda:r generator; rank 0 writes both results."""
    import mega_deap
    from mega_deap import distributed
    from conftest import train_mlp
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    torch.distributed.init_process_group("nccl")
    torch.cuda.set_device(distributed.rank())
    device = torch.device("cuda", distributed.rank())
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    train, val = (X[:1000], y[:1000]), (X[1000:1300], y[1000:1300])
    mlps = [train_mlp(train, 1, epochs=3), train_mlp(train, 2, epochs=3)]
    kw = dict(popsize=10, seed=0, progress=False, device=device)
    whole = mega_deap.merge(mlps, val, ngen=4, **kw)
    ckpt = os.path.join(out, "nccl.ckpt")
    mega_deap.merge(mlps, val, ngen=2, checkpoint=ckpt, **kw)
    resumed = mega_deap.merge(mlps, val, ngen=4, checkpoint=ckpt, **kw)
    if distributed.is_main():
        save_file({"whole": whole.genome.cpu(), "resumed": resumed.genome.cpu()}, os.path.join(out, "nccl.safetensors"))
    distributed.shutdown()


def hpo(mode, out):
    """The HPO study's run, sharded: rank 0 writes what it found."""
    import importlib.util
    from mega_deap import distributed

    spec = importlib.util.spec_from_file_location(
        "hpo_example", os.path.join(os.path.dirname(CHILD_DIR), "examples", "hpo_weight_merge.py")
    )
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    if mode != "single":
        distributed.init_from_env()
    calls = []
    train = ex.TrainEvaluator.__call__

    def counted(self, ind):  # how many trainings this rank ran
        calls.append(1)
        return train(self, ind)

    ex.TrainEvaluator.__call__ = counted
    r = ex.run("wine", "merge", 0, 6, 2, patience=2)
    with open(os.path.join(out, f"hpo-calls-{mode}-rank{distributed.rank()}.txt"), "w") as f:
        f.write(str(len(calls)))
    if distributed.is_main():
        keep = {k: r[k] for k in ("val", "test", "genes", "generations", "initial_losses", "epochs_run", "warm")}
        keep["world"] = distributed.world_size()
        keep["torch_rng_sha"] = __import__("hashlib").sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
        with open(os.path.join(out, f"hpo-{mode}.json"), "w") as f:
            json.dump(keep, f)
    distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "nccl":
        nccl(sys.argv[2])
    elif sys.argv[1].startswith("hpo-"):
        hpo(sys.argv[1][4:], sys.argv[2])
    elif sys.argv[1] == "diverge":  # each rank records the error it stops with: torchrun may cut its stderr short
        from mega_deap.distributed import DivergedError, rank

        try:
            main(sys.argv[1], sys.argv[2])
        except DivergedError as err:
            with open(os.path.join(sys.argv[2], f"diverged-rank{rank()}.txt"), "w") as f:
                f.write(str(err))
            raise
    else:
        main(sys.argv[1], sys.argv[2])
