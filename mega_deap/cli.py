"""``mega-merge``: merge checkpoint files of your own architecture with MeGA.

    mega-merge --model mypkg.nets:make_net --data mypkg.data:validation a.safetensors b.pt --out merged/

``--model`` names a function returning an untrained ``nn.Module`` of the checkpoints' architecture;
``--data`` a function returning the validation set ``(X, y)``, or a dict ``{"val": (X, y), "test": (X, y)}``
to have test accuracy reported too (it never feeds fitness). Either may be ``path/to/file.py:function``.
Checkpoints are safetensors files or torch state dicts (read with ``weights_only=True``). Writes
``merged.safetensors``, ``results.json`` and ``fitness.png`` to ``--out``.
"""
import argparse
import importlib
import importlib.util
import os
import sys

import torch

from mega_deap.evaluation import METRICS

__all__ = ["main", "load_callable"]


def load_callable(spec):
    """``"module:function"`` or ``"path/file.py:function"`` -> the function."""
    if ":" not in spec:
        raise ValueError(f"expected 'module:function' or 'file.py:function', got {spec!r}")
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise FileNotFoundError(f"no such file: {target!r}")
        mod_name = "_mega_merge_" + os.path.splitext(os.path.basename(target))[0]
        module_spec = importlib.util.spec_from_file_location(mod_name, target)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, name):
        raise AttributeError(f"{target!r} has no attribute {name!r}")
    return getattr(module, name)


def _parse(argv):
    p = argparse.ArgumentParser(prog="mega-merge", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="two or more checkpoint files of one architecture")
    p.add_argument("--model", required=True, help="module:function returning the untrained model")
    p.add_argument("--data", required=True, help="module:function returning (X_val, y_val) or {'val':..., 'test':...}")
    p.add_argument("--metric", choices=sorted(METRICS), default="accuracy")
    p.add_argument("--popsize", type=int, default=20)
    p.add_argument("--ngen", type=int, default=20)
    p.add_argument("--npar", type=int, default=4)
    p.add_argument("--tournsize", type=int, default=3)
    p.add_argument("--mutation", choices=("sparse", "layer"), default="sparse")
    p.add_argument("--sigma", type=float, default=0.01)
    p.add_argument("--indpb", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="merged")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    import mega_deap
    from mega_deap.experiments import format_table, load_model_file, plot_fitness, save_model, write_json
    from mega_deap.evaluation import Evaluator, get_metric

    args = _parse(argv)
    if len(args.checkpoints) < 2:
        raise SystemExit("mega-merge: give at least two checkpoints")
    for path in args.checkpoints:
        if not os.path.isfile(path):
            raise SystemExit(f"mega-merge: no such checkpoint: {path}")
    make_model, make_data = load_callable(args.model), load_callable(args.data)
    data = make_data()
    val, test = (data.get("val"), data.get("test")) if isinstance(data, dict) else (data, None)
    if val is None:
        raise SystemExit("mega-merge: the data function returned no validation set ('val')")
    device = torch.device(args.device) if args.device else mega_deap.default_device()
    models = [load_model_file(make_model(), p).to(device) for p in args.checkpoints]
    result = mega_deap.merge(models, val, popsize=args.popsize, ngen=args.ngen,
                             npar=args.npar, tournsize=args.tournsize, mutation=args.mutation,
                             sigma=args.sigma, indpb=args.indpb, metric=args.metric, seed=args.seed,
                             device=device, verbose=not args.quiet)
    ad = result.adapter
    names = [os.path.basename(p) for p in args.checkpoints] + ["MeGA"]
    genomes = [ad.genome(m.to(device)) for m in models] + [result.genome]
    rows = [{"model": name} for name in names]
    for split, xy in (("val", val), ("test", test)):
        if xy is not None:
            for row, score in zip(rows, Evaluator(ad, *xy, get_metric(args.metric)).scores(genomes)):
                row[f"{split}_{args.metric}"] = score
    os.makedirs(args.out, exist_ok=True)
    merged = save_model(result.model, os.path.join(args.out, "merged.safetensors"))
    try:
        png = plot_fitness(result.logbook, os.path.join(args.out, "fitness.png"))
    except ImportError:
        png = None
        print("matplotlib is not installed: no fitness.png (pip install matplotlib)")
    columns = ["model", f"val_{args.metric}"] + ([f"test_{args.metric}"] if test is not None else [])
    write_json({"settings": vars(args), "rows": rows, "logbook": [dict(r) for r in result.logbook],
                "files": {"merged_model": merged, "plot": png}}, os.path.join(args.out, "results.json"))
    if not args.quiet:
        print(format_table(rows, columns=columns))
        print(f"wrote {merged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
