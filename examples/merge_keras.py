"""MeGA with Keras 3 models: the same toolbox as with PyTorch, KerasAdapter in place of TorchAdapter.

    KERAS_BACKEND=torch python examples/merge_keras.py

Trains two small Keras MLPs on scikit-learn's digits from different seeds, then composes the DEAP
toolbox by hand (exactly as the user guide does for PyTorch) and merges them. Validation accuracy is the
fitness; test accuracy is reported beside it and never used.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch  # noqa: E402
from deap import tools  # noqa: E402

import mega_deap  # noqa: E402
from mega_deap import TensorPopulation, eaMeGA, initBlend, mega_toolbox  # noqa: E402
from mega_deap.presets import ensure_creator_classes  # noqa: E402
from mega_deap.adapters import accuracy  # noqa: E402
from mega_deap.evaluation import correct  # noqa: E402
from mega_deap.experiments import digits_splits  # noqa: E402

keras = None  # imported by main, after the arguments: --help works without Keras


def train(split, seed, epochs):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    X, y = split
    model.fit(X.reshape(len(X), -1).numpy(), y.numpy(), epochs=epochs, batch_size=64, verbose=0)
    return model


def acc(model, split):
    X, y = split
    logits = keras.ops.convert_to_numpy(model(X.reshape(len(X), -1).numpy(), training=False))
    return float(correct(torch.as_tensor(logits), y)) / len(y)


def main(argv=None):
    global keras
    p = argparse.ArgumentParser(description="MeGA with Keras 3 models (needs keras: pip install -e '.[keras]').")
    p.add_argument("--epochs", type=int, default=20, help="parent training epochs")
    p.add_argument("--popsize", type=int, default=20, help="individuals per generation")
    p.add_argument("--ngen", type=int, default=20, help="generations")
    p.add_argument("--seed", type=int, default=0, help="fixes the validation split and every GA draw")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    args = p.parse_args(argv)
    try:
        import keras as keras_module
    except Exception as err:
        p.exit(
            2,
            f"merge_keras.py: error: Keras is not usable ({type(err).__name__}: {err}); "
            f"pip install -e '.[keras]' and set KERAS_BACKEND=torch\n",
        )
    keras = keras_module
    from mega_deap.adapters import KerasAdapter

    s = digits_splits(seed=args.seed)
    flat = lambda split: (split[0].reshape(len(split[0]), -1), split[1])  # noqa: E731
    parents = [train(flat(s.train), seed, args.epochs) for seed in (56, 57)]

    adapter = KerasAdapter(parents[0])  # the only line that differs from PyTorch
    evaluator = accuracy(adapter, *flat(s.val))
    pop = TensorPopulation(args.popsize, adapter.dim, device=adapter.device)
    toolbox = mega_toolbox(pop, evaluator, repair=adapter)
    mega_deap.seed(args.seed)
    population = initBlend(pop.individuals(ensure_creator_classes()), adapter.genomes(parents))
    hof = tools.HallOfFame(1, similar=mega_deap.genome_equal)
    eaMeGA(
        population,
        toolbox,
        args.ngen,
        stats=mega_deap.default_stats(),
        halloffame=hof,
        verbose=False,
        progress=not args.quiet,
    )
    merged = adapter.to_model(hof[0])

    rows = [(f"parent {i + 1}", acc(m, flat(s.val)), acc(m, flat(s.test))) for i, m in enumerate(parents)]
    rows.append(("MeGA", acc(merged, flat(s.val)), acc(merged, flat(s.test))))
    if not args.quiet:
        print(
            f"\nKeras on the {keras.backend.backend()} backend, digits\n\n| model | val_acc | test_acc |\n|---|---|---|"
        )
        for name, v, t in rows:
            print(f"| {name} | {100 * v:.2f} | {100 * t:.2f} |")
    return {"rows": rows, "fitness": hof[0].fitness.values[0]}


if __name__ == "__main__":
    main()
