"""A Keras 3 model as a flat genome, on any backend, with the same public names as TorchAdapter.

The layout follows ``model.weights`` (the model's weight order): trainable weights and non-trainable
float weights (BatchNormalization's moving mean and variance) by default. Evaluation runs
``model.stateless_call`` on backend tensors in batches (never ``model.predict`` per individual). With the
torch backend the weights passed in are views of the genome row, with no NumPy round trip; with JAX or
TensorFlow each slice goes through NumPy once per call, which Keras requires there.

Importing this module imports keras; ``mega_deap.adapters`` imports it only on first use of
``KerasAdapter``.
"""

import contextlib
import re
from collections import OrderedDict

from typing import Any, ContextManager

import numpy as np
import torch

from .base import Adapter, LayoutEntry, GenomeLike
from mega_deap.checks import SettingError, SettingTypeError

__all__ = ["KerasAdapter"]


def _keras():
    import keras

    return keras


def _generic(path):
    """A weight's path below the model's own name, without Keras's uniquifying suffixes
    ("sequential_2/dense_3/kernel" -> "dense/kernel"): two builds of one architecture agree on it, a
    differently named layer does not."""
    parts = path.split("/")
    return "/".join(re.sub(r"_\d+$", "", part) for part in (parts[1:] if len(parts) > 1 else parts))


def _float_weights(model, buffers):
    """(variable, kind) for every float weight of the genome, in ``model.weights`` order."""
    trainable = {id(v) for v in model.trainable_weights}
    out = []
    for v in model.weights:
        is_float = "float" in str(v.dtype)
        if id(v) in trainable:
            out.append((v, "parameter"))
        elif buffers and is_float:
            out.append((v, "buffer"))
    return out


