"""What the paper's experiments need around the GA: CIFAR-style models, data loading with the paper's
splits, the parents' training recipe with a checkpoint cache, and the report (table, JSON, plot).

Torch only: nothing here imports torchvision unless asked to download, nor keras.
"""

from .models import SmallCNN, MLP, CifarResNet, resnet_cifar, build_model, MODELS
from .data import (
    load_cifar10,
    download_cifar10,
    find_cifar10,
    load_digits_images,
    split_train_val,
    Splits,
    cifar10_splits,
    digits_splits,
    read_cifar_batch,
    resolve_splits,
)
from .train import (
    fit,
    cross_entropy_loss,
    train_model,
    train_or_load,
    parent_key,
    save_model,
    load_model_file,
    model_accuracy,
)
from .report import (
    ensemble_accuracy,
    weight_average,
    format_table,
    plot_fitness,
    write_json,
    pyplot,
    save_figure,
    environment,
    environment_line,
)
from .setup import add_data_args, Setup, setup

__all__ = [
    "SmallCNN",
    "MLP",
    "CifarResNet",
    "resnet_cifar",
    "build_model",
    "MODELS",
    "load_cifar10",
    "download_cifar10",
    "find_cifar10",
    "load_digits_images",
    "split_train_val",
    "Splits",
    "cifar10_splits",
    "digits_splits",
    "read_cifar_batch",
    "resolve_splits",
    "fit",
    "cross_entropy_loss",
    "train_model",
    "train_or_load",
    "parent_key",
    "save_model",
    "load_model_file",
    "model_accuracy",
    "ensemble_accuracy",
    "weight_average",
    "format_table",
    "plot_fitness",
    "write_json",
    "pyplot",
    "save_figure",
    "environment",
    "environment_line",
    "add_data_args",
    "Setup",
    "setup",
]
