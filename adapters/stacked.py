"""A chunk of genomes through a multilayer perceptron at once: one batched matrix product per layer.

For a model built of ``Linear`` layers, element-wise activations and reshapes of its input (an MLP), the
forward pass of ``k`` genomes on the same inputs is ``k`` matrix products per layer. :class:`StackedForward`
runs them as one ``baddbmm`` per layer over ``(k, batch, features)`` activations, the weights read as
strided views of the stacked genomes: the model's modules are called once per chunk, not once per genome.
On 2 CPU cores a digits MLP was scored about 20 % faster per genome this way than with one forward pass
per genome (BENCHMARKS.md); a wide one (256 units) was not.

:func:`stacked_forward` traces the model with ``torch.fx`` and returns ``None`` (with the reason) when the
graph holds anything else: a convolution, a normalisation layer, an op on the feature axis of a
genome-dependent value. Nodes that depend only on the input (``flatten``, ``view``, ``x.size(0)``) run as
they are.
"""

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from mega_deap.checks import SettingError

__all__ = ["StackedForward", "stacked_forward"]

_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.AlphaDropout,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.elu,
    F.celu,
    F.selu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.mish,
    F.dropout,
    F.sigmoid,
    F.tanh,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.exp,
    torch.abs,
    torch.neg,
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
    torch.add,
    torch.sub,
    torch.mul,
}
_ELEMENTWISE_METHODS = {
    "relu",
    "sigmoid",
    "tanh",
    "exp",
    "abs",
    "neg",
    "contiguous",
    "clone",
    "float",
    "add",
    "sub",
    "mul",
}
_ALONG_DIM = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax"}  # (x, dim)


# in-place forms, for an activation whose input is a product this forward made and nothing else reads
# (a new tensor of (k, batch, features) per activation costs more than the activation on CPU: fresh pages)
_IN_PLACE = {
    nn.ReLU: torch.relu_,
    F.relu: torch.relu_,
    torch.relu: torch.relu_,
    "relu": torch.relu_,
    nn.Tanh: torch.tanh_,
    F.tanh: torch.tanh_,
    torch.tanh: torch.tanh_,
    "tanh": torch.tanh_,
    nn.Sigmoid: torch.sigmoid_,
    F.sigmoid: torch.sigmoid_,
    torch.sigmoid: torch.sigmoid_,
    "sigmoid": torch.sigmoid_,
}


class _Unsupported(Exception):
    pass


