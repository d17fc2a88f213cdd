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

__all__ = ["StackedForward", "stacked_forward"]

_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Tanh,
                        nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Mish,
                        nn.Identity, nn.Dropout, nn.AlphaDropout)
_ELEMENTWISE_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.celu, F.selu, F.hardswish,
                          F.hardsigmoid, F.hardtanh, F.softplus, F.mish, F.dropout, F.sigmoid, F.tanh,
                          torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg,
                          operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
                          torch.add, torch.sub, torch.mul}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "exp", "abs", "neg", "contiguous", "clone", "float",
                        "add", "sub", "mul"}
_ALONG_DIM = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax"}  # (x, dim)


# in-place forms, for an activation whose input is a product this forward made and nothing else reads
# (a new tensor of (k, batch, features) per activation costs more than the activation on CPU: fresh pages)
_IN_PLACE = {nn.ReLU: torch.relu_, F.relu: torch.relu_, torch.relu: torch.relu_, "relu": torch.relu_,
             nn.Tanh: torch.tanh_, F.tanh: torch.tanh_, torch.tanh: torch.tanh_, "tanh": torch.tanh_,
             nn.Sigmoid: torch.sigmoid_, F.sigmoid: torch.sigmoid_, torch.sigmoid: torch.sigmoid_,
             "sigmoid": torch.sigmoid_}


class _Unsupported(Exception):
    pass


class StackedForward:
    """``(genomes, x) -> outputs``: ``genomes`` ``(k, D)`` (rows of genomes in ``adapter``'s layout), ``x``
    ``(B, ...)`` shared by all; returns ``(k, B, ...)``, what ``k`` calls of ``adapter.forward`` return.
    Build it with :func:`stacked_forward`.

    ``widest``: the most features a layer reads or writes, which sizes the chunks the evaluator runs.
    """

    def __init__(self, adapter, graph: fx.Graph, linears: dict, widest: int, in_place: dict):
        self.adapter = adapter
        self.graph = graph
        self.linears = linears      # module name -> (weight (offset, shape), bias (offset, numel) or None)
        self.widest = widest
        self.in_place = in_place    # node -> the in-place function that may replace it
        self._buffers = {}          # node -> its product's buffer, with reuse=True

    def __call__(self, genomes: torch.Tensor, x: torch.Tensor, *, reuse: bool = False) -> torch.Tensor:
        """``reuse``: write every layer's products into buffers kept for the next call of the same shapes (no
        new megabytes per call; on CPU fresh pages cost more than small products). The output is then
        overwritten by the next call: read it first."""
        if genomes.shape[0] == 1:  # a batch of one product goes to another kernel, whose bits can differ:
            return self(genomes.expand(2, -1), x, reuse=reuse)[:1]  # a genome's outputs never depend on its chunk
        return self._run(genomes, x, reuse)

    def _out(self, node, shape, like, reuse):
        if not reuse:
            return None
        buf = self._buffers.get(node)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[node] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def _run(self, genomes, x, reuse):
        k = genomes.shape[0]
        modules = dict(self.adapter.model.named_modules())
        env = {}  # node -> (value, batched)

        def load(a):
            return fx.node.map_arg(a, lambda n: env[n][0])

        def batched(a):
            found = []
            fx.node.map_arg(a, lambda n: found.append(env[n][1]))
            return any(found)

        for node in self.graph.nodes:
            if node.op == "placeholder":
                env[node] = (x, False)
            elif node.op == "output":
                out, b = load(node.args[0]), batched(node.args[0])
                return out if b else out.unsqueeze(0).expand(k, *out.shape)
            elif node.op == "call_module" and node.target in self.linears:
                (w_off, w_shape), bias = self.linears[node.target]
                h, b = env[node.args[0]]
                if not b:
                    h = h.expand(k, *h.shape)
                if h.dim() != 3:
                    raise ValueError(f"layer {node.target!r} gets inputs of shape {tuple(h.shape[1:])} per genome; "
                                     "the stacked forward takes (batch, features) only")
                w = genomes[:, w_off:w_off + w_shape[0] * w_shape[1]].view(k, *w_shape).transpose(1, 2)
                out = self._out(node, (k, h.shape[1], w_shape[0]), h, reuse)
                if bias is None:
                    env[node] = (torch.bmm(h, w, out=out), True)
                else:
                    b = genomes[:, bias[0]:bias[0] + bias[1]].unsqueeze(1)
                    env[node] = (torch.baddbmm(b, h, w, out=out), True)
            elif node in self.in_place:
                env[node] = (self.in_place[node](env[node.args[0]][0]), True)
            else:
                args, kwargs = load(node.args), load(node.kwargs)
                fn = {"call_module": lambda: modules[node.target],
                      "call_function": lambda: node.target,
                      "call_method": lambda: getattr(args[0], node.target)}[node.op]()
                if node.op == "call_method":
                    args = args[1:]
                dep = batched(node.args) or batched(node.kwargs)
                if dep and node.target in _ALONG_DIM:  # a per-genome dim d >= 0 is d + 1 of the stack
                    dim = kwargs.get("dim", args[0] if node.op == "call_method" and args else
                                     (args[1] if len(args) > 1 else None))
                    dim = dim + 1 if dim is not None and dim >= 0 else dim
                    if node.op == "call_method":
                        args, kwargs = (), {**kwargs, "dim": dim}
                    else:
                        args, kwargs = args[:1], {**kwargs, "dim": dim}
                env[node] = (fn(*args, **kwargs), dep)
        raise RuntimeError("the traced graph has no output")