class KerasAdapter(Adapter):
    """Expose a built Keras 3 ``model`` as a flat genome.

    :param model: the template (built: it has weights); its architecture defines the layout.
    :param buffers: put non-trainable float weights (BatchNormalization statistics) in the genome.
    :param var_floor: the smallest moving variance :meth:`repair_` lets through.
    """

    model: Any  # a keras.Model (Keras is imported only when a Keras model is adapted)

    def __init__(self, model: Any, *, buffers: bool = True, var_floor: float = 1e-5):
        keras = _keras()
        if not isinstance(model, keras.Model):
            raise SettingTypeError(f"KerasAdapter wraps a keras.Model, got {type(model).__name__}")
        if not model.built or not model.weights:
            raise SettingError("the Keras model has no weights yet: build it (call it once or give it an Input) first")
        self.model, self.buffers, self.var_floor = model, buffers, float(var_floor)
        self.backend = keras.backend.backend()
        weights = _float_weights(model, buffers)
        layout, offset = [], 0
        for v, kind in weights:
            n = int(np.prod(v.shape)) if len(v.shape) else 1
            layout.append(LayoutEntry(v.path, tuple(int(s) for s in v.shape), offset, n, kind))
            offset += n
        self.layout, self.dim = tuple(layout), offset
        dtypes = {str(v.dtype) for v, _ in weights}
        if len(dtypes) > 1:
            raise SettingError(f"all weights of the genome must share one dtype, found {sorted(dtypes)}")
        self.dtype = getattr(torch, dtypes.pop())
        if self.backend == "torch":
            self.device = weights[0][0].value.device
        else:
            self.device = torch.device("cpu")
        # where each genome tensor goes in stateless_call's two lists
        pos_t = {id(v): i for i, v in enumerate(model.trainable_variables)}
        pos_n = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        self._targets = [("t", pos_t[id(v)]) if id(v) in pos_t else ("n", pos_n[id(v)]) for v, _ in weights]
        self._fixed_nt = list(model.non_trainable_variables)  # values for non-genome non-trainables
        self.variance_spans = tuple(
            (e.offset, e.numel)
            for (v, _), e in zip(weights, self.layout)
            if e.kind == "buffer" and v.path.endswith("moving_variance")
        )

    @classmethod
    def from_parents(cls, models: list, *, device=None, buffers: bool = True) -> tuple:
        """An adapter over ``models[0]`` and the parents' genomes: Keras places the weights, so ``device``
        is Keras's choice."""
        adapter = cls(models[0], buffers=buffers)
        return adapter, adapter.genomes(models).to(adapter.device)

    def __repr__(self):
        return (
            f"KerasAdapter({type(self.model).__name__}, D={self.dim}, tensors={len(self.layout)}, "
            f"backend={self.backend}, device={self.device})"
        )

    # -- checks -----------------------------------------------------------------
    def check(self, model: Any) -> None:
        """Raise ValueError unless ``model`` has this adapter's layout (order, shapes, dtype)."""
        keras = _keras()
        if not isinstance(model, keras.Model):
            raise SettingTypeError(f"expected a keras.Model, got {type(model).__name__}")
        theirs = _float_weights(model, self.buffers)
        for i, (e, (v, kind)) in enumerate(zip(self.layout, theirs)):
            shape = tuple(int(s) for s in v.shape)
            if e.shape != shape or e.kind != kind:
                raise SettingError(
                    f"{model.name} differs from the template at weight {i}: expected {e.name!r} "
                    f"of shape {e.shape}, got {v.path!r} of shape {shape}"
                )
            if _generic(e.name) != _generic(v.path):
                raise SettingError(
                    f"{model.name} differs from the template at weight {i}: expected a weight named "
                    f"like {e.name!r}, got {v.path!r} (same shape, another layer)"
                )
        if len(theirs) != len(self.layout):
            first = (
                self.layout[len(theirs)].name if len(theirs) < len(self.layout) else theirs[len(self.layout)][0].path
            )
            raise SettingError(
                f"{model.name} has {len(theirs)} genome weights, the template has {len(self.layout)}; "
                f"first unmatched: {first!r}"
            )

    # -- genome <-> model -----------------------------------------------------------
    def genome(self, model: Any = None) -> torch.Tensor:
        """The genome of ``model`` (default: the template), ``(D,)``."""
        keras = _keras()
        model = self.model if model is None else model
        if model is not self.model:
            self.check(model)
        parts = [
            np.asarray(keras.ops.convert_to_numpy(v.value)).reshape(-1) for v, _ in _float_weights(model, self.buffers)
        ]
        return torch.from_numpy(np.concatenate(parts)).to(device=self.device, dtype=self.dtype)

    def load(self, genome: GenomeLike, model: Any = None) -> object:
        """Assign ``genome`` to ``model``'s weights (default: the template); returns the model."""
        model = self.model if model is None else model
        genome = self._check_genome(genome).detach().cpu()
        if model is not self.model:
            self.check(model)
        for (v, _), e in zip(_float_weights(model, self.buffers), self.layout):
            v.assign(genome[e.offset : e.offset + e.numel].reshape(e.shape).numpy())
        return model

    def to_model(self, genome: GenomeLike) -> object:
        """A new model: a clone of the template's architecture holding ``genome``'s weights (the template's
        other non-trainable weights are copied too)."""
        keras = _keras()
        self._check_genome(genome)
        clone = keras.models.clone_model(self.model)
        clone.set_weights(self.model.get_weights())
        return self.load(genome, clone)

    def state_dict(self, genome: GenomeLike) -> OrderedDict:
        """``{weight path: numpy array}`` of every model weight, the genome's in place of the template's."""
        views = self.tensors(genome)
        keras = _keras()
        out = OrderedDict()
        for v in self.model.weights:
            out[v.path] = (
                views[v.path].detach().cpu().numpy().copy()
                if v.path in views
                else np.asarray(keras.ops.convert_to_numpy(v.value)).copy()
            )
        return out

    def get_weights(self, genome: GenomeLike) -> list:
        """The list ``model.set_weights`` takes, in ``model.weights`` order."""
        return list(self.state_dict(genome).values())

    # -- forward --------------------------------------------------------------------------
    def _backend_values(self, genome):
        views = [genome[e.offset : e.offset + e.numel].view(e.shape) for e in self.layout]
        if self.backend == "torch":
            return views  # torch tensors: the genome row itself, no copy
        keras = _keras()
        return [keras.ops.convert_to_tensor(v.detach().cpu().numpy()) for v in views]

    def forward(self, genome: GenomeLike, x: Any) -> torch.Tensor:
        """The model's output on ``x`` with ``genome``'s weights (``stateless_call``, ``training=False``),
        as a torch tensor."""
        keras = _keras()
        genome = self._check_genome(genome)
        values = self._backend_values(genome)
        trainable = [v.value for v in self.model.trainable_variables]
        non_trainable = [v.value for v in self._fixed_nt]
        for (where, i), val in zip(self._targets, values):
            (trainable if where == "t" else non_trainable)[i] = val
        if self.backend != "torch" and isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        out, _ = self.model.stateless_call(trainable, non_trainable, x, training=False)
        if isinstance(out, torch.Tensor):
            return out
        return torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(out))).to(self.device)

    def forward_batch(self, genomes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs for k genomes, ``(k, batch, ...)`` (one stateless call per genome)."""
        return torch.stack([self.forward(g, x) for g in genomes])

    def eval_mode(self) -> ContextManager:
        """Keras takes the mode per call (``training=False``): nothing to switch."""
        return contextlib.nullcontext(self.model)
