"""Which axes of which tensors one hidden-unit permutation acts on, derived from a model's graph (torch.fx).

Permuting the hidden units of a layer (its output channels) and, with the same permutation, every tensor
axis that reads those units leaves the network's function unchanged. :func:`permutation_spec` traces the
model with ``torch.fx`` and follows every activation's feature axis (dim 1) through the graph:

- ``Linear`` / ``Conv`` (``groups=1``) start a new *group* of units (their output axis) and read their
  input's groups on weight axis 1 (after a ``flatten``, each channel covers a block of inputs);
- BatchNorm, element-wise activations, dropout, pooling, spatial slicing and padding, and reductions over
  spatial axes keep the groups they get;
- ``x + y`` (a residual connection) makes both sides one group: a residual stream shares one permutation;
- ``F.pad`` on the channel axis (the option-A shortcut of CIFAR ResNets) and ``torch.cat`` on dim 1 lay
  groups side by side (the padded channels get groups of their own);
- the model's inputs and outputs are never permuted.

Anything else stops the derivation with a ``ValueError`` naming the node.
"""

import operator
from dataclasses import dataclass, field

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from ..checks import SettingError, SettingTypeError

__all__ = ["PermutationSpec", "Segment", "permutation_spec"]


@dataclass(frozen=True)
class Segment:
    """Units ``0..size(group)-1`` of ``group`` sit on one tensor axis at positions
    ``start + unit * repeat + (0..repeat-1)``."""

    group: int
    start: int
    repeat: int = 1


@dataclass
class PermutationSpec:
    """``sizes[g]``: units of free group ``g``; ``axes[name]``: ``{axis: (Segment, ...)}`` for every
    state-dict tensor that a permutation touches (other tensors are left as they are); ``taps[node]``:
    ``((Segment, ...), activation)`` for every node of the traced graph whose output carries free groups on
    its feature axis (dim 1, not flattened), ``activation`` true after an element-wise nonlinearity (where
    activation matching reads the units)."""

    sizes: dict = field(default_factory=dict)
    axes: dict = field(default_factory=dict)
    taps: dict = field(default_factory=dict)

    def groups_of(self, g: int) -> list:
        """``[(name, axis, segment)]``: where group ``g`` acts."""
        return [(n, a, s) for n, ax in self.axes.items() for a, segs in ax.items() for s in segs if s.group == g]


# element-wise nonlinearities: they keep the input's feature groups, and activation matching reads units
# after them
_NONLINEAR: dict[str, Any] = {
    "modules": (
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.GELU,
        nn.SiLU,
        nn.ELU,
        nn.Tanh,
        nn.Sigmoid,
        nn.Hardswish,
        nn.Hardtanh,
        nn.Softplus,
        nn.Mish,
    ),
    "functions": {
        F.relu,
        F.relu6,
        F.leaky_relu,
        F.gelu,
        F.silu,
        F.elu,
        F.hardswish,
        F.hardtanh,
        F.softplus,
        F.mish,
        torch.relu,
        torch.sigmoid,
        torch.tanh,
        F.sigmoid,
        F.tanh,
    },
    "methods": {"relu", "sigmoid", "tanh", "relu_"},
}
_SAME = {  # modules and functions whose output has the input's feature groups
    "modules": _NONLINEAR["modules"]
    + (
        nn.Dropout,
        nn.Dropout1d,
        nn.Dropout2d,
        nn.Identity,
        nn.MaxPool1d,
        nn.MaxPool2d,
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool1d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d,
    ),
    "functions": _NONLINEAR["functions"]
    | {
        F.dropout,
        F.max_pool1d,
        F.max_pool2d,
        F.avg_pool1d,
        F.avg_pool2d,
        F.adaptive_avg_pool1d,
        F.adaptive_avg_pool2d,
        F.adaptive_max_pool2d,
    },
    "methods": _NONLINEAR["methods"] | {"contiguous", "clone", "detach", "float"},
}
_ELEMENTWISE = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
}
_REDUCE_METHODS = {"mean", "sum", "amax", "max"}