class StackedForward:
    """``(genomes, x) -> outputs``: ``genomes`` ``(k, D)`` (rows of genomes in ``adapter``'s layout), ``x``
    ``(B, ...)`` shared by all; returns ``(k, B, ...)``, what ``k`` calls of ``adapter.forward`` return.
    Build it with :func:`stacked_forward`, which settles everything below from the graph once.

    ``widest``: the most features a layer reads or writes, which sizes the chunks the evaluator runs.
    """

    def __init__(
        self,
        adapter,
        graph: fx.Graph,
        modules: dict,
        linears: dict,
        batched: set,
        dims: dict,
        in_place: dict,
        widest: int,
    ):
        self.adapter = adapter
        self.graph = graph
        self.linears = linears  # Linear node -> (weight (offset, shape), bias (offset, numel) or None)
        self.batched = batched  # nodes whose value depends on the genome: (k, B, ...)
        self.dims = dims  # softmax-like node on a batched value -> its dim on the stack
        self.in_place = in_place  # activation node -> the in-place function that replaces it
        self.widest = widest
        self.modules = modules  # the model's named modules, for the nodes that call one
        self._buffers: dict = {}  # Linear node -> its product's buffer, with reuse=True

    def __call__(
        self, genomes: torch.Tensor, x: torch.Tensor, *, reuse: bool = False, per_genome: bool = False
    ) -> torch.Tensor:
        """``reuse``: write every layer's products into buffers kept for the next call of the same shapes (no
        new megabytes per call; on CPU fresh pages cost more than small products). The output is then
        overwritten by the next call: read it first. ``per_genome``: ``x`` is ``(k, B, features)``, each
        genome's own inputs (rollouts), not inputs shared by all; for models whose input goes straight into
        layers (no reshape of it)."""
        if per_genome:
            self._check_per_genome(genomes, x)
        if genomes.shape[0] == 1:  # a batch of one product goes to another kernel, whose bits can differ:
            x2 = x.expand(2, *x.shape[1:]) if per_genome else x  # a genome's outputs never depend on its chunk
            return self(genomes.expand(2, -1), x2, reuse=reuse, per_genome=per_genome)[:1]
        return self._run(genomes, x, reuse, per_genome)

    def _check_per_genome(self, genomes, x):
        if x.dim() != 3 or x.shape[0] != genomes.shape[0]:
            raise SettingError(
                f"per-genome inputs must have shape (k={genomes.shape[0]}, batch, features), got {tuple(x.shape)}"
            )
        fixed = [n.name for n in self.graph.nodes if n.op not in ("placeholder", "output") and n not in self.batched]
        if fixed:
            raise SettingError(
                f"the model transforms its input before any layer ({', '.join(fixed)}): the stacked forward "
                "takes per-genome inputs only where they go straight into layers"
            )

    def _out(self, node, shape, like, reuse):
        if not reuse:
            return None
        buf = self._buffers.get(node)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[node] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def _linear(self, node, h, genomes, reuse, per_genome=False):
        k = genomes.shape[0]
        (w_off, w_shape), bias = self.linears[node]
        if node.args[0] not in self.batched and not per_genome:
            h = h.expand(k, *h.shape)
        if h.dim() != 3:
            raise SettingError(
                f"layer {node.target!r} gets inputs of shape {tuple(h.shape[1:])} per genome; "
                "the stacked forward takes (batch, features) only"
            )
        w = genomes[:, w_off : w_off + w_shape[0] * w_shape[1]].view(k, *w_shape).transpose(1, 2)
        out = self._out(node, (k, h.shape[1], w_shape[0]), h, reuse)
        if bias is None:
            return torch.bmm(h, w, out=out)
        return torch.baddbmm(genomes[:, bias[0] : bias[0] + bias[1]].unsqueeze(1), h, w, out=out)

    def _run(self, genomes, x, reuse, per_genome=False):
        env = {}

        def load(a):
            return fx.node.map_arg(a, env.__getitem__)

        for node in self.graph.nodes:
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                out = load(node.args[0])
                if node.args[0] in self.batched or per_genome:
                    return out
                return out.unsqueeze(0).expand(genomes.shape[0], *out.shape)
            elif node in self.linears:
                env[node] = self._linear(node, env[node.args[0]], genomes, reuse, per_genome)
            elif node in self.in_place:
                env[node] = self.in_place[node](env[node.args[0]])
            elif node in self.dims:  # softmax-like: (x, dim) with the dim moved past the genome axis
                fn = getattr(env[node.args[0]], node.target) if node.op == "call_method" else node.target
                kwargs = {k: v for k, v in load(node.kwargs).items() if k != "dim"}
                env[node] = fn(
                    *load(node.args[: 1 if node.op == "call_function" else 0]), dim=self.dims[node], **kwargs
                )
            else:
                args, kwargs = load(node.args), load(node.kwargs)
                if node.op == "call_module":
                    env[node] = self.modules[node.target](*args, **kwargs)
                elif node.op == "call_method":
                    env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    env[node] = node.target(*args, **kwargs)
        raise RuntimeError("the traced graph has no output")


def _dim_of(node):
    """The ``dim`` a softmax-like call names, or ``None``."""
    if "dim" in node.kwargs:
        return node.kwargs["dim"]
    return node.args[1] if len(node.args) > 1 else None


