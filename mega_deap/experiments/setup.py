"""The command-line pieces the examples share: data and model flags, and what they resolve to."""

import functools
from typing import NamedTuple

import torch

from .data import resolve_splits
from .models import MODELS, build_model

__all__ = ["add_data_args", "Setup", "setup"]


def add_data_args(parser, *, cifar_model="resnet56"):
    """``--dataset --data-dir --val-size --download --model --epochs --device`` on ``parser``."""
    parser.add_argument(
        "--dataset",
        choices=("auto", "cifar10", "digits"),
        default="auto",
        help="auto: CIFAR-10 when --data-dir holds it, else the bundled digits",
    )
    parser.add_argument("--data-dir", default=None, help="folder with cifar-10-batches-py")
    parser.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="validation images cut from the training set (default: 5000 on CIFAR-10, 300 on digits)",
    )
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 with torchvision into --data-dir")
    parser.add_argument(
        "--model", choices=MODELS, default=None, help=f"default: {cifar_model} on CIFAR-10, smallcnn on digits"
    )
    parser.add_argument("--epochs", type=int, default=None, help="parent training epochs (paper: 50; digits: 30)")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.set_defaults(cifar_model=cifar_model)
    return parser


class Setup(NamedTuple):
    """What the flags resolve to; unpack it: ``device, splits, model_name, epochs, factory = setup(args)``."""

    device: torch.device
    splits: object
    model_name: str
    epochs: int
    factory: object  # builds an untrained model of the chosen architecture


def setup(args, seed=0, say=print):
    """Resolve the flags of :func:`add_data_args` (the data set says which, in one line, if it falls back);
    a flag that names something unusable ends the program with one line (exit status 1), not a traceback."""
    import os
    import sys
    from mega_deap.population import default_device

    prog = os.path.basename(sys.argv[0]) or "example"
    out = getattr(args, "out", None)
    if out and os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"{prog}: error: --out {out!r} is a file; expected a folder")
    try:
        device = torch.device(args.device) if args.device else default_device()
        splits = resolve_splits(args.dataset, args.data_dir, args.download, seed=seed, say=say, val_size=args.val_size)
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # a --data-dir without CIFAR-10, a bad
        raise SystemExit(f"{prog}: error: {err}") from None  # --device or --val-size: one line
    model_name = args.model or (args.cifar_model if splits.name == "cifar10" else "smallcnn")
    epochs = args.epochs if args.epochs is not None else (50 if splits.name == "cifar10" else 30)
    factory = functools.partial(build_model, model_name, splits.in_channels, splits.num_classes, splits.image_size)
    return Setup(device, splits, model_name, epochs, factory)
