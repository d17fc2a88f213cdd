"""Child process for test_checkpoint: a digits merge with a checkpoint; with --hang-at G it stops dead in
the middle of generation G (after the first evaluation batch started) until the parent SIGKILLs it."""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import mega_deap  # noqa: E402
from mega_deap.evaluation import Evaluator  # noqa: E402

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
ckpt, out, hang = args["--ckpt"], args["--out"], int(args.get("--hang-at", -1))
data = torch.load(args["--data"], weights_only=True)
models = []
for sd in data["models"]:
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    m.load_state_dict(sd)
    models.append(m.eval())

calls = {"n": 0}
original = Evaluator.scores


def scores(self, individuals):
    calls["n"] += 1
    if calls["n"] == hang + 1 and not os.path.exists(ckpt + ".resumed"):  # call k+1 is generation k
        open(ckpt + ".hanging", "w").close()
        time.sleep(600)
    return original(self, individuals)


Evaluator.scores = scores
r = mega_deap.merge(models, data["val"], popsize=8, ngen=6, seed=3, device="cpu", verbose=False, checkpoint=ckpt)
with open(out, "w") as f:
    json.dump(
        {
            "genome": r.genome.tolist(),
            "logbook": [dict(x) for x in r.logbook],
            "population": [ind.genome.tolist() for ind in r.population],
            "fitness": [list(ind.fitness.values) for ind in r.population],
            "halloffame": [[ind.genome.tolist(), list(ind.fitness.values)] for ind in r.halloffame],
        },
        f,
        default=float,
    )