def _genome_tensors(adapter) -> dict:
    """id of every tensor the genome holds (tied aliases included) -> its layout entry."""
    entries = {e.name: e for e in adapter.layout}
    out = {}
    for name, t in adapter.model.state_dict(keep_vars=True).items():
        if name in entries:
            out[id(t)] = entries[name]
    return out


def stacked_forward(adapter) -> tuple:
    """``(StackedForward, None)`` for a ``TorchAdapter`` whose model is an MLP (see the module), else
    ``(None, reason)``."""
    model = adapter.model
    if any(hasattr(m, "parametrizations") for m in model.modules()):
        return None, "the model has parametrizations"
    try:
        graph = fx.Tracer().trace(model)  # the graph only: no GraphModule to compile
    except Exception as err:  # data-dependent control flow, ...
        return None, f"torch.fx cannot trace it ({type(err).__name__}: {err})"
    modules = dict(model.named_modules())
    in_genome = _genome_tensors(adapter)
    linears, widest, batched = {}, 1, set()
    try:
        for node in graph.nodes:
            deps = []
            fx.node.map_arg((node.args, node.kwargs), lambda n: deps.append(n in batched))
            dep = any(deps)
            if node.op in ("placeholder", "output"):
                if node.op == "placeholder" and node.next.op == "placeholder":
                    raise _Unsupported("the model takes more than one input")
                continue
            if node.op == "get_attr":
                raise _Unsupported(f"node {node.name!r} reads the tensor {node.target!r} directly")
            if node.op == "call_module":
                mod = modules[node.target]
                own = [t for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
                       if id(t) in in_genome]
                if type(mod) is nn.Linear:
                    w = in_genome.get(id(mod.weight))
                    b = in_genome.get(id(mod.bias)) if mod.bias is not None else None
                    if w is None or (mod.bias is not None and b is None):
                        raise _Unsupported(f"the weights of {node.target!r} are not all in the genome")
                    linears[node.target] = ((w.offset, w.shape), None if b is None else (b.offset, b.numel))
                    widest = max(widest, mod.in_features, mod.out_features)
                    batched.add(node)
                    continue
                if own:
                    raise _Unsupported(f"module {node.target!r} ({type(mod).__name__}) is not a Linear layer")
                if dep and not isinstance(mod, _ELEMENTWISE_MODULES):
                    raise _Unsupported(f"module {node.target!r} ({type(mod).__name__}) acts on a "
                                       "genome-dependent value and is not element-wise")
            elif node.op == "call_function":
                if dep and node.target in _ALONG_DIM and (len(node.args) > 1 or "dim" in node.kwargs):
                    pass
                elif dep and node.target not in _ELEMENTWISE_FUNCTIONS:
                    raise _Unsupported(f"node {node.name!r} ({getattr(node.target, '__name__', node.target)}) "
                                       "acts on a genome-dependent value and is not element-wise")
            elif node.op == "call_method":
                if dep and node.target in _ALONG_DIM and (len(node.args) > 1 or "dim" in node.kwargs):
                    pass
                elif dep and node.target not in _ELEMENTWISE_METHODS:
                    raise _Unsupported(f"node {node.name!r} (.{node.target}) acts on a genome-dependent value "
                                       "and is not element-wise")
            if dep:
                batched.add(node)
    except _Unsupported as err:
        return None, str(err)
    if not linears:
        return None, "the model has no Linear layer"
    in_place = {}
    for node in graph.nodes:  # relu(linear(h)) with nothing else reading linear(h): in place
        source = node.args[0] if node.args else None
        if (node.op != "call_module" and (node.kwargs or len(node.args) != 1)) or not isinstance(source, fx.Node):
            continue
        key = type(modules[node.target]) if node.op == "call_module" else node.target
        if (node.op == "call_module" and getattr(modules[node.target], "inplace", False)) or node.op == "get_attr":
            continue
        made_here = source.op == "call_module" and source.target in linears
        if made_here and len(source.users) == 1 and key in _IN_PLACE:
            in_place[node] = _IN_PLACE[key]
    return StackedForward(adapter, graph, linears, widest, in_place), None
