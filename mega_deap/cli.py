"""``mega-merge``: merge checkpoint files of your own architecture with MeGA.

    mega-merge a.safetensors b.pt --model mynets:make_net --data mynets:validation --out merged/

``--model`` names a function returning an untrained ``nn.Module`` of the checkpoints' architecture;
``--data`` a function returning the validation set ``(X, y)``, or a dict ``{"val": (X, y), "test": (X, y)}``
to have test accuracy reported too (it never feeds fitness). Either may be ``path/to/file.py:function``;
a module is looked for in the current folder first. Checkpoints are safetensors files or torch state
dicts (read with ``weights_only=True``). Writes ``merged.safetensors``, ``results.json`` and
``fitness.png`` to ``--out``. A mistake in the command ends in one line naming what is wrong (exit 2).
"""

import argparse
import importlib
import importlib.util
import os
import sys
import traceback

import torch

from mega_deap.checks import SettingError, SettingTypeError
from mega_deap.evaluation import METRICS

__all__ = ["main", "build_parser", "load_callable", "UsageError"]

DESCRIPTION = (
    "Merge two or more checkpoints of one architecture with MeGA (a genetic algorithm over "
    "blends of their weights); fitness is the log-likelihood (or accuracy, or another metric) of your validation data."
)
EPILOG = (
    "example: mega-merge a.safetensors b.pt --model mynets:make_net --data mynets:validation "
    "--out merged/   (mynets.py in the current folder; see README.md)"
)


class UsageError(Exception):
    """A mistake in the command or its inputs: printed as one line, exit status 2."""


def load_callable(spec: str, what: str):
    """``"module:function"`` or ``"path/file.py:function"`` -> the function; the current folder is
    importable. ``what`` names the option in errors."""
    if ":" not in spec:
        raise UsageError(f"{what} {spec!r}: expected 'module:function' or 'path/file.py:function'")
    target, name = spec.rsplit(":", 1)
    try:
        if target.endswith(".py"):
            if not os.path.isfile(target):
                raise UsageError(f"{what} {spec!r}: no such file {target!r}")
            mod_name = "_mega_merge_" + os.path.splitext(os.path.basename(target))[0]
            module_spec = importlib.util.spec_from_file_location(mod_name, target)
            if module_spec is None or module_spec.loader is None:
                raise UsageError(f"{what} {spec!r}: {target!r} cannot be imported")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's own modules first
            module = importlib.import_module(target)
    except UsageError:
        raise
    except ModuleNotFoundError as err:
        raise UsageError(
            f"{what} {spec!r}: no module named {err.name!r} (looked in {os.getcwd()!r} and the installed packages)"
        ) from None
    except Exception as err:
        raise UsageError(f"{what} {spec!r}: importing {target!r} failed: {type(err).__name__}: {err}") from None
    if not callable(getattr(module, name, None)):
        raise UsageError(f"{what} {spec!r}: {target!r} has no function {name!r}")
    return getattr(module, name)


class _Formatter(argparse.HelpFormatter):
    """Shows a default only where there is one worth showing (never "default: None")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.default not in (None, False, argparse.SUPPRESS)
            and "%(default)" not in text
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def add_ga_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The GA's settings of ``merge`` as flags, shared by ``mega-merge`` and ``examples/merge_cifar.py``:
    ``--metric --popsize --ngen --npar --tournsize --sigma --indpb --genome --no-parents``."""
    p.add_argument(
        "--metric",
        choices=sorted(METRICS),
        default="accuracy",
        help="the fitness (accuracy: the paper's; accuracy_ll: accuracy, ties broken by the log-likelihood; "
        "neg_mse or neg_mae for regression)",
    )
    p.add_argument("--popsize", type=int, default=20, help="individuals per generation (N)")
    p.add_argument("--ngen", type=int, default=20, help="generations (G)")
    p.add_argument("--npar", type=int, default=4, help="tournament winners per child (K); the first two mate")
    p.add_argument("--tournsize", type=int, default=3, help="tournament size")
    p.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="mutation noise standard deviation (default: 0.01 for weights, 0.05 for coefficients)",
    )
    p.add_argument(
        "--indpb",
        type=float,
        default=None,
        help="per-gene mutation probability (default: 0.02 for weights, 0.2 for coefficients)",
    )
    p.add_argument(
        "--genome",
        choices=("weights", "coefficients"),
        default="weights",
        help="weights: every weight is a gene (the paper); coefficients: per-tensor x per-parent mixing coefficients",
    )
    p.add_argument(
        "--no-parents",
        action="store_true",
        help="start from blends only, as the paper (default: the parents are in the first population)",
    )
    p.add_argument(
        "--gate",
        type=gate_level,
        default="auto",
        metavar="{auto,none,LEVEL}",
        help="the significance gate: keep the merge only when McNemar's test on validation says it beats the best "
        "parent at this level, else return that parent (auto: the default level with a classification metric; "
        "none: no gate, as the paper)",
    )
    p.add_argument(
        "--gate-holdout",
        type=gate_fraction,
        default="auto",
        metavar="{auto,crossfit,FRACTION}",
        help="the fraction of the validation data held out of the fitness for the gate's test alone (0: the "
        "gate tests on the examples the search selected on; crossfit: the search runs again on each half and "
        "the test pairs each half's merge with the parent best on it, on the other half; auto: the default "
        "where a gate runs)",
    )
    return p