class _Tracer:
    """Union-find over unit groups while walking the graph. A value's feature axis is ``FIXED`` (never
    permuted), ``None`` (not a tensor, e.g. a size) or ``(groups, flattened, rank)``: the groups laid side
    by side on dim 1, whether it was flattened (each unit then covers a block), and the tensor's rank."""

    FIXED = "fixed"

    def __init__(self, model):
        self.model = model
        self.modules = dict(model.named_modules())
        self.parent, self.size, self.fixed = [], [], []
        self.alias = {}  # group -> tuple of groups it was found to equal (side by side)
        self.reads = []  # (tensor name, axis, value it reads on that axis, flattened, total features)
        self.writes = []  # (tensor name, axis, groups it holds side by side)
        self.taps = []  # (node name, groups on its feature axis, after a nonlinearity)

    # -- groups -----------------------------------------------------------------
    def new(self, n):
        self.parent.append(len(self.parent))
        self.size.append(n)
        self.fixed.append(False)
        return len(self.parent) - 1

    def find(self, g):
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def expand(self, groups):
        """A value's groups with every alias resolved: a tuple of root groups."""
        out = []
        for g in groups:
            g = self.find(g)
            out.extend(self.expand(self.alias[g]) if g in self.alias else (g,))
        return tuple(out)

    def total(self, groups):
        return sum(self.size[g] for g in self.expand(groups))

    def fix(self, value):
        if isinstance(value, tuple):
            for g in self.expand(value[0]):
                self.fixed[g] = True

    def union(self, a, b, node):
        """Make two values' feature axes one permutation (``a + b``)."""
        if a is None or b is None:
            return a if b is None else b
        if a == self.FIXED or b == self.FIXED:
            self.fix(a)
            self.fix(b)
            return self.FIXED
        ga, gb = self.expand(a[0]), self.expand(b[0])
        if self.total(ga) != self.total(gb):
            raise SettingError(
                f"node {node.name!r} ({node.format_node()}) combines {self.total(ga)} and {self.total(gb)} features"
            )
        if len(ga) == 1 and len(gb) > 1:
            self.alias[ga[0]] = gb
        elif len(gb) == 1 and len(ga) > 1:
            self.alias[gb[0]] = ga
        elif [self.size[g] for g in ga] == [self.size[g] for g in gb]:
            for x, y in zip(ga, gb):
                x, y = self.find(x), self.find(y)
                if x != y:
                    self.parent[y] = x
                    self.fixed[x] = self.fixed[x] or self.fixed[y]
        else:
            raise SettingError(
                f"node {node.name!r} ({node.format_node()}) adds feature axes laid out differently "
                f"({[self.size[g] for g in ga]} against {[self.size[g] for g in gb]} units)"
            )
        return (a[0], a[1] or b[1], a[2])

    # -- the walk -----------------------------------------------------------------
    def unsupported(self, node, why=""):
        raise SettingError(
            f"alignment cannot derive the hidden-unit permutations of {type(self.model).__name__}: "
            f"node {node.name!r} ({node.format_node()}) is not supported{': ' + why if why else ''}. "
            "Supported: Linear, Conv (groups=1), BatchNorm, element-wise activations, dropout, "
            "pooling, flatten, spatial reductions, residual additions, channel padding and cat"
        )

    def state_name(self, target, leaf):
        return f"{target}.{leaf}" if target else leaf

    def linear_like(self, node, mod, x, out_features, rank):
        if x is None:
            self.unsupported(node, "its input is not a tensor")
        if rank == 2 and x != self.FIXED and x[2] != 2:
            self.unsupported(node, f"a Linear layer on {x[2]}-D activations (its features are the last axis)")
        g = self.new(out_features)
        self.writes.append((self.state_name(node.target, "weight"), 0, (g,)))
        if getattr(mod, "bias", None) is not None:
            self.writes.append((self.state_name(node.target, "bias"), 0, (g,)))
        in_features = mod.weight.shape[1]
        self.reads.append((self.state_name(node.target, "weight"), 1, x, node, in_features))
        return ((g,), False, rank)

    def call_module(self, node, env):
        mod = self.modules[node.target]
        x = env[node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(mod, nn.Linear):
            return self.linear_like(node, mod, x, mod.out_features, 2)
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if mod.groups != 1:
                self.unsupported(node, f"a grouped convolution (groups={mod.groups})")
            if isinstance(x, tuple) and x[1]:
                self.unsupported(node, "a convolution of flattened features")
            return self.linear_like(node, mod, x, mod.out_channels, mod.weight.dim())
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            if x == self.FIXED:
                return x
            if x is None or x[1]:
                self.unsupported(node, "BatchNorm of flattened features")
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                if getattr(mod, leaf, None) is not None:
                    self.writes.append((self.state_name(node.target, leaf), 0, x[0]))
            return x
        if isinstance(mod, nn.Flatten):
            if mod.start_dim != 1:
                self.unsupported(node, f"flatten from dim {mod.start_dim} (only dim 1 keeps the batch axis)")
            return x if x in (None, self.FIXED) else (x[0], True, 2)
        if isinstance(mod, _SAME["modules"]):
            return x
        self.unsupported(node, f"module type {type(mod).__name__}")

    def call_function(self, node, env):
        fn, args = node.target, node.args
        vals = [env[a] if isinstance(a, fx.Node) else None for a in args]
        if fn in _SAME["functions"]:
            return vals[0]
        if fn in _ELEMENTWISE:
            tensors = [v for v in vals if v is not None]
            out = tensors[0] if tensors else None
            for v in tensors[1:]:
                out = self.union(out, v, node)
            return out
        if fn is torch.flatten:
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                self.unsupported(node, f"flatten from dim {start}")
            x = vals[0]
            return x if x in (None, self.FIXED) else (x[0], True, 2)
        if fn in (torch.mean, torch.sum, torch.amax):
            return self.reduce(
                node,
                vals[0],
                args[1] if len(args) > 1 else node.kwargs.get("dim"),
                args[2] if len(args) > 2 else node.kwargs.get("keepdim", False),
            )
        if fn is operator.getitem:
            return self.getitem(node, vals[0], args[1])
        if fn is F.pad:
            return self.pad(node, vals[0], args[1] if len(args) > 1 else node.kwargs["pad"])
        if fn is torch.cat:
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
            parts = [env[a] for a in args[0]]
            if dim != 1:
                self.unsupported(node, f"cat along dim {dim}")
            if any(p in (None, self.FIXED) or p[1] for p in parts):
                for p in parts:
                    self.fix(p)
                return self.FIXED
            return (tuple(g for p in parts for g in p[0]), False, parts[0][2])
        self.unsupported(node)

    def call_method(self, node, env):
        name, args = node.target, node.args
        x = env[args[0]] if isinstance(args[0], fx.Node) else None
        if name == "size" or name == "dim":
            return None
        if name in _SAME["methods"]:
            return x
        if name in ("add", "sub", "mul", "add_", "mul_"):
            other = env[args[1]] if len(args) > 1 and isinstance(args[1], fx.Node) else None
            return self.union(x, other, node)
        if name == "flatten":
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                self.unsupported(node, f"flatten from dim {start}")
            return x if x in (None, self.FIXED) else (x[0], True, 2)
        if name in ("view", "reshape"):
            shape = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else tuple(args[1])
            if len(shape) == 2 and shape[1] == -1:
                return x if x in (None, self.FIXED) else (x[0], True, 2)
            self.unsupported(node, "a reshape other than (batch, -1)")
        if name in _REDUCE_METHODS:
            return self.reduce(
                node,
                x,
                args[1] if len(args) > 1 else node.kwargs.get("dim"),
                args[2] if len(args) > 2 else node.kwargs.get("keepdim", False),
            )
        if name == "__getitem__":
            return self.getitem(node, x, args[1])
        self.unsupported(node, f"method {name!r}")

    def reduce(self, node, x, dims, keep):
        """``x.mean(dims)`` and its kin: the feature axis must survive."""
        if x in (None, self.FIXED):
            return x
        if dims is None:
            self.unsupported(node, "a reduction over every axis")
        dims = (dims,) if isinstance(dims, int) else dims
        rank = x[2]
        dims = {d % rank for d in dims}
        if 1 in dims or 0 in dims:
            self.unsupported(node, "a reduction over the feature or batch axis")
        return (x[0], x[1], rank if keep else rank - len(dims))

    def getitem(self, node, x, index):
        if x is None:
            return None  # indexing a tuple of sizes
        if x == self.FIXED:
            return x
        index = index if isinstance(index, tuple) else (index,)
        if len(index) < 2 or (isinstance(index[1], slice) and index[1] == slice(None)):
            if index and not (isinstance(index[0], slice) and index[0] == slice(None)):
                self.unsupported(node, "indexing the batch axis")
            return x
        self.unsupported(node, "indexing the feature axis")

    def pad(self, node, x, pad):
        pad = tuple(pad)
        if x in (None, self.FIXED):
            return x
        rank = x[2]
        pair = rank - 2  # pairs count from the last axis; the feature axis (dim 1) is pair rank - 2
        if len(pad) // 2 <= pair:
            return x
        if x[1]:
            self.unsupported(node, "padding flattened features")
        lo, hi = pad[2 * pair], pad[2 * pair + 1]
        if lo < 0 or hi < 0:
            self.unsupported(node, "cropping the feature axis")
        groups = list(x[0])
        if lo:
            groups.insert(0, self.new(lo))
        if hi:
            groups.append(self.new(hi))
        return (tuple(groups), False, rank)

    def run(self):
        try:
            graph = fx.symbolic_trace(self.model).graph
        except Exception as err:
            raise SettingError(
                f"alignment (weight or activation matching) needs a model that torch.fx can trace; tracing "
                f"{type(self.model).__name__} failed: {type(err).__name__}: {err}"
            ) from None
        env = {}
        for node in graph.nodes:
            if node.op == "placeholder":
                env[node] = self.FIXED
            elif node.op == "call_module":
                env[node] = self.call_module(node, env)
            elif node.op in ("call_function", "call_method"):
                inputs = [env[a] for a in node.all_input_nodes]
                if node.op == "call_method" and node.target in ("size", "dim"):
                    env[node] = None
                elif not any(isinstance(v, tuple) for v in inputs):  # nothing permuted flows in: any op goes
                    env[node] = self.FIXED if self.FIXED in inputs else None
                elif node.op == "call_function":
                    env[node] = self.call_function(node, env)
                else:
                    env[node] = self.call_method(node, env)
            value = env.get(node)
            if isinstance(value, tuple) and not value[1] and node.op != "placeholder":
                self.taps.append((node.name, value[0], self.nonlinear(node)))
            if node.op == "output":
                outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
                for o in outs:
                    if isinstance(o, fx.Node):
                        self.fix(env[o])
            elif node.op not in ("placeholder", "call_module", "call_function", "call_method"):
                self.unsupported(node, f"op {node.op}")
        return self.build()

    def nonlinear(self, node):
        if node.op == "call_module":
            return isinstance(self.modules[node.target], _NONLINEAR["modules"])
        key = "functions" if node.op == "call_function" else "methods"
        return node.op in ("call_function", "call_method") and node.target in _NONLINEAR[key]

    def build(self):
        axes = {}
        for name, axis, groups in self.writes:  # a group may since have joined a side-by-side stream
            segs, start = [], 0
            for g in self.expand(groups):
                segs.append(Segment(g, start))
                start += self.size[g]
            axes.setdefault(name, {})[axis] = tuple(segs)
        for name, axis, x, node, features in self.reads:
            if x == self.FIXED:
                continue
            groups = self.expand(x[0])
            total = sum(self.size[g] for g in groups)
            if features % total:
                raise SettingError(f"node {node.name!r} reads {features} features from {total} units")
            repeat = features // total if x[1] else 1
            if not x[1] and features != total:
                raise SettingError(f"node {node.name!r} reads {features} features from {total} units")
            segs, start = [], 0
            for g in groups:
                segs.append(Segment(g, start, repeat))
                start += self.size[g] * repeat
            axes.setdefault(name, {})[axis] = tuple(segs)
        spec = PermutationSpec()
        for name, groups, nonlinear in self.taps:
            segs, start = [], 0
            for g in self.expand(groups):
                if not self.fixed[g]:
                    segs.append(Segment(g, start))
                start += self.size[g]
            if segs:
                spec.taps[name] = (tuple(segs), nonlinear)
        for name, ax in axes.items():
            keep = {a: tuple(s for s in segs if not self.fixed[s.group]) for a, segs in ax.items()}
            keep = {a: segs for a, segs in keep.items() if segs}
            if keep:
                spec.axes[name] = keep
                for segs in keep.values():
                    for s in segs:
                        spec.sizes[s.group] = self.size[s.group]
        return spec


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The hidden-unit permutation structure of ``model`` (see the module docstring); a ``ValueError``
    naming the node for a graph it cannot follow."""
    if not isinstance(model, nn.Module):
        raise SettingTypeError(f"permutation_spec needs a torch.nn.Module, got {type(model).__name__}")
    return _Tracer(model).run()