def stacked_forward(adapter) -> tuple:
    """``(StackedForward, None)`` for a ``TorchAdapter`` whose model is an MLP (see the module), else
    ``(None, reason)``."""
    from .torch import _entries

    model = adapter.model
    if any(hasattr(m, "parametrizations") for m in model.modules()):
        return None, "the model has parametrizations"
    try:
        # the graph only, no GraphModule to compile; no autowrapping of ``math`` (it patches every global of
        # the model's module, most of a trace's cost): a math call on a traced value is refused
        graph = fx.Tracer(autowrap_modules=(), autowrap_functions=()).trace(model)  # type: ignore[arg-type]
    except Exception as err:  # data-dependent control flow, ...
        return None, f"torch.fx cannot trace it ({type(err).__name__}: {err})"
    modules = dict(model.named_modules())
    in_genome = {id(t): e for (_, t, _), e in zip(_entries(model, adapter.buffers), adapter.layout)}
    linears: dict = {}
    batched: set = set()
    dims: dict = {}
    widest = 1
    allowed: dict[str, set] = {"call_function": set(_ELEMENTWISE_FUNCTIONS), "call_method": set(_ELEMENTWISE_METHODS)}
    try:
        for node in graph.nodes:
            dep = any(n in batched for n in node.all_input_nodes)
            if node.op == "placeholder":
                if node.next.op == "placeholder":
                    raise _Unsupported("the model takes more than one input")
                continue
            if node.op == "output":
                continue
            if node.op == "get_attr":
                raise _Unsupported(f"node {node.name!r} reads the tensor {node.target!r} directly")
            if node.op == "call_module":
                mod = modules[node.target]
                own = [
                    t
                    for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
                    if id(t) in in_genome
                ]
                if type(mod) is nn.Linear:
                    w = in_genome.get(id(mod.weight))
                    b = in_genome.get(id(mod.bias)) if mod.bias is not None else None
                    if w is None or (mod.bias is not None and b is None):
                        raise _Unsupported(f"the weights of {node.target!r} are not all in the genome")
                    linears[node] = ((w.offset, w.shape), None if b is None else (b.offset, b.numel))
                    widest = max(widest, mod.in_features, mod.out_features)
                    dep = True
                elif own:
                    raise _Unsupported(f"module {node.target!r} ({type(mod).__name__}) is not a Linear layer")
                elif dep and not isinstance(mod, _ELEMENTWISE_MODULES):
                    raise _Unsupported(
                        f"module {node.target!r} ({type(mod).__name__}) acts on a "
                        "genome-dependent value and is not element-wise"
                    )
            elif dep and node.target in _ALONG_DIM and isinstance(_dim_of(node), int):
                d = _dim_of(node)
                dims[node] = d + 1 if d >= 0 else d  # a per-genome dim d >= 0 is d + 1 of the stack
            elif dep and node.target not in allowed[node.op]:
                what = f".{node.target}" if node.op == "call_method" else getattr(node.target, "__name__", node.target)
                raise _Unsupported(
                    f"node {node.name!r} ({what}) acts on a genome-dependent value and is not element-wise"
                )
            if dep:
                batched.add(node)
    except _Unsupported as err:
        return None, str(err)
    if not linears:
        return None, "the model has no Linear layer"
    in_place = {}
    for node in batched:  # act(linear(h)) with nothing else reading linear(h): in place
        source = node.args[0] if node.args else None
        if (
            not isinstance(source, fx.Node)
            or source not in linears
            or len(source.users) != 1
            or len(node.args) != 1
            or node.kwargs
        ):
            continue
        if node.op == "call_module":
            mod = modules[node.target]
            key = None if getattr(mod, "inplace", False) else type(mod)
        else:
            key = node.target
        if key in _IN_PLACE:
            in_place[node] = _IN_PLACE[key]
    return StackedForward(adapter, graph, modules, linears, batched, dims, in_place, widest), None