def gate_fraction(text: str):
    """``--gate-holdout``'s value: ``"auto"``, ``"crossfit"`` or a fraction in [0, 1)."""
    if text in ("auto", "crossfit"):
        return text
    try:
        fraction = float(text)
    except ValueError:
        fraction = float("nan")
    if not 0 <= fraction < 1:
        raise argparse.ArgumentTypeError(f"expected auto, crossfit or a fraction in [0, 1), got {text!r}")
    return fraction


def gate_level(text: str):
    """``--gate``'s value: ``"auto"``, ``None`` (``none``) or a level in (0, 1]."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        level = float(text)
    except ValueError:
        level = float("nan")
    if not 0 < level <= 1:
        raise argparse.ArgumentTypeError(f"expected auto, none or a level in (0, 1], got {text!r}")
    return level


def align_value(text: str):
    """``--align``'s value: ``"auto"``, ``False`` (``none``), ``"weights"``, ``"activations"`` or ``"zip"``."""
    values = {"auto": "auto", "none": False, "weights": "weights", "activations": "activations", "zip": "zip"}
    if text not in values:
        raise argparse.ArgumentTypeError(f"expected auto, none, weights, activations or zip, got {text!r}")
    return values[text]


def add_align_argument(p: argparse.ArgumentParser, also: str = "") -> None:
    """``--align [auto|none|weights|activations|zip]``: merge's ``align`` (bare ``--align``: ``True``,
    activation matching); ``also``: what the flag does besides, for the help."""
    p.add_argument(
        "--align",
        type=align_value,
        nargs="?",
        const=True,
        default="auto",
        metavar="{auto,none,weights,activations,zip}",
        help="align the parents' hidden units to the first one's before merging: auto (activation matching "
        "where the model allows it), none (the paper), weights, activations, or zip (activations, and the two "
        "parents' zip in the first population); bare --align: activations" + also,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``mega-merge`` command line."""
    p = argparse.ArgumentParser(prog="mega-merge", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter)
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="two or more checkpoint files of one architecture (.safetensors, or torch state dicts)",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="MODULE:FUNCTION",
        help="a function that returns an untrained model of the checkpoints' architecture (required)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="MODULE:FUNCTION",
        help="a function that returns (X_val, y_val), or {'val': (X, y), 'test': (X, y), "
        "'calibration': X} (required; with 'calibration', every candidate's BatchNorm "
        "statistics are recomputed on those inputs before it is scored)",
    )
    add_ga_arguments(p)
    p.add_argument(
        "--mutation",
        choices=("sparse", "layer"),
        default="sparse",
        help="sparse: each weight with --indpb; layer: each tensor (the reference code's)",
    )
    add_align_argument(p)
    p.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="fraction of the validation data held out of the fitness to choose among the hall of fame",
    )
    p.add_argument("--seed", type=int, default=0, help="fixes every random draw")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--out", default="merged", help="the folder to write to")
    p.add_argument("--quiet", action="store_true", help="print only the list of files written")
    return p


def _read_checkpoint(make_model, path):
    from mega_deap.experiments import load_model_file

    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path!r}: no such file")
    try:
        return load_model_file(make_model(), path)
    except Exception as err:
        text = str(err)
        if "weights_only" in text or "Weights only load failed" in text:
            raise UsageError(
                f"checkpoint {path!r} holds a pickled object, not a state dict: save it with "
                f"torch.save(model.state_dict(), path) or as safetensors"
            ) from None
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        first = lines[0] if lines else type(err).__name__
        if isinstance(err, RuntimeError) and "state_dict" in text:
            # torch's first line only says "Error(s) in loading state_dict for X:"; the next names the tensor
            detail = " ".join(lines[1:2])
            raise UsageError(
                f"checkpoint {path!r} does not fit the --model architecture: {first} {detail}".rstrip()
            ) from None
        raise UsageError(f"checkpoint {path!r} could not be read: {type(err).__name__}: {first}") from None


def _validation(make_data):
    try:
        data = make_data()
    except Exception as err:
        raise UsageError(f"--data: the function raised {type(err).__name__}: {err}") from None
    val, test = (data.get("val"), data.get("test")) if isinstance(data, dict) else (data, None)
    calibration = data.get("calibration") if isinstance(data, dict) else None
    for name, xy in (("val", val), ("test", test)):
        if xy is None and name == "test":
            continue
        if not (isinstance(xy, (tuple, list)) and len(xy) == 2):
            raise UsageError(f"--data: expected (X, y) for {name!r}, got {type(xy).__name__}")
    return val, test, calibration


def run(args) -> list:
    """The merge itself; returns the paths written."""
    import mega_deap
    from mega_deap.checks import writable_file
    from mega_deap.evaluation import Accuracy, Evaluator, get_metric
    from mega_deap.experiments import format_table, plot_fitness, save_model, write_json

    if len(args.checkpoints) < 2:
        raise UsageError("give at least two checkpoints")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is a file; expected a folder")
    writable_file("--out", os.path.join(args.out, "results.json"))
    make_model = load_callable(args.model, "--model")
    make_data = load_callable(args.data, "--data")
    try:
        device = torch.device(args.device) if args.device else mega_deap.default_device()
    except RuntimeError as err:
        raise UsageError(f"--device {args.device!r}: {err}") from None
    models = [_read_checkpoint(make_model, p).to(device) for p in args.checkpoints]
    val, test, calibration = _validation(make_data)
    result = mega_deap.merge(
        models,
        val,
        popsize=args.popsize,
        ngen=args.ngen,
        npar=args.npar,
        tournsize=args.tournsize,
        mutation=args.mutation,
        sigma=args.sigma,
        indpb=args.indpb,
        metric=args.metric,
        seed=args.seed,
        device=device,
        progress=not args.quiet,
        align=args.align,
        genome=args.genome,
        include_parents=not args.no_parents,
        holdout=args.holdout,
        gate=args.gate,
        gate_holdout=args.gate_holdout,
        calibration=calibration,
    )
    ad = result.adapter.runner  # score the weights (what a coefficient genome decodes into)
    names = [os.path.basename(p) for p in args.checkpoints]
    kept = None if result.parent is None else f"the gate kept {names[result.parent]}, p = {result.gate_p:.3g}"
    names.append("MeGA" if kept is None else f"MeGA ({kept})")
    genomes = [ad.genome(m.to(device)) for m in models] + [ad.genome(result.model)]
    rows = [{"model": name} for name in names]
    classifying = isinstance(get_metric(args.metric), Accuracy)  # every classification metric reports accuracy
    reported = [args.metric] + (["accuracy"] if classifying and args.metric != "accuracy" else [])
    for metric in reported:
        for split, xy in (("val", val), ("test", test)):
            if xy is not None:
                for row, score in zip(rows, Evaluator(ad, xy[0], xy[1], get_metric(metric)).scores(genomes)):
                    row[f"{split}_{metric}"] = score
    os.makedirs(args.out, exist_ok=True)
    written = [save_model(result.model, os.path.join(args.out, "merged.safetensors"))]
    try:
        parents_fitness = Evaluator(ad, val[0], val[1], get_metric(args.metric)).scores(genomes[:-1])
        written.append(
            plot_fitness(
                result.logbook,
                os.path.join(args.out, "fitness.png"),
                title=f"MeGA: validation fitness ({args.metric}) per generation",
                extra=dict(zip(names[:-1], parents_fitness)),
            )
        )
    except ImportError:
        print("matplotlib is not installed: no fitness.png (pip install matplotlib)", file=sys.stderr)
    columns = ["model"] + [
        f"{split}_{m}" for m in reported for split in ("val", "test") if split == "val" or test is not None
    ]
    written.append(
        write_json(
            {
                "settings": vars(args),
                "rows": rows,
                "gate": {"p": result.gate_p, "parent": result.parent},
                "align": result.align,
                "logbook": [dict(r) for r in result.logbook],
                "files": written[:],
            },
            os.path.join(args.out, "results.json"),
        )
    )
    if not args.quiet:
        print(format_table(rows, columns=columns))
    return written


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = run(args)
    except (UsageError, SettingError, SettingTypeError) as err:  # the user's mistake, as our checks name it
        print(f"mega-merge: error: {err}", file=sys.stderr)
        return 2
    except Exception:  # anything else is a fault: its traceback is what a bug report needs
        traceback.print_exc()
        print("mega-merge: internal error (the traceback above belongs in a bug report)", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
